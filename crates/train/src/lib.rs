//! DDPM training on libtorch (Ho et al. 2020, Alg. 1): the forward process on tensors, losses,
//! Adam with saveable moments, EMA, atomic checkpoints and the training loop.

pub mod checkpoint;
pub mod ema;
pub mod optim;

/// Errors of the training crate.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration field has an invalid value; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A checkpoint cannot be written or read; the message names the file.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// NaN or infinity where a finite value is required.
    #[error("non-finite values: {0}")]
    NonFinite(String),
}
