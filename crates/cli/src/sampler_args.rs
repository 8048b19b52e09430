//! The sampler flags shared by `ddpm sample` and `ddpm eval fid --checkpoint`: one clap struct,
//! so both commands take the same names, values and defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use sample::{PipelineSpec, SamplerConfig, Weights};
use schedule::{TimestepSpacing, VarianceType};

/// Which reverse process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    /// Ancestral sampling over all T steps (Ho et al. 2020, Alg. 2).
    Ddpm,
    /// DDIM over --steps steps with --eta (Song et al. 2021).
    Ddim,
    /// DPM-Solver++(2M) over --steps steps (Lu et al. 2022): good samples in 15-25 steps.
    #[value(name = "dpm-solver++")]
    DpmSolverPp,
}

/// The reverse variance of DDPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VarianceArg {
    /// σ_t² = β_t, as the official DDPM code samples CIFAR-10 (the paper's FIDs).
    Large,
    /// σ_t² = β̃_t, the posterior variance (the notebook's).
    Small,
}

/// How DDIM and DPM-Solver++ spread their steps over 0..T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpacingArg {
    /// Evenly from T − 1 down to 0.
    Linspace,
    /// Multiples of ⌊T/steps⌋ from 0 (the DDIM paper's choice).
    Leading,
    /// Evenly from T − 1 down, stopping short of 0 (Lin et al. 2024).
    Trailing,
    /// ⌊(i · √(0.8 T)/(steps − 1))²⌋: the DDIM paper's CIFAR-10 spacing, dense near t = 0,
    /// ending at 0.8 T.
    Quadratic,
}

/// Which weights of a training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    /// The exponential moving average (what papers sample with).
    Ema,
    /// The live training weights.
    Model,
}

/// The model to sample from and how.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplerArgs {
    /// Which weights of a training checkpoint (a diffusers folder has one set).
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: WeightsArg,
    /// The sampler.
    #[arg(long, value_enum, default_value = "ddpm")]
    pub sampler: SamplerKind,
    /// DDPM's reverse variance.
    #[arg(long, value_enum, default_value = "large")]
    pub variance: VarianceArg,
    /// DDIM and DPM-Solver++: sampling steps, at most T (default 50 for DDIM, 20 for
    /// DPM-Solver++).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM: η in [0, 1]; 0 is deterministic, 1 is DDPM-like.
    #[arg(long)]
    pub eta: Option<f64>,
    /// DDIM and DPM-Solver++: how the steps are spread (default leading for DDIM, trailing for
    /// DPM-Solver++).
    #[arg(long, value_enum)]
    pub spacing: Option<SpacingArg>,
    /// Do not clamp the predicted x0 to [-1, 1] at each step (a diffusers folder's default is its
    /// scheduler's `clip_sample`).
    #[arg(long)]
    pub no_clip: bool,
    /// Classifier-free guidance scale W of a class-conditional model: the sampler follows
    /// eps_u + W (eps_c - eps_u) (diffusers' convention; Ho & Salimans' w is W - 1). 1 (the
    /// default) is plain conditional sampling, 0 unconditional, 2-5 sharper classes.
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
}

impl SamplerArgs {
    /// The pipeline's weights choice.
    pub fn weights(&self) -> Weights {
        match self.weights {
            WeightsArg::Ema => Weights::Ema,
            WeightsArg::Model => Weights::Model,
        }
    }

    /// `--guidance`, checked: finite, and only for a class-conditional model (`num_classes`).
    pub fn guidance_for(&self, num_classes: Option<i64>, checkpoint: &Path) -> Result<f64> {
        match (self.guidance, num_classes) {
            (Some(w), _) if !w.is_finite() => {
                bail!("--guidance {w} is invalid: it must be a finite number (1 is plain conditional sampling)")
            }
            (Some(_), None) => bail!(
                "--guidance: the model of --checkpoint {} is not class-conditional (train one \
                 with `ddpm train --class-cond`)",
                checkpoint.display()
            ),
            (w, _) => Ok(w.unwrap_or(1.0)),
        }
    }

    /// `--no-clip` as an override of the source's default.
    pub fn clip_x0(&self) -> Option<bool> {
        self.no_clip.then_some(false)
    }

    /// Resolves `--checkpoint PATH` (a run, a checkpoint or a diffusers folder) without loading
    /// anything, naming the flag in errors.
    pub fn resolve(&self, checkpoint: &Path) -> Result<PipelineSpec> {
        PipelineSpec::resolve(checkpoint, self.weights())
            .with_context(|| format!("--checkpoint {}", checkpoint.display()))
    }

    /// The sampler the flags describe, checked against the model's T.
    pub fn config(&self, n_train_steps: usize) -> Result<SamplerConfig> {
        let spacing = |default| match self.spacing.unwrap_or(default) {
            SpacingArg::Linspace => TimestepSpacing::Linspace,
            SpacingArg::Leading => TimestepSpacing::Leading,
            SpacingArg::Trailing => TimestepSpacing::Trailing,
            SpacingArg::Quadratic => TimestepSpacing::Quadratic,
        };
        let steps = |default: usize| -> Result<usize> {
            let steps = self.steps.unwrap_or(default.min(n_train_steps));
            if steps == 0 || steps > n_train_steps {
                bail!("--steps {steps} is impossible: the checkpoint's schedule has T = {n_train_steps} steps, so use 1 to {n_train_steps}");
            }
            Ok(steps)
        };
        if self.sampler != SamplerKind::Ddim && self.eta.is_some() {
            bail!("--eta applies to --sampler ddim only");
        }
        let config = match self.sampler {
            SamplerKind::Ddpm => {
                if self.steps.is_some() || self.spacing.is_some() {
                    bail!("--steps and --spacing do not apply to --sampler ddpm, which takes all T = {n_train_steps} steps: use --sampler ddim or dpm-solver++");
                }
                let variance = match self.variance {
                    VarianceArg::Large => VarianceType::FixedLarge,
                    VarianceArg::Small => VarianceType::FixedSmall,
                };
                SamplerConfig::Ddpm { variance }
            }
            SamplerKind::Ddim => {
                let eta = self.eta.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&eta) {
                    bail!("--eta {eta} is invalid: it must be in [0, 1]");
                }
                SamplerConfig::Ddim {
                    steps: steps(50)?,
                    eta,
                    spacing: spacing(SpacingArg::Leading),
                }
            }
            SamplerKind::DpmSolverPp => SamplerConfig::DpmSolverPp {
                steps: steps(20)?,
                spacing: spacing(SpacingArg::Trailing),
            },
        };
        config
            .timesteps(n_train_steps)
            .context("--steps and --spacing")?;
        Ok(config)
    }
}

/// A short description of where the weights came from, for progress messages.
pub fn describe(spec: &PipelineSpec) -> (PathBuf, String) {
    let file = spec
        .weights_file
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default()
        .to_string();
    (spec.dir.clone(), file)
}
