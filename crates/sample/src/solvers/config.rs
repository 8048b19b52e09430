//! Which solver, and its settings: [`SamplerConfig`], the serialized form that training
//! configurations, FID records and golden fixtures store.

use serde::{Deserialize, Serialize};

use schedule::{TimestepSpacing, Timesteps, VarianceType};

use super::sigma::{SigmaSpacing, SigmaTable};
use crate::SampleError;

/// UniPC's B(h) (Zhao et al. 2023, §3.1): diffusers' `solver_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UniPcVariant {
    /// B(h) = h; the paper recommends it for unconditional sampling with few steps.
    Bh1,
    /// B(h) = e^h − 1 (diffusers' default), recommended with guidance.
    #[default]
    Bh2,
}

fn two() -> usize {
    2
}

fn is_two(order: &usize) -> bool {
    *order == 2
}

fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}

fn is_leading(spacing: &TimestepSpacing) -> bool {
    *spacing == TimestepSpacing::Leading
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which reverse process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// Ancestral sampling (Ho et al. 2020, Alg. 2) with σ_t² = β_t (`fixed_large`) or β̃_t
    /// (`fixed_small`), or the network's learned variance when it outputs 2·C channels; over all
    /// T steps, or over `steps` of them as a chain of its own whose betas are recomputed,
    /// β' = 1 − ᾱ_t/ᾱ_prev (Improved DDPM §4, diffusers' `DDPMScheduler` with
    /// `num_inference_steps`).
    Ddpm {
        /// The reverse variance (when the network does not learn it).
        variance: VarianceType,
        /// Respaced sampling over this many of the T steps; absent: all T.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<usize>,
        /// How the `steps` are spread over 0..T (`leading`, diffusers' default, when absent).
        #[serde(default = "leading", skip_serializing_if = "is_leading")]
        spacing: TimestepSpacing,
    },
    /// DDIM over `steps` of the T steps; η = 0 is deterministic, η = 1 over all T steps is
    /// DDPM with σ_t² = β̃_t.
    Ddim {
        /// Number of sampling steps (≤ T).
        steps: usize,
        /// η of Song et al. 2021, Eq. 16, in [0, 1].
        eta: f64,
        /// How the steps are spread over 0..T.
        spacing: TimestepSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
    },
    /// Multistep DPM-Solver++ of order 1, 2 or 3 in the data-prediction form (Lu et al. 2022,
    /// Alg. 2; diffusers' `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, or
    /// `"sde-dpmsolver++"` with `sde`). 2M with 15–25 steps gives samples close to DDPM's with
    /// 1000 (Lu et al. 2022, §6). The first steps climb to the order as history accrues, and the
    /// last goes to σ = 0, that is to x̂_0 (diffusers' `lower_order_final=True`,
    /// `final_sigmas_type="zero"`); below 15 steps the one before it is at most second order.
    DpmSolverPp {
        /// Number of sampling steps (≤ T), hence network evaluations.
        steps: usize,
        /// How the steps are spread over 0..T; `trailing` starts from t = T − 1, as diffusers'
        /// default `linspace` (over T + 1 points) nearly does.
        spacing: TimestepSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
        /// The solver order, 1 to 3 (2 when absent).
        #[serde(default = "two", skip_serializing_if = "is_two")]
        order: usize,
        /// The SDE variant (`sde-dpmsolver++`): stochastic, one noise draw per step but the last.
        #[serde(default, skip_serializing_if = "is_false")]
        sde: bool,
    },
    /// UniPC (Zhao et al. 2023): the UniP predictor of order 1 to 3 with the UniC corrector after
    /// every network evaluation but the first, as diffusers' `UniPCMultistepScheduler` with
    /// `predict_x0=True`, `lower_order_final=True` and `final_sigmas_type="zero"`.
    #[serde(rename = "unipc")]
    UniPc {
        /// Number of sampling steps (≤ T), hence network evaluations.
        steps: usize,
        /// How the steps are spread over 0..T.
        spacing: TimestepSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
        /// The predictor's order, 1 to 3 (diffusers' `solver_order`; 2 when absent).
        #[serde(default = "two")]
        order: usize,
        /// B(h).
        #[serde(default)]
        variant: UniPcVariant,
    },
    /// Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022, Alg. 1
    /// without churn): diffusers' `EulerDiscreteScheduler`. The network sees fractional
    /// timesteps, unrounded.
    Euler {
        /// Number of steps (≤ T), hence network evaluations.
        steps: usize,
        /// How the steps are spread (σ-space spacings, `karras` among them).
        spacing: SigmaSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
    },
    /// Heun's second-order method in σ-space (Karras et al. 2022, Alg. 1): diffusers'
    /// `HeunDiscreteScheduler`. Two network evaluations per step but the last: 2 · steps − 1.
    Heun {
        /// Number of steps (≤ T); the network is evaluated 2 · steps − 1 times.
        steps: usize,
        /// How the steps are spread.
        spacing: SigmaSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
    },
    /// PLMS, PNDM's pseudo linear multistep method (Liu et al. 2022): diffusers' `PNDMScheduler`
    /// with `skip_prk_steps=True`. n steps take n + 1 network evaluations (the second step's
    /// timestep twice); with `prk`, PNDM proper (`skip_prk_steps=False`): three Runge–Kutta
    /// steps of 4 evaluations first, n + 9 in all.
    Pndm {
        /// Number of steps (≤ T; at least 4 with `prk`).
        steps: usize,
        /// `leading` (diffusers' default) or `trailing`: PLMS steps by ⌊T/steps⌋, so it takes
        /// no spacing whose steps differ.
        spacing: TimestepSpacing,
        /// The Runge–Kutta warm-up (diffusers' `skip_prk_steps=False`).
        #[serde(default, skip_serializing_if = "is_false")]
        prk: bool,
    },
    /// Euler ancestral in σ-space: each step goes to σ_down and adds noise of σ_up, diffusers'
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral {
        /// Number of steps (≤ T), hence network evaluations.
        steps: usize,
        /// How the steps are spread.
        spacing: SigmaSpacing,
        /// An explicit list of `steps` timesteps, largest first, in place of `spacing`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timesteps: Option<Vec<usize>>,
    },
}

impl SamplerConfig {
    /// Whether this sampler clamps x̂_0 to [−1, 1] unless told otherwise (`--no-clip`), given the
    /// source's `clip_sample`: as its diffusers scheduler does when made from the source's
    /// scheduler config (`XScheduler.from_config(config)`, how a diffusers user swaps one in).
    /// `DDPMScheduler`, `DDIMScheduler` and `HeunDiscreteScheduler` read `clip_sample`;
    /// `DPMSolverMultistepScheduler` and `UniPCMultistepScheduler` clamp only with
    /// `thresholding`, off unless the config sets it (which the loader refuses); Euler, Euler
    /// ancestral and PNDM never clamp.
    pub fn clips_by_default(&self, clip_sample: bool) -> bool {
        match self {
            Self::Ddpm { .. } | Self::Ddim { .. } | Self::Heun { .. } => clip_sample,
            Self::DpmSolverPp { .. }
            | Self::UniPc { .. }
            | Self::Euler { .. }
            | Self::EulerAncestral { .. }
            | Self::Pndm { .. } => false,
        }
    }

    /// The notebook's sampler: ancestral, σ_t² = β̃_t (its `posterior_variance`).
    pub fn seed_notebook() -> Self {
        Self::ddpm(VarianceType::FixedSmall)
    }

    /// DDPM over all T steps with `variance`.
    pub fn ddpm(variance: VarianceType) -> Self {
        SamplerConfig::Ddpm {
            variance,
            steps: None,
            spacing: TimestepSpacing::Leading,
        }
    }

    /// DPM-Solver++(2M) over `steps` steps: the ODE solver of diffusers' default configuration.
    pub fn dpm_solver_pp(steps: usize, spacing: TimestepSpacing) -> Self {
        SamplerConfig::DpmSolverPp {
            steps,
            spacing,
            timesteps: None,
            order: 2,
            sde: false,
        }
    }

    /// The number of network evaluations (NFE) of one chain on a schedule of `n_train_steps`:
    /// one per step, but 2 · steps − 1 for Heun. This also checks the settings.
    ///
    /// # Errors
    /// As [`SamplerConfig::timesteps`], for the σ-space samplers too.
    pub fn nfe(&self, n_train_steps: usize) -> Result<usize, SampleError> {
        match self {
            SamplerConfig::Euler {
                steps, timesteps, ..
            }
            | SamplerConfig::Heun {
                steps, timesteps, ..
            }
            | SamplerConfig::EulerAncestral {
                steps, timesteps, ..
            } => {
                if !(1..=n_train_steps).contains(steps) {
                    return Err(SampleError::Config(format!(
                        "steps = {steps} is impossible: the schedule has T = {n_train_steps} steps, so it must be 1 to {n_train_steps}"
                    )));
                }
                if let Some(list) = timesteps {
                    listed(n_train_steps, *steps, list)?;
                }
                let heun = matches!(self, SamplerConfig::Heun { .. });
                Ok(if heun { 2 * steps - 1 } else { *steps })
            }
            SamplerConfig::Pndm { prk, .. } => Ok(super::pndm::evaluations(
                self.timesteps(n_train_steps)?.as_slice(),
                prk.then_some(n_train_steps),
            )
            .len()),
            _ => Ok(self.timesteps(n_train_steps)?.len()),
        }
    }

    /// Whether the sampler runs in σ-space at fractional timesteps (Euler, Heun, Euler
    /// ancestral).
    pub fn is_sigma_space(&self) -> bool {
        matches!(
            self,
            SamplerConfig::Euler { .. }
                | SamplerConfig::Heun { .. }
                | SamplerConfig::EulerAncestral { .. }
        )
    }

    /// The σ-space chain of a σ-space sampler on `schedule`; `None` for the others.
    pub(crate) fn sigma_table(
        &self,
        schedule: &schedule::Schedule,
    ) -> Result<Option<SigmaTable>, SampleError> {
        match self {
            SamplerConfig::Euler {
                steps,
                spacing,
                timesteps,
            }
            | SamplerConfig::Heun {
                steps,
                spacing,
                timesteps,
            }
            | SamplerConfig::EulerAncestral {
                steps,
                spacing,
                timesteps,
            } => SigmaTable::new(schedule, *steps, *spacing, timesteps.as_deref()).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the sampler draws noise at some steps (so its images depend on the seed beyond
    /// the starting x_T).
    pub fn is_stochastic(&self) -> bool {
        match self {
            SamplerConfig::Ddpm { .. } => true,
            SamplerConfig::Ddim { eta, .. } => *eta > 0.0,
            SamplerConfig::DpmSolverPp { sde, .. } => *sde,
            SamplerConfig::UniPc { .. } => false,
            SamplerConfig::Euler { .. } | SamplerConfig::Heun { .. } => false,
            SamplerConfig::EulerAncestral { .. } => true,
            SamplerConfig::Pndm { .. } => false,
        }
    }

    /// The timesteps this sampler visits on a schedule of `n_train_steps`, in sampling order.
    ///
    /// # Errors
    /// [`SampleError::Config`] naming `steps` when it is 0 or more than `n_train_steps`, `eta`
    /// when it is outside [0, 1], or `order` when it is not 1 to 3; and for the σ-space
    /// samplers, whose timesteps need not be integers ([`SamplerConfig::nfe`] checks those).
    pub fn timesteps(&self, n_train_steps: usize) -> Result<Timesteps, SampleError> {
        let sub = |steps: usize, spacing, list: &Option<Vec<usize>>| {
            if let Some(list) = list {
                return listed(n_train_steps, steps, list);
            }
            Timesteps::new(n_train_steps, steps, spacing).map_err(|e| {
                SampleError::Config(if (1..=n_train_steps).contains(&steps) {
                    // A count in range that the spacing cannot spread (quadratic's repeats).
                    format!("steps = {steps} with {spacing:?} spacing: {e}")
                } else {
                    format!(
                        "steps = {steps} is impossible: the schedule has T = {n_train_steps} steps, so it must be 1 to {n_train_steps}"
                    )
                })
            })
        };
        let check_order = |order: usize| {
            if (1..=3).contains(&order) {
                Ok(())
            } else {
                Err(SampleError::Config(format!(
                    "order = {order} is invalid: it must be 1, 2 or 3"
                )))
            }
        };
        match self {
            SamplerConfig::Ddpm { steps: None, .. } => Ok(Timesteps::full(n_train_steps)),
            SamplerConfig::Ddpm {
                steps: Some(steps),
                spacing,
                ..
            } => sub(*steps, *spacing, &None),
            SamplerConfig::Ddim {
                steps,
                eta,
                spacing,
                timesteps,
            } => {
                if !(0.0..=1.0).contains(eta) {
                    return Err(SampleError::Config(format!(
                        "eta = {eta} is invalid: it must be in [0, 1]"
                    )));
                }
                sub(*steps, *spacing, timesteps)
            }
            SamplerConfig::DpmSolverPp {
                steps,
                spacing,
                timesteps,
                order,
                ..
            }
            | SamplerConfig::UniPc {
                steps,
                spacing,
                timesteps,
                order,
                ..
            } => {
                check_order(*order)?;
                sub(*steps, *spacing, timesteps)
            }
            SamplerConfig::Pndm { steps, prk, .. } if *prk && *steps < 4 => {
                Err(SampleError::Config(format!(
                    "steps = {steps} is too few for PNDM's Runge–Kutta warm-up (prk), which takes \
                     3 steps before the multistep ones: at least 4"
                )))
            }
            SamplerConfig::Pndm { steps, spacing, .. } => match spacing {
                TimestepSpacing::Leading | TimestepSpacing::Trailing => {
                    sub(*steps, *spacing, &None)
                }
                _ => Err(SampleError::Config(format!(
                    "spacing = {spacing:?} does not fit PNDM, which steps by ⌊T/steps⌋: it takes \
                     leading or trailing"
                ))),
            },
            SamplerConfig::Euler { .. }
            | SamplerConfig::Heun { .. }
            | SamplerConfig::EulerAncestral { .. } => Err(SampleError::Config(format!(
                "{self:?} runs at fractional timesteps in σ-space, not at timesteps of the schedule"
            ))),
        }
    }
}

/// An explicit list of timesteps, which must hold `steps` of them.
pub(crate) fn listed(
    n_train_steps: usize,
    steps: usize,
    list: &[usize],
) -> Result<Timesteps, SampleError> {
    if list.len() != steps {
        return Err(SampleError::Config(format!(
            "timesteps {list:?} hold {} steps, but steps = {steps}",
            list.len()
        )));
    }
    Timesteps::from_list(n_train_steps, list).map_err(|e| SampleError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpm_solver_2m_keeps_its_serialized_form() {
        let json =
            serde_json::to_value(SamplerConfig::dpm_solver_pp(20, TimestepSpacing::Trailing))
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "dpm_solver_pp", "steps": 20, "spacing": "trailing"})
        );
        let back: SamplerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            back,
            SamplerConfig::dpm_solver_pp(20, TimestepSpacing::Trailing)
        );
        let unipc: SamplerConfig = serde_json::from_value(
            serde_json::json!({"kind": "unipc", "steps": 10, "spacing": "trailing", "order": 3}),
        )
        .unwrap();
        assert_eq!(
            unipc,
            SamplerConfig::UniPc {
                steps: 10,
                spacing: TimestepSpacing::Trailing,
                order: 3,
                variant: UniPcVariant::Bh2,
                timesteps: None,
            }
        );
    }
}
