//! `ddpm export`: a run, a checkpoint or a diffusers folder out as a diffusers pipeline folder
//! (`model_index.json`, `unet/`, `scheduler/`, a model card `README.md` and a sample grid), or
//! with `--model-only` as the U-Net's folder alone, through [`sample::Pipeline::export`] and
//! [`train::card::ModelCard`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sample::{ExportLayout, Pipeline, PipelineSpec, SampleError, SamplerConfig, SourceKind};
use schedule::TimestepSpacing;
use train::card::ModelCard;

use crate::device::DeviceSpec;
use crate::sampler_args::WeightsArg;

/// The sample grid's file name inside an exported pipeline.
const GRID_FILE: &str = "samples.png";

/// Arguments of `ddpm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint), a checkpoint directory, a diffusers folder
    /// (legacy attention names are renamed on the way) or `hf:OWNER/NAME[@REVISION]`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The folder to write (must not exist, or be empty).
    #[arg(long)]
    diffusers: PathBuf,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
    /// Write the U-Net's folder alone (`config.json`, weights, `scheduler_config.json`), as
    /// `UNet2DModel.from_pretrained` reads it, without `model_index.json` or a model card.
    #[arg(long)]
    model_only: bool,
    /// The model card's license (a Hugging Face license id such as `apache-2.0` or `mit`).
    #[arg(long, default_value = "other")]
    license: String,
    /// Images in the model card's sample grid (0: none).
    #[arg(long, default_value_t = 16)]
    grid_samples: usize,
    /// DDIM steps of the sample grid (at most the schedule's T).
    #[arg(long, default_value_t = 50)]
    grid_steps: usize,
    /// The sample grid's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the sample grid is drawn: auto, cpu, cuda or cuda:N (the files are written from
    /// the CPU either way).
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

/// Runs `ddpm export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let weights = match args.weights {
        WeightsArg::Ema => sample::Weights::Ema,
        WeightsArg::Model => sample::Weights::Model,
    };
    // Before any work: loading the weights and drawing the card's grid take minutes at 256².
    let out = &args.diffusers;
    sample::pipeline::check_export_dir(out).context("--diffusers")?;
    let source = crate::checkpoint_arg::local(&args.checkpoint, "--checkpoint")?;
    let in_checkpoint = || format!("--checkpoint {}", args.checkpoint.display());
    let spec = PipelineSpec::resolve(&source, weights).with_context(in_checkpoint)?;
    if weights == sample::Weights::Model && matches!(spec.kind, SourceKind::Diffusers { .. }) {
        bail!(
            "--weights model: {} is a diffusers folder, which holds one set of weights (only a \
             training checkpoint has both `model` and `ema`): drop --weights",
            args.checkpoint.display()
        );
    }
    let pipe = Pipeline::from_spec(spec, tch::Device::Cpu).with_context(in_checkpoint)?;
    // The errors of the export name their file.
    let flag = || "--diffusers";
    if args.model_only {
        pipe.export(out, ExportLayout::ModelOnly, |_| Ok(()))
            .with_context(flag)?;
    } else {
        let title = out
            .file_name()
            .map_or_else(|| "ddpm".into(), |n| n.to_string_lossy().into_owned());
        let mut card = ModelCard::for_source(&pipe.spec, &title, &args.license)
            .context("--checkpoint: the model card")?;
        let device = args.device.resolve().context("--device")?;
        if args.grid_samples > 0 {
            eprintln!(
                "drawing the model card's {} sample images ({} DDIM steps)",
                args.grid_samples, args.grid_steps
            );
            card.grid = Some(GRID_FILE.into());
        }
        pipe.export(out, ExportLayout::Pipeline, |dir| {
            if args.grid_samples > 0 {
                write_grid(&pipe, &args, device, &dir.join(GRID_FILE))?;
            }
            let readme = dir.join("README.md");
            std::fs::write(&readme, card.render()).map_err(|e| SampleError::Source {
                path: readme.clone(),
                message: e.to_string(),
            })
        })
        .with_context(flag)?;
    }
    eprintln!(
        "exported {} as a diffusers {}",
        pipe.spec.weights_file.display(),
        if args.model_only {
            "model folder"
        } else {
            "pipeline"
        }
    );
    println!("{}", out.display());
    Ok(())
}

/// The model card's grid: DDIM (η = 0) with the exported weights, eight images a row, on
/// `--device`; a class-conditional network draws class `i mod K` for image `i`.
fn write_grid(
    cpu: &Pipeline,
    args: &ExportArgs,
    device: tch::Device,
    path: &Path,
) -> Result<(), SampleError> {
    let on_device;
    let pipe = if device == tch::Device::Cpu {
        cpu
    } else {
        // The weights file was checked against its digest when `cpu` loaded it.
        let spec = PipelineSpec {
            weights_digest: None,
            ..cpu.spec.clone()
        };
        on_device = Pipeline::from_spec(spec, device)?;
        &on_device
    };
    let ddim = SamplerConfig::Ddim {
        steps: args.grid_steps.clamp(1, pipe.schedule.n_steps()),
        eta: 0.0,
        spacing: TimestepSpacing::Leading,
        timesteps: None,
    };
    let n = args.grid_samples;
    let images = tch::no_grad(|| match pipe.num_classes() {
        Some(k) => {
            let labels: Vec<i64> = (0..n as i64).map(|i| i % k).collect();
            pipe.generate_classes(&ddim, &labels, 1.0, args.seed)
        }
        None => pipe.generate(&ddim, n, args.seed),
    })?;
    sample::save_grid(&images, n.min(8), path)
}
