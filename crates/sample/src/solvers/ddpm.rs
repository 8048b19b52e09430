//! DDPM ancestral sampling (Ho et al. 2020, Alg. 2), as diffusers' `DDPMScheduler`:
//! x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z with the posterior mean of Eq. 7 (Eq. 11 when the network
//! predicts ε unclipped), no noise at t = 0. Over all T steps with a fixed variance, σ_t² comes
//! from one place, [`schedule::Schedule::reverse_variance`].
//!
//! Over fewer steps, or with a network that learns its variance (2·C output channels, Improved
//! DDPM Eq. 15), the step is that of the chain over the visited steps, whose betas are
//! recomputed as β' = 1 − ᾱ_t/ᾱ_prev (Improved DDPM §4; diffusers' `current_beta_t`), with σ²
//! fixed (β' or β̃') or interpolated by the network's v_Σ:
//! [`ScheduleTensors::respaced_step`].

use schedule::tensor::{ScheduleTensors, StepOutput};
use schedule::{StepVariance, Timesteps, VarianceType};
use tch::Tensor;

use super::{Denoised, Solver};

/// DDPM's state: the schedule, the fixed variance and the timesteps it visits.
#[derive(Debug)]
pub(crate) struct Ddpm<'a> {
    sched: &'a ScheduleTensors,
    variance: VarianceType,
    timesteps: Timesteps,
    /// Whether the timesteps are all T of them.
    full: bool,
}

impl<'a> Ddpm<'a> {
    pub(crate) fn new(
        sched: &'a ScheduleTensors,
        variance: VarianceType,
        timesteps: Timesteps,
    ) -> Self {
        let full = timesteps.len() == sched.schedule().n_steps();
        Self {
            sched,
            variance,
            timesteps,
            full,
        }
    }

    /// The step of the chain over the visited timesteps (respaced, or with a learned variance).
    fn respaced(&self, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
        let (t, x_t) = (out.t, out.x_t);
        let x0 = out.x0();
        let variance = match out.model_v {
            Some(v) => StepVariance::LearnedRange(v),
            None => StepVariance::Fixed(self.variance),
        };
        let t_prev = self.timesteps.prev_timestep(t);
        // The final step adds no noise, and reads none.
        let noise = noise.unwrap_or(x_t);
        let prev_sample = self
            .sched
            .respaced_step(&x0, x_t, t, t_prev, noise, variance)
            .expect("the timesteps were checked in Sampler::new");
        StepOutput {
            prev_sample,
            pred_x0: x0,
        }
    }
}

impl Solver for Ddpm<'_> {
    fn needs_noise(&self, i: usize) -> bool {
        // Every step but the last, which goes to x_0.
        i + 1 < self.timesteps.len()
    }

    fn step(&mut self, _i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
        if !self.full || out.model_v.is_some() {
            return self.respaced(out, noise);
        }
        let (t, x_t) = (out.t, out.x_t);
        let noise = || noise.expect("checked by Sampler::step");
        if out.is_plain_eps() {
            // Eq. 11 as `schedule` writes it; `noise` is unused at t = 0.
            let noise = if t > 0 { noise() } else { x_t };
            return self.sched.step(out.output, t, x_t, noise, self.variance);
        }
        let x0 = out.x0();
        let mean = self.sched.posterior_mean(&x0, x_t, t);
        let prev_sample = match t {
            0 => mean,
            _ => {
                mean + noise()
                    * self
                        .sched
                        .schedule()
                        .reverse_variance(t, self.variance)
                        .sqrt()
            }
        };
        StepOutput {
            prev_sample,
            pred_x0: x0,
        }
    }
}
