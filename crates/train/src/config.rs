//! The resolved training configuration, its named presets, and overrides from a JSON file and
//! `key=value` pairs.
//!
//! Resolution order: preset → `--config file.json` (deep-merged) → `--set a.b=value` and the
//! dedicated CLI flags. Unknown keys are errors naming their dotted path; values are checked by
//! [`TrainConfig::validate`], whose errors name the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use data::{DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, Precision, Prediction, SimpleUnetConfig, UNetConfig};
use sample::SamplerConfig;
use schedule::BetaSchedule;

use crate::distributed::DistConfig;
use crate::ema::EmaConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use crate::TrainError;

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
    }
}

/// The named starting points for `ddpm train --preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The teaching notebook, bugs fixed: CIFAR-10 train+test at 28×28, T=300 linear,
    /// SimpleUnet, L1, Adam 1e-3, batch 128, 100 epochs, a strip every 5 epochs.
    Seed,
    /// Ho et al. 2020 on CIFAR-10: 32×32, T=1000 linear, the paper's U-Net (35.7M), L2,
    /// Adam 2e-4 with 5000 warm-up steps, clip 1.0, EMA 0.9999, dropout 0.1, flips, batch 128,
    /// 800k steps.
    DdpmCifar10,
    /// Fashion-MNIST 28×28×1 with a small paper U-Net ([`UNetConfig::fashion_mnist`]: widths
    /// 16/32/64, attention at 7×7), cosine T=300, v-prediction with L2, Adam 2e-3 with 200
    /// warm-up steps, clip 1.0, EMA 0.999, batch 64, flips, 10 epochs: good samples in half an
    /// hour on two CPU cores.
    ///
    /// Measured 2026-12-01 (commit dc9bb21, 2-core Xeon, 30 minutes, 9,523 steps): FID 36.5 with
    /// DDPM over all 300 steps (σ² = β̃) and 40.1 with DDIM-50 (η = 0), 1.10× the chain; 1,000
    /// EMA samples against the first 1,000 test images (the floor of real data: 23.2). With
    /// ε-prediction (commit f0ce2b6) the same budget gave 33.8 and 45.2 (1.34×). The SimpleUnet
    /// preset before both scored 142.5 and 207.5 after its 3 epochs.
    /// `docs/results/runs/fashion-mnist-preset-ablation/`.
    FashionMnist,
}

impl Preset {
    /// Every preset, for listings.
    pub const ALL: [Preset; 3] = [Preset::Seed, Preset::DdpmCifar10, Preset::FashionMnist];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Seed => "seed",
            Preset::DdpmCifar10 => "ddpm-cifar10",
            Preset::FashionMnist => "fashion-mnist",
        }
    }

    /// Parses a name given by [`Preset::name`].
    ///
    /// # Errors
    /// [`TrainError::Config`] listing the valid names.
    pub fn from_name(name: &str) -> Result<Self, TrainError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                TrainError::Config(format!(
                    "unknown preset `{name}`: use one of {}",
                    names.join(", ")
                ))
            })
    }

    /// The preset's configuration.
    pub fn config(self) -> TrainConfig {
        match self {
            Preset::Seed => TrainConfig {
                dataset: DatasetSpec::seed_cifar10(),
                transform: TransformConfig::seed_cifar10(),
                batch_size: 128,
                n_workers: 2,
                schedule: BetaSchedule::seed_notebook(),
                model: ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
                objective: ObjectiveConfig::seed_notebook(),
                optim: OptimConfig::seed_notebook(),
                // The notebook has no EMA; a mild one costs little and sampling uses it.
                ema: EmaConfig {
                    decay: 0.999,
                    warmup: true,
                },
                precision: Precision::Bf16,
                seed: 0,
                epochs: Some(100),
                max_steps: None,
                checkpoint_every: 1000,
                keep_last: 3,
                sample_every_epochs: 5,
                n_sample_images: 64,
                log_every: 10,
                max_nonfinite_in_a_row: 20,
                distributed: DistConfig::default(),
                eval_every: 0,
                eval_samples: default_eval_samples(),
                eval_sampler: default_eval_sampler(),
                eval_reference: EvalReference::default(),
            },
            Preset::DdpmCifar10 => TrainConfig {
                dataset: DatasetSpec::Cifar10 {
                    split: Split::Train,
                },
                transform: TransformConfig::ho2020(),
                schedule: BetaSchedule::ho2020(),
                model: ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
                objective: ObjectiveConfig::ho2020(),
                optim: OptimConfig::ho2020(),
                ema: EmaConfig::ho2020(),
                epochs: None,
                max_steps: Some(800_000),
                checkpoint_every: 5000,
                sample_every_epochs: 50,
                ..Preset::Seed.config()
            },
            Preset::FashionMnist => TrainConfig {
                dataset: DatasetSpec::FashionMnist {
                    split: Split::Train,
                },
                transform: TransformConfig {
                    size: None,
                    flip_p: 0.5,
                    normalize: true,
                },
                batch_size: 64,
                model: ModelConfig::Ddpm(UNetConfig::fashion_mnist()),
                // Cosine, so that x_T is pure noise at this short T (the notebook's linear
                // schedule at T = 300 leaves sqrt(abar_T) = 0.22 of the image, which sampling
                // from N(0, I) never sees).
                schedule: BetaSchedule::Cosine {
                    n_steps: 300,
                    s: schedule::COSINE_S,
                    max_beta: schedule::COSINE_MAX_BETA,
                },
                // v-prediction (Salimans & Ho 2022): at 12 minutes it brought DDIM-50 from 1.62×
                // the ancestral chain's FID to 1.15× (the ablation in docs/results/runs/).
                objective: ObjectiveConfig {
                    prediction: Prediction::V,
                    ..ObjectiveConfig::ho2020()
                },
                optim: OptimConfig {
                    lr: 2e-3,
                    warmup_steps: 200,
                    grad_clip: Some(1.0),
                    ..OptimConfig::seed_notebook()
                },
                ema: EmaConfig {
                    decay: 0.999,
                    warmup: true,
                },
                // About 30 minutes on two CPU cores.
                epochs: Some(10),
                checkpoint_every: 500,
                sample_every_epochs: 1,
                ..Preset::Seed.config()
            },
        }
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
            .timesteps(n_steps)
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

/// The settings that `ddpm train --resume` may change, as dotted config keys (a key covers
/// everything under it). They decide how long and how fast the run goes on, how often it writes,
/// and how it reads data, but not what it learns: the model, the schedule, the objective, the
/// data, the batch size, the seed, EMA and the optimizer's other settings stay fixed for a run.
/// The device and threads are flags, not config keys, and may always change; so may the
/// data-parallel settings (`distributed`), and the number of ranks.
pub const RESUME_MUTABLE: [&str; 18] = [
    "max_steps",
    "epochs",
    "optim.lr",
    "optim.warmup_steps",
    "optim.decay",
    "optim.min_lr",
    "checkpoint_every",
    "keep_last",
    "log_every",
    "sample_every_epochs",
    "n_sample_images",
    "n_workers",
    "max_nonfinite_in_a_row",
    "distributed",
    // How often and how the samples are scored: what the run measures, not what it learns.
    "eval_every",
    "eval_samples",
    "eval_sampler",
    // Another reference is named as a change, and the best record measured against the old one
    // is then replaced by the next evaluation.
    "eval_reference",
];

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    /// The dotted key (`optim.lr`); an object's key when it changes variant (`model`).
    pub key: String,
    /// The value before, as JSON.
    pub saved: Value,
    /// The value after, as JSON.
    pub given: Value,
}

impl ConfigChange {
    /// Whether [`RESUME_MUTABLE`] lets a resume make this change.
    pub fn allowed_on_resume(&self) -> bool {
        RESUME_MUTABLE.iter().any(|k| {
            self.key == *k
                || self
                    .key
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.saved, self.given)
    }
}

impl TrainConfig {
    /// Every setting that differs from `self` in `other`, in key order.
    pub fn changes(&self, other: &TrainConfig) -> Vec<ConfigChange> {
        let a = serde_json::to_value(self).expect("configs serialise");
        let b = serde_json::to_value(other).expect("configs serialise");
        let mut out = Vec::new();
        diff(&a, &b, "", &mut out);
        out
    }

    /// The changes from the saved configuration `self` to `given` when a run resumes, all of
    /// them in [`RESUME_MUTABLE`].
    ///
    /// # Errors
    /// [`TrainError::ResumeChange`] naming the first other key that changes, with both values.
    pub fn check_resume(&self, given: &TrainConfig) -> Result<Vec<ConfigChange>, TrainError> {
        let changes = self.changes(given);
        if let Some(bad) = changes.iter().find(|c| !c.allowed_on_resume()) {
            return Err(TrainError::ResumeChange {
                key: bad.key.clone(),
                saved: bad.saved.to_string(),
                given: bad.given.to_string(),
            });
        }
        Ok(changes)
    }
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<ConfigChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y))
            if !TAGS.iter().any(|tag| x.get(*tag) != y.get(*tag)) =>
        {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                diff(
                    x.get(key).unwrap_or(&null),
                    y.get(key).unwrap_or(&null),
                    &child,
                    out,
                );
            }
        }
        _ if a == b => {}
        _ => out.push(ConfigChange {
            key: path.to_string(),
            saved: a.clone(),
            given: b.clone(),
        }),
    }
}

/// Keys that select an enum variant: when an override changes one, the object is replaced
/// instead of merged, because the other variant has other fields.
const TAGS: [&str; 2] = ["kind", "arch"];

fn merge(base: &mut Value, over: &Value, path: &str) -> Result<(), TrainError> {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let switches_variant = TAGS.iter().any(|tag| {
                o.get(*tag)
                    .is_some_and(|v| b.get(*tag).is_some_and(|bv| bv != v))
            });
            if switches_variant {
                *b = o.clone();
                return Ok(());
            }
            for (key, v) in o {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get_mut(key) {
                    Some(slot) => merge(slot, v, &child)?,
                    None => {
                        let known: Vec<&str> = b.keys().map(String::as_str).collect();
                        return Err(TrainError::Config(format!(
                            "unknown config key `{child}` (known here: {})",
                            known.join(", ")
                        )));
                    }
                }
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v.clone();
            Ok(())
        }
    }
}

/// Sets `a.b.c` to `value`, failing on unknown keys.
fn set_path(root: &mut Value, dotted: &str, value: Value) -> Result<(), TrainError> {
    let mut over = value;
    for key in dotted.rsplit('.') {
        let mut map = serde_json::Map::new();
        map.insert(key.to_string(), over);
        over = Value::Object(map);
    }
    merge(root, &over, "")
}

/// Parses `key=value` where value is JSON, or a bare string when it is not valid JSON.
///
/// # Errors
/// [`TrainError::Config`] when there is no `=`.
pub fn parse_set(text: &str) -> Result<(String, Value), TrainError> {
    let (key, raw) = text.split_once('=').ok_or_else(|| {
        TrainError::Config(format!(
            "--set {text}: expected key=value, e.g. optim.lr=2e-4"
        ))
    })?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok((key.trim().to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip() {
        for preset in Preset::ALL {
            let config = preset.config();
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name()));
            let json = serde_json::to_string(&config).unwrap();
            let back: TrainConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, config);
            assert_eq!(Preset::from_name(preset.name()).unwrap(), preset);
        }
    }

    #[test]
    fn seed_preset_is_the_notebook() {
        let c = Preset::Seed.config();
        assert_eq!(c.batch_size, 128);
        assert_eq!(c.epochs, Some(100));
        assert_eq!(c.optim.lr, 1e-3);
        assert_eq!(c.objective.loss, crate::objective::LossKind::L1);
        assert_eq!(c.schedule, BetaSchedule::seed_notebook());
        assert_eq!(c.sample_every_epochs, 5);
    }

    /// `ddpm-cifar10` against Ho et al. 2020, App. B (CIFAR-10), and the defaults of the official
    /// code's `scripts/run_cifar.py` (hojonathanho/diffusion), which spell out the same values
    /// together with the warm-up and the gradient clip.
    #[test]
    fn ddpm_cifar10_preset_is_the_papers_setup() {
        use crate::objective::LossKind;
        use crate::optim::{LrDecay, OptimizerKind};

        let c = Preset::DdpmCifar10.config();
        // CIFAR-10's 50k training images at their own 32×32, random horizontal flips
        // (`randflip=1`), scaled to [-1, 1].
        assert_eq!(
            c.dataset,
            DatasetSpec::Cifar10 {
                split: Split::Train
            }
        );
        assert_eq!(c.transform.size, None);
        assert_eq!(c.transform.flip_p, 0.5);
        assert!(c.transform.normalize);
        // Batch 128 (`total_bs=128`), 800k steps.
        assert_eq!(c.batch_size, 128);
        assert_eq!(c.max_steps, Some(800_000));
        assert_eq!(c.epochs, None);
        assert_eq!(c.total_steps(50_000 / 128), 800_000);
        // T = 1000, β linear from 1e-4 to 0.02 (§4, `beta_schedule='linear'`).
        assert_eq!(
            c.schedule,
            BetaSchedule::Linear {
                n_steps: 1000,
                start: 1e-4,
                end: 0.02
            }
        );
        // L_simple: the L2 loss on ε (Eq. 14, `model_mean_type='eps'`, `loss_type='mse'`),
        // unweighted.
        assert_eq!(c.objective.prediction, Prediction::Eps);
        assert_eq!(c.objective.loss, LossKind::L2);
        assert_eq!(c.objective.min_snr_gamma, None);
        // Adam at 2e-4 (`lr=2e-4`) with TF's Adam defaults (β = 0.9, 0.999; the code passes
        // ε = 1e-8), no weight decay, 5000 linear warm-up steps (`warmup=5000`), then constant;
        // gradients clipped to global norm 1 (`grad_clip=1.`).
        let o = &c.optim;
        assert_eq!(o.kind, OptimizerKind::Adam);
        assert_eq!((o.lr, o.beta1, o.beta2, o.eps), (2e-4, 0.9, 0.999, 1e-8));
        assert_eq!(o.weight_decay, 0.0);
        assert_eq!(o.warmup_steps, 5000);
        assert_eq!(o.decay, LrDecay::Constant);
        assert_eq!(o.grad_clip, Some(1.0));
        assert!(o.lr_at(0, 800_000) < 2e-4 * 1e-3);
        assert_eq!(o.lr_at(4999, 800_000), 2e-4);
        assert_eq!(o.lr_at(799_999, 800_000), 2e-4);
        // EMA of the weights with decay 0.9999. (`ema.warmup`, min(d, (1 + n)/(10 + n)), is not
        // the paper's: the official code's `make_ema` uses 0.9999 from the second update on.)
        assert_eq!(c.ema.decay, 0.9999);
        // The 35.7M-parameter U-Net: ch 128, ch_mult (1, 2, 2, 2), two residual blocks per
        // level, self-attention at 16×16, dropout 0.1.
        let ModelConfig::Ddpm(m) = &c.model else {
            panic!("ddpm-cifar10 must use the paper's U-Net, got {:?}", c.model);
        };
        assert_eq!((m.in_channels, m.out_channels, m.image_size), (3, 3, 32));
        assert_eq!(m.channels, 128);
        assert_eq!(m.channel_mult, [1, 2, 2, 2]);
        assert_eq!(m.layers_per_block, 2);
        assert_eq!(m.attention_resolutions, [16]);
        assert_eq!(m.dropout, 0.1);
    }

    #[test]
    fn overrides_merge_and_unknown_keys_are_named() {
        let file = serde_json::json!({"optim": {"lr": 2e-4}, "epochs": 3});
        let sets = vec![
            parse_set("batch_size=16").unwrap(),
            parse_set("optim.grad_clip=0.5").unwrap(),
        ];
        let c = TrainConfig::resolve(Preset::Seed, Some(&file), &sets).unwrap();
        assert_eq!(
            (c.optim.lr, c.epochs, c.batch_size, c.optim.grad_clip),
            (2e-4, Some(3), 16, Some(0.5))
        );

        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lrr=1").unwrap()])
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown config key `optim.lrr`"),
            "{err}"
        );
        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lr=-1").unwrap()])
            .unwrap_err();
        assert!(err.to_string().contains("optim.lr = -1"), "{err}");
        let err = TrainConfig::resolve(
            Preset::Seed,
            None,
            &[parse_set("batch_size=\"x\"").unwrap()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(parse_set("novalue").is_err());
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = TrainConfig::resolve(Preset::Seed, None, &[parse_set("optim.lr=abc").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`optim.lr`") && err.contains("invalid type: string \"abc\""),
            "{err}"
        );
    }

    #[test]
    fn resume_accepts_only_the_listed_changes() {
        let saved = Preset::Seed.config();
        let given = saved
            .with_overrides(
                None,
                &[
                    parse_set("optim.lr=5e-4").unwrap(),
                    parse_set("max_steps=10").unwrap(),
                    parse_set("optim.decay=\"cosine\"").unwrap(),
                ],
            )
            .unwrap();
        let keys: Vec<String> = saved
            .check_resume(&given)
            .unwrap()
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert_eq!(keys, ["max_steps", "optim.decay", "optim.lr"]);
        for (set, key) in [
            ("schedule.n_steps=1000", "schedule.n_steps"),
            ("batch_size=64", "batch_size"),
            ("seed=1", "seed"),
            ("optim.grad_clip=0.5", "optim.grad_clip"),
            (
                r#"dataset={"kind":"fashion-mnist","split":"test"}"#,
                "dataset",
            ),
        ] {
            let given = saved
                .with_overrides(None, &[parse_set(set).unwrap()])
                .unwrap();
            let err = saved.check_resume(&given).unwrap_err();
            match &err {
                TrainError::ResumeChange { key: k, .. } => assert_eq!(k, key, "{set}"),
                other => panic!("{set}: {other}"),
            }
        }
        let ddpm = Preset::DdpmCifar10.config();
        let err = saved.check_resume(&ddpm).unwrap_err().to_string();
        assert!(err.contains("--resume cannot change `"), "{err}");
    }

    #[test]
    fn switching_a_variant_replaces_the_object() {
        let sets = vec![parse_set(r#"dataset={"kind":"fashion-mnist","split":"test"}"#).unwrap()];
        let c = TrainConfig::resolve(Preset::Seed, None, &sets).unwrap();
        assert_eq!(c.dataset, DatasetSpec::FashionMnist { split: Split::Test });
    }
}
