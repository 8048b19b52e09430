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
//! let ddim = SamplerConfig::Ddim { steps: 50, eta: 0.0, spacing: TimestepSpacing::Leading };
//! let images = pipe.generate(&ddim, 64, /* seed */ 0)?; // [64, 3, 32, 32] on [-1, 1]
//! sample::save_grid(&images, 8, "grid.png".as_ref())?;
//! # Ok::<(), sample::SampleError>(())
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use model::{Denoiser, ModelConfig, Precision, Prediction, UNetConfig};
use schedule::tensor::ScheduleTensors;
use schedule::{BetaSchedule, Schedule};

use crate::layout;
use crate::SamplerConfig;
use crate::{
    sample_batches, BatchPlan, ClassConditioning, SampleBatches, SampleError, SampleOptions,
};
use schedule::COSINE_MAX_BETA as COSINE_DIFFUSERS_MAX_BETA;

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

/// Everything a pipeline needs except the tensors, read from the JSON files of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// What kind of source.
    pub kind: SourceKind,
    /// The checkpoint directory or the diffusers model folder.
    pub dir: PathBuf,
    /// The file the network's configuration came from (`state.json` or `config.json`).
    pub config_file: PathBuf,
    /// The weights file.
    pub weights_file: PathBuf,
    /// The network.
    pub model: ModelConfig,
    /// The noise schedule.
    pub schedule: BetaSchedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// Whether samplers clamp x̂_0 to [-1, 1] by default (the toolkit's checkpoints: yes;
    /// diffusers: the scheduler's `clip_sample`).
    pub clip_sample: bool,
    /// The precision the network was trained at; a bf16 network samples under bf16 autocast on
    /// CUDA (a diffusers folder records none and samples in f32).
    pub precision: Precision,
    /// The training step of a checkpoint (`None` for a diffusers folder).
    pub step: Option<u64>,
    /// The names of a class-conditional network's classes, by label (empty when the source
    /// records none, or the network is unconditional).
    pub class_names: Vec<String>,
}

impl PipelineSpec {
    /// The network's number of classes (`None`: unconditional).
    pub fn num_classes(&self) -> Option<i64> {
        self.model.num_classes()
    }

    /// The name of class `label`: the recorded one, or the number.
    pub fn class_name(&self, label: i64) -> String {
        usize::try_from(label)
            .ok()
            .and_then(|l| self.class_names.get(l))
            .cloned()
            .unwrap_or_else(|| label.to_string())
    }
}

/// The key of a diffusers `config.json` under which exports record the class names.
pub const CLASS_NAMES_KEY: &str = "_class_names";

/// The partial view of a checkpoint's `state.json` that inference reads.
#[derive(Deserialize)]
struct StateView {
    format_version: u32,
    step: u64,
    config: ConfigView,
    #[serde(default)]
    class_names: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigView {
    model: ModelConfig,
    schedule: BetaSchedule,
    objective: ObjectiveView,
    /// Absent in checkpoints older than the setting: they trained in f32.
    #[serde(default = "f32_precision")]
    precision: Precision,
}

fn f32_precision() -> Precision {
    Precision::F32
}

#[derive(Deserialize)]
struct ObjectiveView {
    prediction: Prediction,
}

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

impl PipelineSpec {
    /// Finds what `path` names and reads its configuration (see the module docs for the kinds
    /// of path). Nothing is built and no weights are read, so this is cheap; the weights file is
    /// only checked to exist.
    ///
    /// # Errors
    /// [`SampleError::Source`] naming the file (and the key) when the path is none of the
    /// accepted kinds, a config cannot be read, or it uses a feature this toolkit lacks.
    pub fn resolve(path: &Path, weights: Weights) -> Result<Self, SampleError> {
        if !path.exists() {
            return Err(source_err(path, "does not exist"));
        }
        if path.join(layout::STATE_FILE).is_file() {
            return Self::checkpoint(path, weights);
        }
        for root in [path.join(layout::CHECKPOINTS_DIR), path.to_path_buf()] {
            if let Some(latest) = layout::latest(&root) {
                return Self::checkpoint(&latest, weights);
            }
        }
        for dir in [path.to_path_buf(), path.join("unet")] {
            let config = dir.join(DIFFUSERS_CONFIG);
            if config.is_file() && read_json(&config)?.get("_class_name").is_some() {
                return Self::diffusers(&dir);
            }
        }
        Err(source_err(
            path,
            format!(
                "neither a checkpoint ({}), a run directory with {}/, nor a diffusers folder \
                 ({DIFFUSERS_CONFIG} with `_class_name`, or unet/{DIFFUSERS_CONFIG})",
                layout::STATE_FILE,
                layout::CHECKPOINTS_DIR
            ),
        ))
    }

    fn checkpoint(dir: &Path, weights: Weights) -> Result<Self, SampleError> {
        let config_file = dir.join(layout::STATE_FILE);
        let text = std::fs::read_to_string(&config_file)
            .map_err(|e| source_err(&config_file, e.to_string()))?;
        let state: StateView = serde_json::from_str(&text).map_err(|e| {
            source_err(
                &config_file,
                format!("not a training checkpoint state: {e}"),
            )
        })?;
        if state.format_version != layout::FORMAT_VERSION {
            return Err(source_err(
                &config_file,
                format!(
                    "checkpoint format {} is not supported (this build reads {})",
                    state.format_version,
                    layout::FORMAT_VERSION
                ),
            ));
        }
        let config = state.config;
        config
            .model
            .validate()
            .map_err(|e| source_err(&config_file, format!("`config.model`: {e}")))?;
        Schedule::new(&config.schedule)
            .map_err(|e| source_err(&config_file, format!("`config.schedule`: {e}")))?;
        let weights_file = dir.join(match weights {
            Weights::Ema => layout::EMA_FILE,
            Weights::Model => layout::MODEL_FILE,
        });
        if !weights_file.is_file() {
            return Err(source_err(&weights_file, "no such file in the checkpoint"));
        }
        Ok(Self {
            kind: SourceKind::Checkpoint,
            dir: dir.to_path_buf(),
            config_file,
            weights_file,
            model: config.model,
            schedule: config.schedule,
            prediction: config.objective.prediction,
            clip_sample: true,
            precision: config.precision,
            step: Some(state.step),
            class_names: state.class_names,
        })
    }

    fn diffusers(dir: &Path) -> Result<Self, SampleError> {
        let config_file = dir.join(DIFFUSERS_CONFIG);
        let value = read_json(&config_file)?;
        let unet = UNetConfig::from_diffusers_config(&value)
            .map_err(|e| source_err(&config_file, e.to_string()))?;
        let class_names = match value.get(CLASS_NAMES_KEY) {
            None | Some(Value::Null) => Vec::new(),
            Some(names) => serde_json::from_value(names.clone()).map_err(|_| {
                source_err(
                    &config_file,
                    format!("`{CLASS_NAMES_KEY}` must be a list of strings"),
                )
            })?,
        };
        let weights_file = [DIFFUSERS_SAFETENSORS, DIFFUSERS_BIN]
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                source_err(
                    dir,
                    format!(
                        "a diffusers folder without {DIFFUSERS_SAFETENSORS} or {DIFFUSERS_BIN}"
                    ),
                )
            })?;
        let scheduler_file = [
            dir.join(SCHEDULER_CONFIG),
            dir.join("..").join("scheduler").join(SCHEDULER_CONFIG),
            dir.join("..").join(SCHEDULER_CONFIG),
        ]
        .into_iter()
        .find(|p| p.is_file());
        let scheduler = match &scheduler_file {
            Some(path) => DiffusersScheduler::from_json(&read_json(path)?)
                .map_err(|message| source_err(path, message))?,
            None => DiffusersScheduler::default(),
        };
        let schedule = scheduler
            .beta_schedule()
            .map_err(|message| source_err(scheduler_file.as_deref().unwrap_or(dir), message))?;
        Ok(Self {
            kind: SourceKind::Diffusers {
                scheduler_config: scheduler_file.map(|p| normalize(&p)),
            },
            dir: dir.to_path_buf(),
            config_file,
            weights_file,
            model: ModelConfig::Ddpm(unet),
            schedule,
            prediction: scheduler.prediction,
            clip_sample: scheduler.clip_sample,
            precision: Precision::F32,
            step: None,
            class_names,
        })
    }
}

/// `a/b/../c` as `a/c`, for messages.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The keys of a diffusers scheduler config that decide the forward process and the network's
/// target (DDPMScheduler, DDIMScheduler and the solvers share them), with DDPMScheduler's
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusersScheduler {
    /// `num_train_timesteps`: T.
    pub num_train_timesteps: usize,
    /// `beta_start`.
    pub beta_start: f64,
    /// `beta_end`.
    pub beta_end: f64,
    /// `beta_schedule`: `linear`, `scaled_linear`, `squaredcos_cap_v2` or `sigmoid`.
    pub beta_schedule: String,
    /// `trained_betas`: explicit betas, overriding the rest.
    pub trained_betas: Option<Vec<f64>>,
    /// `prediction_type`: `epsilon`, `sample` or `v_prediction`.
    pub prediction: Prediction,
    /// `clip_sample`.
    pub clip_sample: bool,
}

impl Default for DiffusersScheduler {
    /// DDPMScheduler's defaults.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction: Prediction::Eps,
            clip_sample: true,
        }
    }
}

impl DiffusersScheduler {
    /// Reads a `scheduler_config.json`; keys that change sampling in ways this toolkit does not
    /// implement are refused, naming the key.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let obj = value
            .as_object()
            .ok_or("a scheduler config must be a JSON object")?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let mut s = Self::default();
        let num = |key: &str| -> Result<Option<f64>, String> {
            get(key)
                .map(|v| v.as_f64().ok_or(format!("`{key}` must be a number")))
                .transpose()
        };
        if let Some(v) = get("num_train_timesteps") {
            s.num_train_timesteps = v
                .as_u64()
                .ok_or("`num_train_timesteps` must be a positive integer")?
                as usize;
        }
        if let Some(v) = num("beta_start")? {
            s.beta_start = v;
        }
        if let Some(v) = num("beta_end")? {
            s.beta_end = v;
        }
        if let Some(v) = get("beta_schedule") {
            s.beta_schedule = v
                .as_str()
                .ok_or("`beta_schedule` must be a string")?
                .to_string();
        }
        if let Some(v) = get("trained_betas") {
            s.trained_betas = Some(
                serde_json::from_value(v.clone())
                    .map_err(|_| "`trained_betas` must be a list of numbers".to_string())?,
            );
        }
        if let Some(v) = get("prediction_type") {
            s.prediction = match v.as_str() {
                Some("epsilon") => Prediction::Eps,
                Some("sample") => Prediction::X0,
                Some("v_prediction") => Prediction::V,
                _ => {
                    return Err(format!(
                        "`prediction_type` = {v} is not supported (epsilon, sample or v_prediction)"
                    ))
                }
            };
        }
        if let Some(v) = get("clip_sample") {
            s.clip_sample = v.as_bool().ok_or("`clip_sample` must be true or false")?;
        }
        if let Some(range) = num("clip_sample_range")? {
            if range != 1.0 {
                return Err(format!(
                    "`clip_sample_range` = {range} is not supported (only 1.0)"
                ));
            }
        }
        for key in ["thresholding", "rescale_betas_zero_snr"] {
            if get(key).and_then(Value::as_bool) == Some(true) {
                return Err(format!("`{key}` = true is not supported"));
            }
        }
        if let Some(v) = get("variance_type").and_then(Value::as_str) {
            if v.starts_with("learned") {
                return Err(format!(
                    "`variance_type` = \"{v}\" is not supported: the networks here predict no variance"
                ));
            }
        }
        Ok(s)
    }

    /// The schedule these keys describe.
    ///
    /// # Errors
    /// A message naming `beta_schedule` when it is not one of the supported kinds.
    pub fn beta_schedule(&self) -> Result<BetaSchedule, String> {
        let n_steps = self.num_train_timesteps;
        let (start, end) = (self.beta_start, self.beta_end);
        let schedule = if let Some(betas) = &self.trained_betas {
            BetaSchedule::Custom {
                betas: betas.clone(),
            }
        } else {
            match self.beta_schedule.as_str() {
                "linear" => BetaSchedule::Linear {
                    n_steps,
                    start,
                    end,
                },
                // √β evenly spaced, squared: the official DDPM code's `quad`.
                "scaled_linear" => BetaSchedule::Quadratic {
                    n_steps,
                    start,
                    end,
                },
                "squaredcos_cap_v2" => BetaSchedule::Cosine {
                    n_steps,
                    s: schedule::COSINE_S,
                    max_beta: COSINE_DIFFUSERS_MAX_BETA,
                },
                "sigmoid" => BetaSchedule::Sigmoid {
                    n_steps,
                    start,
                    end,
                },
                other => {
                    return Err(format!(
                        "`beta_schedule` = \"{other}\" is not supported (linear, scaled_linear, \
                         squaredcos_cap_v2 or sigmoid)"
                    ))
                }
            }
        };
        Schedule::new(&schedule).map_err(|e| format!("the schedule: {e}"))?;
        Ok(schedule)
    }

    /// The `scheduler_config.json` of a diffusers `DDPMScheduler` for `schedule` and
    /// `prediction` (a custom schedule goes out as `trained_betas`).
    pub fn to_ddpm_scheduler_json(
        schedule: &BetaSchedule,
        prediction: Prediction,
        clip_sample: bool,
    ) -> Value {
        let (kind, n_steps, start, end, trained): (&str, usize, f64, f64, Option<&Vec<f64>>) =
            match schedule {
                BetaSchedule::Linear {
                    n_steps,
                    start,
                    end,
                } => ("linear", *n_steps, *start, *end, None),
                BetaSchedule::Quadratic {
                    n_steps,
                    start,
                    end,
                } => ("scaled_linear", *n_steps, *start, *end, None),
                BetaSchedule::Sigmoid {
                    n_steps,
                    start,
                    end,
                } => ("sigmoid", *n_steps, *start, *end, None),
                BetaSchedule::Cosine { n_steps, .. } => {
                    ("squaredcos_cap_v2", *n_steps, 1e-4, 0.02, None)
                }
                BetaSchedule::Custom { betas } => ("linear", betas.len(), 1e-4, 0.02, Some(betas)),
            };
        // diffusers' cosine schedule has s = 0.008 and max_beta = 0.999 fixed; another cosine
        // goes out as explicit betas.
        let custom_cosine = match schedule {
            BetaSchedule::Cosine { s, max_beta, .. } => {
                *s != schedule::COSINE_S || *max_beta != COSINE_DIFFUSERS_MAX_BETA
            }
            _ => false,
        };
        let betas: Option<Vec<f64>> = if custom_cosine {
            Some(
                Schedule::new(schedule)
                    .map(|s| s.betas().to_vec())
                    .unwrap_or_default(),
            )
        } else {
            trained.cloned()
        };
        serde_json::json!({
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": n_steps,
            "beta_start": start,
            "beta_end": end,
            "beta_schedule": kind,
            "trained_betas": betas,
            "variance_type": "fixed_small",
            "clip_sample": clip_sample,
            "prediction_type": match prediction {
                Prediction::Eps => "epsilon",
                Prediction::X0 => "sample",
                Prediction::V => "v_prediction",
            },
        })
    }
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

    /// Builds the network of `spec` on `device` and loads its weights.
    ///
    /// # Errors
    /// [`SampleError::Weights`] when the weights do not fit the network (naming the file and
    /// every bad key), [`SampleError::Source`] when a `.bin` is not a state dict of tensors.
    pub fn from_spec(spec: PipelineSpec, device: Device) -> Result<Self, SampleError> {
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

    /// The sampling options this source implies: its prediction type, its `clip_sample` (unless
    /// `clip_x0` overrides it), bf16 autocast on CUDA when it was trained so.
    pub fn options(&self, clip_x0: Option<bool>, n_snapshots: usize) -> SampleOptions {
        SampleOptions {
            prediction: self.spec.prediction,
            clip_x0: clip_x0.unwrap_or(self.spec.clip_sample),
            n_snapshots,
            autocast: self.spec.precision.autocast(self.device()),
            class_cond: None,
        }
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

    /// Writes the network as a diffusers folder that `UNet2DModel.from_pretrained(out_dir)` loads:
    /// `config.json`, `diffusion_pytorch_model.safetensors` with modern key names (whatever names
    /// the source used), and a `DDPMScheduler` `scheduler_config.json` for its schedule and
    /// prediction type. The folder is written beside its destination and renamed into place;
    /// an existing, non-empty `out_dir` is refused.
    ///
    /// # Errors
    /// [`SampleError::Source`] for a SimpleUnet (diffusers has no such model) or an existing
    /// folder; [`SampleError::Model`] or [`SampleError::Source`] naming the file on IO errors.
    pub fn export_diffusers(&self, out_dir: &Path) -> Result<(), SampleError> {
        let ModelConfig::Ddpm(unet) = &self.spec.model else {
            return Err(source_err(
                &self.spec.config_file,
                "a SimpleUnet has no diffusers equivalent: only the DDPM U-Net exports",
            ));
        };
        if out_dir.exists() && std::fs::read_dir(out_dir).map_or(true, |mut d| d.next().is_some()) {
            return Err(source_err(
                out_dir,
                "exists and is not empty: pick a new folder",
            ));
        }
        let name = out_dir
            .file_name()
            .ok_or_else(|| source_err(out_dir, "is not a folder name"))?;
        let tmp = out_dir.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        let io = |path: &Path, e: std::io::Error| source_err(path, e.to_string());
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let write_json = |file: &str, value: &Value| {
            let path = tmp.join(file);
            let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
            std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))
        };
        let mut config = unet.to_diffusers_config();
        if unet.num_classes.is_some() && !self.spec.class_names.is_empty() {
            config[CLASS_NAMES_KEY] = serde_json::json!(self.spec.class_names);
        }
        write_json(DIFFUSERS_CONFIG, &config)?;
        write_json(
            SCHEDULER_CONFIG,
            &DiffusersScheduler::to_ddpm_scheduler_json(
                &self.spec.schedule,
                self.spec.prediction,
                self.spec.clip_sample,
            ),
        )?;
        model::save_safetensors(&self.vs, &tmp.join(DIFFUSERS_SAFETENSORS))?;
        if out_dir.exists() {
            std::fs::remove_dir(out_dir).map_err(|e| io(out_dir, e))?;
        }
        std::fs::rename(&tmp, out_dir).map_err(|e| io(out_dir, e))
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
            ..self.options(None, 0)
        };
        let batches = self
            .sample_batches(sampler, &options, plan, |_, _| {})?
            .map(|b| b.map(|b| b.output.images))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&batches, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diffusers_scheduler_keys_map_to_schedules() {
        let s = DiffusersScheduler::from_json(&json!({
            "_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear",
            "num_train_timesteps": 500, "beta_start": 0.00085, "beta_end": 0.012,
            "prediction_type": "v_prediction", "clip_sample": false, "trained_betas": null
        }))
        .unwrap();
        assert_eq!(
            s.beta_schedule().unwrap(),
            BetaSchedule::Quadratic {
                n_steps: 500,
                start: 0.00085,
                end: 0.012
            }
        );
        assert_eq!((s.prediction, s.clip_sample), (Prediction::V, false));
        let d = DiffusersScheduler::from_json(&json!({})).unwrap();
        assert_eq!(d, DiffusersScheduler::default());
        assert_eq!(
            d.beta_schedule().unwrap(),
            BetaSchedule::Linear {
                n_steps: 1000,
                start: 1e-4,
                end: 0.02
            }
        );
    }

    #[test]
    fn unsupported_scheduler_keys_are_named() {
        for (config, key) in [
            (json!({"beta_schedule": "exotic"}), "beta_schedule"),
            (json!({"prediction_type": "flow"}), "prediction_type"),
            (json!({"thresholding": true}), "thresholding"),
            (json!({"variance_type": "learned_range"}), "variance_type"),
            (
                json!({"num_train_timesteps": "many"}),
                "num_train_timesteps",
            ),
        ] {
            let err = DiffusersScheduler::from_json(&config)
                .and_then(|s| s.beta_schedule().map(|_| s))
                .unwrap_err();
            assert!(err.contains(key), "{config}: {err}");
        }
    }

    #[test]
    fn scheduler_json_round_trips() {
        for schedule in [
            BetaSchedule::Linear {
                n_steps: 300,
                start: 1e-4,
                end: 0.02,
            },
            BetaSchedule::Quadratic {
                n_steps: 100,
                start: 1e-4,
                end: 0.02,
            },
            BetaSchedule::Cosine {
                n_steps: 50,
                s: schedule::COSINE_S,
                max_beta: COSINE_DIFFUSERS_MAX_BETA,
            },
        ] {
            let value = DiffusersScheduler::to_ddpm_scheduler_json(&schedule, Prediction::X0, true);
            let back = DiffusersScheduler::from_json(&value).unwrap();
            assert_eq!(back.beta_schedule().unwrap(), schedule);
            assert_eq!(back.prediction, Prediction::X0);
        }
    }

    #[test]
    fn paths_that_are_no_source_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = PipelineSpec::resolve(dir.path(), Weights::Ema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&dir.path().display().to_string()) && err.contains("diffusers"),
            "{err}"
        );
        let missing = dir.path().join("nope");
        let err = PipelineSpec::resolve(&missing, Weights::Ema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("does not exist"),
            "{err}"
        );
    }
}
