//! Importance sampling of the training timesteps for L_vlb-only training (Nichol & Dhariwal
//! 2021, "Improved DDPM", §3.3, Eq. 17): L_vlb = E_{t∼p_t}(L_t / p_t) with p_t ∝ √E(L_t²),
//! E(L_t²) estimated from the last [`HISTORY_PER_T`] losses seen at each t, and t drawn
//! uniformly until every t has that many.
//!
//! The rules are those of improved-diffusion's `LossSecondMomentResampler` (written here from
//! its description, not copied): once warmed up, the normalised √E(L_t²) is mixed with
//! [`UNIFORM_PROB`] of the uniform distribution, so that no t is starved; each drawn sample's
//! loss is weighted by 1/(T p_t), which keeps the objective unbiased (uniform p_t gives weight
//! 1); the history takes each sample's loss before that weight. The history is the sampler's
//! whole state: the trainer keeps it in `state.json`, so a resumed run draws what the
//! uninterrupted one would.

use serde::{Deserialize, Serialize};

/// Losses kept per t (the paper's warm-up: "10 samples per t").
pub const HISTORY_PER_T: usize = 10;

/// The weight of the uniform distribution mixed into p_t once warmed up (improved-diffusion's
/// `uniform_prob`).
pub const UNIFORM_PROB: f64 = 0.001;

/// The sampler's state: the last [`HISTORY_PER_T`] losses seen at each t, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportanceSampler {
    history: Vec<Vec<f64>>,
}

impl ImportanceSampler {
    /// A sampler for `n_steps` timesteps with no history (it draws uniformly).
    pub fn new(n_steps: usize) -> Self {
        Self {
            history: vec![Vec::new(); n_steps],
        }
    }

    /// A sampler from a saved history (`history[t]`: the losses seen at t, oldest first).
    ///
    /// # Errors
    /// A message naming what is wrong when the history has not `n_steps` entries, one holds more
    /// than [`HISTORY_PER_T`] losses, or a loss is not finite.
    pub fn from_history(history: Vec<Vec<f64>>, n_steps: usize) -> Result<Self, String> {
        if history.len() != n_steps {
            return Err(format!(
                "the timestep history has {} entries, but the schedule has T = {n_steps}",
                history.len()
            ));
        }
        for (t, losses) in history.iter().enumerate() {
            if losses.len() > HISTORY_PER_T {
                return Err(format!(
                    "the timestep history holds {} losses at t = {t}, more than {HISTORY_PER_T}",
                    losses.len()
                ));
            }
            if let Some(bad) = losses.iter().find(|l| !l.is_finite()) {
                return Err(format!(
                    "the timestep history holds a non-finite loss ({bad}) at t = {t}"
                ));
            }
        }
        Ok(Self { history })
    }

    /// The losses seen at each t, oldest first.
    pub fn history(&self) -> &[Vec<f64>] {
        &self.history
    }

    /// Whether every t has [`HISTORY_PER_T`] losses (before that, t is drawn uniformly).
    pub fn warmed_up(&self) -> bool {
        self.history.iter().all(|h| h.len() == HISTORY_PER_T)
    }

    /// p_t for every t: 1/T until warmed up, then (1 − [`UNIFORM_PROB`]) √E(L_t²) / Σ_s √E(L_s²)
    /// + [`UNIFORM_PROB`] / T, normalised to sum to 1.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.history.len() as f64;
        let weights: Vec<f64> = if self.warmed_up() {
            let rms: Vec<f64> = self
                .history
                .iter()
                .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
                .collect();
            let total: f64 = rms.iter().sum();
            rms.iter()
                .map(|w| w / total * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / n)
                .collect()
        } else {
            vec![1.0; self.history.len()]
        };
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }

    /// One t per uniform draw u ∈ [0, 1) by inverting the CDF of [`ImportanceSampler::probabilities`]
    /// (the first t whose cumulative probability exceeds u), and each sample's loss weight
    /// 1/(T p_t).
    pub fn draw(&self, uniforms: &[f64]) -> (Vec<i64>, Vec<f64>) {
        let p = self.probabilities();
        let n = p.len();
        let cdf: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, &x| {
                *acc += x;
                Some(*acc)
            })
            .collect();
        uniforms
            .iter()
            .map(|&u| {
                let t = cdf.partition_point(|&c| c <= u).min(n - 1);
                (t as i64, 1.0 / (n as f64 * p[t]))
            })
            .unzip()
    }

    /// Records each sample's loss (before its weight) at its t, in order; a t that has
    /// [`HISTORY_PER_T`] losses drops its oldest. Non-finite losses (a step the NaN guard skips)
    /// are not recorded.
    ///
    /// # Panics
    /// When `t` and `losses` differ in length or a t is outside 0..T.
    pub fn update(&mut self, t: &[i64], losses: &[f64]) {
        assert_eq!(t.len(), losses.len(), "one loss per timestep");
        for (&t, &loss) in t.iter().zip(losses) {
            if !loss.is_finite() {
                continue;
            }
            let history = &mut self.history[t as usize];
            if history.len() == HISTORY_PER_T {
                history.remove(0);
            }
            history.push(loss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_until_every_t_has_ten_losses() {
        let mut sampler = ImportanceSampler::new(3);
        for _ in 0..HISTORY_PER_T {
            sampler.update(&[0, 1], &[1.0, 2.0]);
        }
        assert!(!sampler.warmed_up());
        assert_eq!(sampler.probabilities(), vec![1.0 / 3.0; 3]);
        let (t, w) = sampler.draw(&[0.0, 0.5, 0.999]);
        assert_eq!(t, [0, 1, 2]);
        assert!(w.iter().all(|&w| (w - 1.0).abs() < 1e-15), "{w:?}");
        sampler.update(&[2; HISTORY_PER_T], &[4.0; HISTORY_PER_T]);
        assert!(sampler.warmed_up());
        // √E[L²] = 1, 2, 4 out of 7, mixed with 0.1 % of uniform.
        let p = sampler.probabilities();
        for (got, rms) in p.iter().zip([1.0, 2.0, 4.0]) {
            let expected = rms / 7.0 * (1.0 - UNIFORM_PROB) + UNIFORM_PROB / 3.0;
            assert!((got - expected).abs() < 1e-15, "{p:?}");
        }
    }

    #[test]
    fn the_history_keeps_the_last_ten_and_skips_non_finite_losses() {
        let mut sampler = ImportanceSampler::new(1);
        let losses: Vec<f64> = (0..12).map(f64::from).collect();
        sampler.update(&[0; 12], &losses);
        sampler.update(&[0], &[f64::NAN]);
        assert_eq!(
            sampler.history()[0],
            (2..12).map(f64::from).collect::<Vec<_>>()
        );
        let saved = sampler.history().to_vec();
        assert_eq!(ImportanceSampler::from_history(saved, 1).unwrap(), sampler);
        let err = ImportanceSampler::from_history(vec![vec![]; 2], 3).unwrap_err();
        assert!(err.contains("T = 3"), "{err}");
    }
}
