//! The resolved training configuration, its named presets, and overrides from a JSON file and
//! `key=value` pairs.
//!
//! Resolution order: preset → `--config file.json` (deep-merged) → `--set a.b=value` and the
//! dedicated CLI flags. Unknown keys are errors naming their dotted path; values are checked by
//! [`TrainConfig::validate`], whose errors name the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use data::{DatasetSpec, TransformConfig};
use model::{ModelConfig, Precision};
use sample::SamplerConfig;
use schedule::BetaSchedule;

use crate::distributed::DistConfig;
use crate::ema::EmaConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use crate::TrainError;

mod overrides;
mod preset;

use overrides::{merge, set_path};
pub use overrides::{parse_set, ConfigChange, RESUME_MUTABLE};
pub use preset::Preset;

/// Everything a training run needs except paths, which are arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Which dataset and split.
    pub dataset: DatasetSpec,
    /// Resize, flip and normalisation.
    pub transform: TransformConfig,
    /// Images per step: the global batch, split evenly over the ranks of a data-parallel run.
    pub batch_size: usize,
    /// Gradient accumulation (`--grad-accum K`): each optimizer step sums the gradients of K
    /// micro-batches of `batch_size / (K · world_size)` images per rank, scaled so that the step
    /// is the one the whole batch would take (see [`crate::trainer`]). Absent from
    /// configurations saved before accumulation existed (they took one pass per step).
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// Background threads making batches.
    pub n_workers: usize,
    /// The noise schedule.
    pub schedule: BetaSchedule,
    /// The network.
    pub model: ModelConfig,
    /// Target and loss.
    pub objective: ObjectiveConfig,
    /// Adam and the learning-rate schedule.
    pub optim: OptimConfig,
    /// Weight averaging.
    pub ema: EmaConfig,
    /// f32, or bf16 autocast on CUDA.
    pub precision: Precision,
    /// Seeds the initialisation, the data order, and every step's t and ε.
    pub seed: u64,
    /// Train this many epochs (one of `epochs` and `max_steps` must be set; the smaller wins).
    pub epochs: Option<u64>,
    /// Train this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// Keep this many newest checkpoints.
    pub keep_last: usize,
    /// Write a reverse-process strip and a sample grid every this many epochs (0: never).
    pub sample_every_epochs: u64,
    /// Images in each sample grid.
    pub n_sample_images: usize,
    /// Append a line to `metrics.jsonl` every this many steps.
    pub log_every: u64,
    /// Write TensorBoard event files into `<run>/tb/` ([`crate::tensorboard`]; `ddpm train
    /// --no-tensorboard` turns them off). Absent from configurations saved before they existed.
    #[serde(default = "default_tensorboard")]
    pub tensorboard: bool,
    /// Abort after this many consecutive steps with a non-finite loss or gradient.
    pub max_nonfinite_in_a_row: u32,
    /// Data-parallel settings (timeout, gradient all-reduce); ignored by a run in one process.
    /// Absent from configurations saved before data-parallel training existed.
    #[serde(default)]
    pub distributed: DistConfig,
    /// FID in the loop ([`crate::quality`]): every this many steps (and at the last step), draw
    /// `eval_samples` images with the EMA weights and `eval_sampler` and score them; 0 never does.
    /// Absent from configurations saved before FID in the loop existed.
    #[serde(default)]
    pub eval_every: u64,
    /// Images drawn per evaluation.
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// The sampler of the evaluation images (by default DDIM with 50 steps, η = 0).
    #[serde(default = "default_eval_sampler")]
    pub eval_sampler: SamplerConfig,
    /// What the evaluations are scored against: the feature network and the reference
    /// statistics. Absent from configurations saved before it was kept (they scored with
    /// these defaults unless flags said otherwise).
    #[serde(default)]
    pub eval_reference: EvalReference,
    /// Fine-tuning (`ddpm train --init-from SRC`): the run, checkpoint or diffusers folder whose
    /// weights the network and its EMA start from (see [`crate::trainer::check_source`]).
    /// Recorded so that a resume reads the run's own checkpoints, never SRC again. Absent (and
    /// not written) for runs that start from random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// FID in the loop's feature network and reference statistics (`--inception`,
/// `--inception-input-size`, `--eval-resize`, `--eval-reference-images` of `ddpm train`). The
/// default is the FID protocol of TTUR (Heusel et al. 2017) against the whole training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalReference {
    /// The feature network's TorchScript file; `None` is the front end's default FID Inception
    /// (`ddpm`: `data/inception/default_1.pt`).
    #[serde(default)]
    pub inception: Option<PathBuf>,
    /// The network's input size (299 for the FID Inception).
    #[serde(default = "default_input_size")]
    pub input_size: i64,
    /// The bilinear resize in front of the network: `tf` or `pytorch`.
    #[serde(default = "default_resize")]
    pub resize: String,
    /// Reference statistics of the first N training images only; `None`: all of them.
    #[serde(default)]
    pub images: Option<usize>,
}

fn default_tensorboard() -> bool {
    true
}

fn default_grad_accum() -> usize {
    1
}

fn default_input_size() -> i64 {
    299
}

fn default_resize() -> String {
    "tf".to_string()
}

impl Default for EvalReference {
    fn default() -> Self {
        Self {
            inception: None,
            input_size: default_input_size(),
            resize: default_resize(),
            images: None,
        }
    }
}

/// `eval_samples` by default: the sample count of the quality baseline in issue 16 (1,000 EMA
/// samples), a compromise between the variance of the FID and the time an evaluation takes.
pub fn default_eval_samples() -> usize {
    1000
}

/// `eval_sampler` by default: DDIM, 50 steps, η = 0, `leading` spacing (what `ddpm sample
/// --sampler ddim` draws), fast enough to evaluate often.
pub fn default_eval_sampler() -> SamplerConfig {
    SamplerConfig::Ddim {
        steps: 50,
        eta: 0.0,
        spacing: schedule::TimestepSpacing::Leading,
        timesteps: None,
    }
}

impl TrainConfig {
    /// The total number of optimizer steps for `batches_per_epoch`.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        let by_epochs = self.epochs.map(|e| e * batches_per_epoch as u64);
        match (by_epochs, self.max_steps) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => 0,
        }
    }

    /// Checks every field, naming the first bad one.
    ///
    /// # Errors
    /// [`TrainError::Config`].
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.batch_size == 0 {
            return bad("batch_size = 0 is invalid: it must be at least 1".into());
        }
        self.check_micro_batch(1)?;
        if self.epochs.is_none() && self.max_steps.is_none() {
            return bad("neither epochs nor max_steps is set: set one".into());
        }
        if self.epochs == Some(0) || self.max_steps == Some(0) {
            return bad("epochs and max_steps must be at least 1 when set".into());
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every = 0 is invalid: it must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log_every = 0 is invalid: it must be at least 1".into());
        }
        if self.keep_last == 0 {
            return bad("keep_last = 0 is invalid: keep at least 1 checkpoint".into());
        }
        if self.max_nonfinite_in_a_row == 0 {
            return bad("max_nonfinite_in_a_row = 0 is invalid: it must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.transform.flip_p) {
            return bad(format!(
                "transform.flip_p = {} is invalid: it must be in [0, 1]",
                self.transform.flip_p
            ));
        }
        schedule::Schedule::new(&self.schedule)
            .map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        self.objective.validate()?;
        let (c_in, c_out) = (self.model.in_channels(), self.model.out_channels());
        let learned = self.objective.variance == model::VarianceOutput::LearnedRange;
        if learned && c_out != 2 * c_in {
            return bad(format!(
                "objective.variance = \"learned_range\" needs a network with 2·C output channels \
                 (the prediction and v_Σ): set model.out_channels = {} (it is {c_out})",
                2 * c_in
            ));
        }
        self.optim.validate()?;
        self.ema.validate()?;
        self.distributed.validate()?;
        self.validate_eval()?;
        if let Some([h, w]) = self.transform.size {
            let size = self.model.image_size();
            if h as i64 != size || w as i64 != size {
                return bad(format!(
                    "transform.size = [{h}, {w}] does not match the model's image size {size}: change one of them"
                ));
            }
        }
        Ok(())
    }

    /// Checks that the global batch splits over `world_size` ranks, and each rank's share into
    /// `grad_accum` micro-batches, naming the numbers.
    ///
    /// # Errors
    /// [`TrainError::Config`] when `grad_accum` is 0, or `world_size` or
    /// `grad_accum · world_size` does not divide `batch_size`.
    pub fn check_micro_batch(&self, world_size: usize) -> Result<(), TrainError> {
        let k = self.grad_accum;
        if k == 0 {
            return Err(TrainError::Config(
                "grad_accum = 0 is invalid: it must be at least 1 (--grad-accum)".into(),
            ));
        }
        // Without accumulation the only split is over the ranks.
        if k == 1 && !self.batch_size.is_multiple_of(world_size) {
            return Err(TrainError::Config(format!(
                "batch_size = {} is the global batch and does not split over {world_size} \
                 ranks: pick a multiple of {world_size} (--batch-size)",
                self.batch_size
            )));
        }
        let parts = k * world_size;
        if !self.batch_size.is_multiple_of(parts) {
            let ranks = if world_size == 1 {
                String::new()
            } else {
                format!(" × {world_size} ranks")
            };
            return Err(TrainError::Config(format!(
                "batch_size = {} does not split into grad_accum = {k} micro-batches{ranks}: \
                 {} / {parts} is not a whole number of images; pick a batch size that is a \
                 multiple of {parts} (--batch-size) or another --grad-accum",
                self.batch_size, self.batch_size
            )));
        }
        Ok(())
    }

    /// The images of one micro-batch on one of `world_size` ranks.
    pub fn micro_batch(&self, world_size: usize) -> usize {
        self.batch_size / (self.grad_accum.max(1) * world_size)
    }

    /// The FID-in-the-loop settings, checked only when `eval_every` turns it on (a sampler of 50
    /// steps is then checked against the schedule's T).
    fn validate_eval(&self) -> Result<(), TrainError> {
        if self.eval_every == 0 {
            return Ok(());
        }
        if self.eval_samples < 2 {
            return Err(TrainError::Config(format!(
                "eval_samples = {} is invalid: FID needs at least 2 images (--eval-samples)",
                self.eval_samples
            )));
        }
        let n_steps = schedule::Schedule::new(&self.schedule)
            .map_err(|e| TrainError::Config(format!("schedule: {e}")))?
            .n_steps();
        self.eval_sampler
            .nfe(n_steps)
            .map_err(|e| TrainError::Config(format!("eval_sampler: {e}")))?;
        Ok(())
    }

    /// Resolves a preset with a config file's JSON and `key=value` overrides, then validates.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming an unknown key (with its dotted path) or a bad value.
    pub fn resolve(
        preset: Preset,
        file: Option<&Value>,
        sets: &[(String, Value)],
    ) -> Result<Self, TrainError> {
        preset.config().with_overrides(file, sets)
    }

    /// This configuration with a config file's JSON and `key=value` overrides applied, validated
    /// (how `--resume` changes a saved run's settings).
    ///
    /// # Errors
    /// [`TrainError::Config`] naming an unknown key (with its dotted path) or a bad value.
    pub fn with_overrides(
        &self,
        file: Option<&Value>,
        sets: &[(String, Value)],
    ) -> Result<Self, TrainError> {
        let mut value = serde_json::to_value(self).expect("configs serialise");
        if let Some(file) = file {
            merge(&mut value, file, "")?;
        }
        for (key, v) in sets {
            set_path(&mut value, key, v.clone())?;
        }
        // The path names the key of a value of the wrong type (`optim.lr: invalid type: …`).
        let config: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path.is_empty() || path == "." {
                TrainError::Config(e.inner().to_string())
            } else {
                TrainError::Config(format!("`{path}`: {}", e.inner()))
            }
        })?;
        config.validate()?;
        Ok(config)
    }
}
