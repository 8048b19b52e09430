//! DDPM training on libtorch (Ho et al. 2020, Alg. 1): the forward process on tensors, losses,
//! Adam with saveable moments, EMA, atomic checkpoints and the training loop. Sampling lives in
//! the `sample` crate and FID in `eval`; the loop uses `sample` for its preview images.
//!
//! - [`config`]: [`TrainConfig`] and its presets (`seed`, `ddpm-cifar10`, `fashion-mnist`).
//! - [`objective`]: ε/x_0/v targets, L1/L2/Huber, min-SNR-γ weighting.
//! - [`optim`]: Adam/AdamW with warm-up, cosine decay and clipping; moments are checkpointed.
//! - [`ema`]: the weight average sampling uses.
//! - [`checkpoint`]: atomic checkpoint directories.
//! - [`trainer`]: the loop.

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod objective;
pub mod optim;
pub mod trainer;

pub use config::{Precision, Preset, TrainConfig};
pub use trainer::{MetricsRecord, RunEnd, StepOutcome, TrainHooks, Trainer};

pub use sample::forward;

use std::path::{Path, PathBuf};

/// Errors of the training crate. Variants tied to a file carry its path and the source error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration field has an invalid value; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A file or directory of the run (checkpoint, metrics, config, samples) cannot be read or
    /// written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file that exists but cannot be used: corrupt, of another format version, or
    /// holding tensors that do not fit.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No checkpoint where one is needed.
    #[error("no checkpoint under {}: {hint}", dir.display())]
    NoCheckpoint {
        /// The directory that was searched.
        dir: PathBuf,
        /// What to do instead.
        hint: &'static str,
    },
    /// Optimizer moments that do not fit the model's parameters.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    /// EMA weights that do not fit the model's parameters.
    #[error("EMA: {0}")]
    Ema(String),
    /// Weights that cannot be loaded into the network (the error names the file and keys).
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Sampling preview images failed.
    #[error(transparent)]
    Sample(#[from] sample::SampleError),
    /// NaN or infinity where a finite value is required.
    #[error("non-finite values: {0}")]
    NonFinite(String),
}

impl TrainError {
    /// An IO error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
