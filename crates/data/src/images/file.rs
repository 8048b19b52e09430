//! Image files: finding them under a folder, decoding them to u8 (the `image` crate: PNG, JPEG,
//! GIF, BMP) and writing PNGs.

use std::path::{Path, PathBuf};

use super::ImageSet;
use crate::error::{DataError, Result};

/// A file left out of a set of images, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

/// Whether the extension names an image format, readable by this build or not (files that are
/// images by name but do not decode are reported as unreadable rather than ignored).
///
/// ```
/// use std::path::Path;
/// assert!(data::images::is_image_name(Path::new("a/cat.JPG")));
/// assert!(!data::images::is_image_name(Path::new("a/README.md")));
/// ```
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(image::ImageFormat::from_extension)
        .is_some()
}

/// The image files under `dir` (by [`is_image_name`]), found recursively and sorted by path, so
/// file order is the same on every machine. Other files, and symbolic links to folders (not
/// followed), are pushed onto `ignored`.
///
/// # Errors
/// [`DataError::Io`] naming a folder or entry that cannot be listed.
pub fn list_image_files(dir: &Path, ignored: &mut Vec<Skipped>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    walk(dir, &mut files, ignored)?;
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, ignored: &mut Vec<Skipped>) -> Result<()> {
    let io_err = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            walk(&path, files, ignored)?;
        } else if file_type.is_symlink() && path.is_dir() {
            ignored.push(Skipped {
                path,
                reason: "symbolic link to a folder, not followed".into(),
            });
        } else if is_image_name(&path) {
            files.push(path);
        } else {
            ignored.push(Skipped {
                path,
                reason: "not an image file name".into(),
            });
        }
    }
    Ok(())
}

/// Decodes one file by its content (not its extension).
fn decode(path: &Path) -> std::result::Result<image::DynamicImage, String> {
    image::ImageReader::open(path)
        .map_err(|err| err.to_string())?
        .with_guessed_format()
        .map_err(|err| err.to_string())?
        .decode()
        .map_err(|err| err.to_string())
}

/// Decodes an encoded image held in memory (PNG, JPEG, WebP, GIF, BMP, by its content) to CHW
/// u8 pixels with `channels` = 1 (luma) or 3 (RGB), and its `[height, width]`. The error is the
/// decoder's message; the caller names the record.
///
/// # Errors
/// The decoder's message when the bytes are not an image of a supported format.
///
/// ```
/// let mut png = Vec::new();
/// image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]))
///     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
///     .unwrap();
/// let (chw, size) = data::images::decode_image_bytes(&png, 3).unwrap();
/// assert_eq!((size, &chw[..2], &chw[12..]), ([2, 3], &[1u8, 1][..], &[3u8; 6][..]));
/// ```
pub fn decode_image_bytes(
    bytes: &[u8],
    channels: usize,
) -> std::result::Result<(Vec<u8>, [usize; 2]), String> {
    let decoded = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| err.to_string())?
        .decode()
        .map_err(|err| err.to_string())?;
    let size = [decoded.height() as usize, decoded.width() as usize];
    Ok((to_chw(decoded, channels), size))
}

/// The pixels of a decoded image as CHW u8 with 1 (luma) or 3 (RGB) channels.
fn to_chw(decoded: image::DynamicImage, channels: usize) -> Vec<u8> {
    let (h, w) = (decoded.height() as usize, decoded.width() as usize);
    let hwc = if channels == 1 {
        decoded.into_luma8().into_raw()
    } else {
        decoded.into_rgb8().into_raw()
    };
    super::nhwc_to_nchw(&hwc, [1, h, w, channels])
}

/// Decodes one image file to CHW u8 pixels with `channels` = 1 (converted to luma) or 3
/// (converted to RGB), and its `[height, width]`.
///
/// # Errors
/// [`DataError::Unreadable`] naming the file when it cannot be opened or decoded;
/// [`DataError::Config`] for another channel count.
pub fn read_image(path: &Path, channels: usize) -> Result<(Vec<u8>, [usize; 2])> {
    if !(channels == 1 || channels == 3) {
        return Err(DataError::Config(format!(
            "images are read with 1 or 3 channels, not {channels}"
        )));
    }
    let decoded = decode(path).map_err(|reason| DataError::Unreadable {
        path: path.to_path_buf(),
        reason,
    })?;
    let size = [decoded.height() as usize, decoded.width() as usize];
    Ok((to_chw(decoded, channels), size))
}

/// Every image file under `dir` as it is, as one set: found recursively (class sub-folders
/// work) and sorted by path as [`list_image_files`] finds them, decoded in parallel, as RGB, or
/// as one channel when every file is grayscale. No resizing: all must share one size.
///
/// # Errors
/// [`DataError::Io`] for a folder that cannot be listed, [`DataError::Empty`] when it holds no
/// image file, [`DataError::Unreadable`] naming the first file that does not decode, and
/// [`DataError::MixedSizes`] naming two files of different sizes.
pub fn read_image_dir(dir: &Path) -> Result<ImageSet> {
    let paths = list_image_files(dir, &mut Vec::new())?;
    if paths.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            reason: "no image files (.png, .jpg, .jpeg, .bmp, .gif) in it or its sub-folders"
                .into(),
        });
    }
    let decoded = map_parallel(&paths, |path| decode(path))
        .into_iter()
        .zip(&paths)
        .map(|(result, path)| {
            result.map_err(|reason| DataError::Unreadable {
                path: path.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let gray = decoded
        .iter()
        .all(|img| matches!(img.color(), image::ColorType::L8 | image::ColorType::L16));
    let channels = if gray { 1 } else { 3 };
    let (w0, h0) = (decoded[0].width(), decoded[0].height());
    if let Some((img, path)) = decoded
        .iter()
        .zip(&paths)
        .find(|(img, _)| (img.width(), img.height()) != (w0, h0))
    {
        let (w, h) = (img.width(), img.height());
        return Err(DataError::MixedSizes {
            path: dir.to_path_buf(),
            message: format!(
                "{} is {w}×{h} but {} is {w0}×{h0}: images of one set must share a size",
                path.display(),
                paths[0].display()
            ),
        });
    }
    let shape = [paths.len(), channels, h0 as usize, w0 as usize];
    let mut pixels = Vec::with_capacity(shape.iter().product());
    for img in decoded {
        pixels.extend(to_chw(img, channels));
    }
    ImageSet::new(pixels, shape)
}

/// `f` over `items` on the available cores, in order.
pub(crate) fn map_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let chunk = items.len().div_ceil(n_threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an image decoder thread panicked"))
            .collect()
    })
}

/// Writes HWC u8 pixels (1 or 3 channels) as a PNG.
///
/// # Errors
///
/// [`DataError::Write`] naming `path` when encoding or writing fails, or the buffer does not match
/// the size.
pub fn save_png(
    path: &Path,
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
) -> Result<()> {
    let write_err = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => {
            return Err(write_err(format!(
                "cannot write {channels}-channel pixels as PNG"
            )))
        }
    };
    if pixels.len() != width * height * channels {
        return Err(write_err(format!(
            "{} bytes are not a {width}x{height}x{channels} image",
            pixels.len()
        )));
    }
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(write_err(format!("{width}x{height} is too large for PNG")));
    };
    image::save_buffer_with_format(path, pixels, w, h, color, image::ImageFormat::Png)
        .map_err(|err| write_err(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rgb(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    #[test]
    fn a_folder_reads_recursively_in_path_order_as_chw() {
        let dir = tempfile::tempdir().unwrap();
        write_rgb(&dir.path().join("b/1.png"), 3, 2, [7, 8, 9]);
        write_rgb(&dir.path().join("a/2.png"), 3, 2, [1, 2, 3]);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let set = read_image_dir(dir.path()).unwrap();
        assert_eq!(set.shape, [2, 3, 2, 3]);
        // a/2.png first; its red plane, then green.
        assert_eq!(&set.pixels[..7], &[1, 1, 1, 1, 1, 1, 2]);
        assert_eq!(set.pixels[6 * 3], 7);
    }

    #[test]
    fn all_gray_files_read_as_one_channel() {
        let dir = tempfile::tempdir().unwrap();
        for (i, v) in [10u8, 20].into_iter().enumerate() {
            image::GrayImage::from_pixel(2, 2, image::Luma([v]))
                .save(dir.path().join(format!("{i}.png")))
                .unwrap();
        }
        let set = read_image_dir(dir.path()).unwrap();
        assert_eq!(set.shape, [2, 1, 2, 2]);
        assert_eq!(set.pixels, [10, 10, 10, 10, 20, 20, 20, 20]);
    }

    #[test]
    fn empty_mixed_and_unreadable_folders_are_errors_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_image_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no image files"), "{err}");
        write_rgb(&dir.path().join("0.png"), 4, 4, [0, 0, 0]);
        write_rgb(&dir.path().join("9.png"), 2, 4, [0, 0, 0]);
        let err = read_image_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("9.png is 2×4") && err.contains("share a size"),
            "{err}"
        );
        std::fs::write(dir.path().join("5.png"), b"not a png").unwrap();
        let err = read_image_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("5.png") && err.contains("unreadable"), "{err}");
    }

    #[test]
    fn one_file_reads_as_chw_of_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        write_rgb(&path, 2, 1, [5, 6, 7]);
        assert_eq!(
            read_image(&path, 3).unwrap(),
            (vec![5, 5, 6, 6, 7, 7], [1, 2])
        );
        assert_eq!(read_image(&path, 1).unwrap().1, [1, 2]);
        assert!(read_image(&path, 2).is_err());
    }
}
