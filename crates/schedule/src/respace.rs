//! The reverse step between two steps of a respaced chain (Nichol & Dhariwal 2021, §4,
//! improved-diffusion's `respace.py`): a sampler that visits only the steps S = {s_K > … > s_1}
//! of a T-step schedule runs the T-step chain's ᾱ at those steps as a K-step diffusion of its
//! own, whose betas are β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}} (ᾱ = 1 before the first step). Its
//! posterior q(x_{s_{k−1}} | x_{s_k}, x_0) has variance β̃'_k = (1 − ᾱ_{s_{k−1}})/(1 − ᾱ_{s_k}) · β'_k
//! and mean coef1 · x_0 + coef2 · x_{s_k} (Ho et al. 2020, Eq. 7 with β'), so DDPM with 50 of
//! 1,000 steps is a real DDPM. diffusers' `DDPMScheduler` does the same with its
//! `current_beta_t` when `num_inference_steps` < T. On consecutive steps these are the T-step
//! chain's own β_t, β̃_t and posterior coefficients.

use crate::{Schedule, ScheduleError};

/// The scalars of one reverse step from `t` to `t_prev` of a respaced chain; build them with
/// [`Schedule::reverse_step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReverseStep {
    /// β' = 1 − ᾱ_t/ᾱ_prev, the respaced chain's beta (σ² of the large fixed variance).
    pub beta: f64,
    /// β̃' = (1 − ᾱ_prev)/(1 − ᾱ_t) · β', the respaced posterior variance (σ² of the small one);
    /// 0 on the final step.
    pub posterior_variance: f64,
    /// √ᾱ_prev β'/(1 − ᾱ_t), the weight of x̂_0 in the posterior mean.
    pub posterior_mean_coef1: f64,
    /// √(1 − β') (1 − ᾱ_prev)/(1 − ᾱ_t), the weight of x_t in the posterior mean.
    pub posterior_mean_coef2: f64,
}

impl ReverseStep {
    /// ln σ² of the learned range (Improved DDPM Eq. 15) for the interpolation weight
    /// v = (v_Σ + 1)/2 of one element: v ln β' + (1 − v) ln β̃', with β̃' floored at 10⁻²⁰ as
    /// diffusers floors it (it is 0 only on the final step, which adds no noise).
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    /// let step = schedule.reverse_step(2, Some(1)).unwrap();
    /// assert!((step.learned_log_variance(1.0) - 0.3f64.ln()).abs() < 1e-15);
    /// ```
    pub fn learned_log_variance(&self, v: f64) -> f64 {
        v * self.beta.ln() + (1.0 - v) * self.posterior_variance.max(1e-20).ln()
    }
}

impl Schedule {
    /// The reverse step from `t` to `t_prev` (`None`: the final step, to x_0) of the chain that
    /// visits only the sampler's steps (see the module docs). For `t_prev = t − 1` these are
    /// β_t, β̃_t and [`Schedule::posterior_mean_coef1`]/[`Schedule::posterior_mean_coef2`].
    ///
    /// # Errors
    /// [`ScheduleError::InvalidValue`] naming `t` or `t_prev` when `t` ≥ T or `t_prev` ≥ `t`.
    ///
    /// ```
    /// use schedule::Schedule;
    ///
    /// let schedule = Schedule::from_betas(vec![0.1, 0.2, 0.3, 0.4]).unwrap();
    /// let step = schedule.reverse_step(3, Some(1)).unwrap();
    /// let ab = schedule.alphas_cumprod();
    /// assert!((step.beta - (1.0 - ab[3] / ab[1])).abs() < 1e-15);
    /// let consecutive = schedule.reverse_step(2, Some(1)).unwrap();
    /// assert!((consecutive.posterior_variance - schedule.posterior_variance()[2]).abs() < 1e-15);
    /// ```
    pub fn reverse_step(
        &self,
        t: usize,
        t_prev: Option<usize>,
    ) -> Result<ReverseStep, ScheduleError> {
        let n = self.n_steps();
        let invalid = |field: &str, value: String, reason: String| ScheduleError::InvalidValue {
            field: field.into(),
            value,
            reason,
        };
        if t >= n {
            return Err(invalid(
                "t",
                format!("{t}"),
                format!("must be below T = {n}"),
            ));
        }
        if let Some(p) = t_prev.filter(|&p| p >= t) {
            return Err(invalid(
                "t_prev",
                format!("{p}"),
                format!("must be below t = {t}"),
            ));
        }
        let a_t = self.alphas_cumprod()[t];
        let a_prev = t_prev.map_or(1.0, |p| self.alphas_cumprod()[p]);
        let beta = 1.0 - a_t / a_prev;
        Ok(ReverseStep {
            beta,
            posterior_variance: (1.0 - a_prev) / (1.0 - a_t) * beta,
            posterior_mean_coef1: a_prev.sqrt() * beta / (1.0 - a_t),
            posterior_mean_coef2: (1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a_t),
        })
    }
}

/// The variance of one reverse step: fixed (β' or β̃'), or learned from the network's v_Σ.
#[cfg(feature = "tch")]
#[derive(Debug, Clone, Copy)]
pub enum StepVariance<'a> {
    /// σ² = β' (`FixedLarge`) or β̃' (`FixedSmall`).
    Fixed(crate::VarianceType),
    /// ln σ² = v ln β' + (1 − v) ln β̃' with v = (v_Σ + 1)/2 per element (Improved DDPM Eq. 15);
    /// the tensor is v_Σ, `[N, C, H, W]`.
    LearnedRange(&'a tch::Tensor),
}

#[cfg(feature = "tch")]
impl crate::tensor::ScheduleTensors {
    /// One DDPM step from `t` to `t_prev` of the chain that visits only the sampler's steps
    /// ([`Schedule::reverse_step`]): x_{t_prev} = coef1 · x̂_0 + coef2 · x_t + σ z, with σ from
    /// `variance`, and no noise on the final step (`t_prev = None`). With consecutive steps it
    /// is Alg. 2 with the mean of Eq. 7; it is diffusers' `DDPMScheduler.step` for every
    /// `variance_type` of [`StepVariance`] and any `num_inference_steps`.
    ///
    /// # Shapes
    /// `pred_x0` (x̂_0, clipped by the caller when it clips), `x_t` and `noise` (z):
    /// `[N, C, H, W]`. Returns `[N, C, H, W]`.
    ///
    /// # Errors
    /// As [`Schedule::reverse_step`].
    pub fn respaced_step(
        &self,
        pred_x0: &tch::Tensor,
        x_t: &tch::Tensor,
        t: usize,
        t_prev: Option<usize>,
        noise: &tch::Tensor,
        variance: StepVariance<'_>,
    ) -> Result<tch::Tensor, ScheduleError> {
        let step = self.schedule().reverse_step(t, t_prev)?;
        let mean = pred_x0 * step.posterior_mean_coef1 + x_t * step.posterior_mean_coef2;
        if t_prev.is_none() {
            return Ok(mean);
        }
        Ok(match variance {
            StepVariance::Fixed(crate::VarianceType::FixedLarge) => mean + noise * step.beta.sqrt(),
            StepVariance::Fixed(crate::VarianceType::FixedSmall) => {
                mean + noise * step.posterior_variance.sqrt()
            }
            StepVariance::LearnedRange(model_v) => {
                let (max_log, min_log) = (
                    step.learned_log_variance(1.0),
                    step.learned_log_variance(0.0),
                );
                let frac = (model_v + 1.0) * 0.5;
                let log_var = &frac * max_log + (-&frac + 1.0) * min_log;
                mean + noise * (log_var * 0.5).exp()
            }
        })
    }
}
