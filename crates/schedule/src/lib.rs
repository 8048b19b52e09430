//! Forward-process arithmetic of Ho et al. 2020 (DDPM) and later papers, in f64.
//!
//! A [`BetaSchedule`] (serde configuration) gives β_t; [`Schedule::new`] computes every table
//! that training and sampling read; [`Timesteps`] picks the steps a faster sampler visits, and
//! [`Schedule::ddim_coefficients`] gives the scalars of one DDIM step. Everything here is host
//! arithmetic in f64 without libtorch. The optional `tch` feature adds the `tensor` module, which
//! uploads the tables once as f32 tensors (`tensor::ScheduleTensors`) and implements `add_noise`
//! (Eq. 4), the reverse step (Alg. 2 / Eq. 11) and the DDIM step on them, and the `likelihood`
//! module, the terms of the variational bound in bits per dimension (Eq. 5, 13).
//!
//! # Timesteps
//!
//! `t` is a 0-based index into every table: `t = 0` is the paper's t = 1 (the least noisy step)
//! and `t = T − 1` is the paper's t = T. The step before the first one has ᾱ = 1, which
//! [`Schedule::alphas_cumprod_prev`] holds at `t = 0`; samplers find the next step with
//! [`Timesteps::prev_timestep`] rather than writing `t - 1`.
//!
//! # Notation
//!
//! | Paper | Here | Definition |
//! |---|---|---|
//! | T | [`Schedule::n_steps`], `n_steps` | number of diffusion steps |
//! | β_t | [`betas`](Schedule::betas) | variance of q(x_t \| x_{t−1}), Eq. 2 |
//! | α_t | [`alphas`](Schedule::alphas) | 1 − β_t |
//! | ᾱ_t | [`alphas_cumprod`](Schedule::alphas_cumprod) | ∏_{s ≤ t} α_s |
//! | ᾱ_{t−1} | [`alphas_cumprod_prev`](Schedule::alphas_cumprod_prev) | 1 at t = 0 |
//! | √ᾱ_t | [`sqrt_alphas_cumprod`](Schedule::sqrt_alphas_cumprod) | weight of x_0 in x_t, Eq. 4 |
//! | √(1 − ᾱ_t) | [`sqrt_one_minus_alphas_cumprod`](Schedule::sqrt_one_minus_alphas_cumprod) | weight of ε in x_t, Eq. 4 |
//! | 1/√α_t | [`sqrt_recip_alphas`](Schedule::sqrt_recip_alphas) | outer factor of μ_θ, Eq. 11 |
//! | 1/√ᾱ_t | [`sqrt_recip_alphas_cumprod`](Schedule::sqrt_recip_alphas_cumprod) | weight of x_t in x̂_0 |
//! | √(1/ᾱ_t − 1) | [`sqrt_recipm1_alphas_cumprod`](Schedule::sqrt_recipm1_alphas_cumprod) | weight of ε_θ in x̂_0 |
//! | β̃_t | [`posterior_variance`](Schedule::posterior_variance) | β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), Eq. 7 |
//! | log β̃_t | [`posterior_log_variance_clipped`](Schedule::posterior_log_variance_clipped) | with β̃_0 replaced by β̃_1 |
//! | μ̃_t(x_t, x_0) | [`posterior_mean_coef1`](Schedule::posterior_mean_coef1), [`posterior_mean_coef2`](Schedule::posterior_mean_coef2) | coef1 · x_0 + coef2 · x_t, Eq. 7 |
//! | SNR(t) | [`snr`](Schedule::snr) | ᾱ_t/(1 − ᾱ_t) (Kingma et al. 2021) |
//! | σ_t² | [`Schedule::reverse_variance`], [`VarianceType`] | β_t or β̃_t, Alg. 2 |
//! | x_0, x_t | `x_0`, `x_t` | data, and data noised to step t |
//! | x̂_0 | `pred_x0` | x_0 predicted from x_t and ε_θ |
//! | ε | `noise` | the sampled Gaussian noise |
//! | ε_θ(x_t, t) | `eps` | the network's noise prediction |
//! | η, σ_t(η) | `eta`, [`DdimCoefficients::sigma`] | DDIM stochasticity, Song et al. 2021, Eq. 16 |
//!
//! # Example
//!
//! ```
//! use schedule::{BetaSchedule, Schedule, TimestepSpacing};
//!
//! let schedule = Schedule::new(&BetaSchedule::ho2020())?;
//! // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε for one pixel at the paper's t = 500.
//! let (x_0, noise, t) = (0.5, -1.0, 499);
//! let x_t = schedule.sqrt_alphas_cumprod()[t] * x_0 + schedule.sqrt_one_minus_alphas_cumprod()[t] * noise;
//! assert!(x_t < 0.0);
//!
//! // A 50-step deterministic DDIM loop visits these (t, t_prev) pairs.
//! let timesteps = schedule.timesteps(50, TimestepSpacing::Trailing)?;
//! for (t, t_prev) in timesteps.pairs() {
//!     let c = schedule.ddim_coefficients(t, t_prev, 0.0)?;
//!     assert_eq!(c.sigma, 0.0);
//! }
//! # Ok::<(), schedule::ScheduleError>(())
//! ```

mod betas;
mod ddim;
mod error;
mod respace;
mod tables;
mod timesteps;

#[cfg(feature = "tch")]
pub mod likelihood;
#[cfg(feature = "tch")]
pub mod tensor;

pub use betas::{BetaSchedule, COSINE_MAX_BETA, COSINE_S, MIN_BETA};
pub use ddim::DdimCoefficients;
pub use error::ScheduleError;
pub use respace::ReverseStep;
#[cfg(feature = "tch")]
pub use respace::StepVariance;
pub use tables::{Schedule, VarianceType};
pub use timesteps::{TimestepSpacing, Timesteps};
