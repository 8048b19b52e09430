//! One way in for inference: from one path to the network with its weights, the schedule and the
//! prediction type, ready to sample.
//!
//! [`Pipeline::load`] accepts:
//!
//! - a **run directory** (its newest complete checkpoint), its `checkpoints/` folder, or one
//!   **checkpoint directory** (`step-N/` with `state.json`); the network, schedule, prediction
//!   type and precision come from the training config saved in `state.json` (its `model`,
//!   `schedule`, `objective.prediction` and `precision` keys), the weights from
//!   `ema.safetensors` or `model.safetensors` ([`Weights`]);
//! - a **diffusers model folder**: `config.json` of a `UNet2DModel` with
//!   `diffusion_pytorch_model.safetensors` or `diffusion_pytorch_model.bin` (a `torch.save`d
//!   state dict, read through libtorch's own unpickler in `torch-ext`), or a **pipeline folder**
//!   holding it as `unet/`. The schedule and prediction type come from the scheduler's
//!   `scheduler_config.json` beside the model's config, in `../scheduler/` or in the folder above,
//!   with diffusers' `DDPMScheduler` defaults where there is none. Checkpoints saved by diffusers
//!   before 0.15, such as the `google/ddpm-*` repositories, name the attention projections
//!   `query`/`key`/`value`/`proj_attn`; they are renamed on load as diffusers renames them
//!   ([`model::UNetConfig::modern_diffusers_key`]).
//!
//! A class-conditional network (`num_classes` in the model config; diffusers' `num_class_embeds`,
//! whose last embedding is the null label) samples classes with classifier-free guidance
//! ([`Pipeline::generate_classes`], [`crate::ClassConditioning`]). Its class names come from
//! the checkpoint's `state.json` (`class_names`, the training dataset's), or from the
//! `_class_names` key that [`Pipeline::export_diffusers`] writes into a diffusers `config.json`
//! (diffusers ignores keys that start with `_`).
//!
//! [`PipelineSpec::resolve`] reads only the JSON files, so callers check a path, its config and
//! its scheduler before building anything; the weights are checked key by key on load, and a
//! missing, unexpected or mis-shaped key is refused with the file and the keys named.
//!
//! ```no_run
//! use sample::{Pipeline, SamplerConfig, Weights};
//! use schedule::TimestepSpacing;
//!
//! let pipe = Pipeline::load("ddpm-cifar10-32".as_ref(), Weights::Ema, tch::Device::cuda_if_available())?;
//! let ddim = SamplerConfig::Ddim {
//!     steps: 50, eta: 0.0, spacing: TimestepSpacing::Leading, timesteps: None,
//! };
//! let images = pipe.generate(&ddim, 64, /* seed */ 0)?; // [64, 3, 32, 32] on [-1, 1]
//! sample::save_grid(&images, 8, "grid.png".as_ref())?;
//! # Ok::<(), sample::SampleError>(())
//! ```
//!
//! The files of this module follow its seams: `spec.rs` finds what a path names and reads its
//! JSON files ([`PipelineSpec`]), `diffusers.rs` holds the diffusers folder format (the
//! scheduler config both ways, [`DiffusersScheduler`], and [`Pipeline::export`]), and
//! this file loads the tensors and samples.

mod diffusers;
mod spec;

pub use diffusers::{check_export_dir, DiffusersScheduler, ExportLayout, MODEL_INDEX};
pub use spec::{PipelineSpec, CHECKPOINT_CLIP_SAMPLE};

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use model::{Denoiser, UNetConfig};
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;

use crate::SamplerConfig;
use crate::{
    sample_batches, BatchPlan, ClassConditioning, SampleBatches, SampleError, SampleOptions,
};

/// The diffusers model config.
pub const DIFFUSERS_CONFIG: &str = "config.json";
/// The diffusers weights, safetensors format (preferred when both exist).
pub const DIFFUSERS_SAFETENSORS: &str = "diffusion_pytorch_model.safetensors";
/// The diffusers weights, `torch.save` format.
pub const DIFFUSERS_BIN: &str = "diffusion_pytorch_model.bin";
/// The diffusers scheduler config.
pub const SCHEDULER_CONFIG: &str = "scheduler_config.json";

/// Which weights of a training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The exponential moving average (what papers sample with).
    #[default]
    Ema,
    /// The live training weights.
    Model,
}

/// What kind of folder a pipeline was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A checkpoint written by the `train` crate.
    Checkpoint,
    /// A diffusers `UNet2DModel` folder.
    Diffusers {
        /// The scheduler config that was read, if there was one.
        scheduler_config: Option<PathBuf>,
    },
}

/// The key of a diffusers `config.json` under which exports record the class names.
pub const CLASS_NAMES_KEY: &str = "_class_names";

fn source_err(path: &Path, message: impl Into<String>) -> SampleError {
    SampleError::Source {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, SampleError> {
    let text = std::fs::read_to_string(path).map_err(|e| source_err(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| source_err(path, format!("not valid JSON: {e}")))
}

/// The tensors of a `torch.save`d state dict, through libtorch's own unpickler (`torch-ext`).
fn read_state_dict(file: &Path) -> Result<Vec<(String, Tensor)>, SampleError> {
    torch_ext::load_state_dict(file).map_err(|e| match e {
        // These name the file already.
        torch_ext::Error::StateDict { path, message } => source_err(&path, message),
        other => source_err(file, other.to_string()),
    })
}

/// A network with its weights, schedule and prediction type, on one device.
#[derive(Debug)]
pub struct Pipeline {
    /// Where it came from and what it is.
    pub spec: PipelineSpec,
    /// The network's variables.
    pub vs: VarStore,
    /// The network.
    pub net: Box<dyn Denoiser>,
    /// The schedule's tables (f64, on the host).
    pub schedule: Schedule,
    /// The schedule's tables on the device.
    pub sched: ScheduleTensors,
}

impl Pipeline {
    /// Resolves `path` ([`PipelineSpec::resolve`]) and loads it onto `device`.
    ///
    /// # Errors
    /// As [`PipelineSpec::resolve`] and [`Pipeline::from_spec`].
    pub fn load(path: &Path, weights: Weights, device: Device) -> Result<Self, SampleError> {
        Self::from_spec(PipelineSpec::resolve(path, weights)?, device)
    }

    /// Builds the network of `spec` on `device`, loads its weights, and lays its kernels out in
    /// the memory format it samples fastest in ([`model::ModelConfig::inference_memory_format`]).
    ///
    /// A checkpoint's weights are first checked against the digest its `state.json` records
    /// ([`PipelineSpec::verify_weights`]): a damaged file is refused, not sampled from.
    ///
    /// # Errors
    /// [`SampleError::Weights`] when the weights do not fit the network (naming the file and
    /// every bad key), [`SampleError::Source`] when a `.bin` is not a state dict of tensors or
    /// the weights do not match their digest.
    pub fn from_spec(spec: PipelineSpec, device: Device) -> Result<Self, SampleError> {
        spec.verify_weights()?;
        let schedule = Schedule::new(&spec.schedule)
            .map_err(|e| source_err(&spec.config_file, format!("the schedule: {e}")))?;
        let mut vs = VarStore::new(device);
        let net = spec.model.build(&vs.root())?;
        let is_diffusers = matches!(spec.kind, SourceKind::Diffusers { .. });
        let file = &spec.weights_file;
        let loaded = if file.extension().is_some_and(|e| e == "bin") {
            let tensors: Vec<(String, Tensor)> = read_state_dict(file)?
                .into_iter()
                .map(|(name, t)| (UNetConfig::modern_diffusers_key(&name), t))
                .collect();
            model::load_named_tensors(&mut vs, file, &tensors)
        } else if is_diffusers {
            model::load_safetensors_renamed(&mut vs, file, &UNetConfig::modern_diffusers_key)
        } else {
            model::load_safetensors(&mut vs, file)
        };
        loaded.map_err(|source| SampleError::Weights {
            config: spec.config_file.clone(),
            source,
        })?;
        // Sampling's layout, which can differ from training's (the paper's U-Net on the CPU).
        model::set_memory_format(&vs, spec.model.inference_memory_format(device));
        let sched = ScheduleTensors::new(&schedule, device);
        Ok(Self {
            spec,
            vs,
            net,
            schedule,
            sched,
        })
    }

    /// The device the network is on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// `[C, H, W]` of the images the network takes.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.spec.model.image_size();
        [self.spec.model.in_channels(), s, s]
    }

    /// The options of sampling this source with `sampler`: its prediction type; x̂_0 clamped as
    /// `sampler`'s diffusers scheduler does with the source's `clip_sample`
    /// ([`SamplerConfig::clips_by_default`]) unless `clip_x0` says otherwise; bf16 or fp16
    /// autocast on CUDA when it was trained so ([`Pipeline::autocast`]).
    pub fn options(
        &self,
        sampler: &SamplerConfig,
        clip_x0: Option<bool>,
        n_snapshots: usize,
    ) -> SampleOptions {
        SampleOptions {
            prediction: self.spec.prediction,
            clip_x0: clip_x0.unwrap_or(sampler.clips_by_default(self.spec.clip_sample)),
            n_snapshots,
            autocast: self.autocast(),
            class_cond: None,
            initial_noise: None,
        }
    }

    /// The autocast kind the network runs under: bf16 or fp16 on CUDA when it was trained so,
    /// none (f32) on the CPU.
    pub fn autocast(&self) -> Option<tch::Kind> {
        self.spec.precision.sampling_kind(self.device())
    }

    /// The batches of `plan` with `sampler` and [`Pipeline::options`] (see [`sample_batches`]).
    ///
    /// # Errors
    /// As [`sample_batches`].
    pub fn sample_batches<'a, F: FnMut(usize, usize)>(
        &'a self,
        sampler: &SamplerConfig,
        options: &SampleOptions,
        plan: BatchPlan,
        on_step: F,
    ) -> Result<SampleBatches<'a, F>, SampleError> {
        sample_batches(
            self.net.as_ref(),
            &self.sched,
            sampler,
            options,
            plan,
            on_step,
        )
    }

    /// The network's number of classes (`None`: unconditional).
    pub fn num_classes(&self) -> Option<i64> {
        self.net.num_classes()
    }

    /// `n` images, in batches of at most 64, seeded from `seed` as [`sample_batches`] seeds
    /// them: `[n, C, H, W]` f32 on [-1, 1], on the pipeline's device.
    ///
    /// # Errors
    /// As [`sample_batches`].
    pub fn generate(
        &self,
        sampler: &SamplerConfig,
        n: usize,
        seed: u64,
    ) -> Result<Tensor, SampleError> {
        self.generate_with(sampler, n, seed, None)
    }

    /// One image per label of `labels`, guided with scale `guidance` (ε̃ = ε_u + W (ε_c − ε_u),
    /// W = 1 plain conditional; see [`crate::guidance`]), in batches of at most 64 seeded from
    /// `seed`: `[labels.len(), C, H, W]` f32 on [-1, 1]. Image `i` has the starting noise of
    /// image `i` of [`Pipeline::generate`] with the same seed.
    ///
    /// # Errors
    /// As [`sample_batches`]; [`SampleError::Config`] when the network is not class-conditional
    /// or a label is not one of its classes.
    pub fn generate_classes(
        &self,
        sampler: &SamplerConfig,
        labels: &[i64],
        guidance: f64,
        seed: u64,
    ) -> Result<Tensor, SampleError> {
        let cond = ClassConditioning {
            labels: labels.to_vec(),
            guidance,
        };
        self.generate_with(sampler, labels.len(), seed, Some(cond))
    }

    fn generate_with(
        &self,
        sampler: &SamplerConfig,
        n: usize,
        seed: u64,
        class_cond: Option<ClassConditioning>,
    ) -> Result<Tensor, SampleError> {
        let plan = BatchPlan {
            n_images: n,
            batch_size: n.clamp(1, 64),
            image_shape: self.image_shape(),
            seed,
            n_chains: 0,
        };
        let options = SampleOptions {
            class_cond,
            ..self.options(sampler, None, 0)
        };
        let batches = self
            .sample_batches(sampler, &options, plan, |_, _| {})?
            .map(|b| b.map(|b| b.output.images))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&batches, 0))
    }
}
