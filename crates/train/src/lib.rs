//! DDPM training on libtorch (Ho et al. 2020, Alg. 1): the forward process on tensors, losses,
//! Adam with saveable moments, EMA, atomic checkpoints, samplers and the training loop.
//!
//! - [`config`]: [`TrainConfig`] and its presets (`seed`, `ddpm-cifar10`, `fashion-mnist`).
//! - [`objective`]: ε/x_0/v targets, L1/L2/Huber, min-SNR-γ weighting.
//! - [`optim`]: Adam/AdamW with warm-up, cosine decay and clipping; moments are checkpointed.
//! - [`ema`]: the weight average sampling uses.
//! - [`checkpoint`]: atomic checkpoint directories.
//! - [`sample`]: DDPM ancestral sampling, DDIM and DPM-Solver++(2M), batched and seeded.
//! - [`trainer`]: the loop.
//! - [`fid`]: Inception features, FID and KID.

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod fid;
pub mod images;
pub mod objective;
pub mod optim;
pub mod sample;
pub mod trainer;

pub use config::{Precision, Preset, TrainConfig};
pub use trainer::{MetricsRecord, RunEnd, StepOutcome, TrainHooks, Trainer};

/// Runs the network, under bf16 autocast when `autocast` is set (CUDA only), and returns its
/// output in f32: losses and samplers always compute in f32.
pub fn forward(
    model: &dyn model::Denoiser,
    xs: &tch::Tensor,
    t: &tch::Tensor,
    train: bool,
    autocast: bool,
) -> tch::Tensor {
    let run = || model.forward_t(xs, t, train);
    let out = if autocast {
        model::autocast_bf16(xs.device(), run)
    } else {
        run()
    };
    out.to_kind(tch::Kind::Float)
}

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
