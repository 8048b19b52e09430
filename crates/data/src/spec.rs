//! One config value that names a dataset kind and how to read it, so that training configs and
//! the command line load any dataset with one call, [`DatasetSpec::load`]. Paths stay arguments.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cifar::{self, Cifar100Label, Split};
use crate::dataset::Dataset;
use crate::error::Result;
use crate::folder::{self, FolderConfig, FolderReport};
use crate::idx::{self, MnistKind};
use crate::stream::{Source, StreamConfig, StreamDataset};

/// Which dataset to read, and how.
///
/// In JSON: `{"kind": "cifar10", "split": "train+test"}`,
/// `{"kind": "cifar100", "split": "train", "label": "fine"}`, `{"kind": "fashion-mnist", "split":
/// "test"}`, `{"kind": "folder", "config": {…}}` with a [`FolderConfig`], or `{"kind": "lmdb",
/// "config": {…}}` and `{"kind": "tfrecord", "config": {…}}` with a [`StreamConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DatasetSpec {
    /// CIFAR-10, binary version.
    Cifar10 {
        /// Which files.
        split: Split,
    },
    /// CIFAR-100, binary version.
    Cifar100 {
        /// Which files.
        split: Split,
        /// Fine or coarse labels.
        label: Cifar100Label,
    },
    /// MNIST digits, IDX files.
    Mnist {
        /// Which files.
        split: Split,
    },
    /// Fashion-MNIST, IDX files.
    FashionMnist {
        /// Which files.
        split: Split,
    },
    /// A folder of image files.
    Folder {
        /// Size, channels, fit, labels and error handling.
        config: FolderConfig,
    },
    /// An LMDB of encoded images in LSUN's layout, streamed ([`crate::stream::lmdb`]).
    Lmdb {
        /// Size, channels, fit and error handling.
        config: StreamConfig,
    },
    /// ProgressiveGAN's TFRecords, streamed ([`crate::stream::tfrecord`]).
    Tfrecord {
        /// Size, channels, fit and error handling.
        config: StreamConfig,
    },
}

impl DatasetSpec {
    /// The seed notebook's data: all of CIFAR-10, train then test (`split='train+test'`).
    pub fn seed_cifar10() -> Self {
        DatasetSpec::Cifar10 {
            split: Split::TrainTest,
        }
    }

    /// The dataset's `kind` as in JSON, for messages: `cifar10`, `cifar100`, `mnist`,
    /// `fashion-mnist`, `folder`, `lmdb` or `tfrecord`.
    ///
    /// ```
    /// assert_eq!(data::DatasetSpec::seed_cifar10().name(), "cifar10");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            DatasetSpec::Cifar10 { .. } => "cifar10",
            DatasetSpec::Cifar100 { .. } => "cifar100",
            DatasetSpec::Mnist { .. } => "mnist",
            DatasetSpec::FashionMnist { .. } => "fashion-mnist",
            DatasetSpec::Folder { .. } => "folder",
            DatasetSpec::Lmdb { .. } => "lmdb",
            DatasetSpec::Tfrecord { .. } => "tfrecord",
        }
    }

    /// Whether the dataset is read on demand ([`DatasetSpec::open`] streams it).
    pub fn streams(&self) -> bool {
        matches!(
            self,
            DatasetSpec::Lmdb { .. } | DatasetSpec::Tfrecord { .. }
        )
    }

    /// Opens the streamed kinds (LMDB, TFRecord) without reading their records.
    ///
    /// # Errors
    ///
    /// [`DataError::Config`](crate::DataError::Config) for a kind that does not stream; those of
    /// [`StreamDataset::open_lmdb`] and [`StreamDataset::open_tfrecord`].
    pub fn open_stream(&self, path: &Path) -> Result<StreamDataset> {
        match self {
            DatasetSpec::Lmdb { config } => StreamDataset::open_lmdb(path, config.clone()),
            DatasetSpec::Tfrecord { config } => StreamDataset::open_tfrecord(path, config.clone()),
            DatasetSpec::Folder { config } if config.stream => {
                Ok(StreamDataset::open_folder(path, config)?.0)
            }
            other => Err(crate::DataError::Config(format!(
                "the {} dataset kind is read into memory, not streamed",
                other.name()
            ))),
        }
    }

    /// The dataset at `path` as a loader reads it: streamed for the LMDB and TFRecord kinds
    /// (nothing is decoded yet, and the report is empty), read into memory as
    /// [`DatasetSpec::load`] for the others.
    ///
    /// # Errors
    ///
    /// Those of [`DatasetSpec::open_stream`] and [`DatasetSpec::load`].
    pub fn open(&self, path: &Path) -> Result<(Source, FolderReport)> {
        if let DatasetSpec::Folder { config } = self {
            if config.stream {
                let (stream, report) = StreamDataset::open_folder(path, config)?;
                return Ok((Source::from(stream), report));
            }
        }
        if self.streams() {
            return Ok((
                Source::from(self.open_stream(path)?),
                FolderReport::default(),
            ));
        }
        let (dataset, report) = self.load(path)?;
        Ok((Source::from(dataset), report))
    }

    /// Reads the dataset at `path` into memory: the dataset's folder, or, for CIFAR, also a
    /// single binary file (read whole; the split does not apply). The streamed kinds are read
    /// whole too (mind the memory: use [`DatasetSpec::open`] to stream them). The report lists
    /// the files an image folder left out, and the records a stream skipped; it is empty for the
    /// other kinds.
    ///
    /// # Errors
    ///
    /// Those of [`cifar::load_cifar10`], [`cifar::load_cifar100`], [`idx::load_mnist`],
    /// [`folder::load_folder`] and [`StreamDataset::read_first`].
    pub fn load(&self, path: &Path) -> Result<(Dataset, FolderReport)> {
        let dataset = match self {
            DatasetSpec::Cifar10 { .. } | DatasetSpec::Cifar100 { .. } if path.is_file() => {
                match self {
                    DatasetSpec::Cifar100 { label, .. } => cifar::read_cifar100_file(path, *label)?,
                    _ => cifar::read_cifar10_file(path)?,
                }
            }
            DatasetSpec::Cifar10 { split } => cifar::load_cifar10(path, *split)?,
            DatasetSpec::Cifar100 { split, label } => cifar::load_cifar100(path, *split, *label)?,
            DatasetSpec::Mnist { split } => idx::load_mnist(path, *split, MnistKind::Mnist)?,
            DatasetSpec::FashionMnist { split } => {
                idx::load_mnist(path, *split, MnistKind::FashionMnist)?
            }
            DatasetSpec::Folder { config } if !config.stream => {
                return folder::load_folder(path, config)
            }
            DatasetSpec::Lmdb { .. }
            | DatasetSpec::Tfrecord { .. }
            | DatasetSpec::Folder { .. } => {
                let stream = self.open_stream(path)?;
                let (dataset, skipped) = stream.read_first(stream.len(), &mut |_, _| {})?;
                let report = FolderReport {
                    skipped,
                    ignored: Vec::new(),
                };
                return Ok((dataset, report));
            }
        };
        Ok((dataset, FolderReport::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST20: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/cifar10/test_batch_first20.bin"
    );

    #[test]
    fn json_names_every_kind_and_rejects_unknown_fields() {
        let spec: DatasetSpec =
            serde_json::from_str(r#"{"kind": "cifar10", "split": "train+test"}"#).unwrap();
        assert_eq!(spec, DatasetSpec::seed_cifar10());
        let spec: DatasetSpec =
            serde_json::from_str(r#"{"kind": "cifar100", "split": "test", "label": "coarse"}"#)
                .unwrap();
        assert_eq!(
            spec,
            DatasetSpec::Cifar100 {
                split: Split::Test,
                label: Cifar100Label::Coarse
            }
        );
        let spec: DatasetSpec =
            serde_json::from_str(r#"{"kind": "fashion-mnist", "split": "train"}"#).unwrap();
        assert_eq!(
            spec,
            DatasetSpec::FashionMnist {
                split: Split::Train
            }
        );
        let folder = DatasetSpec::Folder {
            config: FolderConfig::new([64, 64]),
        };
        let json = serde_json::to_string(&folder).unwrap();
        assert_eq!(serde_json::from_str::<DatasetSpec>(&json).unwrap(), folder);
        let err = serde_json::from_str::<DatasetSpec>(
            r#"{"kind": "cifar10", "split": "train", "path": "x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `path`"), "{err}");
    }

    #[test]
    fn a_single_cifar_file_loads_whatever_the_split() {
        let (ds, report) = DatasetSpec::Cifar10 {
            split: Split::Train,
        }
        .load(Path::new(FIRST20))
        .unwrap();
        assert_eq!(ds.len(), 20);
        assert_eq!(report, FolderReport::default());
    }
}
