//! Every table derived from β_t that DDPM training and sampling read (Ho et al. 2020, Eq. 4, 7
//! and 11), computed in f64 with the formulas and order of operations of improved-diffusion's
//! `GaussianDiffusion.__init__`.

use serde::{Deserialize, Serialize};

use crate::betas::BetaSchedule;
use crate::ddim::DdimCoefficients;
use crate::error::{invalid, ScheduleError};
use crate::timesteps::{TimestepSpacing, Timesteps};

/// The variance σ_t² of the reverse step p(x_{t−1} | x_t) when it is not learned (Ho et al.
/// 2020, §3.2: both choices gave similar samples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ_t² = β̃_t, the posterior variance: optimal when x_0 is a single point. The seed notebook
    /// samples with it.
    FixedSmall,
    /// σ_t² = β_t: optimal when x_0 ~ N(0, I). The official DDPM code samples CIFAR-10 with it.
    FixedLarge,
}

/// A noise schedule: β_t and every table derived from it, each of length T, in f64.
///
/// `t` is 0-based: index `t` holds the paper's step t + 1. Build one with [`Schedule::new`] from
/// a [`BetaSchedule`] or with [`Schedule::from_betas`]; the tables cannot be changed afterwards,
/// so they always agree with one another. It serialises (for `ddpm schedule --format json`) as
/// one array per table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    alphas_cumprod_prev: Vec<f64>,
    sqrt_alphas_cumprod: Vec<f64>,
    sqrt_one_minus_alphas_cumprod: Vec<f64>,
    sqrt_recip_alphas: Vec<f64>,
    sqrt_recip_alphas_cumprod: Vec<f64>,
    sqrt_recipm1_alphas_cumprod: Vec<f64>,
    posterior_variance: Vec<f64>,
    posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
    snr: Vec<f64>,
}

impl Schedule {
    /// Computes β_t from `config`, then every table.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] when `config` is invalid (see [`BetaSchedule::betas`]);
    /// [`ScheduleError::AlphasCumprodUnderflow`] when ᾱ_t underflows f64.
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule};
    ///
    /// let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
    /// assert_eq!(schedule.n_steps(), 1000);
    /// assert!((schedule.alphas_cumprod()[999] - 4.0358e-5).abs() < 1e-9);
    /// ```
    pub fn new(config: &BetaSchedule) -> Result<Self, ScheduleError> {
        Self::from_checked_betas(config.betas()?)
    }

    /// Computes every table from β_0 … β_{T−1}, as [`BetaSchedule::Custom`] does.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming `betas` when the list is empty, or `betas[t]`
    /// when a β_t is not in [[`MIN_BETA`](crate::MIN_BETA), 1);
    /// [`ScheduleError::AlphasCumprodUnderflow`] when ᾱ_t underflows f64.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.5, 0.5]).unwrap();
    /// assert_eq!(schedule.alphas_cumprod(), &[0.5, 0.25]);
    /// assert!(Schedule::from_betas(vec![0.5, 1.0]).is_err());
    /// ```
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        Self::new(&BetaSchedule::Custom { betas })
    }

    fn from_checked_betas(betas: Vec<f64>) -> Result<Self, ScheduleError> {
        let n_steps = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .scan(1.0, |prod, a| {
                *prod *= a;
                Some(*prod)
            })
            .collect();
        // Below the smallest normal f64, 1/ᾱ_t overflows and the sqrt_recip tables become inf.
        if let Some(t) = alphas_cumprod.iter().position(|&a| a < f64::MIN_POSITIVE) {
            return Err(ScheduleError::AlphasCumprodUnderflow { t });
        }
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod[..n_steps - 1].iter().copied())
            .collect();

        let map =
            |table: &[f64], f: fn(f64) -> f64| table.iter().map(|&x| f(x)).collect::<Vec<f64>>();
        let per_step = |f: &dyn Fn(usize) -> f64| (0..n_steps).map(f).collect::<Vec<f64>>();

        // β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), Eq. 7. Dividing the two (1 − ᾱ) first gives a
        // ratio ≤ 1 after rounding, so β̃_t ≤ β_t holds in f64 too, not only on paper.
        let posterior_variance =
            per_step(&|t| betas[t] * ((1.0 - alphas_cumprod_prev[t]) / (1.0 - alphas_cumprod[t])));
        // β̃_0 = 0, whose log is −∞: the official code uses β̃_1 there. With T = 1 there is no
        // β̃_1, and β_0 (the largest choice of σ_0², which then equals the smallest clipped one)
        // takes its place.
        let clip = if n_steps > 1 {
            posterior_variance[1]
        } else {
            betas[0]
        };
        let posterior_log_variance_clipped = per_step(&|t| {
            if t == 0 {
                clip.ln()
            } else {
                posterior_variance[t].ln()
            }
        });
        // μ̃_t(x_t, x_0) = coef1 · x_0 + coef2 · x_t, Eq. 7.
        let posterior_mean_coef1 =
            per_step(&|t| betas[t] * alphas_cumprod_prev[t].sqrt() / (1.0 - alphas_cumprod[t]));
        let posterior_mean_coef2 = per_step(&|t| {
            (1.0 - alphas_cumprod_prev[t]) * alphas[t].sqrt() / (1.0 - alphas_cumprod[t])
        });

        let schedule = Schedule {
            sqrt_alphas_cumprod: map(&alphas_cumprod, f64::sqrt),
            sqrt_one_minus_alphas_cumprod: map(&alphas_cumprod, |a| (1.0 - a).sqrt()),
            sqrt_recip_alphas: map(&alphas, |a| (1.0 / a).sqrt()),
            sqrt_recip_alphas_cumprod: map(&alphas_cumprod, |a| (1.0 / a).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&alphas_cumprod, |a| (1.0 / a - 1.0).sqrt()),
            snr: map(&alphas_cumprod, |a| a / (1.0 - a)),
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
            betas,
            alphas,
            alphas_cumprod,
            alphas_cumprod_prev,
        };
        debug_assert!(schedule
            .tables()
            .iter()
            .all(|(_, table)| table.iter().all(|x| x.is_finite())));
        Ok(schedule)
    }

    /// The number of diffusion steps T.
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule};
    ///
    /// assert_eq!(Schedule::new(&BetaSchedule::seed_notebook()).unwrap().n_steps(), 300);
    /// ```
    pub fn n_steps(&self) -> usize {
        self.betas.len()
    }

    /// β_t, the variance of the forward step q(x_t | x_{t−1}) (Eq. 2).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.1, 0.2]).unwrap().betas(), &[0.1, 0.2]);
    /// ```
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// α_t = 1 − β_t.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.25, 0.5]).unwrap().alphas(), &[0.75, 0.5]);
    /// ```
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    /// ᾱ_t = ∏_{s ≤ t} α_s, the signal fraction of q(x_t | x_0) (Eq. 4). Strictly decreasing,
    /// inside (0, 1).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.25, 0.5]).unwrap().alphas_cumprod(), &[0.75, 0.375]);
    /// ```
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// ᾱ_{t−1}, with ᾱ_{−1} = 1 at t = 0 (the empty product).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.25, 0.5]).unwrap().alphas_cumprod_prev(), &[1.0, 0.75]);
    /// ```
    pub fn alphas_cumprod_prev(&self) -> &[f64] {
        &self.alphas_cumprod_prev
    }

    /// √ᾱ_t, the weight of x_0 in x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Eq. 4).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.75]).unwrap().sqrt_alphas_cumprod(), &[0.5]);
    /// ```
    pub fn sqrt_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_alphas_cumprod
    }

    /// √(1 − ᾱ_t), the weight of ε in x_t (Eq. 4).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.25]).unwrap().sqrt_one_minus_alphas_cumprod(), &[0.5]);
    /// ```
    pub fn sqrt_one_minus_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_one_minus_alphas_cumprod
    }

    /// 1/√α_t, the outer factor of the reverse mean μ_θ (Eq. 11).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// // α_0 = 0.25.
    /// assert_eq!(Schedule::from_betas(vec![0.75]).unwrap().sqrt_recip_alphas(), &[2.0]);
    /// ```
    pub fn sqrt_recip_alphas(&self) -> &[f64] {
        &self.sqrt_recip_alphas
    }

    /// 1/√ᾱ_t, the weight of x_t in x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε_θ (Eq. 4 solved for x_0).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.75]).unwrap().sqrt_recip_alphas_cumprod(), &[2.0]);
    /// ```
    pub fn sqrt_recip_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_recip_alphas_cumprod
    }

    /// √(1/ᾱ_t − 1), the weight of ε_θ in x̂_0.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.8]).unwrap().sqrt_recipm1_alphas_cumprod(), &[2.0]);
    /// ```
    pub fn sqrt_recipm1_alphas_cumprod(&self) -> &[f64] {
        &self.sqrt_recipm1_alphas_cumprod
    }

    /// β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), the variance of the posterior q(x_{t−1} | x_t, x_0)
    /// (Eq. 7); 0 at t = 0, and β̃_t ≤ β_t throughout.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.5, 0.5]).unwrap();
    /// // β̃_1 = 0.5 · (1 − 0.5) / (1 − 0.25).
    /// assert_eq!(schedule.posterior_variance(), &[0.0, 1.0 / 3.0]);
    /// ```
    pub fn posterior_variance(&self) -> &[f64] {
        &self.posterior_variance
    }

    /// ln β̃_t with β̃_0 = 0 replaced by β̃_1, as in the official code (the log of 0 is −∞); with
    /// T = 1, ln β_0.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.5, 0.5]).unwrap();
    /// let log_var = schedule.posterior_log_variance_clipped();
    /// assert_eq!(log_var, &[(1.0f64 / 3.0).ln(), (1.0f64 / 3.0).ln()]);
    /// ```
    pub fn posterior_log_variance_clipped(&self) -> &[f64] {
        &self.posterior_log_variance_clipped
    }

    /// β_t √ᾱ_{t−1} / (1 − ᾱ_t), the weight of x_0 in the posterior mean μ̃_t (Eq. 7).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// // At t = 0 the posterior mean is x_0 itself.
    /// assert_eq!(Schedule::from_betas(vec![0.5]).unwrap().posterior_mean_coef1(), &[1.0]);
    /// ```
    pub fn posterior_mean_coef1(&self) -> &[f64] {
        &self.posterior_mean_coef1
    }

    /// (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t), the weight of x_t in the posterior mean μ̃_t (Eq. 7).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.3, 0.2]).unwrap();
    /// assert_eq!(schedule.posterior_mean_coef2()[0], 0.0);
    /// assert!(schedule.posterior_mean_coef2()[1] > 0.0);
    /// ```
    pub fn posterior_mean_coef2(&self) -> &[f64] {
        &self.posterior_mean_coef2
    }

    /// SNR(t) = ᾱ_t / (1 − ᾱ_t), the signal-to-noise ratio of x_t (Kingma et al. 2021, Eq. 2);
    /// strictly decreasing.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// assert_eq!(Schedule::from_betas(vec![0.5, 0.5]).unwrap().snr(), &[1.0, 1.0 / 3.0]);
    /// ```
    pub fn snr(&self) -> &[f64] {
        &self.snr
    }

    /// Every table with its field name, in a fixed order, starting with `betas`: what
    /// `ddpm schedule` prints.
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule};
    ///
    /// let schedule = Schedule::new(&BetaSchedule::cosine(50)).unwrap();
    /// let tables = schedule.tables();
    /// assert_eq!(tables[0].0, "betas");
    /// assert!(tables.iter().all(|(_, table)| table.len() == 50));
    /// ```
    pub fn tables(&self) -> [(&'static str, &[f64]); 14] {
        [
            ("betas", &self.betas),
            ("alphas", &self.alphas),
            ("alphas_cumprod", &self.alphas_cumprod),
            ("alphas_cumprod_prev", &self.alphas_cumprod_prev),
            ("sqrt_alphas_cumprod", &self.sqrt_alphas_cumprod),
            (
                "sqrt_one_minus_alphas_cumprod",
                &self.sqrt_one_minus_alphas_cumprod,
            ),
            ("sqrt_recip_alphas", &self.sqrt_recip_alphas),
            ("sqrt_recip_alphas_cumprod", &self.sqrt_recip_alphas_cumprod),
            (
                "sqrt_recipm1_alphas_cumprod",
                &self.sqrt_recipm1_alphas_cumprod,
            ),
            ("posterior_variance", &self.posterior_variance),
            (
                "posterior_log_variance_clipped",
                &self.posterior_log_variance_clipped,
            ),
            ("posterior_mean_coef1", &self.posterior_mean_coef1),
            ("posterior_mean_coef2", &self.posterior_mean_coef2),
            ("snr", &self.snr),
        ]
    }

    /// σ_t², the variance of the reverse step from `t` (Alg. 2), for a fixed variance type.
    ///
    /// # Panics
    ///
    /// When `t` ≥ T.
    ///
    /// ```
    /// use schedule::{Schedule, VarianceType};
    ///
    /// let schedule = Schedule::from_betas(vec![0.5, 0.5]).unwrap();
    /// assert_eq!(schedule.reverse_variance(1, VarianceType::FixedLarge), 0.5);
    /// assert_eq!(schedule.reverse_variance(1, VarianceType::FixedSmall), 1.0 / 3.0);
    /// ```
    pub fn reverse_variance(&self, t: usize, variance_type: VarianceType) -> f64 {
        match variance_type {
            VarianceType::FixedSmall => self.posterior_variance[t],
            VarianceType::FixedLarge => self.betas[t],
        }
    }

    /// Every step T − 1, …, 0, in sampling order: ancestral sampling as in Alg. 2.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    /// assert_eq!(schedule.all_timesteps().as_slice(), &[2, 1, 0]);
    /// ```
    pub fn all_timesteps(&self) -> Timesteps {
        Timesteps::full(self.n_steps())
    }

    /// A sub-sequence of `n_sample_steps` of this schedule's steps, in sampling order, for
    /// DDIM and other samplers that skip steps (see [`Timesteps::new`]).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming `n_sample_steps` unless 1 ≤ `n_sample_steps` ≤ T.
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule, TimestepSpacing};
    ///
    /// let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
    /// let timesteps = schedule.timesteps(4, TimestepSpacing::Trailing).unwrap();
    /// assert_eq!(timesteps.as_slice(), &[999, 749, 499, 249]);
    /// ```
    pub fn timesteps(
        &self,
        n_sample_steps: usize,
        spacing: TimestepSpacing,
    ) -> Result<Timesteps, ScheduleError> {
        Timesteps::new(self.n_steps(), n_sample_steps, spacing)
    }

    /// The coefficients of one DDIM step from `t` to `t_prev` with stochasticity `eta` (Song et
    /// al. 2021, Eq. 12 and 16). `t_prev = None` is the final step, to x_0, where ᾱ_prev = 1.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming `t` when `t` ≥ T, `t_prev` unless it is below `t`,
    /// or `eta` unless it is in [0, 1].
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule};
    ///
    /// let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
    /// let deterministic = schedule.ddim_coefficients(999, Some(979), 0.0).unwrap();
    /// assert_eq!(deterministic.sigma, 0.0);
    /// let last = schedule.ddim_coefficients(19, None, 1.0).unwrap();
    /// assert_eq!((last.alpha_cumprod_prev, last.sigma, last.direction_coef), (1.0, 0.0, 0.0));
    /// ```
    pub fn ddim_coefficients(
        &self,
        t: usize,
        t_prev: Option<usize>,
        eta: f64,
    ) -> Result<DdimCoefficients, ScheduleError> {
        if t >= self.n_steps() {
            return Err(invalid(
                "t",
                t,
                format!("must be below n_steps = {}", self.n_steps()),
            ));
        }
        if let Some(t_prev) = t_prev {
            if t_prev >= t {
                return Err(invalid("t_prev", t_prev, format!("must be below t = {t}")));
            }
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(invalid(
                "eta",
                eta,
                "must be in [0, 1] (0 is DDIM, 1 is DDPM-like)",
            ));
        }
        let alpha_cumprod_prev = t_prev.map_or(1.0, |t_prev| self.alphas_cumprod[t_prev]);
        Ok(DdimCoefficients::new(
            self.alphas_cumprod[t],
            alpha_cumprod_prev,
            eta,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ho2020_posterior_variance_matches_the_issue_values() {
        let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
        let pv = schedule.posterior_variance();
        assert_eq!(pv[0], 0.0);
        assert!((pv[487] - 0.00979).abs() < 5e-6, "{}", pv[487]);
        assert!((pv[999] - 0.02).abs() < 1e-6, "{}", pv[999]);
    }

    #[test]
    fn tables_agree_with_each_other() {
        let schedule = Schedule::new(&BetaSchedule::cosine(200)).unwrap();
        for t in 0..200 {
            let ac = schedule.alphas_cumprod()[t];
            assert!((schedule.sqrt_alphas_cumprod()[t].powi(2) - ac).abs() < 1e-15);
            assert!(
                (schedule.sqrt_one_minus_alphas_cumprod()[t].powi(2) - (1.0 - ac)).abs() < 1e-15
            );
            let x0_from_xt =
                schedule.sqrt_recip_alphas_cumprod()[t] * schedule.sqrt_alphas_cumprod()[t];
            assert!((x0_from_xt - 1.0).abs() < 1e-12);
            // The posterior mean of x_t = √ᾱ x_0 reproduces the deterministic part: coef1 + coef2·√ᾱ_t
            // = √ᾱ_{t−1}.
            let mean =
                schedule.posterior_mean_coef1()[t] + schedule.posterior_mean_coef2()[t] * ac.sqrt();
            assert!(
                (mean - schedule.alphas_cumprod_prev()[t].sqrt()).abs() < 1e-12,
                "t = {t}"
            );
        }
    }

    #[test]
    fn one_step_schedule_has_finite_tables() {
        let schedule = Schedule::from_betas(vec![0.3]).unwrap();
        assert_eq!(schedule.posterior_variance(), &[0.0]);
        assert_eq!(schedule.posterior_log_variance_clipped(), &[0.3f64.ln()]);
        assert!(schedule
            .tables()
            .iter()
            .all(|(_, t)| t.len() == 1 && t[0].is_finite()));
    }

    #[test]
    fn underflowing_alphas_cumprod_is_an_error() {
        let err = Schedule::from_betas(vec![0.9; 400]).unwrap_err();
        assert_eq!(err, ScheduleError::AlphasCumprodUnderflow { t: 307 });
        assert_eq!(
            err.to_string(),
            "alphas_cumprod underflows f64 at t = 307: use fewer steps or smaller betas"
        );
    }

    #[test]
    fn ddim_rejects_bad_arguments_by_name() {
        let schedule = Schedule::from_betas(vec![0.1; 10]).unwrap();
        let field =
            |r: Result<DdimCoefficients, ScheduleError>| r.unwrap_err().field().map(str::to_owned);
        assert_eq!(
            field(schedule.ddim_coefficients(10, Some(5), 0.0)).as_deref(),
            Some("t")
        );
        assert_eq!(
            field(schedule.ddim_coefficients(5, Some(5), 0.0)).as_deref(),
            Some("t_prev")
        );
        assert_eq!(
            field(schedule.ddim_coefficients(5, Some(4), 1.5)).as_deref(),
            Some("eta")
        );
        assert_eq!(
            field(schedule.ddim_coefficients(5, Some(4), f64::NAN)).as_deref(),
            Some("eta")
        );
    }
}
