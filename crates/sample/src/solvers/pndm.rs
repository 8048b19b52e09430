//! PNDM (Liu et al. 2022): the pseudo linear multistep method PLMS (Eq. 12 with the transfer of
//! Eq. 9), as diffusers' `PNDMScheduler` runs it with `skip_prk_steps=True`, the way every
//! diffusers pipeline that takes a PNDM scheduler configures it; and with `prk`, its default
//! `skip_prk_steps=False`, PNDM proper, which starts with pseudo Runge–Kutta steps.
//!
//! Over n steps spaced by r = ⌊T/n⌋, PLMS evaluates the network n + 1 times: at the first step's
//! timestep, then once more at the second's to replace the first step by the mean of the two
//! outputs (a second-order start), then once per step with the Adams–Bashforth combinations of
//! up to four earlier outputs. With `prk` the first three steps (the largest timesteps) are
//! classical Runge–Kutta steps of 4 evaluations, at t, t − r/2 (twice) and t − r, and PLMS
//! then takes the other n − 3 steps at fourth order: n + 9 evaluations. Each step goes from t
//! to t − r (ᾱ_0 past the last, diffusers' `set_alpha_to_one=False`).

use schedule::tensor::{ScheduleTensors, StepOutput};
use tch::Tensor;

use super::{Denoised, Solver};
use model::Prediction;

/// The network's timestep at each evaluation over the steps `timesteps` (largest first): t_0,
/// t_1, t_1, t_2, …, t_{n−1}; with the warm-up on a schedule of `prk = Some(T)`, the Runge–Kutta
/// stages of the first three steps (t_k, t_{k+1} + h, t_{k+1} + h, t_{k+1}, h = ⌊⌊T/n⌋/2⌋, as
/// diffusers lays them out), then t_3, …, t_{n−1}.
pub(crate) fn evaluations(timesteps: &[usize], prk: Option<usize>) -> Vec<usize> {
    if let Some(n_train) = prk {
        let half = n_train / timesteps.len() / 2;
        let mut evals: Vec<usize> = timesteps
            .windows(2)
            .take(3)
            .flat_map(|w| [w[0], w[1] + half, w[1] + half, w[1]])
            .collect();
        evals.extend_from_slice(&timesteps[3..]);
        return evals;
    }
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
    /// The number of Runge–Kutta evaluations (12 with the warm-up, else 0), and the weighted
    /// sum of a Runge–Kutta step's outputs so far.
    rk_evals: usize,
    rk_sum: Option<Tensor>,
}

impl Plms {
    pub(crate) fn new(
        sched: &ScheduleTensors,
        evals: Vec<usize>,
        n_steps: usize,
        prediction: Prediction,
        clip_x0: bool,
        prk: bool,
    ) -> Self {
        let s = sched.schedule();
        Self {
            rk_evals: if prk { 12 } else { 0 },
            rk_sum: None,
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

impl Plms {
    /// Evaluation `i` of the warm-up: stage `i mod 4` of a classical Runge–Kutta step of the
    /// transfer from the step's start (see [`evaluations`] for the stages' timesteps), as
    /// diffusers' `step_prk`: stage 0 goes to t − h although the next stage's network sees
    /// t_next + h, which differ when ⌊T/n⌋ is odd.
    fn runge_kutta(&mut self, i: usize, x: &Tensor, e: Tensor) -> Tensor {
        let start = self.evals[i / 4 * 4];
        let half = self.ratio / 2;
        // diffusers' prev_timestep: the evaluation's timestep, less h on even stages.
        let to = (self.evals[i] - if i.is_multiple_of(2) { half } else { 0 }) as i64;
        let combined = match i % 4 {
            0 => {
                self.rk_sum = Some(&e / 6.0);
                self.outputs.push(e.shallow_clone());
                self.first_sample = Some(x.shallow_clone());
                e
            }
            1 | 2 => {
                let sum = self.rk_sum.take().expect("stage 0 came first");
                self.rk_sum = Some(sum + &e / 3.0);
                e
            }
            _ => self.rk_sum.take().expect("stage 0 came first") + e / 6.0,
        };
        let first = self.first_sample.as_ref().expect("stage 0 came first");
        self.transfer(first, start, to, &combined)
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
        if i < self.rk_evals {
            return StepOutput {
                prev_sample: self.runge_kutta(i, out.x_t, e),
                pred_x0: x0,
            };
        }
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
        assert_eq!(
            evaluations(&[750, 500, 250, 0], None),
            [750, 500, 500, 250, 0]
        );
        assert_eq!(evaluations(&[0], None), [0]);
        assert_eq!(
            evaluations(&[800, 600, 400, 200, 0], Some(1000)),
            [800, 700, 700, 600, 600, 500, 500, 400, 400, 300, 300, 200, 200, 0]
        );
        // ⌊T/n⌋ = 83 is odd: the middle stages sit at t_next + 41.
        assert_eq!(
            evaluations(&[415, 332, 249, 166, 83, 0], Some(500)),
            [415, 373, 373, 332, 332, 290, 290, 249, 249, 207, 207, 166, 166, 83, 0]
        );
    }
}
