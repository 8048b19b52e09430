//! DDIM (Song et al. 2021, Eq. 12 with σ_t(η) of Eq. 16), as diffusers' `DDIMScheduler` with
//! `set_alpha_to_one=True` and, when clipping, `use_clipped_model_output=True`. The step itself
//! is [`ScheduleTensors::ddim_step`].

use schedule::tensor::{ScheduleTensors, StepOutput};
use schedule::Timesteps;
use tch::Tensor;

use super::{Denoised, Solver};

/// DDIM's state: the timesteps (for the step each one goes to) and η.
#[derive(Debug)]
pub(crate) struct Ddim<'a> {
    sched: &'a ScheduleTensors,
    timesteps: Timesteps,
    eta: f64,
}

impl<'a> Ddim<'a> {
    pub(crate) fn new(sched: &'a ScheduleTensors, timesteps: Timesteps, eta: f64) -> Self {
        Self {
            sched,
            timesteps,
            eta,
        }
    }
}

impl Solver for Ddim<'_> {
    fn needs_noise(&self, i: usize) -> bool {
        self.eta > 0.0 && i + 1 < self.timesteps.len()
    }

    fn step(&mut self, i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
        let (t, x_t) = (out.t, out.x_t);
        let (x0, eps) = out.x0_and_eps();
        let noise = match self.needs_noise(i) {
            true => noise.expect("checked by Sampler::step"),
            false => x_t,
        };
        let step = self
            .sched
            .ddim_step(
                &eps,
                t,
                self.timesteps.prev_timestep(t),
                x_t,
                noise,
                self.eta,
            )
            .expect("the timesteps and eta were checked in Sampler::new");
        StepOutput {
            prev_sample: step.prev_sample,
            pred_x0: x0,
        }
    }
}
