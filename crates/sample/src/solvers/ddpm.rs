//! DDPM ancestral sampling (Ho et al. 2020, Alg. 2), as diffusers' `DDPMScheduler`:
//! x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t z with the posterior mean of Eq. 7 (Eq. 11 when the network
//! predicts ε unclipped), no noise at t = 0. The reverse variance σ_t² comes from one place,
//! [`schedule::Schedule::reverse_variance`].

use schedule::tensor::{ScheduleTensors, StepOutput};
use schedule::VarianceType;
use tch::Tensor;

use super::{Denoised, Solver};

/// DDPM's state: none beyond the schedule and the variance.
#[derive(Debug)]
pub(crate) struct Ddpm<'a> {
    sched: &'a ScheduleTensors,
    variance: VarianceType,
}

impl<'a> Ddpm<'a> {
    pub(crate) fn new(sched: &'a ScheduleTensors, variance: VarianceType) -> Self {
        Self { sched, variance }
    }
}

impl Solver for Ddpm<'_> {
    fn needs_noise(&self, i: usize) -> bool {
        // Every step but the last, at t = 0 (the timesteps are all T of them).
        i + 1 < self.sched.schedule().n_steps()
    }

    fn step(&mut self, _i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
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
