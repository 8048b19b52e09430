//! Multistep DPM-Solver++ of orders 1–3 in the data-prediction form (Lu et al. 2022,
//! "DPM-Solver++", Alg. 2 and its third-order extension), and the SDE variant of Gonzalez et al.
//! / diffusers' `sde-dpmsolver++`, as diffusers' `DPMSolverMultistepScheduler` with
//! `solver_type="midpoint"`, `lower_order_final=True` and `final_sigmas_type="zero"`.
//!
//! With α, σ and λ = ln(α/σ) at the step's timestep s0, the earlier ones s1, s2 and the target t,
//! h = λ_t − λ_s0, r0 = (λ_s0 − λ_s1)/h, r1 = (λ_s1 − λ_s2)/h and m_k the x̂_0 of s_k:
//!
//! - first order: x_t = (σ_t/σ_s0) x − α_t (e^{−h} − 1) m0;
//! - second: as first with D = m0 + (1/(2 r0)) (m0 − m1) in place of m0;
//! - third: D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, D1 = D1_0 + r0/(r0 + r1) (D1_0 − D1_1),
//!   D2 = (D1_0 − D1_1)/(r0 + r1), and
//!   x_t = (σ_t/σ_s0) x − α_t (e^{−h} − 1) m0 + α_t ((e^{−h} − 1)/h + 1) D1
//!   − α_t ((e^{−h} − 1 + h)/h² − 1/2) D2;
//! - SDE: x_t = (σ_t/σ_s0) e^{−h} x + α_t (1 − e^{−2h}) D0 + c1 D1 + c2 D2 + σ_t √(1 − e^{−2h}) z
//!   with diffusers' c1, c2 for each order.
//!
//! The order of a step is the configured one, lowered while the history is short, to first at
//! the last step (which goes to σ = 0 and so returns x̂_0) and to at most second at the one
//! before it when there are fewer than 15 steps. The tensor arithmetic is one weighted sum of
//! x, the m_k and z, its weights computed in f64 on the host.

use schedule::tensor::StepOutput;
use tch::Tensor;

use super::{follows, Denoised, LogSnrTable, Solver};

/// DPM-Solver++'s state for one chain.
#[derive(Debug)]
pub(crate) struct DpmSolverPp {
    table: LogSnrTable,
    order: usize,
    sde: bool,
    /// x̂_0 of the latest steps, oldest first, at most `order` of them.
    history: Vec<Tensor>,
    /// The index of the last step taken.
    last: Option<usize>,
}

impl DpmSolverPp {
    pub(crate) fn new(table: LogSnrTable, order: usize, sde: bool) -> Self {
        Self {
            table,
            order,
            sde,
            history: Vec::new(),
            last: None,
        }
    }

    fn n_steps(&self) -> usize {
        self.table.lambda.len() - 1
    }

    /// The order of step `i` with `n_known` earlier x̂_0 (diffusers' `lower_order_nums`).
    fn order_at(&self, i: usize, n_known: usize) -> usize {
        let n = self.n_steps();
        let final_step = i + 1 == n;
        let second_last = i + 2 == n && n < 15;
        if self.order == 1 || n_known < 1 || final_step {
            1
        } else if self.order == 2 || n_known < 2 || second_last {
            2
        } else {
            3
        }
    }

    /// The weights of x, m0, m1, m2 and z for step `i` at order `order`.
    fn weights(&self, i: usize, order: usize) -> [f64; 5] {
        let LogSnrTable {
            alpha,
            sigma,
            lambda,
        } = &self.table;
        let (alpha_t, sigma_t) = (alpha[i + 1], sigma[i + 1]);
        let h = lambda[i + 1] - lambda[i];
        let ratio = sigma_t / sigma[i];
        // r0 and r1 are only read at the orders that have the history.
        let r0 = if order >= 2 {
            (lambda[i] - lambda[i - 1]) / h
        } else {
            1.0
        };
        let r1 = if order >= 3 {
            (lambda[i - 1] - lambda[i - 2]) / h
        } else {
            1.0
        };
        // (c0, c1, c2): the weights of D0 = m0, D1 and D2; and those of x and z.
        let (wx, c, wz) = if self.sde {
            let em = (-2.0 * h).exp_m1(); // e^{−2h} − 1
            let c0 = -alpha_t * em;
            let c1 = match order {
                2 => 0.5 * c0,
                _ => alpha_t * (-em / (-2.0 * h) + 1.0),
            };
            let c2 = alpha_t * ((-em - 2.0 * h) / (2.0 * h).powi(2) - 0.5);
            (ratio * (-h).exp(), [c0, c1, c2], sigma_t * (-em).sqrt())
        } else {
            let em = (-h).exp_m1();
            let c0 = -alpha_t * em;
            let c1 = match order {
                2 => -0.5 * alpha_t * em,
                _ => alpha_t * (em / h + 1.0),
            };
            let c2 = -alpha_t * ((em + h) / (h * h) - 0.5);
            (ratio, [c0, c1, c2], 0.0)
        };
        // D1 and D2 in terms of m0, m1, m2.
        let (m0, m1, m2) = match order {
            1 => (c[0], 0.0, 0.0),
            2 => (c[0] + c[1] / r0, -c[1] / r0, 0.0),
            _ => {
                // D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1.
                let k = r0 / (r0 + r1);
                let (d10, d11) = (
                    c[1] * (1.0 + k) + c[2] / (r0 + r1),
                    -(c[1] * k + c[2] / (r0 + r1)),
                );
                (c[0] + d10 / r0, -d10 / r0 + d11 / r1, -d11 / r1)
            }
        };
        [wx, m0, m1, m2, wz]
    }
}

impl Solver for DpmSolverPp {
    fn needs_noise(&self, i: usize) -> bool {
        self.sde && i + 1 < self.n_steps()
    }

    fn step(&mut self, i: usize, out: &Denoised<'_>, noise: Option<&Tensor>) -> StepOutput {
        let x0 = out.x0();
        if !follows(self.last, i) {
            self.history.clear();
        }
        self.last = Some(i);
        let order = self.order_at(i, self.history.len());
        let prev_sample = if i + 1 == self.n_steps() {
            // σ = 0 at the end: x_0 = x̂_0 (first order, and the SDE adds no noise).
            x0.shallow_clone()
        } else if order == 2 && !self.sde {
            // The 2M form of the original sampler, kept operation for operation.
            let LogSnrTable {
                alpha,
                sigma,
                lambda,
            } = &self.table;
            let h = lambda[i + 1] - lambda[i];
            let r = (lambda[i] - lambda[i - 1]) / h;
            let d = &x0 * (1.0 + 0.5 / r) - &self.history[self.history.len() - 1] * (0.5 / r);
            out.x_t * (sigma[i + 1] / sigma[i]) + d * (-alpha[i + 1] * (-h).exp_m1())
        } else {
            let w = self.weights(i, order);
            let mut x = out.x_t * w[0] + &x0 * w[1];
            for k in 1..order {
                x += &self.history[self.history.len() - k] * w[1 + k];
            }
            if let Some(z) = noise.filter(|_| self.sde) {
                x += z * w[4];
            }
            x
        };
        self.history.push(x0.shallow_clone());
        if self.history.len() > self.order {
            drop(self.history.remove(0));
        }
        StepOutput {
            prev_sample,
            pred_x0: x0,
        }
    }
}
