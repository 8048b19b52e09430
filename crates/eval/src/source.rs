//! The sets `ddpm eval` reads and scores ([`Source`]): image folders and `.npz` files of images
//! (through `data::images`), of statistics (`mu`, `sigma`) or of Inception features (as
//! `ddpm eval stats --features` writes them); and keeping the first N of a set.

use std::path::Path;

use data::images::{read_image_dir, read_npz, NpyData};

use crate::{Features, FidError, Images, Statistics};

/// A set to score or to score against: images, their Inception features, or only the
/// statistics of the features.
#[derive(Debug)]
pub enum Source {
    /// u8 images, NCHW.
    Images(Images),
    /// Statistics (`mu`, `sigma`): FID only.
    Statistics(Statistics),
    /// Inception features, as `ddpm eval stats --features` saves them.
    Features(Features),
    /// A cached reference ([`crate::ReferenceCache`], as FID in the training loop writes it):
    /// statistics for the FID and `kid_features` for the KID.
    Reference(crate::Reference),
}

/// Keeps the first `n` images (all of them with `None`) and requires at least two.
///
/// # Errors
/// [`FidError::TooFewImages`] naming `what` when fewer than two remain.
pub fn first_images(images: Images, n: Option<usize>, what: &str) -> Result<Images, FidError> {
    let images = match n {
        Some(n) if n < images.len() => images.take(n),
        _ => images,
    };
    if images.len() < 2 {
        return Err(FidError::TooFewImages {
            what: what.to_string(),
            n: images.len(),
        });
    }
    Ok(images)
}

/// Keeps the first `n` feature rows (all of them with `None`) and requires at least two.
///
/// # Errors
/// [`FidError::TooFewImages`] naming `what` when fewer than two remain.
pub fn first_features(
    features: Features,
    n: Option<usize>,
    what: &str,
) -> Result<Features, FidError> {
    let n = n.unwrap_or(usize::MAX).min(features.len());
    if n < 2 {
        return Err(FidError::TooFewImages {
            what: what.to_string(),
            n,
        });
    }
    let d = features.dim();
    Features::new(features.as_slice()[..n * d].to_vec(), n, d)
}

impl Source {
    /// Reads images from an `.npz` or a folder, statistics from an `.npz` with `mu` and
    /// `sigma` (with `kid_features` too, a cached reference), or features from an `.npz` with `features` (which wins over its `mu` and
    /// `sigma`). With `allow_stats` false (a set of samples), statistics and features are
    /// refused.
    ///
    /// # Errors
    /// [`FidError::File`] naming the file when it is missing, unreadable, or of the wrong kind;
    /// [`FidError::Data`] for a folder whose images cannot be read or differ in size.
    pub fn read(path: &Path, allow_stats: bool) -> Result<Self, FidError> {
        let bad = |message: String| FidError::File {
            path: path.to_path_buf(),
            message,
        };
        if path.is_dir() {
            return Ok(Source::Images(Images::from_set(read_image_dir(path)?)?));
        }
        if !path.exists() {
            return Err(bad("does not exist".into()));
        }
        let names: Vec<String> = read_npz(path)?.into_iter().map(|(name, _)| name).collect();
        let holds = |what: &str| {
            FidError::Invalid(format!(
                "{} holds {what}, not images: pass it as --ref",
                path.display()
            ))
        };
        if names.iter().any(|n| n == "features") {
            if !allow_stats {
                return Err(holds("Inception features"));
            }
            return Ok(Source::Features(read_features(path)?));
        }
        if names.iter().any(|n| n == "kid_features") {
            if !allow_stats {
                return Err(holds(
                    "reference statistics (`mu`, `sigma`, `kid_features`)",
                ));
            }
            return Ok(Source::Reference(crate::reference::read_reference(path)?));
        }
        if names.iter().any(|n| n == "mu" || n == "sigma") {
            if !allow_stats {
                return Err(holds("statistics (`mu`, `sigma`)"));
            }
            return Ok(Source::Statistics(Statistics::read_npz(path)?));
        }
        Ok(Source::Images(Images::read_npz(path)?))
    }
}

/// Reads `features` (`[N, D]`, float32 or float64) from an `.npz` written by
/// `ddpm eval stats --features`.
fn read_features(path: &Path) -> Result<Features, FidError> {
    let bad = |message: String| FidError::File {
        path: path.to_path_buf(),
        message,
    };
    let arrays = read_npz(path)?;
    let (_, array) = arrays
        .iter()
        .find(|(name, _)| name == "features")
        .ok_or_else(|| bad("no array `features`".into()))?;
    let [n, dim] = array.shape[..] else {
        return Err(bad(format!(
            "`features` has shape {:?}; expected [N, D]",
            array.shape
        )));
    };
    let values = match &array.data {
        NpyData::F32(v) => v.clone(),
        NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        _ => return Err(bad("`features` is not float32 or float64".into())),
    };
    Features::new(values, n, dim).map_err(|e| bad(format!("`features`: {e}")))
}
