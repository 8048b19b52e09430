//! The sample sets `ddpm eval` reads: image folders (recursively, as the training reader does),
//! and `.npz` files of images, statistics or Inception features ([`eval::Source`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use data::npz::{read_npz, NpyData};
use eval::{Features, FidError, Images, Source, Statistics};

/// Reads every image file under a folder, searched recursively as the training reader does (so
/// class sub-folders work), sorted by path, as RGB, or as one channel when all are grayscale.
fn read_image_dir(dir: &Path) -> Result<Images> {
    let mut paths = Vec::new();
    collect_images(dir, &mut paths)?;
    if paths.is_empty() {
        bail!(
            "{}: no image files (.png, .jpg, .jpeg, .bmp, .gif) in it or its sub-folders",
            dir.display()
        );
    }
    paths.sort();
    let mut decoded = Vec::with_capacity(paths.len());
    for path in &paths {
        let img = image::open(path).with_context(|| format!("cannot decode {}", path.display()))?;
        decoded.push(img);
    }
    let gray = decoded
        .iter()
        .all(|img| matches!(img.color(), image::ColorType::L8 | image::ColorType::L16));
    let channels = if gray { 1 } else { 3 };
    let mut pixels = Vec::new();
    let mut size: Option<(u32, u32, &Path)> = None;
    for (img, path) in decoded.iter().zip(&paths) {
        let (w, h) = (img.width(), img.height());
        match size {
            None => size = Some((w, h, path)),
            Some((w0, h0, first)) if (w0, h0) != (w, h) => {
                return Err(FidError::MixedSizes {
                    what: dir.display().to_string(),
                    message: format!(
                        "{} is {w}×{h} but {} is {w0}×{h0}: images of one set must share a size",
                        path.display(),
                        first.display()
                    ),
                }
                .into())
            }
            Some(_) => {}
        }
        let (w, h) = (w as usize, h as usize);
        let buf = if gray {
            img.to_luma8().into_raw()
        } else {
            img.to_rgb8().into_raw()
        };
        // HWC → CHW.
        let start = pixels.len();
        pixels.resize(start + buf.len(), 0);
        for (px_idx, px) in buf.chunks_exact(channels).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                pixels[start + ch * h * w + px_idx] = v;
            }
        }
    }
    let (w, h) = size
        .map(|(w, h, _)| (w as usize, h as usize))
        .unwrap_or((0, 0));
    Ok(Images::new(pixels, [paths.len(), channels, h, w])?)
}

/// Image files under `dir`, recursively; links to folders are not followed.
fn collect_images(dir: &Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read the folder {}", dir.display()))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .with_context(|| format!("cannot read {}", path.display()))?
            .is_dir();
        if is_dir {
            collect_images(&path, paths)?;
            continue;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ["png", "jpg", "jpeg", "bmp", "gif"].contains(&ext.as_str()) {
            paths.push(path);
        }
    }
    Ok(())
}

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
        return Ok(Source::Images(read_image_dir(path)?));
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
