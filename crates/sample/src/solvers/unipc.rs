//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), as diffusers'
//! `UniPCMultistepScheduler` with `predict_x0=True`, `lower_order_final=True`,
//! `final_sigmas_type="zero"` and the corrector after every network evaluation but the first.
//!
//! With α, σ and λ = ln(α/σ) per step (the last entry σ = 0), h = λ_t − λ_s0, hh = −h,
//! φ₁ = e^{hh} − 1, B(h) = hh (`bh1`) or e^{hh} − 1 (`bh2`), r_k = (λ_{s_k} − λ_s0)/h and
//! D1_k = (m_k − m0)/r_k for the x̂_0 m_k of earlier steps:
//!
//! - UniP of order p: x_t = (σ_t/σ_s0) x − α_t φ₁ m0 − α_t B(h) Σ_k ρ_k D1_k, with ρ = 1/2 at
//!   p = 2 and otherwise ρ solving R[:p−1, :p−1] ρ = b[:p−1], where R_{jk} = r_k^j (r_p = 1) and
//!   b_j = j! φ_{j+1}(hh)/B(h) built by φ_{k+1} = φ_k/hh − 1/(k+1)!;
//! - UniC, when the next x̂_0 m_t arrives at the predicted sample: the same step from the sample
//!   before the predictor, plus the term ρ_p (m_t − m0), ρ solving R ρ = b (ρ = 1/2 at p = 1).
//!   The corrected sample is the base of the next prediction; the network saw the uncorrected one.
//!
//! The predictor's order climbs with the history and drops near the end (p ≤ steps left). Each
//! step is one weighted sum of tensors whose weights are computed in f64 on the host.

use schedule::tensor::StepOutput;
use tch::Tensor;

use super::config::UniPcVariant;
use super::linalg::solve;
use super::{follows, Denoised, LogSnrTable, Solver};

/// UniPC's state for one chain.
#[derive(Debug)]
pub(crate) struct UniPc {
    table: LogSnrTable,
    order: usize,
    variant: UniPcVariant,
    /// x̂_0 of the latest steps, oldest first, at most `order` of them.
    history: Vec<Tensor>,
    /// The sample the last predictor started from, and that predictor's order.
    last_sample: Option<(Tensor, usize)>,
    /// The index of the last step taken.
    last: Option<usize>,
}

/// The weights of one UniP/UniC update from step `s` to step `t`, of `order` with the ratios
/// `rks` of the earlier steps: (weight of the base sample, of m0, of each D1_k, and ρ_p).
fn update_weights(
    table: &LogSnrTable,
    variant: UniPcVariant,
    s: usize,
    t: usize,
    earlier: &[usize],
    corrector: bool,
) -> (f64, f64, Vec<f64>, f64) {
    let LogSnrTable {
        alpha,
        sigma,
        lambda,
    } = table;
    let h = lambda[t] - lambda[s];
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let base = sigma[t] / sigma[s];
    let w_m0 = -alpha[t] * h_phi_1;
    let mut rks: Vec<f64> = earlier
        .iter()
        .map(|&k| (lambda[k] - lambda[s]) / h)
        .collect();
    let order = earlier.len() + 1;
    if earlier.is_empty() && !corrector {
        return (base, w_m0, Vec::new(), 0.0);
    }
    rks.push(1.0);
    let mut b = Vec::with_capacity(order);
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for i in 1..=order {
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let r_matrix = |n: usize| -> Vec<Vec<f64>> {
        (0..n)
            .map(|j| rks[..n].iter().map(|r| r.powi(j as i32)).collect())
            .collect()
    };
    let rhos = match (corrector, order) {
        (true, 1) => vec![0.5],
        (true, _) => solve(r_matrix(order), b),
        (false, 2) => vec![0.5],
        (false, _) => solve(r_matrix(order - 1), b[..order - 1].to_vec()),
    };
    let scale = -alpha[t] * b_h;
    let d_weights = rhos[..order - 1].iter().map(|rho| scale * rho).collect();
    let rho_p = if corrector {
        scale * rhos[order - 1]
    } else {
        0.0
    };
    (base, w_m0, d_weights, rho_p)
}

impl UniPc {
    pub(crate) fn new(table: LogSnrTable, order: usize, variant: UniPcVariant) -> Self {
        Self {
            table,
            order,
            variant,
            history: Vec::new(),
            last_sample: None,
            last: None,
        }
    }

    fn n_steps(&self) -> usize {
        self.table.lambda.len() - 1
    }

    /// Σ over the earlier x̂_0: the tensor `base · x + w_m0 · m0 + Σ_k w_k (m_k − m0)/r_k` with
    /// m0 the newest of `ms` and m_k the ones before it.
    fn weighted(
        &self,
        x: &Tensor,
        ms: &[&Tensor],
        s: usize,
        earlier: &[usize],
        (base, w_m0, d_weights): (f64, f64, &[f64]),
    ) -> Tensor {
        let lambda = &self.table.lambda;
        let h = lambda[s + 1] - lambda[s];
        let m0 = ms[ms.len() - 1];
        let mut w_m0 = w_m0;
        let mut out = x * base;
        for (k, (&step, w)) in earlier.iter().zip(d_weights).enumerate() {
            let r = (lambda[step] - lambda[s]) / h;
            out += ms[ms.len() - 2 - k] * (w / r);
            w_m0 -= w / r;
        }
        out + m0 * w_m0
    }
}

impl Solver for UniPc {
    fn needs_noise(&self, _i: usize) -> bool {
        false
    }

    fn step(&mut self, i: usize, out: &Denoised<'_>, _noise: Option<&Tensor>) -> StepOutput {
        let m_t = out.x0();
        if !follows(self.last, i) {
            self.history.clear();
            self.last_sample = None;
        }
        self.last = Some(i);
        // UniC: correct the sample the network saw, with its x̂_0.
        let x = match self.last_sample.take() {
            Some((last_sample, p)) => {
                let s = i - 1;
                let earlier: Vec<usize> = (1..p).map(|k| s - k).collect();
                let (base, w_m0, d_w, rho_p) =
                    update_weights(&self.table, self.variant, s, i, &earlier, true);
                let ms: Vec<&Tensor> = self.history.iter().collect();
                let x = self.weighted(&last_sample, &ms, s, &earlier, (base, w_m0, &d_w));
                // ρ_p (m_t − m0).
                x + (&m_t - ms[ms.len() - 1]) * rho_p
            }
            None => out.x_t.shallow_clone(),
        };
        self.history.push(m_t.shallow_clone());
        if self.history.len() > self.order {
            drop(self.history.remove(0));
        }
        let p = self.order.min(self.n_steps() - i).min(self.history.len());
        let earlier: Vec<usize> = (1..p).map(|k| i - k).collect();
        let (base, w_m0, d_w, _) =
            update_weights(&self.table, self.variant, i, i + 1, &earlier, false);
        let ms: Vec<&Tensor> = self.history.iter().collect();
        let prev_sample = self.weighted(&x, &ms, i, &earlier, (base, w_m0, &d_w));
        self.last_sample = Some((x, p));
        StepOutput {
            prev_sample,
            pred_x0: m_t,
        }
    }
}
