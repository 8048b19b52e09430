//! Datasets that stream from disk: an index of records held in memory, each record read and
//! decoded on demand (in the [`Loader`](crate::Loader)'s worker threads), so memory does not
//! grow with the dataset.
//!
//! - [`lmdb`]: LSUN's layout, a folder with `data.mdb`, one encoded image (WebP, JPEG, PNG) per
//!   value, keyed by the image's id.
//! - [`tfrecord`]: ProgressiveGAN's layout (`dataset_tool.py`, which the DDPM paper's data came
//!   from): `*-rNN.tfrecords` files of `tf.train.Example` records with a `shape` and raw CHW
//!   `data`, checked against their masked CRC32C checksums.
//! - Image folders with `FolderConfig::stream` ([`StreamDataset::open_folder`]): the sorted
//!   paths and their labels; these keep the folder's bilinear fit.
//!
//! Every record is brought to [`StreamConfig::size`] as ProgressiveGAN's `create_lsun` did:
//! crop the centre to the target's aspect (the short side, for a square), then Pillow's
//! antialiased Lanczos resize ([`crate::lanczos`]); records already of that size are kept as
//! they are.

pub mod folder;
pub mod lmdb;
mod scan;
pub mod tfrecord;

pub use scan::Progress;

use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::folder::{fit_image, Fit, FolderConfig, FolderReport, OnError};
use crate::images::decode_image_bytes;
use crate::lanczos::resize_lanczos_u8;

/// How to read a streamed dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Image size after preprocessing, `[height, width]`.
    pub size: [usize; 2],
    /// 1 (converted to luma) or 3 (converted to RGB).
    pub channels: usize,
    /// How records of another size are brought to `size`: centre crop then Lanczos, or Lanczos
    /// alone.
    pub fit: Fit,
    /// Unreadable records: fatal (naming the record), or skipped and counted.
    pub on_error: OnError,
}

impl StreamConfig {
    /// RGB images of `size`, centre-cropped, unreadable records fatal.
    pub fn new(size: [usize; 2]) -> Self {
        Self {
            size,
            channels: 3,
            fit: Fit::CenterCrop,
            on_error: OnError::Fail,
        }
    }

    fn check(&self) -> Result<()> {
        if self.size.contains(&0) || !(self.channels == 1 || self.channels == 3) {
            return Err(DataError::Config(format!(
                "a streamed dataset needs a positive size and 1 or 3 channels, not {}x{} with {} channels",
                self.size[0], self.size[1], self.channels
            )));
        }
        Ok(())
    }
}

/// One record as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An encoded image file (PNG, JPEG, WebP, GIF, BMP).
    Encoded(Vec<u8>),
    /// Raw u8 pixels, CHW, of `shape = [C, H, W]`.
    Raw {
        /// The pixels.
        chw: Vec<u8>,
        /// `[C, H, W]`.
        shape: [usize; 3],
    },
}

/// Random access to the records of one dataset on disk.
pub trait Records: Send + Sync + Debug {
    /// The file or folder the records live in (for messages).
    fn path(&self) -> &Path;
    /// The number of records.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How a message names record `idx`: its key, its path or its index in the file.
    fn name(&self, idx: usize) -> String;
    /// Reads record `idx`; the error says what is wrong, [`Records::name`] says where.
    ///
    /// # Errors
    /// A description of the failure (an IO error, a checksum, a malformed record).
    fn read(&self, idx: usize) -> std::result::Result<Record, String>;
}

/// Records read on demand, with labels, brought to one size; see the [module docs](self).
#[derive(Debug)]
pub struct StreamDataset {
    records: Box<dyn Records>,
    config: StreamConfig,
    labels: Vec<u16>,
    class_names: Vec<String>,
    /// The folder's TF-style bilinear fit instead of Lanczos (a streamed image folder).
    bilinear: bool,
    skipped: AtomicUsize,
    /// The first skipped records' messages, to report.
    skipped_examples: Mutex<Vec<String>>,
}

/// How many skipped records' messages a dataset keeps for its report.
const SKIPPED_EXAMPLES: usize = 10;

impl StreamDataset {
    /// A dataset over `records`, unlabelled (`labels` empty) or with one label per record
    /// below `class_names.len()`.
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] for a bad config or labels, [`DataError::Empty`] with no records.
    pub fn new(
        records: Box<dyn Records>,
        config: StreamConfig,
        labels: Vec<u16>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        config.check()?;
        if records.is_empty() {
            return Err(DataError::Empty {
                path: records.path().to_path_buf(),
                reason: "holds no records".into(),
            });
        }
        if !labels.is_empty() && labels.len() != records.len() {
            return Err(DataError::Config(format!(
                "{} labels for {} records",
                labels.len(),
                records.len()
            )));
        }
        let n_classes = class_names.len().max(1);
        if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= n_classes) {
            return Err(DataError::Config(format!(
                "label {bad} is out of range 0..{n_classes}"
            )));
        }
        Ok(Self {
            records,
            config,
            labels,
            class_names,
            bilinear: false,
            skipped: AtomicUsize::new(0),
            skipped_examples: Mutex::new(Vec::new()),
        })
    }

    /// LSUN's LMDB layout at `dir`; see [`lmdb`].
    ///
    /// # Errors
    /// Those of [`lmdb::LmdbRecords::open`] and [`StreamDataset::new`].
    pub fn open_lmdb(dir: &Path, config: StreamConfig) -> Result<Self> {
        Self::new(
            Box::new(lmdb::LmdbRecords::open(dir)?),
            config,
            Vec::new(),
            Vec::new(),
        )
    }

    /// ProgressiveGAN's TFRecords at `path` (a `.tfrecords` file, or a folder of `*-rNN`
    /// files, of which the one for `config.size` or else the largest is read); see [`tfrecord`].
    ///
    /// # Errors
    /// Those of [`tfrecord::TfRecords::open`] and [`StreamDataset::new`].
    pub fn open_tfrecord(path: &Path, config: StreamConfig) -> Result<Self> {
        let file = tfrecord::choose_file(path, config.size)?;
        Self::new(
            Box::new(tfrecord::TfRecords::open(&file)?),
            config,
            Vec::new(),
            Vec::new(),
        )
    }

    /// The image folder at `root`, indexed as [`load_folder`](crate::folder::load_folder) finds
    /// it (the report lists the files ignored), read on demand with the folder's bilinear fit.
    ///
    /// # Errors
    /// Those of [`load_folder`](crate::folder::load_folder) but the decoding ones.
    pub fn open_folder(root: &Path, config: &FolderConfig) -> Result<(Self, FolderReport)> {
        let (candidates, class_names, report) = crate::folder::index_folder(root, config)?;
        let labels = candidates.iter().map(|c| c.label).collect();
        let paths = candidates.into_iter().map(|c| c.path).collect();
        let stream_config = StreamConfig {
            size: config.size,
            channels: config.channels,
            fit: config.fit,
            on_error: config.on_error,
        };
        let records = Box::new(folder::FolderRecords::new(root, paths));
        let mut dataset = Self::new(records, stream_config, labels, class_names)?;
        dataset.bilinear = true;
        Ok((dataset, report))
    }

    /// The number of records (skipped ones included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Where the records live.
    pub fn path(&self) -> &Path {
        self.records.path()
    }

    /// Class names, indexed by label; empty for an unlabelled dataset.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The label of record `idx` (0 without labels).
    pub fn label(&self, idx: usize) -> u16 {
        self.labels.get(idx).copied().unwrap_or(0)
    }

    /// How a message names record `idx`.
    pub fn record_name(&self, idx: usize) -> String {
        self.records.name(idx)
    }

    /// Record `idx` read, decoded and brought to the configured size: CHW u8.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] naming the dataset and the record.
    pub fn image(&self, idx: usize) -> Result<Vec<u8>> {
        self.prepare(idx).map_err(|reason| DataError::BadRecord {
            path: self.records.path().to_path_buf(),
            record: self.records.name(idx),
            reason,
        })
    }

    fn prepare(&self, idx: usize) -> std::result::Result<Vec<u8>, String> {
        let channels = self.config.channels;
        let (chw, size) = match self.records.read(idx)? {
            Record::Encoded(bytes) => decode_image_bytes(&bytes, channels)
                .map_err(|reason| format!("unreadable image: {reason}"))?,
            Record::Raw {
                chw,
                shape: [c, h, w],
            } if c == channels => (chw, [h, w]),
            Record::Raw { shape, .. } => {
                return Err(format!(
                    "{} channels where the dataset is read with {channels}",
                    shape[0]
                ))
            }
        };
        let fit = if self.bilinear {
            fit_image
        } else {
            fit_lanczos
        };
        fit(&chw, channels, size, self.config.size, self.config.fit).map_err(|err| err.to_string())
    }

    /// Record `idx`, or under [`OnError::Skip`] the first readable record after it in `order`
    /// (wrapping), counting the ones passed over. So a batch stays a pure function of the data
    /// and its position in the epoch.
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] for the record (with [`OnError::Fail`]), or when no record at
    /// all is readable.
    pub fn image_or_next(&self, order: &[u32], pos: usize) -> Result<(Vec<u8>, usize)> {
        let first = order[pos] as usize;
        let err = match self.image(first) {
            Ok(image) => return Ok((image, first)),
            Err(err) if self.config.on_error == OnError::Fail => return Err(err),
            Err(err) => err,
        };
        self.count_skipped(&err);
        for step in 1..order.len() {
            let idx = order[(pos + step) % order.len()] as usize;
            match self.image(idx) {
                Ok(image) => return Ok((image, idx)),
                Err(err) => self.count_skipped(&err),
            }
        }
        Err(err)
    }

    fn count_skipped(&self, err: &DataError) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut examples = self
            .skipped_examples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if examples.len() < SKIPPED_EXAMPLES {
            examples.push(err.to_string());
        }
    }

    /// How many times a record was skipped as unreadable (a record counts at each visit), and
    /// the messages of the first few.
    pub fn skipped(&self) -> (usize, Vec<String>) {
        let examples = self
            .skipped_examples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (self.skipped.load(Ordering::Relaxed), examples)
    }
}

/// Brings a CHW image of `in_size` to `out_size` as ProgressiveGAN did: crop (for
/// [`Fit::CenterCrop`]), then Pillow's antialiased Lanczos resize; unchanged when the sizes
/// match.
///
/// # Errors
///
/// [`DataError::Config`] when `chw` does not match `in_size` or a size is zero.
///
/// ```
/// use data::folder::Fit;
/// // A 2x4 image: the centre 2x2 square, already the target size, is kept as it is.
/// let out = data::stream::fit_lanczos(&[1, 2, 3, 4, 5, 6, 7, 8], 1, [2, 4], [2, 2], Fit::CenterCrop)?;
/// assert_eq!(out, [2, 3, 6, 7]);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn fit_lanczos(
    chw: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    fit: Fit,
) -> Result<Vec<u8>> {
    // A crop that is already the output size is kept as it is.
    fn lanczos(chw: &[u8], channels: usize, from: [usize; 2], to: [usize; 2]) -> Result<Vec<u8>> {
        if from == to {
            Ok(chw.to_vec())
        } else {
            resize_lanczos_u8(chw, channels, from, to)
        }
    }
    crate::folder::fit_with(chw, channels, in_size, out_size, fit, lanczos)
}

/// The images a [`Loader`](crate::Loader) reads: decoded in memory, or streamed from disk.
#[derive(Debug, Clone)]
pub enum Source {
    /// Every image decoded in memory (CIFAR, MNIST, small image folders).
    Memory(Arc<Dataset>),
    /// Records decoded on demand.
    Stream(Arc<StreamDataset>),
}

impl From<Dataset> for Source {
    fn from(dataset: Dataset) -> Self {
        Source::Memory(Arc::new(dataset))
    }
}

impl From<Arc<Dataset>> for Source {
    fn from(dataset: Arc<Dataset>) -> Self {
        Source::Memory(dataset)
    }
}

impl From<StreamDataset> for Source {
    fn from(dataset: StreamDataset) -> Self {
        Source::Stream(Arc::new(dataset))
    }
}

impl Source {
    /// The number of images (records, for a stream).
    pub fn len(&self) -> usize {
        match self {
            Source::Memory(d) => d.len(),
            Source::Stream(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        match self {
            Source::Memory(d) => [d.channels(), d.height(), d.width()],
            Source::Stream(s) => [s.config.channels, s.config.size[0], s.config.size[1]],
        }
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.image_shape()[0]
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.image_shape()[1]
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.image_shape()[2]
    }

    /// The largest label (0 for an unlabelled dataset).
    pub fn max_label(&self) -> u16 {
        let labels = match self {
            Source::Memory(d) => d.labels(),
            Source::Stream(s) => &s.labels,
        };
        labels.iter().copied().max().unwrap_or(0)
    }

    /// Class names, indexed by label; empty for an unlabelled dataset.
    pub fn class_names(&self) -> &[String] {
        match self {
            Source::Memory(d) => d.class_names(),
            Source::Stream(s) => s.class_names(),
        }
    }

    /// The number of classes (0 for an unlabelled dataset).
    pub fn n_classes(&self) -> usize {
        self.class_names().len()
    }

    /// The in-memory dataset, if this is one.
    pub fn as_memory(&self) -> Option<&Dataset> {
        match self {
            Source::Memory(d) => Some(d),
            Source::Stream(_) => None,
        }
    }

    /// The image at position `pos` of `order` and its label, CHW u8 (for a stream under
    /// [`OnError::Skip`], possibly a later record: see [`StreamDataset::image_or_next`]).
    ///
    /// # Errors
    ///
    /// [`DataError::BadRecord`] for an unreadable record of a stream.
    pub fn image_at<'a>(
        &'a self,
        order: &[u32],
        pos: usize,
        buf: &'a mut Vec<u8>,
    ) -> Result<(&'a [u8], u16)> {
        match self {
            Source::Memory(d) => {
                let idx = order[pos] as usize;
                Ok((d.image(idx), d.label(idx)))
            }
            Source::Stream(s) => {
                let (image, idx) = s.image_or_next(order, pos)?;
                *buf = image;
                Ok((buf, s.label(idx)))
            }
        }
    }
}
