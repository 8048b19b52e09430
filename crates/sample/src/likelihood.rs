//! The network's reverse distribution p_θ(x_{t−1} | x_t) = N(μ_θ, Σ_θ) and one term of the
//! variational bound with it, in bits per dimension (Ho et al. 2020, Eq. 5; improved-diffusion's
//! `p_mean_variance` and `_vb_terms_bpd`). `ddpm eval nll` sums these terms over t.
//!
//! μ_θ is the posterior mean μ̃_t(x_t, x̂_0) (Eq. 7) with x̂_0 from the network's prediction (ε,
//! x_0 or v), clamped to [−1, 1] when asked, as the official code does by default
//! (`clip_denoised=True`). Σ_θ is fixed (β_t or β̃_t) or learned ([`ModelVariance::LearnedRange`],
//! Improved DDPM Eq. 15, from the second half of the network's output channels). The arithmetic
//! after the network runs in the kind of `x_t` (f64 for the bound), with the schedule's f64
//! tables on the device ([`BoundTables`], uploaded once: `ScheduleTensors::bound`); the formulas
//! themselves are `schedule::likelihood`'s.

use model::{Denoiser, Prediction};
pub use schedule::likelihood::prior_bits;
use schedule::likelihood::{
    fixed_log_variance, gather, learned_range_log_variance, posterior_mean_log_variance,
    vb_terms_bits, BoundTables,
};
use schedule::VarianceType;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The variance Σ_θ of the reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVariance {
    /// σ_t² fixed to β̃_t or β_t (Ho et al. 2020).
    Fixed(VarianceType),
    /// Learned: the network outputs 2·C channels, the prediction then v_Σ ∈ [−1, 1], and
    /// ln Σ_θ = v ln β_t + (1 − v) ln β̃_t with v = (v_Σ + 1)/2 (Nichol & Dhariwal 2021, Eq. 15).
    LearnedRange,
}

/// The reverse distribution at one step, per element.
#[derive(Debug)]
pub struct ReverseDistribution {
    /// μ_θ(x_t, t): `[N, C, H, W]`.
    pub mean: Tensor,
    /// ln Σ_θ: `[N, C, H, W]` when learned, `[N, 1, 1, 1]` when fixed.
    pub log_variance: Tensor,
    /// x̂_0, clamped when asked: `[N, C, H, W]`.
    pub pred_x0: Tensor,
}

/// x̂_0 from a prediction of `prediction`'s kind at per-sample timesteps `t` (Eq. 4 solved for
/// x_0; for v, x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v), with f64 coefficients in `x_t`'s kind.
///
/// # Shapes
/// `prediction_output` and `x_t`: `[N, C, H, W]`; `t`: `[N]`. Returns `[N, C, H, W]`.
pub fn pred_x0_at(
    tables: &BoundTables,
    prediction: Prediction,
    prediction_output: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
) -> Tensor {
    let (n, kind) = (x_t.dim(), x_t.kind());
    let table = |values: &Tensor| gather(values, t, n, kind);
    match prediction {
        Prediction::Eps => {
            table(&tables.sqrt_recip_alphas_cumprod) * x_t
                - table(&tables.sqrt_recipm1_alphas_cumprod) * prediction_output
        }
        Prediction::X0 => prediction_output.shallow_clone(),
        Prediction::V => {
            table(&tables.sqrt_alphas_cumprod) * x_t
                - table(&tables.sqrt_one_minus_alphas_cumprod) * prediction_output
        }
    }
}

/// Splits a network output into the prediction and, for [`ModelVariance::LearnedRange`], v_Σ
/// (the second half of the channels).
///
/// # Panics
/// When a learned-range output has an odd number of channels (a network built without the
/// variance channels: a programming error, refused where the network is built).
pub fn split_output(output: &Tensor, variance: ModelVariance) -> (Tensor, Option<Tensor>) {
    match variance {
        ModelVariance::Fixed(_) => (output.shallow_clone(), None),
        ModelVariance::LearnedRange => {
            let c = output.size()[1];
            assert!(
                c % 2 == 0,
                "a learned-range network outputs 2·C channels, got {c}"
            );
            let halves = output.split(c / 2, 1);
            (halves[0].shallow_clone(), Some(halves[1].shallow_clone()))
        }
    }
}

/// p_θ(x_{t−1} | x_t) from the network's output at `x_t` (improved-diffusion's
/// `p_mean_variance`): μ_θ = μ̃_t(x_t, x̂_0) with x̂_0 clamped to [−1, 1] when `clip_x0`, and ln
/// Σ_θ fixed ([`fixed_log_variance`]) or learned ([`learned_range_log_variance`]). Computed in
/// `x_t`'s kind; `output` is cast to it.
///
/// # Shapes
/// `output`: `[N, C, H, W]` (`[N, 2C, H, W]` learned); `x_t`: `[N, C, H, W]`; `t`: `[N]`.
pub fn reverse_distribution(
    tables: &BoundTables,
    output: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
    prediction: Prediction,
    variance: ModelVariance,
    clip_x0: bool,
) -> ReverseDistribution {
    let output = output.to_kind(x_t.kind());
    let (predicted, model_v) = split_output(&output, variance);
    let mut pred_x0 = pred_x0_at(tables, prediction, &predicted, x_t, t);
    if clip_x0 {
        pred_x0 = pred_x0.clamp(-1.0, 1.0);
    }
    let (mean, _) = posterior_mean_log_variance(tables, &pred_x0, x_t, t);
    let log_variance = match (variance, model_v) {
        (ModelVariance::LearnedRange, Some(v)) => learned_range_log_variance(tables, t, &v),
        (ModelVariance::Fixed(fixed), _) => {
            fixed_log_variance(tables, t, fixed, x_t.dim(), x_t.kind())
        }
        (ModelVariance::LearnedRange, None) => unreachable!("split_output returns v_Σ"),
    };
    ReverseDistribution {
        mean,
        log_variance,
        pred_x0,
    }
}

/// How [`vb_term_bits`] runs the network and forms p_θ.
#[derive(Debug, Clone, Copy)]
pub struct BoundOptions {
    /// What the network predicts.
    pub prediction: Prediction,
    /// Σ_θ.
    pub variance: ModelVariance,
    /// Clamp x̂_0 to [−1, 1] (the official code's default).
    pub clip_x0: bool,
    /// Autocast kind of the network on CUDA (`None`: f32).
    pub autocast: Option<Kind>,
}

/// The term of the bound at step `t` for each image of `x_0`, in bits per dimension: x_t =
/// √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Eq. 4) with `noise` for ε, the network at x_t (in f32, without
/// class labels), then [`schedule::likelihood::vb_terms_bits`]: the KL of L_{t−1} for t > 0, the
/// decoder's −log p(x_0 | x_1) at t = 0. Computed in `x_0`'s kind (pass f64).
///
/// # Shapes
/// `x_0` (data on [−1, 1]) and `noise`: `[N, C, H, W]`. Returns `[N]` in `x_0`'s kind.
///
/// # Panics
/// When `t` ≥ T or the shapes do not fit the network.
pub fn vb_term_bits(
    net: &dyn Denoiser,
    tables: &BoundTables,
    x_0: &Tensor,
    t: usize,
    noise: &Tensor,
    options: &BoundOptions,
) -> Tensor {
    let n = x_0.size()[0];
    let kind = x_0.kind();
    let t_batch = Tensor::full([n], t as i64, (Kind::Int64, x_0.device()));
    let schedule = tables.schedule();
    let x_t = x_0 * schedule.sqrt_alphas_cumprod()[t]
        + noise.to_kind(kind) * schedule.sqrt_one_minus_alphas_cumprod()[t];
    let output = tch::no_grad(|| {
        model::forward(
            net,
            &x_t.to_kind(Kind::Float),
            &t_batch,
            false,
            options.autocast,
        )
    });
    let p = reverse_distribution(
        tables,
        &output,
        &x_t,
        &t_batch,
        options.prediction,
        options.variance,
        options.clip_x0,
    );
    vb_terms_bits(tables, x_0, &x_t, &t_batch, &p.mean, &p.log_variance)
}
