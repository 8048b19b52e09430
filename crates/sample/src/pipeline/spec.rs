//! [`PipelineSpec`]: what a path names (a run, a checkpoint or a diffusers folder) and what its
//! JSON files say, read before any tensor is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use model::{ModelConfig, Precision, Prediction, UNetConfig, VarianceOutput};
use schedule::{BetaSchedule, Schedule};

use super::{
    read_json, source_err, DiffusersScheduler, SourceKind, Weights, CLASS_NAMES_KEY, DIFFUSERS_BIN,
    DIFFUSERS_CONFIG, DIFFUSERS_SAFETENSORS, SCHEDULER_CONFIG,
};
use crate::layout;
use crate::SampleError;

/// The `clip_sample` of the toolkit's own checkpoints: samplers that read it clamp x̂_0 (the
/// paper's sampling, and what `ddpm export` writes into their scheduler config).
pub const CHECKPOINT_CLIP_SAMPLE: bool = true;

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
    /// The digest `state.json` records for the weights file ([`layout::file_digest`]), checked
    /// before they load; `None` for a diffusers folder and a checkpoint written before digests.
    pub weights_digest: Option<String>,
    /// The network.
    pub model: ModelConfig,
    /// The noise schedule.
    pub schedule: BetaSchedule,
    /// What the network predicts.
    pub prediction: Prediction,
    /// Whether the network also outputs the learned variance (2·C channels).
    pub variance: VarianceOutput,
    /// Whether samplers clamp x̂_0 to [-1, 1] by default (the toolkit's checkpoints: yes;
    /// diffusers: the scheduler's `clip_sample`).
    pub clip_sample: bool,
    /// A diffusers folder's scheduler class (`_class_name` of its `scheduler_config.json`);
    /// `None` for the toolkit's checkpoints.
    pub scheduler_class: Option<String>,
    /// Whether that scheduler is a `PNDMScheduler` with its Runge–Kutta start (`skip_prk_steps`
    /// false or absent): `ddpm sample`'s default sampler is then `pndm --prk`.
    pub scheduler_prk: bool,
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
    /// Checks the weights file against the digest its checkpoint records, when it records one
    /// ([`PipelineSpec::weights_digest`]); [`Pipeline::from_spec`](super::Pipeline::from_spec)
    /// calls it before loading. Reads the whole file once.
    ///
    /// # Errors
    /// [`SampleError::Source`] naming the weights file when it does not match or cannot be read,
    /// or `state.json` when the digest is of an algorithm this build does not know.
    pub fn verify_weights(&self) -> Result<(), SampleError> {
        let Some(want) = &self.weights_digest else {
            return Ok(());
        };
        layout::check_digest(&self.weights_file, want).map_err(|e| match e {
            layout::DigestError::Algorithm(_) => source_err(&self.config_file, e.to_string()),
            layout::DigestError::Io(_) => source_err(&self.weights_file, e.to_string()),
            layout::DigestError::Mismatch { .. } => source_err(
                &self.weights_file,
                format!(
                    "{e}. Nothing was loaded. `ddpm checkpoint verify RUN_DIR` checks every \
                     checkpoint of the run, and an earlier one may be whole"
                ),
            ),
        })
    }

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

/// The partial view of a checkpoint's `state.json` that inference reads.
#[derive(Deserialize)]
struct StateView {
    format_version: u32,
    step: u64,
    config: ConfigView,
    #[serde(default)]
    class_names: Vec<String>,
    /// Absent in checkpoints written before digests.
    #[serde(default)]
    digests: BTreeMap<String, String>,
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
    /// Absent in checkpoints older than learned variances: fixed.
    #[serde(default)]
    variance: VarianceOutput,
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
        let weights_name = match weights {
            Weights::Ema => layout::EMA_FILE,
            Weights::Model => layout::MODEL_FILE,
        };
        let weights_file = dir.join(weights_name);
        if !weights_file.is_file() {
            return Err(source_err(&weights_file, "no such file in the checkpoint"));
        }
        Ok(Self {
            kind: SourceKind::Checkpoint,
            dir: dir.to_path_buf(),
            config_file,
            weights_file,
            weights_digest: state.digests.get(weights_name).cloned(),
            model: config.model,
            schedule: config.schedule,
            prediction: config.objective.prediction,
            variance: config.objective.variance,
            clip_sample: CHECKPOINT_CLIP_SAMPLE,
            scheduler_class: None,
            scheduler_prk: false,
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
        let learned = scheduler.variance == VarianceOutput::LearnedRange;
        if learned && unet.out_channels != 2 * unet.in_channels {
            return Err(source_err(
                scheduler_file.as_deref().unwrap_or(dir),
                format!(
                    "`variance_type` = \"learned_range\" needs a network with 2 · `in_channels` \
                     = {} output channels, but {} has `out_channels` = {}",
                    2 * unet.in_channels,
                    config_file.display(),
                    unet.out_channels
                ),
            ));
        }
        Ok(Self {
            kind: SourceKind::Diffusers {
                scheduler_config: scheduler_file.map(|p| normalize(&p)),
            },
            dir: dir.to_path_buf(),
            config_file,
            weights_file,
            weights_digest: None,
            model: ModelConfig::Ddpm(unet),
            schedule,
            prediction: scheduler.prediction,
            variance: scheduler.variance,
            clip_sample: scheduler.clip_sample,
            scheduler_class: scheduler.class_name.clone(),
            scheduler_prk: scheduler.class_name.as_deref() == Some("PNDMScheduler")
                && !scheduler.skip_prk_steps,
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

#[cfg(test)]
mod tests {
    use super::*;

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
