//! PLMS, the pseudo linear multistep method of PNDM (Liu et al. 2022, Eq. 12 with the transfer
//! of Eq. 9), as diffusers' `PNDMScheduler` with `skip_prk_steps=True` runs it: the way every
//! diffusers pipeline that takes a PNDM scheduler configures it (the Runge–Kutta warm-up of
//! `skip_prk_steps=False` is not implemented).
//!
//! Over n steps spaced by r = ⌊T/n⌋ the network is evaluated n + 1 times: at the first step's
//! timestep, then once more at the second's to replace the first step by the mean of the two
//! outputs (a second-order start), then once per step with the Adams–Bashforth combinations of
//! up to four earlier outputs. Each step goes from t to t − r (ᾱ_0 past the last, diffusers'
//! `set_alpha_to_one=False`).

use schedule::tensor::{ScheduleTensors, StepOutput};
use tch::Tensor;

use super::{Denoised, Solver};
use model::Prediction;

/// The network's timestep at each of the n + 1 evaluations over the steps `timesteps`
/// (largest first): t_0, t_1, t_1, t_2, …, t_{n−1}.
pub(crate) fn evaluations(timesteps: &[usize]) -> Vec<usize> {
    let mut evals = timesteps.to_vec();
    if timesteps.len() > 1 {
        evals.insert(1, timesteps[1]);
    }
    evals
}

/// PLMS's state: the outputs of earlier evaluations and the sample the first step started from.
#[derive(Debug)]
pub(crate) struct Plms {
    alphas_cumprod: Vec<f64>,
    /// The timestep of each evaluation.
    evals: Vec<usize>,
    /// r = ⌊T/n⌋.
    ratio: usize,
    /// Whether the stored outputs are v, converted to ε after they are combined (diffusers);
    /// otherwise ε̂.
    stores_v: bool,
    outputs: Vec<Tensor>,
    first_sample: Option<Tensor>,
}

impl Plms {
    pub(crate) fn new(
        sched: &ScheduleTensors,
        evals: Vec<usize>,
        n_steps: usize,
        prediction: Prediction,
        clip_x0: bool,
    ) -> Self {
        let s = sched.schedule();
        Self {
            alphas_cumprod: s.alphas_cumprod().to_vec(),
            evals,
            ratio: s.n_steps() / n_steps,
            stores_v: prediction == Prediction::V && !clip_x0,
            outputs: Vec::new(),
            first_sample: None,
        }
    }

    /// Eq. 9 of PNDM from `t` to `t_prev` with the combined output `e` (ε, or v with
    /// `stores_v`), the coefficients in f64.
    fn transfer(&self, x: &Tensor, t: usize, t_prev: i64, e: &Tensor) -> Tensor {
        let a = self.alphas_cumprod[t];
        let a_prev = match usize::try_from(t_prev) {
            Ok(t_prev) => self.alphas_cumprod[t_prev],
            Err(_) => self.alphas_cumprod[0],
        };
        let eps = match self.stores_v {
            true => e * a.sqrt() + x * (1.0 - a).sqrt(),
            false => e.shallow_clone(),
        };
        let denominator = a * (1.0 - a_prev).sqrt() + (a * (1.0 - a) * a_prev).sqrt();
        x * (a_prev / a).sqrt() - eps * ((a_prev - a) / denominator)
    }
}

impl Solver for Plms {
    fn needs_noise(&self, _: usize) -> bool {
        false
    }

    fn step(&mut self, i: usize, out: &Denoised<'_>, _: Option<&Tensor>) -> StepOutput {
        assert_eq!(
            self.outputs.is_empty(),
            i == 0,
            "PLMS's evaluations must be taken in order from the first"
        );
        let (x0, eps) = out.x0_and_eps();
        let e = match self.stores_v {
            true => out.output.shallow_clone(),
            false => eps,
        };
        let t = self.evals[i];
        let (mut from, mut to) = (t, t as i64 - self.ratio as i64);
        if i == 1 {
            // The first step again, from its start, with the mean of its two outputs.
            (from, to) = (t + self.ratio, t as i64);
        } else {
            if self.outputs.len() == 4 {
                drop(self.outputs.remove(0));
            }
            self.outputs.push(e.shallow_clone());
        }
        let o = &self.outputs;
        let mut x = out.x_t.shallow_clone();
        let combined = match (o.len(), i) {
            (1, 0) => {
                self.first_sample = Some(x.shallow_clone());
                e
            }
            (1, _) => {
                x = self.first_sample.take().expect("the first step's sample");
                (e + &o[0]) / 2.0
            }
            (2, _) => (&o[1] * 3.0 - &o[0]) / 2.0,
            (3, _) => (&o[2] * 23.0 - &o[1] * 16.0 + &o[0] * 5.0) / 12.0,
            _ => (&o[3] * 55.0 - &o[2] * 59.0 + &o[1] * 37.0 - &o[0] * 9.0) / 24.0,
        };
        StepOutput {
            prev_sample: self.transfer(&x, from, to, &combined),
            pred_x0: x0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_step_is_evaluated_twice() {
        assert_eq!(evaluations(&[750, 500, 250, 0]), [750, 500, 500, 250, 0]);
        assert_eq!(evaluations(&[0]), [0]);
    }
}
