//! The sample sets `ddpm eval` reads: image folders (`data::images`), and `.npz` files of images,
//! statistics or Inception features ([`eval::Source`]).

use std::path::Path;

use anyhow::{bail, Context, Result};

use data::images::{read_image_dir, read_npz, NpyData};
use eval::{Features, Images, Source, Statistics};

/// Reads `features` (`[N, D]`, float32 or float64) from an `.npz` written by
/// `ddpm eval stats --features`.
fn read_features(path: &Path) -> Result<Features> {
    let arrays = read_npz(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, array) = arrays
        .iter()
        .find(|(name, _)| name == "features")
        .with_context(|| format!("{}: no array `features`", path.display()))?;
    let [n, dim] = array.shape[..] else {
        bail!(
            "{}: `features` has shape {:?}; expected [N, D]",
            path.display(),
            array.shape
        );
    };
    let values = match &array.data {
        NpyData::F32(v) => v.clone(),
        NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        _ => bail!("{}: `features` is not float32 or float64", path.display()),
    };
    Features::new(values, n, dim).with_context(|| format!("{}: `features`", path.display()))
}

/// Reads images from an `.npz` or folder, statistics from an `.npz` with `mu` and `sigma`, or
/// features from an `.npz` with `features` (which wins over its `mu` and `sigma`).
pub fn read_source(path: &Path, allow_stats: bool) -> Result<Source> {
    if path.is_dir() {
        return Ok(Source::Images(Images::from_set(read_image_dir(path)?)?));
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let names: Vec<String> = read_npz(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    if names.iter().any(|n| n == "features") {
        if !allow_stats {
            bail!(
                "{} holds Inception features, not images: pass it as --ref",
                path.display()
            );
        }
        return Ok(Source::Features(read_features(path)?));
    }
    if names.iter().any(|n| n == "mu" || n == "sigma") {
        if !allow_stats {
            bail!(
                "{} holds statistics (`mu`, `sigma`), not images: pass it as --ref",
                path.display()
            );
        }
        return Ok(Source::Statistics(Statistics::read_npz(path)?));
    }
    Ok(Source::Images(Images::read_npz(path)?))
}
