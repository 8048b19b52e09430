//! Sampling from diffusion models on libtorch: the reverse process, batched generation, and one
//! way in from weights on disk to images.
//!
//! - [`solvers`]: DDPM ancestral sampling (Ho et al. 2020, Alg. 2), DDIM (Song et al. 2021),
//!   multistep DPM-Solver++ of orders 1–3 and its SDE variant (Lu et al. 2022) and UniPC (Zhao
//!   et al. 2023), one module each behind one step interface ([`Sampler`], [`SamplerConfig`]).
//! - [`sampler`]: the loop: whole chains for one batch ([`sample`]) and any number of images in
//!   seeded batches ([`sample_batches`]).
//! - [`guidance`]: class-conditional sampling with classifier-free guidance,
//!   ε̃ = ε_u + W (ε_c − ε_u) ([`ClassConditioning`] in [`SampleOptions::class_cond`]).
//! - [`collect`]: one call from a [`Pipeline`] and a [`SampleRequest`] to every image as u8
//!   bytes with its reverse-process snapshots ([`Pipeline::sample_images`]; across the ranks
//!   of a launch, `shard::sample_images` with feature `dist`).
//! - [`images`]: u8 NCHW/NHWC bytes and PNG grids of sampled tensors.
//! - [`Pipeline`]: one way in for inference, from a run directory, a checkpoint or a diffusers
//!   folder to a network with its schedule and prediction type ([`pipeline`]); [`layout`] is the
//!   checkpoint layout it reads.
//!
//! The samplers take the network ([`model::Denoiser`]) and the schedule
//! ([`schedule::tensor::ScheduleTensors`]) as arguments and own neither; they run in f32 whatever
//! precision the network runs in ([`model::forward`]), and read what it predicts as
//! [`model::Prediction`]. This crate does not depend on the training loop:
//! a researcher who only samples links the networks, the schedule and this crate.

pub mod collect;
pub mod guidance;
pub mod images;
pub mod layout;
pub mod likelihood;
pub mod noise;
pub mod pipeline;
pub mod sampler;
#[cfg(feature = "dist")]
pub mod shard;
pub mod solvers;

pub use collect::{SampleRequest, Samples};
pub use guidance::{guide, guided_forward, ClassConditioning};
pub use images::{save_grid, to_u8_nchw, to_u8_nhwc};
pub use noise::InitialNoise;
pub use pipeline::{ExportLayout, Pipeline, PipelineSpec, SourceKind, Weights};
pub use sampler::{
    batch_seed, sample, sample_batches, BatchPlan, SampleBatches, SampleOptions, SampleOutput,
    SampledBatch,
};
pub use solvers::{Sampler, SamplerConfig, SigmaSpacing, UniPcVariant};
/// The generator the samplers draw from (re-exported so that callers need no torch-ext dependency).
pub use torch_ext::Generator;

use std::path::PathBuf;

/// Errors of sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Impossible sampler settings or request; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A path that is not a usable checkpoint or diffusers folder; names the file and the key.
    #[error("{}: {message}", path.display())]
    Source {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, naming the key where one is at fault.
        message: String,
    },
    /// A network that cannot be built, or a weights file that cannot be written.
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Weights that cannot be read, do not fit the network or are not finite (the source error
    /// names the file and every bad key); `config` is the file the network's configuration came
    /// from. The message leaves the details to the source, so that a printed chain (`{:#}`)
    /// says them once.
    #[error("cannot load the weights of the model described by {}", config.display())]
    Weights {
        /// `state.json` or the diffusers `config.json`.
        config: PathBuf,
        /// The loading error.
        #[source]
        source: model::ModelError,
    },
    /// A rank of a launch failed or did not answer while the ranks gathered the samples
    /// ([`shard`]).
    #[cfg(feature = "dist")]
    #[error(transparent)]
    Dist(#[from] torch_ext::dist::DistError),
    /// A random generator for the sampling device cannot be made (CUDA unavailable).
    #[error("random generator: {0}")]
    Generator(#[from] torch_ext::Error),
    /// An image file that cannot be made or written.
    #[error("{}: {message}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
