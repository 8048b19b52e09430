//! The model card of an exported pipeline (`README.md`, as the Hugging Face Hub shows it): YAML
//! front matter (`library_name`, `license`, `tags`, `datasets`), the training recipe read from
//! the checkpoint's `state.json`, the best FID of the run with the protocol it was measured
//! under, a sample grid, and how to load the folder with this toolkit and with diffusers.
//!
//! A diffusers folder that did not come from a training run has no recipe; its card says so.

use std::path::Path;

use model::Precision;
use sample::{PipelineSpec, SourceKind};

use crate::checkpoint::CheckpointState;
use crate::quality::{read_best, BestRecord};
use crate::{Preset, TrainConfig, TrainError};

/// How a run was trained, as a card shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The preset whose network and schedule the run used, or `custom`.
    pub preset: String,
    /// Optimizer steps taken at the exported checkpoint.
    pub step: u64,
    /// The global batch.
    pub batch_size: usize,
    /// Gradient accumulation.
    pub grad_accum: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Warm-up steps of the learning rate.
    pub warmup_steps: u64,
    /// The EMA decay.
    pub ema_decay: f64,
    /// The training precision.
    pub precision: Precision,
    /// Data-parallel ranks.
    pub world_size: usize,
    /// The dataset's kind (`cifar10`, `folder`, …).
    pub dataset: &'static str,
    /// The run's seed.
    pub seed: u64,
}

/// A model card: what [`ModelCard::render`] writes as `README.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// The heading (the export's folder name).
    pub title: String,
    /// The `license` of the front matter (a Hub license id such as `apache-2.0`, or `other`).
    pub license: String,
    /// Whether the network takes class labels.
    pub class_conditional: bool,
    /// The class names, by label, when the source records them.
    pub class_names: Vec<String>,
    /// Hub dataset ids for the `datasets` of the front matter.
    pub datasets: Vec<String>,
    /// `[C, H, W]` of the images.
    pub image_shape: [i64; 3],
    /// The number of diffusion steps T.
    pub n_train_steps: usize,
    /// How it was trained (`None`: not a training checkpoint).
    pub recipe: Option<Recipe>,
    /// The run's best FID, when it evaluated one.
    pub best: Option<BestRecord>,
    /// The file name of the sample grid inside the folder, if one is written.
    pub grid: Option<String>,
}

/// The Hub's id of a dataset kind of this toolkit, when it has one.
fn hub_dataset(kind: &str) -> Option<&'static str> {
    match kind {
        "cifar10" => Some("uoft-cs/cifar10"),
        "cifar100" => Some("uoft-cs/cifar100"),
        "mnist" => Some("ylecun/mnist"),
        "fashion-mnist" => Some("zalando-datasets/fashion_mnist"),
        _ => None,
    }
}

impl ModelCard {
    /// The card of the pipeline `spec` names: its recipe and best FID when it is a training
    /// checkpoint (the run's `checkpoints/best/fid.json`, if any), with `license` and a heading
    /// `title`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming `state.json` or `fid.json` when they do not parse.
    pub fn for_source(spec: &PipelineSpec, title: &str, license: &str) -> Result<Self, TrainError> {
        let (recipe, best) = match spec.kind {
            SourceKind::Checkpoint => {
                let recipe = read_recipe(&spec.config_file)?;
                let best = match spec.dir.parent() {
                    Some(checkpoints) => read_best(checkpoints)?,
                    None => None,
                };
                (Some(recipe), best)
            }
            SourceKind::Diffusers { .. } => (None, None),
        };
        let datasets = recipe
            .as_ref()
            .map(|r| hub_dataset(r.dataset).map(str::to_string))
            .into_iter()
            .flatten()
            .collect();
        let s = spec.model.image_size();
        Ok(Self {
            title: title.to_string(),
            license: license.to_string(),
            class_conditional: spec.num_classes().is_some(),
            class_names: spec.class_names.clone(),
            datasets,
            image_shape: [spec.model.in_channels(), s, s],
            n_train_steps: schedule::Schedule::new(&spec.schedule)
                .map(|s| s.n_steps())
                .unwrap_or(0),
            recipe,
            best,
            grid: None,
        })
    }

    /// The card as Markdown with YAML front matter.
    pub fn render(&self) -> String {
        let mut out = self.front_matter();
        out += &format!("\n# {}\n\n", self.title);
        let kind = if self.class_conditional {
            format!(
                "a class-conditional DDPM U-Net ({} classes, a `UNet2DModel` with a class \
                 embedding whose last row is the null label for classifier-free guidance)",
                self.class_names.len().max(1)
            )
        } else {
            "an unconditional DDPM U-Net (`UNet2DModel`)".to_string()
        };
        let [c, h, w] = self.image_shape;
        out += &format!(
            "A denoising diffusion probabilistic model (Ho et al. 2020): {kind} for {c}×{h}×{w} \
             images, T = {} diffusion steps, exported by the `ddpm` toolkit as a diffusers \
             pipeline (`unet/`, `scheduler/`, `model_index.json`).\n\n",
            self.n_train_steps
        );
        out += &self.recipe_section();
        out += &self.quality_section();
        if let Some(grid) = &self.grid {
            out += &format!("## Samples\n\n![samples]({grid})\n\n");
        }
        out += &self.usage_section();
        out
    }

    fn front_matter(&self) -> String {
        let mut out = String::from("---\nlibrary_name: diffusers\n");
        out += &format!("license: {}\n", yaml_str(&self.license));
        out += "tags:\n";
        let first = if self.class_conditional {
            "class-conditional"
        } else {
            "unconditional-image-generation"
        };
        for tag in [first, "ddpm", "diffusers"] {
            out += &format!("- {tag}\n");
        }
        if !self.datasets.is_empty() {
            out += "datasets:\n";
            for d in &self.datasets {
                out += &format!("- {}\n", yaml_str(d));
            }
        }
        if !self.class_conditional {
            out += "pipeline_tag: unconditional-image-generation\n";
        }
        out + "---\n"
    }

    fn recipe_section(&self) -> String {
        let Some(r) = &self.recipe else {
            return "## Training\n\nExported from a diffusers folder: the training recipe is \
                    not recorded there.\n\n"
                .to_string();
        };
        let precision = match r.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 autocast on CUDA (f32 on the CPU)",
            Precision::Fp16 => "fp16 autocast with loss scaling",
        };
        let rows = [
            ("preset", r.preset.clone()),
            ("dataset", r.dataset.to_string()),
            ("steps", r.step.to_string()),
            ("batch size", r.batch_size.to_string()),
            ("gradient accumulation", r.grad_accum.to_string()),
            (
                "learning rate",
                format!("{} ({} warm-up steps)", r.lr, r.warmup_steps),
            ),
            ("EMA decay", r.ema_decay.to_string()),
            ("precision", precision.to_string()),
            ("world size", r.world_size.to_string()),
            ("seed", r.seed.to_string()),
        ];
        let mut out = String::from("## Training recipe\n\n| setting | value |\n| --- | --- |\n");
        for (k, v) in rows {
            out += &format!("| {k} | {v} |\n");
        }
        out + "\n"
    }

    fn quality_section(&self) -> String {
        let Some(b) = &self.best else {
            return String::new();
        };
        let sampler = serde_json::to_string(&b.sampler).unwrap_or_default();
        let kid = b.kid.map(|k| format!(", KID {k:.4}")).unwrap_or_default();
        format!(
            "## Quality\n\nBest FID during training: **{:.2}**{kid} at step {}, over {} EMA \
             samples drawn with `{sampler}`, scored under `{}`.\n\n",
            b.fid, b.step, b.n_samples, b.protocol
        )
    }

    fn usage_section(&self) -> String {
        let [c, h, w] = self.image_shape;
        let mut out = String::from(
            "## Use\n\nWith the `ddpm` toolkit (a local folder, or `hf:OWNER/NAME` once it is on \
             the Hub):\n\n```sh\nddpm sample --checkpoint PATH -n 16 --grid samples.png\n```\n\n\
             With diffusers:\n\n```python\nimport torch\nfrom diffusers import DDPMPipeline\n\n\
             pipe = DDPMPipeline.from_pretrained(\"PATH\")\n",
        );
        if self.class_conditional {
            out += &format!(
                "# DDPMPipeline passes no class labels: run its scheduler with them.\n\
                 labels = torch.arange(8) % pipe.unet.config.num_class_embeds\n\
                 x = torch.randn(len(labels), {c}, {h}, {w})\n\
                 pipe.scheduler.set_timesteps(pipe.scheduler.config.num_train_timesteps)\n\
                 for t in pipe.scheduler.timesteps:\n\
                 \x20   with torch.no_grad():\n\
                 \x20       eps = pipe.unet(x, t, class_labels=labels).sample\n\
                 \x20   x = pipe.scheduler.step(eps, t, x).prev_sample\n"
            );
        } else {
            out += "image = pipe(batch_size=1).images[0]\n";
        }
        out + "```\n"
    }
}

/// A YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The recipe recorded in a checkpoint's `state.json`.
fn read_recipe(state_file: &Path) -> Result<Recipe, TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: state_file.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(state_file).map_err(|e| bad(e.to_string()))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a checkpoint state: {e}")))?;
    let config: TrainConfig = serde_json::from_value(state.config)
        .map_err(|e| bad(format!("`config` is not a training configuration: {e}")))?;
    let preset = Preset::ALL
        .iter()
        .find(|p| {
            let c = p.config();
            c.model == config.model && c.schedule == config.schedule
        })
        .map_or_else(|| "custom".to_string(), |p| p.name().to_string());
    Ok(Recipe {
        preset,
        step: state.step,
        batch_size: config.batch_size,
        grad_accum: config.grad_accum,
        lr: config.optim.lr,
        warmup_steps: config.optim.warmup_steps,
        ema_decay: config.ema.decay,
        precision: config.precision,
        world_size: state.world_size,
        dataset: config.dataset.name(),
        seed: state.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn card(class_conditional: bool) -> ModelCard {
        ModelCard {
            title: "tiny".into(),
            license: "apache-2.0".into(),
            class_conditional,
            class_names: vec!["a\"b".into()],
            datasets: vec!["uoft-cs/cifar10".into()],
            image_shape: [3, 8, 8],
            n_train_steps: 50,
            recipe: None,
            best: None,
            grid: Some("samples.png".into()),
        }
    }

    #[test]
    fn the_front_matter_names_the_library_license_tags_and_datasets() {
        let text = card(false).render();
        let front = text
            .strip_prefix("---\n")
            .and_then(|t| t.split_once("\n---\n"))
            .map(|(f, _)| f)
            .unwrap();
        for line in [
            "library_name: diffusers",
            "license: \"apache-2.0\"",
            "- unconditional-image-generation",
            "- ddpm",
            "- \"uoft-cs/cifar10\"",
        ] {
            assert!(front.lines().any(|l| l == line), "{line}: {front}");
        }
        assert!(text.contains("![samples](samples.png)"));
        assert!(text.contains("the training recipe is not recorded"));
        let cond = card(true).render();
        assert!(cond.contains("- class-conditional") && cond.contains("class_labels=labels"));
        assert_eq!(yaml_str("a\"b\\"), "\"a\\\"b\\\\\"");
    }

    /// A checkpoint of a run whose FID in the loop made `checkpoints/best/`: the card has the
    /// recipe from `state.json` and the best FID with its sampler and protocol.
    #[test]
    fn a_run_with_a_best_fid_shows_it_with_its_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join("checkpoints");
        let step = checkpoints.join(sample::layout::dir_name(10));
        std::fs::create_dir_all(&step).unwrap();
        let state = CheckpointState {
            format_version: sample::layout::FORMAT_VERSION,
            step: 10,
            epoch: 1,
            batch_in_epoch: 0,
            seed: 7,
            ema_updates: 10,
            skipped_steps: 0,
            config: serde_json::to_value(Preset::DdpmCifar10.config()).unwrap(),
            world_size: 2,
            class_names: Vec::new(),
            loss_scale: None,
            digests: Default::default(),
            timestep_history: None,
        };
        let write = |path: PathBuf, value: serde_json::Value| {
            std::fs::write(path, serde_json::to_string(&value).unwrap()).unwrap()
        };
        write(
            step.join("state.json"),
            serde_json::to_value(&state).unwrap(),
        );
        std::fs::write(step.join(sample::layout::EMA_FILE), b"").unwrap();
        let best = BestRecord {
            step: 10,
            fid: 12.345,
            kid: Some(0.0123),
            n_samples: 1000,
            sampler: crate::config::default_eval_sampler(),
            protocol: serde_json::json!({"inception": "default_1.pt", "reference": "cifar10-train"}),
        };
        std::fs::create_dir_all(checkpoints.join("best")).unwrap();
        write(
            checkpoints.join("best").join("fid.json"),
            serde_json::to_value(&best).unwrap(),
        );
        let spec = PipelineSpec::resolve(&step, sample::Weights::Ema).unwrap();
        let card = ModelCard::for_source(&spec, "cifar", "mit").unwrap();
        let recipe = card.recipe.as_ref().unwrap();
        assert_eq!(
            (
                recipe.preset.as_str(),
                recipe.step,
                recipe.world_size,
                recipe.seed
            ),
            ("ddpm-cifar10", 10, 2, 7)
        );
        assert_eq!(card.datasets, ["uoft-cs/cifar10"]);
        let text = card.render();
        for part in [
            "Best FID during training: **12.35**, KID 0.0123 at step 10, over 1000 EMA samples",
            "cifar10-train",
            "\"ddim\"",
            "| world size | 2 |",
            "| preset | ddpm-cifar10 |",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }
}
