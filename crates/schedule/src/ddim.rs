//! The coefficients of one DDIM step (Song et al. 2021, Eq. 12 with σ_t(η) of Eq. 16):
//!
//! x_{t_prev} = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ_t²) · ε_θ + σ_t · z,
//! x̂_0 = (x_t − √(1 − ᾱ_t) · ε_θ) / √ᾱ_t,
//! σ_t(η) = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev).
//!
//! η = 0 is the deterministic DDIM sampler; η = 1 with consecutive steps is DDPM's ancestral
//! sampler with σ_t² = β̃_t.

/// The scalars of one DDIM step from `t` to `t_prev`; build them with
/// [`Schedule::ddim_coefficients`](crate::Schedule::ddim_coefficients).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimCoefficients {
    /// ᾱ_t.
    pub alpha_cumprod: f64,
    /// ᾱ_prev = ᾱ_{t_prev}, or 1 on the final step (t_prev = None).
    pub alpha_cumprod_prev: f64,
    /// σ_t(η), the standard deviation of the fresh noise z (Eq. 16).
    pub sigma: f64,
    /// 1/√ᾱ_t, the weight of x_t in x̂_0.
    pub sqrt_recip_alpha_cumprod: f64,
    /// √(1/ᾱ_t − 1), the weight of ε_θ subtracted in x̂_0.
    pub sqrt_recipm1_alpha_cumprod: f64,
    /// √ᾱ_prev, the weight of x̂_0 in x_{t_prev}.
    pub sqrt_alpha_cumprod_prev: f64,
    /// √(1 − ᾱ_prev − σ_t²), the weight of ε_θ in x_{t_prev}: the "direction pointing to x_t".
    pub direction_coef: f64,
}

impl DdimCoefficients {
    /// The coefficients for given ᾱ_t, ᾱ_prev and η; the caller has checked that
    /// 0 < ᾱ_t < ᾱ_prev ≤ 1 and η ∈ [0, 1].
    pub(crate) fn new(alpha_cumprod: f64, alpha_cumprod_prev: f64, eta: f64) -> Self {
        let (a_t, a_prev) = (alpha_cumprod, alpha_cumprod_prev);
        let sigma = eta * ((1.0 - a_prev) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_prev).sqrt();
        // 1 − ᾱ_prev − σ² ≥ 0 on paper for η ≤ 1; clamp the rounding error that could make it
        // −1e-17 and its square root NaN.
        let direction_coef = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
        DdimCoefficients {
            alpha_cumprod: a_t,
            alpha_cumprod_prev: a_prev,
            sigma,
            sqrt_recip_alpha_cumprod: (1.0 / a_t).sqrt(),
            sqrt_recipm1_alpha_cumprod: (1.0 / a_t - 1.0).sqrt(),
            sqrt_alpha_cumprod_prev: a_prev.sqrt(),
            direction_coef,
        }
    }

    /// x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) · ε_θ, the denoised estimate, for one scalar.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.75]).unwrap();
    /// let c = schedule.ddim_coefficients(0, None, 0.0).unwrap();
    /// // ᾱ_0 = 0.25: x̂_0 = 2 x_t − √3 ε.
    /// assert!((c.pred_x0(1.0, 1.0) - (2.0 - 3f64.sqrt())).abs() < 1e-15);
    /// ```
    pub fn pred_x0(&self, x_t: f64, eps: f64) -> f64 {
        self.sqrt_recip_alpha_cumprod * x_t - self.sqrt_recipm1_alpha_cumprod * eps
    }

    /// x_{t_prev} for one scalar (Eq. 12): `noise` is z ~ N(0, 1), drawn by the caller.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    /// let c = schedule.ddim_coefficients(2, None, 1.0).unwrap();
    /// // The final step lands on x̂_0 whatever the noise.
    /// assert_eq!(c.prev_sample(0.4, -0.2, 5.0), c.pred_x0(0.4, -0.2));
    /// ```
    pub fn prev_sample(&self, x_t: f64, eps: f64, noise: f64) -> f64 {
        self.sqrt_alpha_cumprod_prev * self.pred_x0(x_t, eps)
            + self.direction_coef * eps
            + self.sigma * noise
    }
}

#[cfg(test)]
mod tests {
    use crate::{BetaSchedule, Schedule};

    #[test]
    fn eta_one_on_consecutive_steps_is_ddpm_posterior_sampling() {
        // Song et al. 2021, §4.1: with η = 1, σ_t² = β̃_t and the step is DDPM's Alg. 2.
        let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
        for t in [1, 10, 500, 999] {
            let c = schedule.ddim_coefficients(t, Some(t - 1), 1.0).unwrap();
            let beta_tilde = schedule.posterior_variance()[t];
            assert!(
                (c.sigma * c.sigma - beta_tilde).abs() < 1e-15 * beta_tilde.max(1.0),
                "t = {t}"
            );
            // And the mean is μ̃_t(x_t, x̂_0) = coef1 · x̂_0 + coef2 · x_t.
            let (x_t, eps) = (0.37, -1.2);
            let x0 = c.pred_x0(x_t, eps);
            let mean =
                schedule.posterior_mean_coef1()[t] * x0 + schedule.posterior_mean_coef2()[t] * x_t;
            assert!(
                (c.prev_sample(x_t, eps, 0.0) - mean).abs() < 1e-12,
                "t = {t}"
            );
        }
    }

    #[test]
    fn eta_zero_is_deterministic_and_keeps_the_noise_level() {
        let schedule = Schedule::new(&BetaSchedule::cosine(100)).unwrap();
        let c = schedule.ddim_coefficients(80, Some(40), 0.0).unwrap();
        assert_eq!(c.sigma, 0.0);
        // ᾱ_prev + (1 − ᾱ_prev) = 1: the marginal variance of a unit-variance x_0 is kept.
        let total = c.sqrt_alpha_cumprod_prev.powi(2) + c.direction_coef.powi(2);
        assert!((total - 1.0).abs() < 1e-15);
    }
}
