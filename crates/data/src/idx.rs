//! IDX files, the format of MNIST (LeCun et al. 1998, <http://yann.lecun.com/exdb/mnist/>) and
//! Fashion-MNIST (Xiao et al. 2017), raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number `00 00 <type> <rank>`, then `rank` big-endian u32
//! dimensions, then the data, row-major. Only unsigned bytes (type `08`) are read: images are
//! rank 3 (`count, rows, columns`, magic `00 00 08 03`), labels rank 1 (magic `00 00 08 01`).
//! Compression is detected from the gzip signature, not from the file name.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cifar::{read_file, Split};
use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Fashion-MNIST class names, indexed by label (Xiao et al. 2017).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST class names: the digits.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The two datasets that share MNIST's file names and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MnistKind {
    /// Handwritten digits.
    Mnist,
    /// Zalando's clothing images.
    FashionMnist,
}

impl MnistKind {
    /// The class names of this dataset.
    pub fn class_names(self) -> &'static [&'static str; 10] {
        match self {
            MnistKind::Mnist => &MNIST_CLASSES,
            MnistKind::FashionMnist => &FASHION_MNIST_CLASSES,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            MnistKind::Mnist => {
                "download MNIST's four IDX files (train-images-idx3-ubyte.gz and so on) into that folder, or point to another"
            }
            MnistKind::FashionMnist => {
                "download Fashion-MNIST's four IDX files into that folder (Debian: apt-get install dataset-fashion-mnist \
                 puts them in /usr/share/datasets/fashion-mnist), or point to another"
            }
        }
    }
}

/// An unsigned-byte IDX array: its dimensions and its data, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header.
    pub dims: Vec<usize>,
    /// `dims.iter().product()` bytes.
    pub data: Vec<u8>,
    /// Whether the bytes came gzip-compressed (so offsets in errors count decompressed bytes).
    pub decompressed: bool,
}

/// The IDX data type of unsigned bytes.
const IDX_U8: u8 = 0x08;

/// Parses an IDX file held in memory, gzip-compressed or raw; `path` names the source in errors.
///
/// # Errors
///
/// [`DataError::BadMagic`] when the first two bytes are not zero or the type is not unsigned
/// bytes, [`DataError::Dims`] when the header is cut short or the data length disagrees with the
/// dimensions, [`DataError::Io`] for corrupt gzip data.
///
/// # Examples
///
/// ```
/// // Two labels, 3 and 7.
/// let bytes = [0, 0, 8, 1, 0, 0, 0, 2, 3, 7];
/// let array = data::idx::parse_idx(&bytes, "labels".as_ref())?;
/// assert_eq!((array.dims, array.data), (vec![2], vec![3, 7]));
/// # Ok::<(), data::DataError>(())
/// ```
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        parse_raw(&raw, path, true)
    } else {
        parse_raw(bytes, path, false)
    }
}

/// Reads an IDX file, gzip-compressed or raw.
///
/// # Errors
///
/// [`DataError::Missing`] or [`DataError::Io`] naming the file, then as [`parse_idx`].
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_file(path, "is the path right?")?, path)
}

/// Pairs an images array (rank 3) with a labels array (rank 1) into a grayscale dataset.
///
/// # Errors
///
/// [`DataError::Dims`] when the ranks are wrong or the counts differ, and
/// [`DataError::LabelOutOfRange`] for a label not below `class_names.len()`, each naming the file.
///
/// # Examples
///
/// ```
/// use data::idx::{idx_dataset, IdxArray};
/// let images = IdxArray { dims: vec![2, 1, 2], data: vec![0, 1, 2, 3], decompressed: false };
/// let labels = IdxArray { dims: vec![2], data: vec![5, 9], decompressed: false };
/// let ds = idx_dataset(images, labels, "i".as_ref(), "l".as_ref(), &data::idx::MNIST_CLASSES)?;
/// assert_eq!((ds.shape(), ds.labels()), ([2, 1, 1, 2], &[5u16, 9][..]));
/// # Ok::<(), data::DataError>(())
/// ```
pub fn idx_dataset(
    images: IdxArray,
    labels: IdxArray,
    images_path: &Path,
    labels_path: &Path,
    class_names: &[&str],
) -> Result<Dataset> {
    if images.dims.len() != 3 {
        return Err(DataError::Dims {
            path: images_path.to_path_buf(),
            message: format!(
                "images need 3 dimensions (count, rows, columns), found {} ({})",
                images.dims.len(),
                dims_text(&images.dims)
            ),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::Dims {
            path: labels_path.to_path_buf(),
            message: format!(
                "labels need 1 dimension (count), found {} ({})",
                labels.dims.len(),
                dims_text(&labels.dims)
            ),
        });
    }
    let (n_images, height, width) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n_images {
        return Err(DataError::Dims {
            path: labels_path.to_path_buf(),
            message: format!(
                "{} labels for {n_images} images in {}",
                labels.dims[0],
                images_path.display()
            ),
        });
    }
    if n_images == 0 || height == 0 || width == 0 {
        return Err(DataError::Empty {
            path: images_path.to_path_buf(),
            reason: format!("no pixels: dimensions are {}", dims_text(&images.dims)),
        });
    }
    let header_len = 4 + 4 * labels.dims.len();
    if let Some((idx, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= class_names.len())
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path.to_path_buf(),
            offset: (header_len + idx) as u64,
            label: u16::from(label),
            n_classes: class_names.len(),
            decompressed: labels.decompressed,
        });
    }
    let labels = labels.data.iter().map(|&l| u16::from(l)).collect();
    let names = class_names.iter().map(|name| name.to_string()).collect();
    Dataset::new(images.data, labels, 1, height, width, names)
}

/// Reads an images file and a labels file into a grayscale dataset.
///
/// # Errors
///
/// As [`read_idx`] for each file, then as [`idx_dataset`].
pub fn read_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    class_names: &[&str],
) -> Result<Dataset> {
    let images = read_idx(images_path)?;
    let labels = read_idx(labels_path)?;
    idx_dataset(images, labels, images_path, labels_path, class_names)
}

/// Loads an MNIST or Fashion-MNIST split from `dir`, which holds `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each with or
/// without `.gz`. Train+test is train, then test.
///
/// # Errors
///
/// [`DataError::NotAFolder`] when `dir` is a file (one of the four, say);
/// [`DataError::Missing`] naming the first absent file (as `.gz`; the raw name is accepted too),
/// checked before anything is read, then as [`read_idx_pair`].
pub fn load_mnist(dir: &Path, split: Split, kind: MnistKind) -> Result<Dataset> {
    if dir.is_file() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Err(DataError::NotAFolder {
            path: dir.to_path_buf(),
            hint: format!(
                "{} is read from the folder that holds its four IDX files (train-images-idx3-ubyte.gz \
                 and so on): pass that folder, here {}",
                match kind {
                    MnistKind::Mnist => "MNIST",
                    MnistKind::FashionMnist => "Fashion-MNIST",
                },
                parent.display()
            ),
        });
    }
    if !dir.is_dir() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
            hint: kind.hint().into(),
        });
    }
    let mut prefixes = Vec::new();
    if split.has_train() {
        prefixes.push("train");
    }
    if split.has_test() {
        prefixes.push("t10k");
    }
    let mut pairs = Vec::new();
    for prefix in prefixes {
        let images = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"), kind)?;
        let labels = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), kind)?;
        pairs.push((images, labels));
    }
    let mut joined: Option<Dataset> = None;
    for (images, labels) in pairs {
        let part = read_idx_pair(&images, &labels, kind.class_names())?;
        match joined.as_mut() {
            None => joined = Some(part),
            Some(all) => all.append(part)?,
        }
    }
    Ok(joined.expect("every split names at least one pair"))
}

/// `dir/name.gz` or `dir/name`, whichever exists.
fn find_idx(dir: &Path, name: &str, kind: MnistKind) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let raw = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if raw.is_file() {
        Ok(raw)
    } else {
        Err(DataError::Missing {
            path: gz,
            hint: format!("nor {name} without .gz; {}", kind.hint()),
        })
    }
}

fn parse_raw(bytes: &[u8], path: &Path, decompressed: bool) -> Result<IdxArray> {
    let where_ = if decompressed {
        " of decompressed data"
    } else {
        ""
    };
    if bytes.len() < 4 {
        return Err(DataError::Dims {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes{where_} is too short for an IDX header",
                bytes.len()
            ),
        });
    }
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found[0] != 0 || found[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            reason: "an IDX file starts with two zero bytes (is it an IDX file?)".into(),
        });
    }
    if found[2] != IDX_U8 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            reason: format!(
                "data type {:#04x} is not supported, only unsigned bytes (0x08)",
                found[2]
            ),
        });
    }
    let rank = usize::from(found[3]);
    // The rank is checked from the magic alone, before any dimension is read: a rank-7 header
    // is no MNIST file, whatever its dimensions multiply to.
    if rank != 1 && rank != 3 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            reason: format!(
                "rank {rank} is not supported: images have rank 3 (count, rows, columns), labels rank 1"
            ),
        });
    }
    let header_len = 4 + 4 * rank;
    if bytes.len() < header_len {
        return Err(DataError::Dims {
            path: path.to_path_buf(),
            message: format!(
                "a rank-{rank} IDX header needs {header_len} bytes, the file has {}{where_}",
                bytes.len()
            ),
        });
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let found_len = bytes.len() - header_len;
    if expected != Some(found_len) {
        let expected =
            expected.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
        return Err(DataError::Dims {
            path: path.to_path_buf(),
            message: format!(
                "header dimensions {} need {expected} data bytes after the {header_len}-byte header, found {found_len}{where_}",
                dims_text(&dims)
            ),
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
        decompressed,
    })
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An unsigned-byte IDX file with these dimensions and data.
    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0, 0, IDX_U8, dims.len() as u8];
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend_from_slice(data);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Writes a four-file MNIST folder: 3 train and 2 test images of 2x3, gzip or raw.
    fn write_mnist(dir: &Path, gz: bool) {
        let files = [
            (
                "train-images-idx3-ubyte",
                idx_bytes(&[3, 2, 3], &(0..18).collect::<Vec<u8>>()),
            ),
            ("train-labels-idx1-ubyte", idx_bytes(&[3], &[5, 0, 9])),
            ("t10k-images-idx3-ubyte", idx_bytes(&[2, 2, 3], &[200; 12])),
            ("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[1, 2])),
        ];
        for (name, bytes) in files {
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn synthetic_gzip_and_raw_folders_read_the_same() {
        for gz in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            write_mnist(dir.path(), gz);
            let train = load_mnist(dir.path(), Split::Train, MnistKind::Mnist).unwrap();
            assert_eq!(train.shape(), [3, 1, 2, 3]);
            assert_eq!(train.labels(), &[5, 0, 9]);
            assert_eq!(train.image(1), &[6, 7, 8, 9, 10, 11]);
            let all = load_mnist(dir.path(), Split::TrainTest, MnistKind::FashionMnist).unwrap();
            assert_eq!(all.labels(), &[5, 0, 9, 1, 2]);
            assert_eq!(all.image(4), &[200; 6]);
            assert_eq!(all.class_name(9), Some("Ankle boot"));
            assert_eq!(
                load_mnist(dir.path(), Split::Test, MnistKind::Mnist)
                    .unwrap()
                    .len(),
                2
            );
        }
    }

    #[test]
    fn gzip_is_detected_from_content_not_name() {
        let bytes = gzip(&idx_bytes(&[2], &[1, 2]));
        let array = parse_idx(&bytes, Path::new("labels.raw")).unwrap();
        assert_eq!(
            (array.dims, array.data, array.decompressed),
            (vec![2], vec![1, 2], true)
        );
    }

    #[test]
    fn bad_magic_is_named() {
        let err = parse_idx(&[0x50, 0x4b, 3, 4, 0, 0, 0, 0], Path::new("x.zip")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.zip: bad IDX magic number 50 4b 03 04: an IDX file starts with two zero bytes (is it an IDX file?) \
             (expected 00 00 08 03 for images or 00 00 08 01 for labels)"
        );
        let float_data = [0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        let err = parse_idx(&float_data, Path::new("f.idx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.idx: bad IDX magic number 00 00 0d 01: data type 0x0d is not supported, only unsigned bytes (0x08) \
             (expected 00 00 08 03 for images or 00 00 08 01 for labels)"
        );
    }

    #[test]
    fn unsupported_ranks_are_refused_from_the_magic_alone() {
        // Rank 7 with a header cut short: the rank is the error, not the header's length or
        // the product of dimensions that are not there.
        let err = parse_idx(&[0, 0, 8, 7, 0, 0, 0, 9], Path::new("r7")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r7: bad IDX magic number 00 00 08 07: rank 7 is not supported: images have rank 3 \
             (count, rows, columns), labels rank 1 (expected 00 00 08 03 for images or 00 00 08 01 for labels)"
        );
    }

    #[test]
    fn a_file_given_for_the_folder_names_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), true);
        let file = dir.path().join("train-images-idx3-ubyte.gz");
        let err = load_mnist(&file, Split::Train, MnistKind::FashionMnist)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{} is a file, not a folder", file.display()))
                && err.contains(&format!("pass that folder, here {}", dir.path().display())),
            "{err}"
        );
    }

    #[test]
    fn data_length_that_disagrees_with_the_dims_is_an_error() {
        let err = parse_idx(&idx_bytes(&[2, 2, 2], &[0; 7]), Path::new("img")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "img: header dimensions 2x2x2 need 8 data bytes after the 16-byte header, found 7"
        );
        let err = parse_idx(&gzip(&idx_bytes(&[3], &[0; 4])), Path::new("lab.gz")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lab.gz: header dimensions 3 need 3 data bytes after the 8-byte header, found 4 of decompressed data"
        );
        let err = parse_idx(&[0, 0, 8, 3, 0, 0], Path::new("short")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "short: a rank-3 IDX header needs 16 bytes, the file has 6"
        );
    }

    #[test]
    fn images_and_labels_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let labels = dir.path().join("labels");
        std::fs::write(&images, idx_bytes(&[2, 1, 1], &[0, 0])).unwrap();
        std::fs::write(&labels, idx_bytes(&[3], &[0, 0, 0])).unwrap();
        let err = read_idx_pair(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: 3 labels for 2 images in {}",
                labels.display(),
                images.display()
            )
        );
        // Swapped files: the images file has rank 1.
        let err = read_idx_pair(&labels, &images, &MNIST_CLASSES).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: images need 3 dimensions (count, rows, columns), found 1 (3)",
                labels.display()
            )
        );
    }

    #[test]
    fn label_out_of_range_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let labels = dir.path().join("labels.gz");
        std::fs::write(&images, idx_bytes(&[2, 1, 1], &[0, 0])).unwrap();
        std::fs::write(&labels, gzip(&idx_bytes(&[2], &[3, 10]))).unwrap();
        let err = read_idx_pair(&images, &labels, &MNIST_CLASSES).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: label 10 at byte 9 of the decompressed data is out of range 0..10",
                labels.display()
            )
        );
    }

    #[test]
    fn missing_file_names_the_gz_and_raw_names() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), false);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        assert!(load_mnist(dir.path(), Split::Train, MnistKind::Mnist).is_ok());
        let err = load_mnist(dir.path(), Split::TrainTest, MnistKind::Mnist).unwrap_err();
        let text = err.to_string();
        let gz = dir.path().join("t10k-labels-idx1-ubyte.gz");
        assert!(
            text.starts_with(&format!(
                "cannot find {}: nor t10k-labels-idx1-ubyte without .gz;",
                gz.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_io_error_naming_the_file() {
        let mut bytes = gzip(&idx_bytes(&[4], &[1, 2, 3, 4]));
        bytes.truncate(bytes.len() - 12);
        let err = parse_idx(&bytes, Path::new("cut.gz")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read cut.gz: "), "{err}");
    }

    /// Real Fashion-MNIST when Debian's `dataset-fashion-mnist` is installed; skipped otherwise
    /// (the synthetic tests above cover the format).
    #[test]
    fn installed_fashion_mnist_if_present() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.join("t10k-images-idx3-ubyte.gz").is_file() {
            eprintln!("skipped: {} is not installed", dir.display());
            return;
        }
        let test = load_mnist(dir, Split::Test, MnistKind::FashionMnist).unwrap();
        assert_eq!(test.shape(), [10_000, 1, 28, 28]);
        // Fashion-MNIST's test set is balanced: 1000 images per class.
        assert_eq!(test.stats().label_counts, vec![1000; 10]);
        // The first test image is an ankle boot (label 9).
        assert_eq!(test.label(0), 9);
    }
}
