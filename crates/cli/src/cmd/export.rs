//! `ddpm export`: a run, a checkpoint or a diffusers folder out as a diffusers folder
//! (`UNet2DModel` + `DDPMScheduler` configs, safetensors weights with modern key names), through
//! [`sample::Pipeline::export_diffusers`].

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::sampler_args::WeightsArg;

/// Arguments of `ddpm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint), a checkpoint directory, or a diffusers folder
    /// (legacy attention names are renamed on the way).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The diffusers folder to write (must not exist, or be empty).
    #[arg(long)]
    diffusers: PathBuf,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
}

/// Runs `ddpm export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let weights = match args.weights {
        WeightsArg::Ema => sample::Weights::Ema,
        WeightsArg::Model => sample::Weights::Model,
    };
    let pipe = sample::Pipeline::load(&args.checkpoint, weights, tch::Device::Cpu)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    pipe.export_diffusers(&args.diffusers)
        .with_context(|| format!("--diffusers {}", args.diffusers.display()))?;
    eprintln!(
        "exported {} as a diffusers folder",
        pipe.spec.weights_file.display()
    );
    println!("{}", args.diffusers.display());
    Ok(())
}
