//! CIFAR-10 and CIFAR-100 in their binary versions (Krizhevsky 2009,
//! <https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! A CIFAR-10 file is a sequence of 3073-byte records with no header: one label byte (0..10), then
//! 1024 red, 1024 green and 1024 blue bytes, each plane 32x32 row-major. CIFAR-100 records have two
//! label bytes (coarse 0..20, then fine 0..100) before the same 3072 pixel bytes. The number of
//! records comes from the file size, so partial files such as the 20-record test file under
//! `shared/data/cifar10/` read like full ones.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// CIFAR image side, in pixels.
pub const CIFAR_SIZE: usize = 32;
/// Pixel bytes per CIFAR image (3 planes of 32x32).
pub const CIFAR_IMAGE_LEN: usize = 3 * CIFAR_SIZE * CIFAR_SIZE;
/// Bytes per CIFAR-10 record: 1 label byte and the pixels.
pub const CIFAR10_RECORD_LEN: usize = 1 + CIFAR_IMAGE_LEN;
/// Bytes per CIFAR-100 record: coarse and fine label bytes and the pixels.
pub const CIFAR100_RECORD_LEN: usize = 2 + CIFAR_IMAGE_LEN;

/// CIFAR-10 class names, indexed by label (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names, indexed by fine label (`fine_label_names.txt`).
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// CIFAR-100 coarse (superclass) names, indexed by coarse label (`coarse_label_names.txt`).
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Which part of a dataset to load.
///
/// The notebook trains on `train+test` (all 60,000 CIFAR-10 images): a generative model has no use
/// for a held-out split during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// The training files.
    #[serde(rename = "train")]
    Train,
    /// The test files.
    #[serde(rename = "test")]
    Test,
    /// The training files, then the test files.
    #[serde(rename = "train+test")]
    TrainTest,
}

impl Split {
    /// The name used in configs and on the command line: `train`, `test` or `train+test`.
    ///
    /// ```
    /// assert_eq!(data::Split::TrainTest.as_str(), "train+test");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
            Split::TrainTest => "train+test",
        }
    }

    /// Whether the training files are part of the split.
    pub fn has_train(self) -> bool {
        matches!(self, Split::Train | Split::TrainTest)
    }

    /// Whether the test files are part of the split.
    pub fn has_test(self) -> bool {
        matches!(self, Split::Test | Split::TrainTest)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;

    /// Parses `train`, `test` or `train+test`.
    ///
    /// ```
    /// assert_eq!("train+test".parse::<data::Split>()?, data::Split::TrainTest);
    /// # Ok::<(), data::DataError>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            "train+test" => Ok(Split::TrainTest),
            _ => Err(DataError::Config(format!(
                "unknown split `{s}`: use train, test or train+test"
            ))),
        }
    }
}

/// Which CIFAR-100 label becomes the dataset's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cifar100Label {
    /// The 100 fine classes (the second label byte).
    Fine,
    /// The 20 superclasses (the first label byte).
    Coarse,
}

/// Parses CIFAR-10 records held in memory; `path` only names the source in errors.
///
/// # Errors
///
/// [`DataError::Truncated`] when `bytes.len()` is not a multiple of 3073,
/// [`DataError::LabelOutOfRange`] for a label byte ≥ 10, and [`DataError::Empty`] for no records;
/// each names `path` and the byte offset.
///
/// # Examples
///
/// ```
/// let mut record = vec![7u8];
/// record.extend([200; 3072]);
/// let ds = data::cifar::parse_cifar10(&record, "one.bin".as_ref())?;
/// assert_eq!((ds.len(), ds.label(0), ds.shape()), (1, 7, [1, 3, 32, 32]));
/// assert_eq!(ds.class_name(7), Some("horse"));
/// # Ok::<(), data::DataError>(())
/// ```
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<Dataset> {
    parse_records(
        bytes,
        path,
        1,
        &[(0, CIFAR10_CLASSES.len())],
        0,
        &CIFAR10_CLASSES,
    )
}

/// Parses CIFAR-100 records held in memory, keeping the `label` kind; `path` names the source in
/// errors.
///
/// Both label bytes are checked (coarse < 20, fine < 100), whichever is kept.
///
/// # Errors
///
/// As [`parse_cifar10`], with 3074-byte records.
///
/// # Examples
///
/// ```
/// use data::cifar::{parse_cifar100, Cifar100Label};
/// let mut record = vec![19u8, 99];
/// record.extend([0; 3072]);
/// let fine = parse_cifar100(&record, "r.bin".as_ref(), Cifar100Label::Fine)?;
/// let coarse = parse_cifar100(&record, "r.bin".as_ref(), Cifar100Label::Coarse)?;
/// assert_eq!((fine.label(0), fine.class_name(99)), (99, Some("worm")));
/// assert_eq!((coarse.label(0), coarse.n_classes()), (19, 20));
/// # Ok::<(), data::DataError>(())
/// ```
pub fn parse_cifar100(bytes: &[u8], path: &Path, label: Cifar100Label) -> Result<Dataset> {
    let ranges = [
        (0, CIFAR100_COARSE_CLASSES.len()),
        (1, CIFAR100_FINE_CLASSES.len()),
    ];
    match label {
        Cifar100Label::Coarse => {
            parse_records(bytes, path, 2, &ranges, 0, &CIFAR100_COARSE_CLASSES)
        }
        Cifar100Label::Fine => parse_records(bytes, path, 2, &ranges, 1, &CIFAR100_FINE_CLASSES),
    }
}

/// Reads one CIFAR-10 binary file (`data_batch_N.bin`, `test_batch.bin` or any file of records).
///
/// # Errors
///
/// [`DataError::Missing`] or [`DataError::Io`] naming the file, then as [`parse_cifar10`].
pub fn read_cifar10_file(path: &Path) -> Result<Dataset> {
    parse_cifar10(&read_file(path, CIFAR10_HINT)?, path)
}

/// Reads one CIFAR-100 binary file (`train.bin`, `test.bin` or any file of records).
///
/// # Errors
///
/// [`DataError::Missing`] or [`DataError::Io`] naming the file, then as [`parse_cifar100`].
pub fn read_cifar100_file(path: &Path, label: Cifar100Label) -> Result<Dataset> {
    parse_cifar100(&read_file(path, CIFAR100_HINT)?, path, label)
}

/// Loads a CIFAR-10 split from `dir`, the extracted `cifar-10-batches-bin` folder or a folder that
/// contains it.
///
/// Train is `data_batch_1.bin` to `data_batch_5.bin` in that order; test is `test_batch.bin`;
/// train+test is train, then test.
///
/// # Errors
///
/// [`DataError::Missing`] naming the first absent file (checked before anything is read), then as
/// [`read_cifar10_file`].
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    let dir = resolve_dir(dir, "cifar-10-batches-bin", CIFAR10_HINT)?;
    let mut names: Vec<String> = Vec::new();
    if split.has_train() {
        names.extend((1..=5).map(|k| format!("data_batch_{k}.bin")));
    }
    if split.has_test() {
        names.push("test_batch.bin".into());
    }
    load_files(&dir, &names, CIFAR10_HINT, read_cifar10_file)
}

/// Loads a CIFAR-100 split from `dir`, the extracted `cifar-100-binary` folder or a folder that
/// contains it: `train.bin`, `test.bin`, or both in that order.
///
/// # Errors
///
/// As [`load_cifar10`].
pub fn load_cifar100(dir: &Path, split: Split, label: Cifar100Label) -> Result<Dataset> {
    let dir = resolve_dir(dir, "cifar-100-binary", CIFAR100_HINT)?;
    let mut names: Vec<String> = Vec::new();
    if split.has_train() {
        names.push("train.bin".into());
    }
    if split.has_test() {
        names.push("test.bin".into());
    }
    load_files(&dir, &names, CIFAR100_HINT, |path| {
        read_cifar100_file(path, label)
    })
}

const CIFAR10_HINT: &str =
    "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and extract it, or point to the folder that holds it";
const CIFAR100_HINT: &str =
    "download the CIFAR-100 binary version (cifar-100-binary.tar.gz) and extract it, or point to the folder that holds it";

/// Reads a whole file, telling a missing file apart from other IO errors.
pub(crate) fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: hint.to_string(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// `dir/sub` when it exists (the archive's top folder), else `dir`, which must exist.
pub(crate) fn resolve_dir(dir: &Path, sub: &str, hint: &str) -> Result<PathBuf> {
    let nested = dir.join(sub);
    if nested.is_dir() {
        Ok(nested)
    } else if dir.is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Err(DataError::Missing {
            path: dir.to_path_buf(),
            hint: hint.to_string(),
        })
    }
}

/// Reads `names` under `dir` in order and joins them; checks that all exist before reading any.
fn load_files(
    dir: &Path,
    names: &[String],
    hint: &str,
    read: impl Fn(&Path) -> Result<Dataset>,
) -> Result<Dataset> {
    let paths: Vec<PathBuf> = names.iter().map(|name| dir.join(name)).collect();
    if let Some(missing) = paths.iter().find(|path| !path.is_file()) {
        return Err(DataError::Missing {
            path: missing.clone(),
            hint: hint.to_string(),
        });
    }
    let mut joined: Option<Dataset> = None;
    for path in &paths {
        let part = read(path)?;
        match joined.as_mut() {
            None => joined = Some(part),
            Some(all) => all.append(part)?,
        }
    }
    Ok(joined.expect("every split names at least one file"))
}

/// Splits fixed-length records into labels and pixels.
///
/// `label_checks` lists (offset in record, number of classes) for every label byte to validate;
/// `label_at` is the offset of the label to keep.
fn parse_records(
    bytes: &[u8],
    path: &Path,
    n_label_bytes: usize,
    label_checks: &[(usize, usize)],
    label_at: usize,
    class_names: &[&str],
) -> Result<Dataset> {
    let record_len = n_label_bytes + CIFAR_IMAGE_LEN;
    let n_records = bytes.len() / record_len;
    if bytes.len() != n_records * record_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record_len,
            offset: (n_records * record_len) as u64,
        });
    }
    if n_records == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            reason: "the file is empty, with no records".into(),
        });
    }
    let mut images = Vec::with_capacity(n_records * CIFAR_IMAGE_LEN);
    let mut labels = Vec::with_capacity(n_records);
    for (idx, record) in bytes.chunks_exact(record_len).enumerate() {
        for &(at, n_classes) in label_checks {
            if usize::from(record[at]) >= n_classes {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    offset: (idx * record_len + at) as u64,
                    label: u16::from(record[at]),
                    n_classes,
                    decompressed: false,
                });
            }
        }
        labels.push(u16::from(record[label_at]));
        images.extend_from_slice(&record[n_label_bytes..]);
    }
    let names = class_names.iter().map(|name| name.to_string()).collect();
    Dataset::new(images, labels, 3, CIFAR_SIZE, CIFAR_SIZE, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 20 records of the real CIFAR-10 test batch (README beside the file).
    const FIRST20: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/cifar10/test_batch_first20.bin"
    );

    /// A record whose pixels are `pixel(record, byte)`, after `labels`.
    fn record(labels: &[u8], pixel: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut bytes = labels.to_vec();
        bytes.extend((0..CIFAR_IMAGE_LEN).map(pixel));
        bytes
    }

    #[test]
    fn real_first20_has_the_published_labels_and_exact_pixel_sums() {
        let ds = read_cifar10_file(Path::new(FIRST20)).unwrap();
        assert_eq!(ds.shape(), [20, 3, 32, 32]);
        assert_eq!(
            ds.labels(),
            &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
        );
        assert_eq!(ds.class_name(ds.label(0)), Some("cat"));
        // numpy: r = np.fromfile(path, np.uint8).reshape(-1, 3073); x = r[:, 1:].reshape(-1, 3, 32, 32)
        let total: u64 = ds.images().iter().map(|&v| u64::from(v)).sum();
        assert_eq!(total, 7_387_458); // x.sum(); mean 120.2386 as in the README
        let per_image: Vec<u64> = (0..20)
            .map(|i| ds.image(i).iter().map(|&v| u64::from(v)).sum())
            .collect();
        assert_eq!(
            per_image,
            [
                332962, 476499, 407252, 475573, 329838, 300475, 232311, 266512, 490777, 442889,
                431128, 405748, 285070, 225520, 336535, 390988, 392550, 402776, 427311, 334744
            ]
        );
        let per_channel: Vec<u64> = (0..3)
            .map(|c| {
                (0..20)
                    .map(|i| {
                        ds.image(i)[c * 1024..(c + 1) * 1024]
                            .iter()
                            .map(|&v| u64::from(v))
                            .sum::<u64>()
                    })
                    .sum()
            })
            .collect();
        assert_eq!(per_channel, [2_557_598, 2_477_306, 2_352_554]);
        // Planes are R, G, B: the top-left pixel of image 0 is (158, 112, 49).
        let first = ds.image(0);
        assert_eq!([first[0], first[1024], first[2048]], [158, 112, 49]);
        let stats = ds.stats();
        assert!(
            (stats.mean[0] - 124.88271484375).abs() < 1e-9,
            "{:?}",
            stats.mean
        );
        assert!((stats.std[2] - 66.88667908).abs() < 1e-6, "{:?}", stats.std);
        assert_eq!(stats.label_counts, [2, 2, 0, 2, 0, 2, 4, 2, 4, 2]);
    }

    #[test]
    fn size_not_a_multiple_of_the_record_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.bin");
        let mut bytes = record(&[1], |_| 0);
        bytes.extend(record(&[2], |_| 0));
        bytes.truncate(2 * CIFAR10_RECORD_LEN - 100);
        std::fs::write(&path, &bytes).unwrap();
        let err = read_cifar10_file(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { offset: 3073, .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: 6046 bytes is not a whole number of 3073-byte records: the record at byte 3073 has only 2973 bytes \
                 (is the file truncated, or is it another format?)",
                path.display()
            )
        );
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.bin");
        let err = read_cifar10_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot find {}: {CIFAR10_HINT}", path.display())
        );
    }

    #[test]
    fn missing_batch_in_a_split_is_named_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&base).unwrap();
        for k in [1, 2, 4, 5] {
            std::fs::write(
                base.join(format!("data_batch_{k}.bin")),
                record(&[0], |_| 0),
            )
            .unwrap();
        }
        std::fs::write(base.join("test_batch.bin"), record(&[9], |_| 0)).unwrap();
        // The parent folder is accepted: the archive's top folder is found inside it.
        let err = load_cifar10(dir.path(), Split::Train).unwrap_err();
        let missing = base.join("data_batch_3.bin");
        assert_eq!(
            err.to_string(),
            format!("cannot find {}: {CIFAR10_HINT}", missing.display())
        );
        assert_eq!(load_cifar10(&base, Split::Test).unwrap().labels(), &[9]);
        let err = load_cifar10(&dir.path().join("absent"), Split::Test).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    }

    #[test]
    fn label_out_of_range_names_file_and_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bin");
        let mut bytes = record(&[9], |_| 0);
        bytes.extend(record(&[10], |_| 0));
        std::fs::write(&path, &bytes).unwrap();
        let err = read_cifar10_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: label 10 at byte 3073 is out of range 0..10",
                path.display()
            )
        );
    }

    #[test]
    fn splits_join_train_then_test_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        for k in 1..=5u8 {
            let bytes = [record(&[k], |i| (i % 251) as u8), record(&[k - 1], |_| k)].concat();
            std::fs::write(dir.path().join(format!("data_batch_{k}.bin")), bytes).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), record(&[9], |_| 77)).unwrap();
        let train = load_cifar10(dir.path(), Split::Train).unwrap();
        assert_eq!(train.labels(), &[1, 0, 2, 1, 3, 2, 4, 3, 5, 4]);
        assert_eq!(train.image(3)[0], 2);
        assert_eq!(&train.image(0)[..3], &[0, 1, 2]);
        let all = load_cifar10(dir.path(), Split::TrainTest).unwrap();
        assert_eq!(all.len(), 11);
        assert_eq!(all.label(10), 9);
        assert!(all.image(10).iter().all(|&v| v == 77));
        assert_eq!(load_cifar10(dir.path(), Split::Test).unwrap().len(), 1);
    }

    #[test]
    fn synthetic_cifar100_keeps_fine_or_coarse_labels() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("cifar-100-binary");
        std::fs::create_dir(&base).unwrap();
        let train = [
            record(&[4, 30], |i| (i / 1024) as u8),
            record(&[19, 99], |i| (i % 32) as u8),
        ]
        .concat();
        std::fs::write(base.join("train.bin"), train).unwrap();
        std::fs::write(base.join("test.bin"), record(&[0, 0], |_| 255)).unwrap();
        let fine = load_cifar100(dir.path(), Split::TrainTest, Cifar100Label::Fine).unwrap();
        assert_eq!(fine.shape(), [3, 3, 32, 32]);
        assert_eq!(fine.labels(), &[30, 99, 0]);
        assert_eq!(fine.class_name(30), Some("dolphin"));
        // The pixels start after both label bytes: image 0's planes are 0, 1, 2.
        assert_eq!(
            [fine.image(0)[0], fine.image(0)[1024], fine.image(0)[3071]],
            [0, 1, 2]
        );
        assert_eq!(&fine.image(1)[..3], &[0, 1, 2]);
        let coarse = load_cifar100(&base, Split::Train, Cifar100Label::Coarse).unwrap();
        assert_eq!(coarse.labels(), &[4, 19]);
        assert_eq!(coarse.class_name(4), Some("fruit_and_vegetables"));
    }

    #[test]
    fn cifar100_checks_both_label_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        let bytes = [record(&[0, 0], |_| 0), record(&[3, 100], |_| 0)].concat();
        std::fs::write(&path, bytes).unwrap();
        let err = read_cifar100_file(&path, Cifar100Label::Coarse).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: label 100 at byte 3075 is out of range 0..100",
                path.display()
            )
        );
        std::fs::write(&path, record(&[20, 0], |_| 0)).unwrap();
        let err = read_cifar100_file(&path, Cifar100Label::Fine).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: label 20 at byte 0 is out of range 0..20",
                path.display()
            )
        );
        std::fs::write(&path, &record(&[0, 0], |_| 0)[..3073]).unwrap();
        let err = read_cifar100_file(&path, Cifar100Label::Fine).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    record_len: 3074,
                    offset: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = parse_cifar10(&[], Path::new("empty.bin")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "empty.bin: the file is empty, with no records"
        );
    }

    #[test]
    fn class_tables_have_the_documented_sizes_and_no_duplicates() {
        let mut fine = CIFAR100_FINE_CLASSES.to_vec();
        fine.sort_unstable();
        fine.dedup();
        assert_eq!(fine.len(), 100);
        // The official names file is sorted alphabetically.
        assert_eq!(fine, CIFAR100_FINE_CLASSES.to_vec());
        let mut coarse = CIFAR100_COARSE_CLASSES.to_vec();
        coarse.sort_unstable();
        assert_eq!(coarse, CIFAR100_COARSE_CLASSES.to_vec());
    }

    #[test]
    fn split_names_round_trip() {
        for split in [Split::Train, Split::Test, Split::TrainTest] {
            assert_eq!(split.as_str().parse::<Split>().unwrap(), split);
        }
        assert_eq!(
            "validation".parse::<Split>().unwrap_err().to_string(),
            "unknown split `validation`: use train, test or train+test"
        );
    }
}
