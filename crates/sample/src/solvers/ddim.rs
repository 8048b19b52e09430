//! DDIM (Song et al. 2021, Eq. 12 with σ_t(η) of Eq. 16), as diffusers' `DDIMScheduler` with
//! `set_alpha_to_one=True` and, when clipping, `use_clipped_model_output=True`. The step itself
//! is [`ScheduleTensors::ddim_step`].
//!
//! With a network that learns its variance (2·C output channels, Improved DDPM Eq. 15) and
//! η > 0, σ_t² = η² Σ_θ, where Σ_θ interpolates by v_Σ between the β' and β̃' of the chain over
//! the visited steps (β' = 1 − ᾱ_t/ᾱ_prev, [`schedule::Schedule::reverse_step`]); the direction
//! term's √(1 − ᾱ_prev − σ_t²) is floored at 0. Since DDIM's own σ_t(η)² is η² β̃', v_Σ = −1
//! gives DDIM's step exactly. Neither paper defines this combination (improved-diffusion's
//! `ddim_sample` ignores the learned variance); it is the toolkit's reading of "DDIM with η > 0
//! uses the learned variance".

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
        let t_prev = self.timesteps.prev_timestep(t);
        if let (Some(model_v), true, Some(t_prev)) = (out.model_v, self.eta > 0.0, t_prev) {
            let s = self.sched.schedule();
            let step = s
                .reverse_step(t, Some(t_prev))
                .expect("the timesteps were checked in Sampler::new");
            let (max_log, min_log) = (
                step.learned_log_variance(1.0),
                step.learned_log_variance(0.0),
            );
            let frac = (model_v + 1.0) * 0.5;
            let log_var = &frac * max_log + (-&frac + 1.0) * min_log;
            let variance = log_var.exp() * (self.eta * self.eta);
            let a_prev = s.alphas_cumprod()[t_prev];
            let direction = (-&variance + (1.0 - a_prev)).clamp_min(0.0).sqrt();
            let prev_sample = &x0 * a_prev.sqrt() + eps * direction + noise * variance.sqrt();
            return StepOutput {
                prev_sample,
                pred_x0: x0,
            };
        }
        let step = self
            .sched
            .ddim_step(&eps, t, t_prev, x_t, noise, self.eta)
            .expect("the timesteps and eta were checked in Sampler::new");
        StepOutput {
            prev_sample: step.prev_sample,
            pred_x0: x0,
        }
    }
}
