//! The variational bound of Ho et al. 2020 (Eq. 5) term by term, in bits per dimension, on
//! libtorch tensors (feature `tch`): the KL between two diagonal Gaussians, the discretized
//! Gaussian decoder −log p(x_0 | x_1), the true posterior q(x_{t−1} | x_t, x_0) (Eq. 6–7), the
//! prior term KL(q(x_T | x_0) ‖ N(0, I)), and the learned-range log variance of Nichol &
//! Dhariwal 2021 (Improved DDPM, Eq. 15).
//!
//! The formulas are those of the official code: `normal_kl`, `approx_standard_normal_cdf` and
//! `discretized_gaussian_log_likelihood` of Ho's `diffusion_tf/utils.py` (ported unchanged to
//! improved-diffusion's `losses.py`), and `_vb_terms_bpd` and `_prior_bpd` of improved-diffusion's
//! `gaussian_diffusion.py` (Ho's `diffusion_utils_2.py`). They are written here from those
//! formulas, not copied.
//!
//! Everything is computed in the kind of the inputs, and every schedule coefficient is taken
//! from [`BoundTables`]: the f64 tables of [`Schedule`] uploaded once to the device as f64
//! tensors (not the f32 [`ScheduleTensors`](crate::tensor::ScheduleTensors)): in f64, terms such
//! as ½(e^d − 1 − d) with d = ln β̃_t − ln β_t ≈ 10⁻⁵ keep their digits, which f32 tables would
//! not. Pass f64 tensors for the bound (as `ddpm eval nll` and the hybrid loss do) and cast the
//! network's output to f64 first.

use std::f64::consts::{LN_2, PI};

use tch::{Device, Kind, Tensor};

use crate::{Schedule, VarianceType};

/// The schedule's tables that the bound and x̂_0 read, as f64 tensors of shape `[T]` on one
/// device, uploaded once (by [`BoundTables::new`], or on first use by
/// [`ScheduleTensors::bound`](crate::tensor::ScheduleTensors::bound)), so that a training step or
/// a term of the bound only indexes them on the device.
#[derive(Debug)]
pub struct BoundTables {
    schedule: Schedule,
    /// ln β_t.
    pub log_betas: Tensor,
    /// ln σ_t² of the fixed large variance as the bound scores it: ln β_t, with ln β̃_1 at t = 0
    /// ([`fixed_log_variance`]).
    pub fixed_large_log_variance: Tensor,
    /// ln β̃_t with β̃_0 replaced by β̃_1.
    pub posterior_log_variance_clipped: Tensor,
    /// The weight of x_0 in μ̃_t.
    pub posterior_mean_coef1: Tensor,
    /// The weight of x_t in μ̃_t.
    pub posterior_mean_coef2: Tensor,
    /// √ᾱ_t.
    pub sqrt_alphas_cumprod: Tensor,
    /// √(1 − ᾱ_t).
    pub sqrt_one_minus_alphas_cumprod: Tensor,
    /// 1/√ᾱ_t.
    pub sqrt_recip_alphas_cumprod: Tensor,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Tensor,
}

impl BoundTables {
    /// Uploads `schedule`'s tables to `device` as f64.
    pub fn new(schedule: &Schedule, device: Device) -> Self {
        let upload = |table: &[f64]| Tensor::from_slice(table).to_device(device);
        let log_betas: Vec<f64> = schedule.betas().iter().map(|b| b.ln()).collect();
        let mut fixed_large = log_betas.clone();
        fixed_large[0] = schedule.posterior_log_variance_clipped()[0];
        Self {
            log_betas: upload(&log_betas),
            fixed_large_log_variance: upload(&fixed_large),
            posterior_log_variance_clipped: upload(schedule.posterior_log_variance_clipped()),
            posterior_mean_coef1: upload(schedule.posterior_mean_coef1()),
            posterior_mean_coef2: upload(schedule.posterior_mean_coef2()),
            sqrt_alphas_cumprod: upload(schedule.sqrt_alphas_cumprod()),
            sqrt_one_minus_alphas_cumprod: upload(schedule.sqrt_one_minus_alphas_cumprod()),
            sqrt_recip_alphas_cumprod: upload(schedule.sqrt_recip_alphas_cumprod()),
            sqrt_recipm1_alphas_cumprod: upload(schedule.sqrt_recipm1_alphas_cumprod()),
            schedule: schedule.clone(),
        }
    }

    /// The f64 schedule the tensors came from.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}

/// `table[t]` for each sample in kind `kind`, shaped `[N, 1, …, 1]` with `n_dims` dimensions
/// (improved-diffusion's `_extract_into_tensor`), from a table of [`BoundTables`] on `t`'s
/// device.
///
/// # Shapes
/// `table`: `[T]`; `t`: `[N]` integers. Returns `[N, 1, …]`.
///
/// # Panics
/// When a `t` is outside 0..T, or `t` is on another device than `table`.
pub fn gather(table: &Tensor, t: &Tensor, n_dims: usize, kind: Kind) -> Tensor {
    let mut shape = vec![1i64; n_dims.max(1)];
    shape[0] = t.size()[0];
    table
        .index_select(0, &t.to_kind(Kind::Int64))
        .reshape(shape)
        .to_kind(kind)
}

/// KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) per element, in nats:
/// ½ (−1 + ℓ₂ − ℓ₁ + e^{ℓ₁ − ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂}) (Ho's `normal_kl`).
///
/// # Shapes
/// All four broadcast together; returns their broadcast shape.
pub fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Tensor {
    ((logvar2 - logvar1) + (logvar1 - logvar2).exp() - 1.0
        + (mean1 - mean2).square() * (-logvar2).exp())
        * 0.5
}

/// Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³))), the tanh approximation of the standard normal
/// CDF that the official code uses for the decoder (Ho's `approx_standard_normal_cdf`).
pub fn approx_standard_normal_cdf(x: &Tensor) -> Tensor {
    ((x + x.pow_tensor_scalar(3) * 0.044715) * (2.0 / PI).sqrt()).tanh() * 0.5 + 0.5
}

/// log P(x) in nats per element of a Gaussian N(`means`, e^{2·`log_scales`}) discretized to the
/// 256 levels of 8-bit data on [−1, 1] (Ho et al. 2020, Eq. 13): the mass of the bin
/// [x − 1/255, x + 1/255], except that the bin of pixel 0 (x < −0.999) extends to −∞ and the bin
/// of pixel 255 (x > 0.999) to +∞. Each probability is clamped below at 10⁻¹² before the log, as
/// Ho's `discretized_gaussian_log_likelihood` does.
///
/// # Shapes
/// `x` (data rescaled from u8 to [−1, 1]), `means` and `log_scales`: one shape; returns it.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Tensor {
    let centered = x - means;
    let inv_stdv = (-log_scales).exp();
    let cdf_plus = approx_standard_normal_cdf(&(&inv_stdv * (&centered + 1.0 / 255.0)));
    let cdf_min = approx_standard_normal_cdf(&(&inv_stdv * (&centered - 1.0 / 255.0)));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (&cdf_plus - &cdf_min).clamp_min(1e-12).log();
    let top = x.gt(0.999);
    let bottom = x.lt(-0.999);
    log_cdf_plus.where_self(
        &bottom,
        &log_one_minus_cdf_min.where_self(&top, &log_cdf_delta),
    )
}

/// The mean over every dimension but the first (improved-diffusion's `mean_flat`).
///
/// # Shapes
/// `xs`: `[N, …]`; returns `[N]`.
pub fn mean_flat(xs: &Tensor) -> Tensor {
    let dims: Vec<i64> = (1..xs.dim() as i64).collect();
    if dims.is_empty() {
        xs.shallow_clone()
    } else {
        xs.mean_dim(dims.as_slice(), false, xs.kind())
    }
}

/// The mean μ̃_t(x_t, x_0) = coef1 · x_0 + coef2 · x_t and the log variance ln β̃_t (clipped at
/// t = 0 as [`Schedule::posterior_log_variance_clipped`]) of q(x_{t−1} | x_t, x_0) (Eq. 6–7).
///
/// # Shapes
/// `x_0` and `x_t`: `[N, …]`; `t`: `[N]`. Returns `[N, …]` and `[N, 1, …]`.
pub fn posterior_mean_log_variance(
    tables: &BoundTables,
    x_0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
) -> (Tensor, Tensor) {
    let (n, kind) = (x_0.dim(), x_0.kind());
    let mean = gather(&tables.posterior_mean_coef1, t, n, kind) * x_0
        + gather(&tables.posterior_mean_coef2, t, n, kind) * x_t;
    let log_var = gather(&tables.posterior_log_variance_clipped, t, n, kind);
    (mean, log_var)
}

/// ln σ_t² of a fixed reverse variance, as the official code scores the bound with it: ln β̃_t
/// (clipped at t = 0) for [`VarianceType::FixedSmall`], ln β_t for
/// [`VarianceType::FixedLarge`] except at t = 0, where it is ln β̃_1 (Ho's `diffusion_utils_2.py`
/// and improved-diffusion's `fixedlarge`, "to get a better decoder log likelihood").
///
/// # Shapes
/// `t`: `[N]`; returns `[N, 1, …]` with `n_dims` dimensions.
pub fn fixed_log_variance(
    tables: &BoundTables,
    t: &Tensor,
    variance: VarianceType,
    n_dims: usize,
    kind: Kind,
) -> Tensor {
    let table = match variance {
        VarianceType::FixedSmall => &tables.posterior_log_variance_clipped,
        VarianceType::FixedLarge => &tables.fixed_large_log_variance,
    };
    gather(table, t, n_dims, kind)
}

/// The learned log variance of Improved DDPM, Eq. 15: ln Σ_θ = v ln β_t + (1 − v) ln β̃_t, with
/// the network's output v_Σ ∈ [−1, 1] mapped to v = (v_Σ + 1)/2 and ln β̃_t clipped at t = 0
/// (improved-diffusion's `LEARNED_RANGE`).
///
/// # Shapes
/// `model_v`: `[N, C, H, W]`; `t`: `[N]`. Returns `[N, C, H, W]` of `model_v`'s kind.
pub fn learned_range_log_variance(tables: &BoundTables, t: &Tensor, model_v: &Tensor) -> Tensor {
    let (n, kind) = (model_v.dim(), model_v.kind());
    let max_log = gather(&tables.log_betas, t, n, kind);
    let min_log = gather(&tables.posterior_log_variance_clipped, t, n, kind);
    let frac = (model_v + 1.0) * 0.5;
    &frac * max_log + (-&frac + 1.0) * min_log
}

/// One term of the bound per image, in bits per dimension (improved-diffusion's
/// `_vb_terms_bpd`): L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) for t > 0, and the
/// decoder's L_0 = −log p_θ(x_0 | x_1) (discretized, see
/// [`discretized_gaussian_log_likelihood`]) at t = 0 (the paper's t = 1); both averaged over the
/// dimensions of an image and divided by ln 2.
///
/// # Shapes
/// `x_0` (data on [−1, 1]), `x_t` and `model_mean`: `[N, …]`; `model_log_variance`: `[N, …]`
/// or `[N, 1, …]`; `t`: `[N]`. Returns `[N]`.
pub fn vb_terms_bits(
    tables: &BoundTables,
    x_0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
    model_mean: &Tensor,
    model_log_variance: &Tensor,
) -> Tensor {
    let (true_mean, true_log_var) = posterior_mean_log_variance(tables, x_0, x_t, t);
    let kl = mean_flat(&normal_kl(
        &true_mean,
        &true_log_var,
        model_mean,
        model_log_variance,
    )) / LN_2;
    let log_scales = model_log_variance.expand_as(model_mean) * 0.5;
    let decoder_nll = -mean_flat(&discretized_gaussian_log_likelihood(
        x_0,
        model_mean,
        &log_scales,
    )) / LN_2;
    let first = t.to_device(x_0.device()).eq(0);
    decoder_nll.where_self(&first, &kl)
}

/// The prior term KL(q(x_T | x_0) ‖ N(0, I)) per image in bits per dimension, with q(x_T | x_0)
/// = N(√ᾱ_T x_0, (1 − ᾱ_T) I) (improved-diffusion's `_prior_bpd`). The network does not change
/// it; it is ≈ 0 for the usual schedules.
///
/// # Shapes
/// `x_0`: `[N, …]`; returns `[N]`.
pub fn prior_bits(schedule: &Schedule, x_0: &Tensor) -> Tensor {
    let last = schedule.n_steps() - 1;
    let mean = x_0 * schedule.sqrt_alphas_cumprod()[last];
    let log_var = Tensor::full(
        [1],
        (1.0 - schedule.alphas_cumprod()[last]).ln(),
        (x_0.kind(), x_0.device()),
    );
    let zero = Tensor::zeros([1], (x_0.kind(), x_0.device()));
    mean_flat(&normal_kl(&mean, &log_var, &zero, &zero)) / LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(xs: &Tensor) -> f64 {
        xs.double_value(&[])
    }

    #[test]
    fn kl_of_a_gaussian_with_itself_is_zero_and_matches_the_closed_form() {
        let m = Tensor::from_slice(&[0.3f64]);
        let l = Tensor::from_slice(&[-1.2f64]);
        assert_eq!(scalar(&normal_kl(&m, &l, &m, &l).squeeze()), 0.0);
        // KL(N(0, 1) ‖ N(1, e²)) = ½ (−1 + 2 + e^{−2} + e^{−2}).
        let kl = normal_kl(
            &Tensor::from_slice(&[0.0f64]),
            &Tensor::from_slice(&[0.0f64]),
            &Tensor::from_slice(&[1.0f64]),
            &Tensor::from_slice(&[2.0f64]),
        );
        let expected = 0.5 * (1.0 + 2.0 * (-2.0f64).exp());
        assert!((scalar(&kl.squeeze()) - expected).abs() < 1e-15);
    }

    #[test]
    fn the_decoder_gives_all_mass_to_the_256_bins() {
        // Σ over the 256 pixel values of P(x) = 1 for any mean and scale: the edge bins reach
        // ±∞, the inner bins tile the rest.
        let x = Tensor::arange(256, (Kind::Double, tch::Device::Cpu)) / 127.5 - 1.0;
        for (mean, log_scale) in [(0.0, -3.0), (0.9, -1.0), (-1.2, -5.0)] {
            let means = Tensor::full([256], mean, (Kind::Double, tch::Device::Cpu));
            let scales = Tensor::full([256], log_scale, (Kind::Double, tch::Device::Cpu));
            let p = discretized_gaussian_log_likelihood(&x, &means, &scales).exp();
            let total = scalar(&p.sum(Kind::Double));
            assert!((total - 1.0).abs() < 1e-9, "{mean}, {log_scale}: {total}");
        }
    }

    #[test]
    fn learned_range_spans_the_two_fixed_variances() {
        let schedule = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
        let tables = BoundTables::new(&schedule, Device::Cpu);
        let t = Tensor::from_slice(&[2i64]);
        let at = |v: f64| {
            let v = Tensor::full([1, 1, 1, 1], v, (Kind::Double, Device::Cpu));
            scalar(&learned_range_log_variance(&tables, &t, &v).squeeze())
        };
        assert!((at(1.0) - 0.3f64.ln()).abs() < 1e-15);
        assert!((at(-1.0) - schedule.posterior_log_variance_clipped()[2]).abs() < 1e-15);
    }
}
