//! Image folders: every image under a root, found recursively, decoded by the `image` crate
//! (PNG, JPEG, GIF, BMP), brought to one size and kept as u8.
//!
//! With class sub-folders (torchvision's `ImageFolder` layout) each top-level sub-folder of the
//! root is a class, named after the folder, labelled in sorted name order, and its images are
//! found at any depth below it. Without them, every image under the root is taken, unlabelled.
//!
//! Nothing is dropped silently: files that are images by their extension but fail to decode are
//! *unreadable*, an error unless [`OnError::Skip`] asks to skip them, and then listed in the
//! [`FolderReport`]; other files (a README, `.DS_Store`) are *ignored* and listed too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::images::{list_image_files, map_parallel, read_image, Skipped};
use crate::resize::resize_bilinear_u8;

/// How an image of another size becomes the configured size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Resize to the target size, bilinear as `tf.image.resize`; the aspect ratio may change.
    Resize,
    /// Keep the aspect ratio: take the largest centred region with the target's aspect ratio,
    /// then resize it (the same as resizing the shorter side and centre-cropping).
    CenterCrop,
}

/// What to do with an image file that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop with [`DataError::Unreadable`] naming the file.
    Fail,
    /// Leave it out and list it in [`FolderReport::skipped`].
    Skip,
}

/// How to read an image folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// Stored image size, `[height, width]`.
    pub size: [usize; 2],
    /// 1 (converted to luma) or 3 (converted to RGB).
    pub channels: usize,
    /// How images of other sizes are brought to `size`.
    pub fit: Fit,
    /// Top-level sub-folders are classes; otherwise there are no labels.
    pub class_subfolders: bool,
    /// Unreadable images: fatal or skipped.
    pub on_error: OnError,
    /// Decode on demand in the loader's workers (only the paths and labels stay in memory)
    /// instead of all at start; the images are the same. Off when absent (and then not
    /// written, so configs of earlier runs read and write as before).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl FolderConfig {
    /// RGB images of `size`, centre-cropped, class sub-folders, unreadable files fatal.
    pub fn new(size: [usize; 2]) -> Self {
        Self {
            size,
            channels: 3,
            fit: Fit::CenterCrop,
            class_subfolders: true,
            on_error: OnError::Fail,
            stream: false,
        }
    }
}

/// Files under the root that did not become images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderReport {
    /// Image files that failed to decode, skipped under [`OnError::Skip`].
    pub skipped: Vec<Skipped>,
    /// Files that are not images by their extension, folder symlinks (not followed), and files
    /// outside any class sub-folder when labels come from sub-folders.
    pub ignored: Vec<Skipped>,
}

/// One image file found by the walk, with its label.
pub(crate) struct Candidate {
    pub(crate) path: PathBuf,
    pub(crate) label: u16,
}

/// Loads every image under `root` as `config` says; images are sorted by path, so file order is
/// the same on every machine.
///
/// # Errors
///
/// [`DataError::Missing`] when `root` is not a folder, [`DataError::Io`] for a folder that cannot
/// be listed, [`DataError::Unreadable`] naming the first file that does not decode (unless
/// skipping), [`DataError::Empty`] when no image remains, and [`DataError::Config`] for a bad
/// size or channel count.
pub fn load_folder(root: &Path, config: &FolderConfig) -> Result<(Dataset, FolderReport)> {
    let (candidates, class_names, mut report) = index_folder(root, config)?;
    let decoded = decode_all(&candidates, config);
    let [height, width] = config.size;
    let image_len = config.channels * height * width;
    let mut images = Vec::with_capacity(candidates.len() * image_len);
    let mut labels = Vec::with_capacity(candidates.len());
    for (candidate, result) in candidates.iter().zip(decoded) {
        match result {
            Ok(pixels) => {
                images.extend_from_slice(&pixels);
                labels.push(candidate.label);
            }
            Err(reason) => match config.on_error {
                OnError::Fail => {
                    return Err(DataError::Unreadable {
                        path: candidate.path.clone(),
                        reason,
                    })
                }
                OnError::Skip => report.skipped.push(Skipped {
                    path: candidate.path.clone(),
                    reason,
                }),
            },
        }
    }
    if labels.is_empty() {
        let reason = if candidates.is_empty() {
            "no image files (png, jpg, gif, bmp) found".to_string()
        } else {
            format!("none of the {} image files could be read", candidates.len())
        };
        return Err(DataError::Empty {
            path: root.to_path_buf(),
            reason,
        });
    }
    let dataset = Dataset::new(images, labels, config.channels, height, width, class_names)?;
    Ok((dataset, report))
}

/// The image files under `root` with their labels, the class names, and the files ignored:
/// the index of a folder, decoded at start ([`load_folder`]) or on demand (a streamed folder).
///
/// # Errors
///
/// Those of [`load_folder`] but the decoding ones.
pub(crate) fn index_folder(
    root: &Path,
    config: &FolderConfig,
) -> Result<(Vec<Candidate>, Vec<String>, FolderReport)> {
    if config.size.contains(&0) || !(config.channels == 1 || config.channels == 3) {
        return Err(DataError::Config(format!(
            "an image folder needs a positive size and 1 or 3 channels, not {}x{} with {} channels",
            config.size[0], config.size[1], config.channels
        )));
    }
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            hint: "an image folder must be a directory".into(),
        });
    }
    let mut report = FolderReport::default();
    let files = list_image_files(root, &mut report.ignored)?;
    let mut class_names: Vec<String> = Vec::new();
    let mut candidates = Vec::new();
    for path in files {
        if !config.class_subfolders {
            candidates.push(Candidate { path, label: 0 });
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .expect("the walk stays under the root");
        let mut parts = relative.components();
        let first = parts
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        match (first, parts.next()) {
            (Some(class), Some(_)) => {
                let label = match class_names.iter().position(|name| *name == class) {
                    Some(label) => label,
                    None => {
                        // Paths are sorted, so classes appear in sorted order.
                        class_names.push(class);
                        class_names.len() - 1
                    }
                };
                let label = u16::try_from(label).map_err(|_| {
                    DataError::Config(format!(
                        "{} has more than 65536 class folders",
                        root.display()
                    ))
                })?;
                candidates.push(Candidate { path, label });
            }
            _ => report.ignored.push(Skipped {
                path,
                reason: "not inside a class sub-folder".into(),
            }),
        }
    }
    Ok((candidates, class_names, report))
}

/// Decodes all candidates, in parallel on the available cores, keeping their order.
fn decode_all(candidates: &[Candidate], config: &FolderConfig) -> Vec<Result<Vec<u8>, String>> {
    map_parallel(candidates, |c| decode_one(&c.path, config))
}

/// Decodes one file to CHW u8 of the configured size and channels.
fn decode_one(path: &Path, config: &FolderConfig) -> Result<Vec<u8>, String> {
    let (chw, size) = read_image(path, config.channels).map_err(|err| match err {
        DataError::Unreadable { reason, .. } => reason,
        other => other.to_string(),
    })?;
    fit_image(&chw, config.channels, size, config.size, config.fit).map_err(|err| err.to_string())
}

/// Brings one CHW image of `in_size` to `out_size` by `fit`.
///
/// # Errors
///
/// [`DataError::Config`] when a size is zero or `chw` does not match.
///
/// # Examples
///
/// ```
/// use data::folder::{fit_image, Fit};
/// // A 1x4 gray strip centre-cropped to 1x2 keeps the middle two pixels.
/// assert_eq!(fit_image(&[1, 2, 3, 4], 1, [1, 4], [1, 2], Fit::CenterCrop)?, [2, 3]);
/// // Resized to 1x2, each output pixel averages a pair.
/// assert_eq!(fit_image(&[0, 10, 20, 30], 1, [1, 4], [1, 2], Fit::Resize)?, [5, 25]);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn fit_image(
    chw: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    fit: Fit,
) -> Result<Vec<u8>> {
    fit_with(chw, channels, in_size, out_size, fit, resize_bilinear_u8)
}

/// A resize of a CHW u8 image: (pixels, channels, in `[h, w]`, out `[h, w]`).
pub(crate) type ResizeU8 = fn(&[u8], usize, [usize; 2], [usize; 2]) -> Result<Vec<u8>>;

/// A CHW u8 image brought to `out_size` by `fit`, resizing with `resize` (the one body of
/// [`fit_image`] and the streams' Lanczos fit).
pub(crate) fn fit_with(
    chw: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    fit: Fit,
    resize: ResizeU8,
) -> Result<Vec<u8>> {
    if in_size == out_size {
        return Ok(chw.to_vec());
    }
    match fit {
        Fit::Resize => resize(chw, channels, in_size, out_size),
        Fit::CenterCrop => {
            let (cropped, crop_size) = crop_center(chw, channels, in_size, out_size)?;
            resize(&cropped, channels, crop_size, out_size)
        }
    }
}

/// The largest centred region of a CHW image of `in_size` with the aspect ratio of `aspect`
/// (`[height, width]`), and its size. For a square `aspect` this is ProgressiveGAN's crop to
/// the short side: rows `(h - s) / 2..(h + s) / 2` with `s = min(h, w)`, columns alike.
///
/// # Errors
///
/// [`DataError::Config`] when `chw` is not `channels` planes of `in_size`.
///
/// ```
/// let (crop, size) = data::folder::crop_center(&[1, 2, 3, 4, 5, 6], 1, [2, 3], [1, 1])?;
/// assert_eq!((crop, size), (vec![1, 2, 4, 5], [2, 2]));
/// # Ok::<(), data::DataError>(())
/// ```
pub fn crop_center(
    chw: &[u8],
    channels: usize,
    in_size: [usize; 2],
    aspect: [usize; 2],
) -> Result<(Vec<u8>, [usize; 2])> {
    let [in_h, in_w] = in_size;
    let [out_h, out_w] = aspect;
    if chw.len() != channels * in_h * in_w {
        return Err(DataError::Config(format!(
            "{} bytes are not a {channels}x{in_h}x{in_w} image",
            chw.len()
        )));
    }
    // The largest region of aspect out_h:out_w, in integers: compare in_w * out_h with in_h * out_w.
    let (crop_h, crop_w) = if in_w * out_h > in_h * out_w {
        (in_h, (in_h * out_w / out_h).max(1))
    } else {
        ((in_w * out_h / out_w).max(1), in_w)
    };
    let (top, left) = ((in_h - crop_h) / 2, (in_w - crop_w) / 2);
    let mut cropped = Vec::with_capacity(channels * crop_h * crop_w);
    for plane in chw.chunks_exact(in_h * in_w) {
        for row in plane.chunks_exact(in_w).skip(top).take(crop_h) {
            cropped.extend_from_slice(&row[left..left + crop_w]);
        }
    }
    Ok((cropped, [crop_h, crop_w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a `w` x `h` RGB PNG filled with `rgb`.
    fn write_png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    fn config(on_error: OnError) -> FolderConfig {
        FolderConfig {
            size: [4, 4],
            channels: 3,
            fit: Fit::Resize,
            class_subfolders: true,
            on_error,
            stream: false,
        }
    }

    #[test]
    fn class_subfolders_become_sorted_labels_found_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_png(&root.join("dog/b.png"), 4, 4, [0, 0, 200]);
        write_png(&root.join("cat/deep/er/a.png"), 8, 2, [10, 20, 30]);
        write_png(&root.join("cat/z.bmp"), 1, 1, [1, 2, 3]);
        image::RgbImage::from_pixel(4, 4, image::Rgb([5, 5, 5]))
            .save(root.join("dog/c.jpg"))
            .unwrap();
        std::fs::write(root.join("README.md"), "not an image").unwrap();
        std::fs::write(root.join("top.png"), "at the root").unwrap();
        let (ds, report) = load_folder(root, &config(OnError::Fail)).unwrap();
        assert_eq!(ds.class_names(), &["cat".to_string(), "dog".to_string()]);
        // Sorted by path: cat/deep/er/a.png, cat/z.bmp, dog/b.png, dog/c.jpg.
        assert_eq!(ds.labels(), &[0, 0, 1, 1]);
        assert_eq!(ds.shape(), [4, 3, 4, 4]);
        // Uniform colours stay uniform through any resize; planes are R, G, B.
        assert!(ds.image(0)[..16].iter().all(|&v| v == 10));
        assert!(ds.image(0)[32..].iter().all(|&v| v == 30));
        assert!(ds.image(1)[16..32].iter().all(|&v| v == 2));
        assert!(ds.image(2)[32..].iter().all(|&v| v == 200));
        let ignored: Vec<&Path> = report.ignored.iter().map(|s| s.path.as_path()).collect();
        assert_eq!(ignored.len(), 2, "{report:?}");
        assert!(ignored.contains(&root.join("README.md").as_path()));
        let top = report
            .ignored
            .iter()
            .find(|s| s.path == root.join("top.png"))
            .unwrap();
        assert_eq!(top.reason, "not inside a class sub-folder");
        assert!(report.skipped.is_empty());
    }

    #[test]
    fn unreadable_image_is_fatal_by_default_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/ok.png"), 4, 4, [1, 1, 1]);
        let broken = dir.path().join("a/broken.png");
        std::fs::write(&broken, b"\x89PNG\r\n\x1a\n but not really").unwrap();
        let err = load_folder(dir.path(), &config(OnError::Fail)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("{}: unreadable image: ", broken.display())),
            "{text}"
        );
        assert!(matches!(err, DataError::Unreadable { ref path, .. } if *path == broken));
    }

    #[test]
    fn unreadable_image_is_reported_when_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a/ok.png"), 4, 4, [1, 1, 1]);
        let broken = dir.path().join("a/broken.gif");
        std::fs::write(&broken, b"GIF89a").unwrap();
        let (ds, report) = load_folder(dir.path(), &config(OnError::Skip)).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].path, broken);
        assert!(!report.skipped[0].reason.is_empty());
    }

    #[test]
    fn no_images_at_all_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let err = load_folder(dir.path(), &config(OnError::Skip)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no image files (png, jpg, gif, bmp) found",
                dir.path().display()
            )
        );
        let err = load_folder(&dir.path().join("nope"), &config(OnError::Skip)).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    }

    #[test]
    fn without_class_subfolders_everything_is_unlabelled_and_gray_works() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("x.png"), 2, 2, [255, 255, 255]);
        write_png(&dir.path().join("sub/y.png"), 2, 2, [0, 0, 0]);
        let config = FolderConfig {
            size: [2, 2],
            channels: 1,
            class_subfolders: false,
            ..config(OnError::Fail)
        };
        let (ds, _) = load_folder(dir.path(), &config).unwrap();
        assert_eq!(ds.shape(), [2, 1, 2, 2]);
        assert_eq!(ds.n_classes(), 0);
        // Sorted: sub/y.png before x.png.
        assert_eq!(ds.images(), &[0, 0, 0, 0, 255, 255, 255, 255]);
    }

    #[test]
    fn center_crop_keeps_the_middle_and_resize_keeps_everything() {
        // A 2x6 gray image: columns 0..6 hold 0, 50, 100, 150, 200, 250.
        let row = [0u8, 50, 100, 150, 200, 250];
        let chw = [row, row].concat();
        // To 2x2: the centre crop is columns 2..4, already 2x2.
        assert_eq!(
            fit_image(&chw, 1, [2, 6], [2, 2], Fit::CenterCrop).unwrap(),
            [100, 150, 100, 150]
        );
        // Resize squeezes all six columns: s = (o + 0.5) * 3 - 0.5 = 1, 4.
        assert_eq!(
            fit_image(&chw, 1, [2, 6], [2, 2], Fit::Resize).unwrap(),
            [50, 200, 50, 200]
        );
        // A tall image crops rows.
        let tall: Vec<u8> = (0..6).map(|r| r * 10).collect();
        assert_eq!(
            fit_image(&tall, 1, [6, 1], [2, 1], Fit::CenterCrop).unwrap(),
            [20, 30]
        );
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_fields() {
        let config = FolderConfig::new([64, 64]);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"size":[64,64],"channels":3,"fit":"center-crop","class_subfolders":true,"on_error":"fail"}"#
        );
        assert_eq!(serde_json::from_str::<FolderConfig>(&json).unwrap(), config);
        let extra = json.replace("\"channels\"", "\"skip\":true,\"channels\"");
        assert!(serde_json::from_str::<FolderConfig>(&extra)
            .unwrap_err()
            .to_string()
            .contains("unknown field `skip`"));
    }
}
