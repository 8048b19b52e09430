//! The sampler flags shared by `ddpm sample` and `ddpm eval fid --checkpoint` (and, through
//! [`SamplerArgs::config`], `ddpm train --eval-sampler`): one clap struct, so the commands take
//! the same names, values and defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use sample::{PipelineSpec, SamplerConfig, SigmaSpacing, UniPcVariant, Weights};
use schedule::{TimestepSpacing, VarianceType};

/// Which reverse process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerKind {
    /// Ancestral sampling (Ho et al. 2020, Alg. 2) over all T steps, or over --steps of them
    /// with the betas of that chain recomputed (Improved DDPM).
    Ddpm,
    /// DDIM over --steps steps with --eta (Song et al. 2021).
    Ddim,
    /// Multistep DPM-Solver++ over --steps steps (Lu et al. 2022), of --order 1-3 (default 2:
    /// good samples in 15-25 steps), or its SDE variant with --sde.
    #[value(name = "dpm-solver++")]
    DpmSolverPp,
    /// UniPC over --steps steps (Zhao et al. 2023): predictor of --order 1-3 with the corrector;
    /// the strongest at about 10 steps.
    Unipc,
    /// Euler's method in sigma-space over --steps steps (Karras et al. 2022), at fractional
    /// timesteps.
    Euler,
    /// Heun's second-order method in sigma-space: 2 network evaluations per step but the last.
    Heun,
    /// Euler ancestral in sigma-space: noise added at every step but the last.
    #[value(name = "euler-ancestral")]
    EulerAncestral,
    /// PLMS, PNDM's pseudo linear multistep method (Liu et al. 2022): steps + 1 network
    /// evaluations, leading or trailing spacing.
    Pndm,
}

impl SamplerKind {
    /// The sampler a diffusers `scheduler_config.json` names in `_class_name`, if it is one of
    /// these.
    pub fn from_diffusers_class(class: &str) -> Option<Self> {
        match class {
            "DDPMScheduler" => Some(SamplerKind::Ddpm),
            "DDIMScheduler" => Some(SamplerKind::Ddim),
            "DPMSolverMultistepScheduler" => Some(SamplerKind::DpmSolverPp),
            "UniPCMultistepScheduler" => Some(SamplerKind::Unipc),
            "EulerDiscreteScheduler" => Some(SamplerKind::Euler),
            "HeunDiscreteScheduler" => Some(SamplerKind::Heun),
            "EulerAncestralDiscreteScheduler" => Some(SamplerKind::EulerAncestral),
            "PNDMScheduler" => Some(SamplerKind::Pndm),
            _ => None,
        }
    }

    /// The flag's value, for messages.
    fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmSolverPp => "dpm-solver++",
            SamplerKind::Unipc => "unipc",
            SamplerKind::Euler => "euler",
            SamplerKind::Heun => "heun",
            SamplerKind::EulerAncestral => "euler-ancestral",
            SamplerKind::Pndm => "pndm",
        }
    }
}

/// UniPC's B(h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UniPcVariantArg {
    /// B(h) = h (the paper's choice for unconditional sampling).
    Bh1,
    /// B(h) = e^h - 1 (diffusers' default).
    Bh2,
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
    /// Karras et al.'s sigmas (rho = 7) between sigma_0 and sigma_{T-1}, at fractional timesteps
    /// (the sigma-space samplers only).
    Karras,
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
    /// The sampler (default: the one a diffusers folder's scheduler_config.json names, else
    /// ddpm).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// DDPM's reverse variance (a network that learns its variance uses its own).
    #[arg(long, value_enum, default_value = "large")]
    pub variance: VarianceArg,
    /// Sampling steps, at most T (default: all T for DDPM, which over fewer steps recomputes
    /// the betas of the respaced chain; 50 for DDIM, 20 for the others; Heun evaluates the
    /// network 2 * steps - 1 times).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM: η in [0, 1]; 0 is deterministic, 1 is DDPM-like.
    #[arg(long)]
    pub eta: Option<f64>,
    /// How the steps are spread (default leading for DDPM with --steps and DDIM, linspace for
    /// euler, heun and euler-ancestral, trailing for the others); karras only for those three
    /// sigma-space samplers, quadratic only for the others.
    #[arg(long, value_enum)]
    pub spacing: Option<SpacingArg>,
    /// Every sampler but ddpm: the timesteps themselves, largest first, each below T
    /// (e.g. 999,800,600,400,200,0), in place of --steps and --spacing.
    #[arg(long, value_delimiter = ',', value_name = "T,...", conflicts_with_all = ["steps", "spacing"])]
    pub timesteps: Option<Vec<usize>>,
    /// DPM-Solver++ and UniPC: the solver order, 1 to 3 (default 2; 3 for UniPC and DPM-Solver++
    /// at about 10 steps).
    #[arg(long, value_name = "N")]
    pub order: Option<usize>,
    /// DPM-Solver++: the stochastic SDE variant (sde-dpmsolver++), which draws noise each step.
    #[arg(long)]
    pub sde: bool,
    /// PNDM: start with 3 pseudo Runge-Kutta steps of 4 network evaluations each (diffusers'
    /// skip_prk_steps=False; NFE steps + 9) instead of PLMS's second-order start.
    #[arg(long)]
    pub prk: bool,
    /// UniPC: B(h) (default bh2).
    #[arg(long, value_enum)]
    pub unipc_variant: Option<UniPcVariantArg>,
    /// Do not clamp the predicted x0 to [-1, 1] at each step. By default each sampler clamps as
    /// its diffusers scheduler does from the source's scheduler config: ddpm, ddim and heun when
    /// `clip_sample` (a run's checkpoints: yes), the others never.
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

    /// The sampler the flags describe for the model of `spec`: its T, and the sampler its
    /// diffusers scheduler config names when --sampler is not given (a `PNDMScheduler` with
    /// its Runge–Kutta start, `skip_prk_steps` false, as `--sampler pndm --prk`).
    pub fn config_for(&self, spec: &PipelineSpec) -> Result<SamplerConfig> {
        let default = (spec.scheduler_class.as_deref()).and_then(SamplerKind::from_diffusers_class);
        self.config_with(
            spec.schedule.n_steps(),
            default.unwrap_or(SamplerKind::Ddpm),
            spec.scheduler_prk,
        )
    }

    /// The sampler the flags describe, checked against the model's T (ddpm when --sampler is
    /// not given).
    pub fn config(&self, n_train_steps: usize) -> Result<SamplerConfig> {
        self.config_with(n_train_steps, SamplerKind::Ddpm, false)
    }

    /// Refuses a flag that the sampler does not take, naming both.
    fn check_applies(&self, kind: SamplerKind) -> Result<()> {
        let name = kind.name();
        let takes_order = matches!(kind, SamplerKind::DpmSolverPp | SamplerKind::Unipc);
        if kind != SamplerKind::Ddim && self.eta.is_some() {
            bail!("--eta applies to --sampler ddim only, not --sampler {name}");
        }
        if !takes_order && self.order.is_some() {
            bail!("--order applies to --sampler dpm-solver++ and unipc, not --sampler {name}");
        }
        if kind != SamplerKind::DpmSolverPp && self.sde {
            bail!("--sde applies to --sampler dpm-solver++ only, not --sampler {name}");
        }
        if kind != SamplerKind::Pndm && self.prk {
            bail!("--prk applies to --sampler pndm only, not --sampler {name}");
        }
        if kind != SamplerKind::Unipc && self.unipc_variant.is_some() {
            bail!("--unipc-variant applies to --sampler unipc only, not --sampler {name}");
        }
        if let Some(order) = self.order.filter(|o| !(1..=3).contains(o)) {
            bail!("--order {order} is invalid for --sampler {name}: it must be 1, 2 or 3");
        }
        Ok(())
    }

    /// A σ-space sampler of `steps` steps, refusing a spacing it cannot take.
    fn sigma_config(&self, kind: SamplerKind, steps: usize) -> Result<SamplerConfig> {
        let spacing = match self.spacing.unwrap_or(SpacingArg::Linspace) {
            SpacingArg::Linspace => SigmaSpacing::Linspace,
            SpacingArg::Leading => SigmaSpacing::Leading,
            SpacingArg::Trailing => SigmaSpacing::Trailing,
            SpacingArg::Karras => SigmaSpacing::Karras,
            SpacingArg::Quadratic => bail!(
                "--spacing quadratic applies to --sampler ddim, dpm-solver++ and unipc, not \
                 --sampler {}: a sigma-space sampler takes linspace, leading, trailing or karras",
                kind.name()
            ),
        };
        let timesteps = self.timesteps.clone();
        Ok(match kind {
            SamplerKind::Euler => SamplerConfig::Euler {
                steps,
                spacing,
                timesteps,
            },
            SamplerKind::Heun => SamplerConfig::Heun {
                steps,
                spacing,
                timesteps,
            },
            _ => SamplerConfig::EulerAncestral {
                steps,
                spacing,
                timesteps,
            },
        })
    }

    /// DDPM over all T steps, or over `steps` of them spread by `spacing` (a respaced chain).
    fn ddpm_config(
        &self,
        n_train_steps: usize,
        steps: Option<usize>,
        spacing: TimestepSpacing,
    ) -> Result<SamplerConfig> {
        if self.timesteps.is_some() {
            bail!("--timesteps does not apply to --sampler ddpm, which takes all T = {n_train_steps} steps or --steps N of them: use --steps, or --sampler ddim, dpm-solver++ or unipc");
        }
        if steps.is_none() && self.spacing.is_some() {
            bail!("--spacing applies to --sampler ddpm with --steps N only (without it, the chain takes all T = {n_train_steps} steps)");
        }
        let variance = match self.variance {
            VarianceArg::Large => VarianceType::FixedLarge,
            VarianceArg::Small => VarianceType::FixedSmall,
        };
        Ok(SamplerConfig::Ddpm {
            variance,
            steps,
            spacing,
        })
    }

    /// The sampler of the flags, `default` when `--sampler` is not given, then with PNDM's
    /// Runge–Kutta start when `default_prk` (the source's scheduler says so) or `--prk`.
    fn config_with(
        &self,
        n_train_steps: usize,
        default: SamplerKind,
        default_prk: bool,
    ) -> Result<SamplerConfig> {
        let kind = self.sampler.unwrap_or(default);
        let name = kind.name();
        let spacing = |default| -> Result<TimestepSpacing> {
            Ok(match self.spacing.unwrap_or(default) {
                SpacingArg::Linspace => TimestepSpacing::Linspace,
                SpacingArg::Leading => TimestepSpacing::Leading,
                SpacingArg::Trailing => TimestepSpacing::Trailing,
                SpacingArg::Quadratic => TimestepSpacing::Quadratic,
                SpacingArg::Karras => bail!(
                    "--spacing karras applies to the sigma-space samplers (--sampler euler, heun \
                     or euler-ancestral), not --sampler {name}"
                ),
            })
        };
        let steps = |default: usize| -> Result<usize> {
            if let Some(list) = &self.timesteps {
                return Ok(list.len());
            }
            let steps = self.steps.unwrap_or(default.min(n_train_steps));
            if steps == 0 || steps > n_train_steps {
                bail!("--steps {steps} is impossible: the checkpoint's schedule has T = {n_train_steps} steps, so use 1 to {n_train_steps}");
            }
            Ok(steps)
        };
        self.check_applies(kind)?;
        let config = match kind {
            SamplerKind::Ddpm => self.ddpm_config(
                n_train_steps,
                self.steps.map(|_| steps(n_train_steps)).transpose()?,
                spacing(SpacingArg::Leading)?,
            )?,
            SamplerKind::Ddim => {
                let eta = self.eta.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&eta) {
                    bail!("--eta {eta} is invalid: it must be in [0, 1]");
                }
                SamplerConfig::Ddim {
                    steps: steps(50)?,
                    eta,
                    spacing: spacing(SpacingArg::Leading)?,
                    timesteps: self.timesteps.clone(),
                }
            }
            SamplerKind::DpmSolverPp => SamplerConfig::DpmSolverPp {
                steps: steps(20)?,
                spacing: spacing(SpacingArg::Trailing)?,
                order: self.order.unwrap_or(2),
                sde: self.sde,
                timesteps: self.timesteps.clone(),
            },
            SamplerKind::Unipc => SamplerConfig::UniPc {
                steps: steps(20)?,
                spacing: spacing(SpacingArg::Trailing)?,
                order: self.order.unwrap_or(2),
                variant: match self.unipc_variant {
                    Some(UniPcVariantArg::Bh1) => UniPcVariant::Bh1,
                    Some(UniPcVariantArg::Bh2) | None => UniPcVariant::Bh2,
                },
                timesteps: self.timesteps.clone(),
            },
            SamplerKind::Pndm => {
                if self.timesteps.is_some() {
                    bail!("--timesteps does not apply to --sampler pndm, which steps by T/steps: use --steps and --spacing leading or trailing");
                }
                let spacing = spacing(SpacingArg::Leading)?;
                if !matches!(
                    spacing,
                    TimestepSpacing::Leading | TimestepSpacing::Trailing
                ) {
                    bail!("--spacing {spacing:?} does not apply to --sampler pndm, which steps by T/steps: use --spacing leading or trailing");
                }
                SamplerConfig::Pndm {
                    steps: steps(50)?,
                    spacing,
                    prk: self.prk || (self.sampler.is_none() && default_prk),
                }
            }
            SamplerKind::Euler | SamplerKind::Heun | SamplerKind::EulerAncestral => {
                self.sigma_config(kind, steps(20)?)?
            }
        };
        config
            .nfe(n_train_steps)
            .context(if self.timesteps.is_some() {
                "--timesteps"
            } else {
                "--steps and --spacing"
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sampler: SamplerArgs,
    }

    fn config(flags: &str) -> Result<SamplerConfig> {
        let argv = std::iter::once("ddpm").chain(flags.split_whitespace());
        Cli::try_parse_from(argv).unwrap().sampler.config(1000)
    }

    #[test]
    fn solver_flags_make_their_configs() {
        assert_eq!(
            config("--sampler dpm-solver++ --order 3 --steps 10").unwrap(),
            SamplerConfig::DpmSolverPp {
                steps: 10,
                spacing: TimestepSpacing::Trailing,
                order: 3,
                sde: false,
                timesteps: None,
            }
        );
        assert_eq!(
            config("--sampler dpm-solver++").unwrap(),
            SamplerConfig::dpm_solver_pp(20, TimestepSpacing::Trailing)
        );
        assert_eq!(
            config("--sampler unipc --order 1 --unipc-variant bh1 --spacing linspace").unwrap(),
            SamplerConfig::UniPc {
                steps: 20,
                spacing: TimestepSpacing::Linspace,
                order: 1,
                variant: UniPcVariant::Bh1,
                timesteps: None,
            }
        );
        assert!(config("--sampler dpm-solver++ --sde")
            .unwrap()
            .is_stochastic());
    }

    #[test]
    fn a_flag_the_sampler_does_not_take_is_refused_naming_both() {
        for (flags, named) in [
            ("--sampler ddim --order 3", ["--order", "--sampler ddim"]),
            ("--order 2", ["--order", "--sampler ddpm"]),
            ("--sampler unipc --sde", ["--sde", "--sampler unipc"]),
            (
                "--sampler ddim --unipc-variant bh1",
                ["--unipc-variant", "--sampler ddim"],
            ),
            ("--sampler unipc --eta 0.5", ["--eta", "--sampler unipc"]),
            (
                "--sampler unipc --order 4",
                ["--order 4", "--sampler unipc"],
            ),
        ] {
            let message = format!("{:#}", config(flags).unwrap_err());
            for name in named {
                assert!(message.contains(name), "{flags}: {message}");
            }
        }
    }

    #[test]
    fn sigma_space_samplers_take_their_spacings_and_refuse_others_naming_both() {
        assert_eq!(
            config("--sampler heun --steps 10 --spacing karras").unwrap(),
            SamplerConfig::Heun {
                steps: 10,
                spacing: SigmaSpacing::Karras,
                timesteps: None,
            }
        );
        let euler = config("--sampler euler").unwrap();
        assert_eq!(
            euler,
            SamplerConfig::Euler {
                steps: 20,
                spacing: SigmaSpacing::Linspace,
                timesteps: None,
            }
        );
        assert_eq!(euler.nfe(1000).unwrap(), 20);
        assert_eq!(
            config("--sampler heun --steps 10")
                .unwrap()
                .nfe(1000)
                .unwrap(),
            19
        );
        assert!(config("--sampler euler-ancestral").unwrap().is_stochastic());
        let pndm = config("--sampler pndm --steps 10").unwrap();
        assert_eq!(pndm.nfe(1000).unwrap(), 11);
        let prk = config("--sampler pndm --steps 10 --prk").unwrap();
        assert_eq!(prk.nfe(1000).unwrap(), 19);
        let m = format!(
            "{:#}",
            config("--sampler pndm --steps 3 --prk").unwrap_err()
        );
        assert!(m.contains("steps = 3") && m.contains("prk"), "{m}");
        for (flags, named) in [
            (
                "--sampler heun --spacing quadratic",
                ["--spacing quadratic", "--sampler heun"],
            ),
            (
                "--sampler ddim --spacing karras",
                ["--spacing karras", "--sampler ddim"],
            ),
            (
                "--sampler unipc --spacing karras",
                ["--spacing karras", "--sampler unipc"],
            ),
            ("--sampler euler --order 2", ["--order", "--sampler euler"]),
            (
                "--sampler pndm --spacing linspace",
                ["--spacing", "--sampler pndm"],
            ),
            ("--sampler ddim --prk", ["--prk", "--sampler ddim"]),
            (
                "--sampler pndm --timesteps 9,0",
                ["--timesteps", "--sampler pndm"],
            ),
        ] {
            let message = format!("{:#}", config(flags).unwrap_err());
            for name in named {
                assert!(message.contains(name), "{flags}: {message}");
            }
        }
        for (class, kind) in [
            ("EulerDiscreteScheduler", SamplerKind::Euler),
            ("HeunDiscreteScheduler", SamplerKind::Heun),
            (
                "EulerAncestralDiscreteScheduler",
                SamplerKind::EulerAncestral,
            ),
            ("PNDMScheduler", SamplerKind::Pndm),
        ] {
            assert_eq!(SamplerKind::from_diffusers_class(class), Some(kind));
        }
    }

    #[test]
    fn an_explicit_timestep_list_replaces_steps_and_spacing() {
        let listed = config("--sampler ddim --timesteps 999,500,0").unwrap();
        assert_eq!(
            listed,
            SamplerConfig::Ddim {
                steps: 3,
                eta: 0.0,
                spacing: TimestepSpacing::Leading,
                timesteps: Some(vec![999, 500, 0]),
            }
        );
        assert_eq!(listed.timesteps(1000).unwrap().as_slice(), &[999, 500, 0]);
        assert_eq!(listed.nfe(1000).unwrap(), 3);
        for (flags, named) in [
            ("--sampler unipc --timesteps 5,9", "decrease"),
            (
                "--sampler dpm-solver++ --timesteps 1000,0",
                "below T = 1000",
            ),
            ("--timesteps 999,0", "--sampler ddpm"),
        ] {
            let message = format!("{:#}", config(flags).unwrap_err());
            assert!(
                message.contains("--timesteps") && message.contains(named),
                "{flags}: {message}"
            );
        }
        let argv = [
            "ddpm",
            "--sampler",
            "ddim",
            "--timesteps",
            "9,0",
            "--steps",
            "5",
        ];
        let err = Cli::try_parse_from(argv).err().unwrap().to_string();
        assert!(
            err.contains("--timesteps") && err.contains("--steps"),
            "{err}"
        );
    }

    #[test]
    fn a_diffusers_scheduler_class_picks_the_default_sampler() {
        assert_eq!(
            SamplerKind::from_diffusers_class("UniPCMultistepScheduler"),
            Some(SamplerKind::Unipc)
        );
        assert_eq!(
            SamplerKind::from_diffusers_class("DPMSolverMultistepScheduler"),
            Some(SamplerKind::DpmSolverPp)
        );
        assert_eq!(
            SamplerKind::from_diffusers_class("LMSDiscreteScheduler"),
            None
        );
    }
}
