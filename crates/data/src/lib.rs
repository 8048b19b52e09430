//! Datasets on disk to u8 images in memory to f32 NCHW batches, in pure Rust (no libtorch).
//!
//! - Readers with exact format checks: [`cifar`] (CIFAR-10 and CIFAR-100 binary), [`idx`] (MNIST
//!   and Fashion-MNIST, gzip or raw) and [`folder`] (image folders); [`DatasetSpec`] picks one
//!   from a config. Each gives a [`Dataset`]: u8 pixels, NCHW, and one label per image.
//! - The seed notebook's preprocessing, [`Transform`]: bilinear resize as `tf.image.resize`
//!   ([`resize`]), random horizontal flip, scaling to [-1, 1] ([`normalize`], inverted by
//!   [`denormalize`]).
//! - [`Loader`]: a seeded per-epoch shuffle, batches made ahead by background threads, the same
//!   batches for a given (seed, epoch) whatever the number of threads, resumable mid-epoch.
//! - [`images`]: the one home for image files and `.npz`: u8 image sets and their NCHW/NHWC
//!   layouts, PNG/JPEG decoding, PNG writing, image grids (`ddpm data show`, sample grids), and
//!   NumPy `.npz` files (sample sets for FID tools, statistics).
//!
//! ```
//! use data::{Dataset, Loader, LoaderConfig, TransformConfig};
//! // 300 CIFAR-shaped images in memory (a real run reads them with DatasetSpec::load).
//! let dataset = Dataset::new(vec![128; 300 * 3 * 32 * 32], vec![0; 300], 3, 32, 32, vec!["x".into()])?;
//! let loader = Loader::new(dataset, &TransformConfig::seed_cifar10(), LoaderConfig::seed_cifar10(0))?;
//! for batch in loader.epoch(0) {
//!     assert_eq!(batch.shape, [128, 3, 28, 28]);
//!     assert_eq!(batch.images.len(), 128 * 3 * 28 * 28);
//!     // Tensor::from_slice(&batch.images).view(batch.shape) in the training crate.
//! }
//! # Ok::<(), data::DataError>(())
//! ```

pub mod cifar;
mod dataset;
mod error;
pub mod folder;
pub mod idx;
pub mod images;
pub mod lanczos;
pub mod loader;
pub mod resize;
mod spec;
pub mod stream;
pub mod transform;

pub use cifar::Split;
pub use dataset::{Dataset, Stats, StatsAccumulator};
pub use error::{DataError, Result};
pub use folder::FolderReport;
pub use loader::{Batch, Batches, Loader, LoaderConfig, Shard};
pub use spec::DatasetSpec;
pub use stream::{Source, StreamConfig, StreamDataset};
pub use transform::{denormalize, denormalize_all, normalize, Transform, TransformConfig};
