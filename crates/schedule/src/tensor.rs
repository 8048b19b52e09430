//! The forward and reverse processes on libtorch tensors (feature `tch`): `add_noise` (Ho et al.
//! 2020, Eq. 4) with one t per sample, the DDPM reverse step (Alg. 2, with the mean of Eq. 11),
//! the posterior mean (Eq. 7) and the DDIM step (Song et al. 2021, Eq. 12).
//!
//! The tables are computed in f64 by [`Schedule`] and uploaded once as f32 tensors; the steps
//! multiply by f64 scalars, which libtorch applies in the tensor's precision. Noise is always an
//! argument, never drawn here, so a fixed input gives a fixed output. These live here rather than
//! in `train` so that every sampler and loss shares one implementation of the equations; the
//! network, the loss and the loop stay in `train`.

use tch::{Device, Kind, Tensor};

use crate::likelihood::BoundTables;
use crate::{Schedule, ScheduleError, VarianceType};

/// A [`Schedule`] with its tables uploaded to one device as f32 tensors of shape `[T]`.
#[derive(Debug)]
pub struct ScheduleTensors {
    schedule: Schedule,
    device: Device,
    /// The f64 tables of the likelihood terms, uploaded on first use ([`ScheduleTensors::bound`]).
    bound: std::cell::OnceCell<BoundTables>,
    /// β_t.
    pub betas: Tensor,
    /// ᾱ_t.
    pub alphas_cumprod: Tensor,
    /// √ᾱ_t.
    pub sqrt_alphas_cumprod: Tensor,
    /// √(1 − ᾱ_t).
    pub sqrt_one_minus_alphas_cumprod: Tensor,
    /// 1/√ᾱ_t.
    pub sqrt_recip_alphas_cumprod: Tensor,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Tensor,
    /// β̃_t.
    pub posterior_variance: Tensor,
    /// ln β̃_t with β̃_0 replaced by β̃_1.
    pub posterior_log_variance_clipped: Tensor,
    /// The weight of x_0 in μ̃_t.
    pub posterior_mean_coef1: Tensor,
    /// The weight of x_t in μ̃_t.
    pub posterior_mean_coef2: Tensor,
    /// ᾱ_t/(1 − ᾱ_t).
    pub snr: Tensor,
}

/// The result of one reverse step.
#[derive(Debug)]
pub struct StepOutput {
    /// The sample at the next step in sampling order (x_{t−1} for DDPM, x_{t_prev} for DDIM).
    pub prev_sample: Tensor,
    /// x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε_θ, the current estimate of the clean sample.
    pub pred_x0: Tensor,
}

impl ScheduleTensors {
    /// Uploads `schedule`'s tables to `device` as f32.
    pub fn new(schedule: &Schedule, device: Device) -> Self {
        let upload = |table: &[f64]| {
            let values: Vec<f32> = table.iter().map(|&x| x as f32).collect();
            Tensor::from_slice(&values).to_device(device)
        };
        ScheduleTensors {
            betas: upload(schedule.betas()),
            alphas_cumprod: upload(schedule.alphas_cumprod()),
            sqrt_alphas_cumprod: upload(schedule.sqrt_alphas_cumprod()),
            sqrt_one_minus_alphas_cumprod: upload(schedule.sqrt_one_minus_alphas_cumprod()),
            sqrt_recip_alphas_cumprod: upload(schedule.sqrt_recip_alphas_cumprod()),
            sqrt_recipm1_alphas_cumprod: upload(schedule.sqrt_recipm1_alphas_cumprod()),
            posterior_variance: upload(schedule.posterior_variance()),
            posterior_log_variance_clipped: upload(schedule.posterior_log_variance_clipped()),
            posterior_mean_coef1: upload(schedule.posterior_mean_coef1()),
            posterior_mean_coef2: upload(schedule.posterior_mean_coef2()),
            snr: upload(schedule.snr()),
            schedule: schedule.clone(),
            device,
            bound: std::cell::OnceCell::new(),
        }
    }

    /// The schedule's f64 tables on the same device, for the terms of the variational bound
    /// ([`crate::likelihood`]: the hybrid and L_vlb losses, `ddpm eval nll`), uploaded on the
    /// first call and kept: the f32 tables above would lose the bound's digits.
    pub fn bound(&self) -> &BoundTables {
        self.bound
            .get_or_init(|| BoundTables::new(&self.schedule, self.device))
    }

    /// The f64 schedule the tensors came from.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The device holding the tables.
    pub fn device(&self) -> Device {
        self.device
    }

    /// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a sample of q(x_t | x_0) (Eq. 4), with one t per sample.
    ///
    /// # Shapes
    ///
    /// `x_0` and `noise`: `[N, …]`; `t`: `[N]`, any integer kind, on any device. Returns
    /// `[N, …]`, f32 for f32 or lower-precision inputs.
    ///
    /// # Panics
    ///
    /// When the shapes disagree or a `t` is outside 0..T (programming errors in the caller).
    pub fn add_noise(&self, x_0: &Tensor, noise: &Tensor, t: &Tensor) -> Tensor {
        let n_dims = x_0.dim();
        extract(&self.sqrt_alphas_cumprod, t, n_dims) * x_0
            + extract(&self.sqrt_one_minus_alphas_cumprod, t, n_dims) * noise
    }

    /// One step of ancestral sampling from `t` to `t − 1` (Alg. 2, lines 3–4):
    /// x_{t−1} = 1/√α_t · (x_t − β_t/√(1 − ᾱ_t) · ε_θ) + σ_t z, with the mean of Eq. 11 and
    /// σ_t² from `variance_type`. At `t = 0` (the paper's t = 1) z is dropped, so `noise` is
    /// unused there; pass it anyway to keep a random stream aligned.
    ///
    /// # Shapes
    ///
    /// `eps` (ε_θ(x_t, t)), `x_t` and `noise` (z ~ N(0, I)): all `[N, …]`. Both outputs
    /// `[N, …]`.
    ///
    /// # Panics
    ///
    /// When `t` ≥ T or the shapes disagree.
    pub fn step(
        &self,
        eps: &Tensor,
        t: usize,
        x_t: &Tensor,
        noise: &Tensor,
        variance_type: VarianceType,
    ) -> StepOutput {
        let s = &self.schedule;
        let eps_coef = s.betas()[t] / s.sqrt_one_minus_alphas_cumprod()[t];
        let mean = (x_t - eps * eps_coef) * s.sqrt_recip_alphas()[t];
        let prev_sample = if t == 0 {
            mean
        } else {
            mean + noise * s.reverse_variance(t, variance_type).sqrt()
        };
        StepOutput {
            prev_sample,
            pred_x0: self.pred_x0(eps, t, x_t),
        }
    }

    /// x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε_θ: Eq. 4 solved for x_0, with ε_θ for ε.
    ///
    /// # Shapes
    ///
    /// `eps` and `x_t`: `[N, …]`; returns `[N, …]`.
    ///
    /// # Panics
    ///
    /// When `t` ≥ T or the shapes disagree.
    pub fn pred_x0(&self, eps: &Tensor, t: usize, x_t: &Tensor) -> Tensor {
        let s = &self.schedule;
        x_t * s.sqrt_recip_alphas_cumprod()[t] - eps * s.sqrt_recipm1_alphas_cumprod()[t]
    }

    /// μ̃_t(x_t, x_0) = coef1 · x_0 + coef2 · x_t, the mean of q(x_{t−1} | x_t, x_0) (Eq. 7).
    /// Samplers that clip x̂_0 to the data range (as the official DDPM code does) step to this
    /// mean with the clipped x̂_0 instead of using Eq. 11.
    ///
    /// # Shapes
    ///
    /// `x_0` and `x_t`: `[N, …]`; returns `[N, …]`.
    ///
    /// # Panics
    ///
    /// When `t` ≥ T or the shapes disagree.
    pub fn posterior_mean(&self, x_0: &Tensor, x_t: &Tensor, t: usize) -> Tensor {
        let s = &self.schedule;
        x_0 * s.posterior_mean_coef1()[t] + x_t * s.posterior_mean_coef2()[t]
    }

    /// One DDIM step from `t` to `t_prev` (Song et al. 2021, Eq. 12, σ_t(η) of Eq. 16):
    /// x_{t_prev} = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ_t²) ε_θ + σ_t z. `t_prev = None` is the
    /// final step, to x_0; take `t_prev` from [`Timesteps::prev_timestep`](crate::Timesteps).
    ///
    /// # Shapes
    ///
    /// `eps`, `x_t` and `noise` (z): `[N, …]`. Both outputs `[N, …]`.
    ///
    /// # Errors
    ///
    /// As [`Schedule::ddim_coefficients`]: `t`, `t_prev` or `eta` out of range.
    ///
    /// # Panics
    ///
    /// When the shapes disagree.
    pub fn ddim_step(
        &self,
        eps: &Tensor,
        t: usize,
        t_prev: Option<usize>,
        x_t: &Tensor,
        noise: &Tensor,
        eta: f64,
    ) -> Result<StepOutput, ScheduleError> {
        let c = self.schedule.ddim_coefficients(t, t_prev, eta)?;
        let pred_x0 = x_t * c.sqrt_recip_alpha_cumprod - eps * c.sqrt_recipm1_alpha_cumprod;
        let mut prev_sample = &pred_x0 * c.sqrt_alpha_cumprod_prev + eps * c.direction_coef;
        if c.sigma > 0.0 {
            prev_sample += noise * c.sigma;
        }
        Ok(StepOutput {
            prev_sample,
            pred_x0,
        })
    }
}

/// `table[t]` for each sample, shaped `[N, 1, …, 1]` with `n_dims` dimensions so that it
/// broadcasts against an `[N, …]` batch (improved-diffusion's `_extract_into_tensor`).
///
/// # Shapes
///
/// `table`: `[T]`; `t`: `[N]`, any integer kind, moved to `table`'s device. Returns `[N, 1, …]`.
///
/// # Panics
///
/// When `t` is not one-dimensional or holds an index outside 0..T.
pub fn extract(table: &Tensor, t: &Tensor, n_dims: usize) -> Tensor {
    assert_eq!(
        t.dim(),
        1,
        "t must hold one timestep per sample, got shape {:?}",
        t.size()
    );
    let values = table.index_select(0, &t.to_device(table.device()).to_kind(Kind::Int64));
    let mut shape = vec![1i64; n_dims.max(1)];
    shape[0] = t.size()[0];
    values.reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BetaSchedule;

    fn values(xs: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(xs.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    fn assert_close(ours: &Tensor, expected: &[f64], atol: f64) {
        let ours = values(ours);
        assert_eq!(ours.len(), expected.len());
        for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
            assert!((a - b).abs() <= atol, "[{i}]: {a} vs {b}");
        }
    }

    /// A fixed batch of two 1×1×3 "images", with its noise and a second noise.
    fn batch() -> (Tensor, Tensor, Tensor, [f64; 6], [f64; 6], [f64; 6]) {
        let x = [0.5, -1.0, 0.25, 1.0, 0.0, -0.75];
        let e = [-0.3, 1.2, 0.7, -2.0, 0.1, 0.4];
        let z = [0.9, -0.4, -1.1, 0.3, 1.5, -0.2];
        let tensor = |v: &[f64; 6]| Tensor::from_slice(&v.map(|x| x as f32)).reshape([2, 1, 1, 3]);
        (tensor(&x), tensor(&e), tensor(&z), x, e, z)
    }

    fn ho2020() -> ScheduleTensors {
        ScheduleTensors::new(
            &Schedule::new(&BetaSchedule::ho2020()).unwrap(),
            Device::Cpu,
        )
    }

    #[test]
    fn add_noise_is_eq_4_with_one_t_per_sample() {
        let st = ho2020();
        let s = st.schedule();
        let (x_0, noise, _, x, e, _) = batch();
        let ts = [0usize, 999];
        let x_t = st.add_noise(&x_0, &noise, &Tensor::from_slice(&[0i64, 999]));
        assert_eq!(x_t.size(), [2, 1, 1, 3]);
        let expected: Vec<f64> = (0..6)
            .map(|i| {
                let t = ts[i / 3];
                s.sqrt_alphas_cumprod()[t] * x[i] + s.sqrt_one_minus_alphas_cumprod()[t] * e[i]
            })
            .collect();
        assert_close(&x_t, &expected, 1e-6);
        // i32 timesteps work too, and a 1-D batch gets [N] coefficients.
        let flat = st.add_noise(
            &x_0.reshape([2, 3]),
            &noise.reshape([2, 3]),
            &Tensor::from_slice(&[0i32, 999]),
        );
        assert_close(&flat, &expected, 1e-6);
    }

    #[test]
    fn step_is_algorithm_2_and_drops_the_noise_at_t_0() {
        let st = ho2020();
        let s = st.schedule();
        let (x_t, eps, noise, x, e, z) = batch();
        for (t, variance_type) in [
            (0, VarianceType::FixedSmall),
            (1, VarianceType::FixedSmall),
            (500, VarianceType::FixedLarge),
            (999, VarianceType::FixedSmall),
        ] {
            let out = st.step(&eps, t, &x_t, &noise, variance_type);
            let sigma = match (t, variance_type) {
                (0, _) => 0.0,
                (_, VarianceType::FixedSmall) => s.posterior_variance()[t].sqrt(),
                (_, VarianceType::FixedLarge) => s.betas()[t].sqrt(),
            };
            let expected: Vec<f64> = (0..6)
                .map(|i| {
                    let mean = 1.0 / (1.0 - s.betas()[t]).sqrt()
                        * (x[i] - s.betas()[t] / (1.0 - s.alphas_cumprod()[t]).sqrt() * e[i]);
                    mean + sigma * z[i]
                })
                .collect();
            assert_close(&out.prev_sample, &expected, 1e-5);
            let pred_x0: Vec<f64> = (0..6)
                .map(|i| {
                    (x[i] - (1.0 - s.alphas_cumprod()[t]).sqrt() * e[i])
                        / s.alphas_cumprod()[t].sqrt()
                })
                .collect();
            // x̂_0 scales by 1/√ᾱ_999 ≈ 157: f32 rounding grows with it.
            assert_close(&out.pred_x0, &pred_x0, 1e-4);
        }
    }

    #[test]
    fn eq_11_mean_equals_the_posterior_mean_at_the_predicted_x0() {
        let st = ho2020();
        let (x_t, eps, noise, ..) = batch();
        for t in [1, 10, 300, 999] {
            let out = st.step(&eps, t, &x_t, &noise, VarianceType::FixedSmall);
            let mean = st.posterior_mean(&out.pred_x0, &x_t, t);
            let sigma = st.schedule().posterior_variance()[t].sqrt();
            let with_noise = mean + &noise * sigma;
            assert_close(&out.prev_sample, &values(&with_noise), 1e-4);
        }
    }

    #[test]
    fn the_true_noise_recovers_x0() {
        let st = ho2020();
        let (x_0, noise, _, x, ..) = batch();
        for t in [0i64, 250, 999] {
            let x_t = st.add_noise(&x_0, &noise, &Tensor::from_slice(&[t, t]));
            let out = st.step(&noise, t as usize, &x_t, &noise, VarianceType::FixedLarge);
            assert_close(&out.pred_x0, &x, 1e-3);
        }
    }

    #[test]
    fn ddim_step_matches_the_scalar_coefficients() {
        let st = ho2020();
        let (x_t, eps, noise, x, e, z) = batch();
        for (t, t_prev, eta) in [
            (999, Some(979), 0.0),
            (500, Some(250), 0.5),
            (20, None, 1.0),
        ] {
            let out = st.ddim_step(&eps, t, t_prev, &x_t, &noise, eta).unwrap();
            let c = st.schedule().ddim_coefficients(t, t_prev, eta).unwrap();
            let expected: Vec<f64> = (0..6).map(|i| c.prev_sample(x[i], e[i], z[i])).collect();
            assert_close(&out.prev_sample, &expected, 1e-4);
            let pred: Vec<f64> = (0..6).map(|i| c.pred_x0(x[i], e[i])).collect();
            assert_close(&out.pred_x0, &pred, 1e-4);
        }
        let err = st
            .ddim_step(&eps, 1000, None, &x_t, &noise, 0.0)
            .unwrap_err();
        assert_eq!(err.field(), Some("t"));
    }

    #[test]
    fn tables_are_f32_on_the_device() {
        let st = ho2020();
        assert_eq!(st.sqrt_alphas_cumprod.kind(), Kind::Float);
        assert_eq!(st.snr.size(), [1000]);
        assert_eq!(st.device(), Device::Cpu);
        assert_close(
            &st.posterior_variance.narrow(0, 487, 1),
            &[st.schedule().posterior_variance()[487]],
            1e-9,
        );
    }
}
