//! The diffusers folder format beyond the model's `config.json` (which `model` translates): the
//! scheduler's `scheduler_config.json`, read into a schedule and a prediction type and written
//! from them ([`DiffusersScheduler`]), and [`Pipeline::export`], which writes a whole pipeline
//! folder (or the model's folder alone) that diffusers loads.

use std::path::{Path, PathBuf};

use serde_json::Value;

use model::{ModelConfig, Prediction, UNetConfig, VarianceOutput};
use schedule::COSINE_MAX_BETA as COSINE_DIFFUSERS_MAX_BETA;
use schedule::{BetaSchedule, Schedule};

use super::{
    source_err, Pipeline, CLASS_NAMES_KEY, DIFFUSERS_CONFIG, DIFFUSERS_SAFETENSORS,
    SCHEDULER_CONFIG,
};
use crate::SampleError;

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
    /// `_class_name`: which diffusers scheduler wrote the file (the sampler a front end defaults
    /// to).
    pub class_name: Option<String>,
    /// `skip_prk_steps` (a `PNDMScheduler`'s; diffusers' default is false: PNDM's Runge–Kutta
    /// start).
    pub skip_prk_steps: bool,
    /// `variance_type`: `learned_range` for a network with 2·C output channels (Improved DDPM);
    /// the fixed types are all read as [`VarianceOutput::Fixed`] (samplers pick β_t or β̃_t).
    pub variance: VarianceOutput,
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
            class_name: None,
            skip_prk_steps: false,
            variance: VarianceOutput::Fixed,
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
        s.class_name = get("_class_name")
            .and_then(Value::as_str)
            .map(str::to_string);
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
        if let Some(v) = get("skip_prk_steps") {
            s.skip_prk_steps = v
                .as_bool()
                .ok_or("`skip_prk_steps` must be true or false")?;
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
        match get("variance_type").and_then(Value::as_str) {
            Some("learned_range") => s.variance = VarianceOutput::LearnedRange,
            Some(v) if v.starts_with("learned") => {
                return Err(format!(
                    "`variance_type` = \"{v}\" is not supported (learned_range is; a network \
                     that predicts Σ itself is not)"
                ))
            }
            _ => {}
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

/// How [`Pipeline::export`] lays a diffusers folder out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportLayout {
    /// A whole pipeline, as `DDPMPipeline.save_pretrained` writes it: `model_index.json`,
    /// the network in `unet/` and the scheduler in `scheduler/`; `DDPMPipeline` and
    /// `DDIMPipeline.from_pretrained` load it.
    #[default]
    Pipeline,
    /// The network's folder alone (`UNet2DModel.from_pretrained` loads it), with the
    /// scheduler's `scheduler_config.json` beside its `config.json`.
    ModelOnly,
}

/// The file naming a diffusers pipeline's components.
pub const MODEL_INDEX: &str = "model_index.json";

impl Pipeline {
    /// Writes the network as a diffusers model folder ([`ExportLayout::ModelOnly`]); see
    /// [`Pipeline::export`].
    ///
    /// # Errors
    /// As [`Pipeline::export`].
    pub fn export_diffusers(&self, out_dir: &Path) -> Result<(), SampleError> {
        self.export(out_dir, ExportLayout::ModelOnly, |_| Ok(()))
    }

    /// Writes the network as a diffusers folder laid out as `layout` says: the `UNet2DModel`'s
    /// `config.json`, `diffusion_pytorch_model.safetensors` with modern key names (whatever names
    /// the source used), and a `DDPMScheduler` `scheduler_config.json` for its schedule and
    /// prediction type; a pipeline also gets `model_index.json`. `extra` then writes whatever
    /// else belongs in the folder (a model card, a sample grid) into the staging folder it is
    /// given. The folder is staged beside its destination and renamed into place, and removed
    /// when anything fails; an existing, non-empty `out_dir` is refused.
    ///
    /// # Errors
    /// [`SampleError::Source`] for a SimpleUnet (diffusers has no such model), an existing
    /// non-empty folder, a file at `out_dir` or in place of one of its parent folders; [`SampleError::Model`] or [`SampleError::Source`] naming the file on IO errors;
    /// whatever `extra` returns.
    pub fn export(
        &self,
        out_dir: &Path,
        layout: ExportLayout,
        extra: impl FnOnce(&Path) -> Result<(), SampleError>,
    ) -> Result<(), SampleError> {
        let ModelConfig::Ddpm(unet) = &self.spec.model else {
            return Err(source_err(
                &self.spec.config_file,
                "a SimpleUnet has no diffusers equivalent: only the DDPM U-Net exports",
            ));
        };
        check_export_dir(out_dir)?;
        let name = out_dir
            .file_name()
            .ok_or_else(|| source_err(out_dir, "is not a folder name"))?;
        let tmp = out_dir.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        let io = |path: &Path, e: std::io::Error| source_err(path, e.to_string());
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        }
        let staged = self
            .write_export(unet, &tmp, layout)
            .and_then(|()| extra(&tmp))
            .and_then(|()| {
                if out_dir.exists() {
                    std::fs::remove_dir(out_dir).map_err(|e| io(out_dir, e))?;
                }
                std::fs::rename(&tmp, out_dir).map_err(|e| io(out_dir, e))
            });
        if staged.is_err() {
            // A failed export (a full disk, say) leaves nothing behind: the error is the news.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        staged
    }

    /// Writes the files of `layout` into the staging folder `tmp`.
    fn write_export(
        &self,
        unet: &UNetConfig,
        tmp: &Path,
        layout: ExportLayout,
    ) -> Result<(), SampleError> {
        let io = |path: &Path, e: std::io::Error| source_err(path, e.to_string());
        let (unet_dir, scheduler_dir) = match layout {
            ExportLayout::Pipeline => (tmp.join("unet"), tmp.join("scheduler")),
            ExportLayout::ModelOnly => (tmp.to_path_buf(), tmp.to_path_buf()),
        };
        for dir in [&unet_dir, &scheduler_dir] {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let write_json = |path: PathBuf, value: &Value| {
            let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
            std::fs::write(&path, text + "\n").map_err(|e| io(&path, e))
        };
        let mut config = unet.to_diffusers_config();
        if unet.num_classes.is_some() && !self.spec.class_names.is_empty() {
            config[CLASS_NAMES_KEY] = serde_json::json!(self.spec.class_names);
        }
        write_json(unet_dir.join(DIFFUSERS_CONFIG), &config)?;
        let mut scheduler = DiffusersScheduler::to_ddpm_scheduler_json(
            &self.spec.schedule,
            self.spec.prediction,
            self.spec.clip_sample,
        );
        if self.spec.variance == VarianceOutput::LearnedRange {
            scheduler["variance_type"] = "learned_range".into();
        }
        write_json(scheduler_dir.join(SCHEDULER_CONFIG), &scheduler)?;
        if layout == ExportLayout::Pipeline {
            write_json(
                tmp.join(MODEL_INDEX),
                &serde_json::json!({
                    "_class_name": "DDPMPipeline",
                    "scheduler": ["diffusers", "DDPMScheduler"],
                    "unet": ["diffusers", "UNet2DModel"],
                }),
            )?;
        }
        model::save_safetensors(&self.vs, &unet_dir.join(DIFFUSERS_SAFETENSORS))?;
        Ok(())
    }
}

/// Refuses an export destination that is not a new or empty folder, naming what is in the
/// way: a file at `out_dir`, a file where one of its parent folders should be, a non-empty
/// folder. [`Pipeline::export`] checks it first; a caller with work to do before the export
/// (loading the weights, drawing a sample grid) can check it before that work.
///
/// # Errors
/// [`SampleError::Source`] naming `out_dir` and what is in the way.
pub fn check_export_dir(out_dir: &Path) -> Result<(), SampleError> {
    if out_dir.is_dir() {
        let empty = std::fs::read_dir(out_dir)
            .map_err(|e| source_err(out_dir, e.to_string()))?
            .next()
            .is_none();
        if !empty {
            return Err(source_err(
                out_dir,
                "exists and is not empty: pick a new folder",
            ));
        }
        return Ok(());
    }
    if out_dir.symlink_metadata().is_ok() {
        return Err(source_err(
            out_dir,
            "is a file, not a folder: pick a new folder name, or remove the file",
        ));
    }
    // The nearest ancestor that exists must be a folder, or nothing can be made under it.
    if let Some(file) = out_dir
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| a.symlink_metadata().is_ok())
        .filter(|a| !a.is_dir())
    {
        return Err(source_err(
            out_dir,
            format!(
                "cannot be made: {} is a file, not a folder; pick a folder elsewhere",
                file.display()
            ),
        ));
    }
    Ok(())
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
            (json!({"variance_type": "learned"}), "variance_type"),
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
}
