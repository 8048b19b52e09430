//! The σ-space samplers of Karras et al. 2022, as diffusers runs them on a DDPM schedule: Euler
//! (`EulerDiscreteScheduler`), Euler ancestral (`EulerAncestralDiscreteScheduler`) and Heun's
//! second-order method (`HeunDiscreteScheduler`), all with `final_sigmas_type="zero"` and no
//! churn.
//!
//! They integrate the probability-flow ODE dx/dσ = (x − x̂_0)/σ in x_σ = x_t/√ᾱ_t, where
//! σ_t = √((1 − ᾱ_t)/ᾱ_t). The chain starts from x_T · `init_noise_sigma`, the network sees
//! x_σ/√(σ² + 1) (the variance-preserving x_t) at a timestep that may be fractional, passed to
//! it unrounded: `linspace` spreads the timesteps over [0, T − 1] without rounding and σ is
//! interpolated linearly in the table of σ_t; `karras` takes σ from Karras et al.'s ρ = 7 ramp
//! between σ_0 and σ_{T−1} and maps each σ back to a timestep by interpolating log σ.

use schedule::tensor::StepOutput;
use schedule::{Schedule, TimestepSpacing, Timesteps};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{Denoised, Solver};
use crate::SampleError;

/// Karras et al.'s ρ.
const RHO: f64 = 7.0;

/// How a σ-space sampler spreads its steps: diffusers' `timestep_spacing`, or
/// `use_karras_sigmas` (with the default `linspace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaSpacing {
    /// (T − 1) · i/(n − 1), unrounded (diffusers' default for these schedulers).
    Linspace,
    /// i · ⌊T/n⌋ from 0; the chain then starts from x_T · √(σ_max² + 1), as diffusers does.
    Leading,
    /// From T − 1 down in steps of T/n, rounded.
    Trailing,
    /// σ_i = (σ_max^{1/ρ} + i/(n − 1) · (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7, between σ_{T−1}
    /// and σ_0 (Karras et al. 2022, Eq. 5); the timesteps are fractional.
    Karras,
}

/// A σ-space chain: the timestep the network sees and σ at each of its `n` steps, and a final
/// σ = 0.
#[derive(Debug, Clone)]
pub(crate) struct SigmaTable {
    /// The network's timestep at each step (fractional for `linspace` and `karras`).
    pub t: Vec<f64>,
    /// σ at each step, then 0.
    pub sigma: Vec<f64>,
    /// What the starting N(0, I) noise is scaled by.
    pub init_noise_sigma: f64,
}

impl SigmaTable {
    /// The chain of `steps` steps spread by `spacing`, or over the timesteps of `list`.
    pub(crate) fn new(
        schedule: &Schedule,
        steps: usize,
        spacing: SigmaSpacing,
        list: Option<&[usize]>,
    ) -> Result<Self, SampleError> {
        let n_train = schedule.n_steps();
        let table: Vec<f64> = schedule
            .alphas_cumprod()
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        let integral = |spacing| {
            Timesteps::new(n_train, steps, spacing)
                .map(|ts| ts.as_slice().iter().map(|&t| t as f64).collect::<Vec<_>>())
                .map_err(|_| {
                    SampleError::Config(format!(
                        "steps = {steps} is impossible: the schedule has T = {n_train} steps, so it must be 1 to {n_train}"
                    ))
                })
        };
        let (t, sigma) = if let Some(list) = list {
            super::config::listed(n_train, steps, list)?;
            let t: Vec<f64> = list.iter().map(|&t| t as f64).collect();
            let sigma = t.iter().map(|&t| interp(&table, t)).collect();
            (t, sigma)
        } else {
            if !(1..=n_train).contains(&steps) {
                integral(TimestepSpacing::Linspace)?;
            }
            match spacing {
                SigmaSpacing::Linspace => {
                    let t = linspace(n_train as f64 - 1.0, 0.0, steps);
                    let sigma = t.iter().map(|&t| interp(&table, t)).collect();
                    (t, sigma)
                }
                SigmaSpacing::Leading | SigmaSpacing::Trailing => {
                    let t = integral(if spacing == SigmaSpacing::Leading {
                        TimestepSpacing::Leading
                    } else {
                        TimestepSpacing::Trailing
                    })?;
                    let sigma = t.iter().map(|&t| interp(&table, t)).collect();
                    (t, sigma)
                }
                SigmaSpacing::Karras => {
                    let (lo, hi) = (table[0].powf(1.0 / RHO), table[n_train - 1].powf(1.0 / RHO));
                    let sigma: Vec<f64> = linspace(0.0, 1.0, steps)
                        .iter()
                        .map(|r| (hi + r * (lo - hi)).powf(RHO))
                        .collect();
                    let log_table: Vec<f64> = table.iter().map(|s| s.ln()).collect();
                    let t = sigma.iter().map(|&s| sigma_to_t(&log_table, s)).collect();
                    (t, sigma)
                }
            }
        };
        let max = sigma.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match (spacing, list) {
            (SigmaSpacing::Leading, None) => (max * max + 1.0).sqrt(),
            _ => max,
        };
        let mut sigma = sigma;
        sigma.push(0.0);
        Ok(Self {
            t,
            sigma,
            init_noise_sigma,
        })
    }

    /// The number of steps.
    pub(crate) fn len(&self) -> usize {
        self.t.len()
    }
}

/// numpy's `linspace(from, to, n)`: `from + k · (to − from)/(n − 1)`, the last exactly `to`.
fn linspace(from: f64, to: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![from];
    }
    let step = (to - from) / (n - 1) as f64;
    (0..n)
        .map(|k| {
            if k + 1 == n {
                to
            } else {
                from + k as f64 * step
            }
        })
        .collect()
}

/// `table` at the fractional index `t` by linear interpolation (numpy's `interp`).
fn interp(table: &[f64], t: f64) -> f64 {
    let low = (t.floor() as usize).min(table.len() - 1);
    if low + 1 >= table.len() {
        return table[low];
    }
    let slope = table[low + 1] - table[low];
    slope * (t - low as f64) + table[low]
}

/// The fractional timestep whose σ is `sigma`, interpolating log σ between its neighbours in the
/// table (diffusers' `_sigma_to_t`).
fn sigma_to_t(log_table: &[f64], sigma: f64) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log σ is at most log_sigma (0 when there is none), below T − 1.
    let at_most = log_table.iter().take_while(|&&l| l <= log_sigma).count();
    let low = at_most.saturating_sub(1).min(log_table.len() - 2);
    let (l, h) = (log_table[low], log_table[low + 1]);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Euler's method in σ, or Euler ancestral: the step to σ_down, then noise of σ_up.
#[derive(Debug)]
pub(crate) struct Euler {
    sigma: Vec<f64>,
    ancestral: bool,
}

impl Euler {
    pub(crate) fn new(table: &SigmaTable, ancestral: bool) -> Self {
        Self {
            sigma: table.sigma.clone(),
            ancestral,
        }
    }
}

impl Solver for Euler {
    fn needs_noise(&self, i: usize) -> bool {
        self.ancestral && self.sigma[i + 1] > 0.0
    }

    fn step(&mut self, i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
        let (sigma, next) = (self.sigma[i], self.sigma[i + 1]);
        let x = out.x_t;
        let x0 = out.x0();
        let derivative = (x - &x0) / sigma;
        let prev_sample = if self.needs_noise(i) {
            // σ_up² = σ_next² (σ² − σ_next²)/σ², σ_down² = σ_next² − σ_up².
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            let down = (next * next - up * up).sqrt();
            x + derivative * (down - sigma) + noise.expect("checked by Sampler::step") * up
        } else {
            x + derivative * (next - sigma)
        };
        StepOutput {
            prev_sample,
            pred_x0: x0,
        }
    }
}

/// Heun's method in σ: network evaluation `2j` takes an Euler step from σ_j to σ_{j+1}, and
/// evaluation `2j + 1`, at the point it reached, replaces it with the step along the mean of
/// the two slopes. The last step, to σ = 0, stays an Euler step, so n steps take 2n − 1
/// evaluations.
#[derive(Debug)]
pub(crate) struct Heun {
    sigma: Vec<f64>,
    /// After an Euler stage: its slope, its Δσ, the sample it started from, and its index.
    stage: Option<(Tensor, f64, Tensor, usize)>,
}

impl Heun {
    pub(crate) fn new(table: &SigmaTable) -> Self {
        Self {
            sigma: table.sigma.clone(),
            stage: None,
        }
    }

    /// σ at each of the 2n − 1 evaluations: σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}.
    pub(crate) fn evaluations(values: &[f64]) -> Vec<f64> {
        std::iter::once(values[0])
            .chain(values[1..].iter().flat_map(|&v| [v, v]))
            .collect()
    }
}

impl Solver for Heun {
    fn needs_noise(&self, _: usize) -> bool {
        false
    }

    fn step(&mut self, k: usize, out: &Denoised<'_>, _: Option<&Tensor>) -> StepOutput {
        let x = out.x_t;
        let x0 = out.x0();
        if k.is_multiple_of(2) {
            let j = k / 2;
            let (sigma, next) = (self.sigma[j], self.sigma[j + 1]);
            let derivative = (x - &x0) / sigma;
            let dt = next - sigma;
            let prev_sample = x + &derivative * dt;
            self.stage = (next > 0.0).then(|| (derivative, dt, x.shallow_clone(), k));
            return StepOutput {
                prev_sample,
                pred_x0: x0,
            };
        }
        let (first, dt, start, at) = self
            .stage
            .take()
            .expect("Heun's second stage follows its first");
        assert_eq!(at + 1, k, "Heun's evaluations must be taken in order");
        let sigma = self.sigma[k.div_ceil(2)];
        let derivative = ((x - &x0) / sigma + first) / 2.0;
        StepOutput {
            prev_sample: start + derivative * dt,
            pred_x0: x0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_and_its_inverse_agree() {
        let table = [0.1, 0.2, 0.4, 0.8];
        assert!((interp(&table, 1.5) - 0.3).abs() < 1e-15);
        assert_eq!(interp(&table, 3.0), 0.8);
        let logs: Vec<f64> = table.iter().map(|s: &f64| s.ln()).collect();
        for t in [0.0f64, 0.25, 1.0, 2.5, 3.0] {
            // Log-linear between neighbours: exact at the table's points.
            let s = (logs[t as usize] * (1.0 - t.fract())
                + logs[(t as usize + 1).min(3)] * t.fract())
            .exp();
            assert!((sigma_to_t(&logs, s) - t).abs() < 1e-12, "{t}");
        }
        assert_eq!(sigma_to_t(&logs, 0.01), 0.0);
        assert_eq!(sigma_to_t(&logs, 9.0), 3.0);
        assert_eq!(linspace(0.0, 1.0, 3), [0.0, 0.5, 1.0]);
        assert_eq!(
            Heun::evaluations(&[3.0, 2.0, 1.0]),
            [3.0, 2.0, 2.0, 1.0, 1.0]
        );
    }
}
