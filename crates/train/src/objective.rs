//! The training objective (Ho et al. 2020, Alg. 1): draw t and ε, form x_t in closed form
//! (Eq. 4), and regress the network's output on its target.
//!
//! - Targets: ε (the paper), x_0, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022).
//! - Losses: L1 (the notebook), L2 (the paper's L_simple), Huber.
//! - Optional min-SNR-γ weighting (Hang et al. 2023), expressed for each target so that all
//!   three weight the equivalent x_0 error by min(SNR, γ).
//! - Class conditioning with classifier-free guidance's label dropout (Ho & Salimans 2022,
//!   Alg. 1): each label becomes the null label with probability `p_uncond` ([`drop_labels`]),
//!   and every sample, dropped or not, goes through the same loss ([`training_loss_cond`]), so
//!   one network learns ε_θ(x_t, t, c) and ε_θ(x_t, t, ∅).
//! - Learned variances (Nichol & Dhariwal 2021, "Improved DDPM"): with `variance =
//!   "learned_range"` the network outputs 2·C channels, the prediction and v_Σ (Eq. 15), and the
//!   loss is the hybrid L_simple + λ L_vlb (§3.1, λ = 0.001), where L_vlb's term at the drawn t
//!   sees the prediction with its gradient stopped, so that only v_Σ learns from it
//!   ([`learned_range_vlb`]). With `loss = "vlb"` the loss is L_vlb alone (§3.2: T·L_t, both
//!   outputs learning from it, [`vlb_loss`]), and t may be drawn by importance sampling
//!   (`timestep_sampling = "importance"`, Eq. 17: [`crate::timesteps`]), each sample's loss
//!   then weighted by 1/(T p_t).

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use model::{Denoiser, Prediction, VarianceOutput};
use sample::likelihood::{reverse_distribution, split_output, ModelVariance};
use schedule::likelihood::vb_terms_bits;
use schedule::tensor::{extract, ScheduleTensors};
use torch_ext::Generator;

use crate::TrainError;

/// The per-element loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean absolute error (the notebook).
    L1,
    /// Mean squared error (the paper's L_simple).
    L2,
    /// Huber with threshold `huber_delta`.
    Huber,
    /// L_vlb alone (Improved DDPM §3.2; improved-diffusion's `RESCALED_KL`): T·L_t in bits per
    /// dimension at the drawn t, from which the prediction and v_Σ both learn. Needs `variance =
    /// "learned_range"`.
    Vlb,
}

/// How a training step draws its timesteps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSampling {
    /// t ~ U{0..T−1} (Ho et al. 2020, Alg. 1).
    #[default]
    Uniform,
    /// Improved DDPM's importance sampling (Eq. 17): p_t ∝ √E(L_t²) over the last 10 losses at
    /// each t, uniform until every t has 10, each loss weighted by 1/(T p_t)
    /// ([`crate::timesteps::ImportanceSampler`]). Only for `loss = "vlb"`.
    Importance,
}

/// The objective's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// The network's target.
    pub prediction: Prediction,
    /// The loss.
    pub loss: LossKind,
    /// The Huber threshold (used by `huber` only).
    pub huber_delta: f64,
    /// γ of min-SNR-γ weighting; `null` for uniform weights.
    pub min_snr_gamma: Option<f64>,
    /// For a class-conditional network (`model.num_classes`): the probability that a training
    /// label is replaced by the null label (Ho & Salimans 2022 use 0.1 or 0.2). Unused without
    /// classes; absent from configurations saved before class conditioning existed.
    #[serde(default = "default_p_uncond")]
    pub p_uncond: f64,
    /// `learned_range`: the network also outputs v_Σ (2·C channels, `model.out_channels`) and
    /// trains on the hybrid loss L_simple + λ L_vlb ([`HYBRID_LAMBDA`]). Absent from
    /// configurations saved before learned variances existed: `fixed`.
    #[serde(default)]
    pub variance: VarianceOutput,
    /// How t is drawn: `uniform`, or `importance` (only with `loss = "vlb"`). Absent from
    /// configurations saved before importance sampling existed: `uniform`.
    #[serde(default)]
    pub timestep_sampling: TimestepSampling,
}

/// λ of the hybrid loss L_simple + λ L_vlb (Nichol & Dhariwal 2021, §3.1).
pub const HYBRID_LAMBDA: f64 = 0.001;

/// The default `p_uncond`: 0.1, one label in ten dropped.
pub const DEFAULT_P_UNCOND: f64 = 0.1;

fn default_p_uncond() -> f64 {
    DEFAULT_P_UNCOND
}

impl ObjectiveConfig {
    /// The notebook: ε-prediction with an L1 loss.
    pub fn seed_notebook() -> Self {
        Self {
            prediction: Prediction::Eps,
            loss: LossKind::L1,
            huber_delta: 1.0,
            min_snr_gamma: None,
            p_uncond: DEFAULT_P_UNCOND,
            variance: VarianceOutput::Fixed,
            timestep_sampling: TimestepSampling::Uniform,
        }
    }

    /// The paper: ε-prediction with L_simple (L2).
    pub fn ho2020() -> Self {
        Self {
            loss: LossKind::L2,
            ..Self::seed_notebook()
        }
    }

    /// Checks the numeric fields, naming the bad one.
    ///
    /// # Errors
    /// [`TrainError::Config`].
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.huber_delta > 0.0) {
            return Err(TrainError::Config(format!(
                "objective.huber_delta = {} is invalid: it must be positive",
                self.huber_delta
            )));
        }
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return Err(TrainError::Config(format!(
                "objective.p_uncond = {} is invalid: it must be a probability in [0, 1]",
                self.p_uncond
            )));
        }
        if let Some(g) = self.min_snr_gamma {
            if !(g > 0.0) {
                return Err(TrainError::Config(format!(
                    "objective.min_snr_gamma = {g} is invalid: it must be positive, or null"
                )));
            }
        }
        let vlb = self.loss == LossKind::Vlb;
        if vlb && self.variance != VarianceOutput::LearnedRange {
            return Err(TrainError::Config(
                "objective.loss = \"vlb\" trains the learned variance: set objective.variance = \
                 \"learned_range\" (and model.out_channels to twice the image channels)"
                    .into(),
            ));
        }
        if vlb && self.min_snr_gamma.is_some() {
            return Err(TrainError::Config(
                "objective.min_snr_gamma weights L_simple, and objective.loss = \"vlb\" has none: \
                 set objective.min_snr_gamma = null"
                    .into(),
            ));
        }
        if self.timestep_sampling == TimestepSampling::Importance && !vlb {
            return Err(TrainError::Config(
                "objective.timestep_sampling = \"importance\" is for L_vlb-only training \
                 (Improved DDPM Eq. 17): set objective.loss = \"vlb\", or timestep_sampling = \
                 \"uniform\""
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Label dropout for classifier-free guidance: each of `labels` becomes `null_label` where its
/// uniform draw is below `p_uncond`, independently (so a fraction `p_uncond` of them on
/// average). The draws are an argument, as the noise is: the trainer takes them from the run's
/// generator, after t and ε, so that they are a function of (seed, step) and resume stays exact.
///
/// # Shapes
/// `labels`: `[N]` int64; `uniforms`: `[N]` on [0, 1), on the labels' device. Returns `[N]` int64.
pub fn drop_labels(labels: &Tensor, uniforms: &Tensor, p_uncond: f64, null_label: i64) -> Tensor {
    let dropped = uniforms.lt(p_uncond);
    labels.masked_fill(&dropped, null_label)
}

/// The loss of one batch as a 0-d f32 tensor: the mean over samples of each sample's mean
/// element loss (times its min-SNR weight).
///
/// # Shapes
/// `x_0`, `noise`: `[N, C, H, W]`; `t`: `[N]` int64, all on the model's device.
pub fn training_loss(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &ObjectiveConfig,
    x_0: &Tensor,
    noise: &Tensor,
    t: &Tensor,
    autocast: Option<Kind>,
) -> Tensor {
    training_loss_cond(model, sched, config, x_0, noise, t, None, None, autocast)
}

/// [`training_loss`] of a class-conditional network for the classes `class_labels` (after
/// [`drop_labels`]: null labels go through the same loss as the others; `None` is the null label
/// for every sample).
///
/// `dropout` is the generator the network's dropout masks come from
/// ([`model::Denoiser::forward_train`]; a run passes its own); `None` leaves them to libtorch's
/// global generator, as [`training_loss`] does.
///
/// # Shapes
/// As [`training_loss`]; `class_labels`: `[N]` int64 on the model's device.
#[allow(clippy::too_many_arguments)]
pub fn training_loss_cond(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &ObjectiveConfig,
    x_0: &Tensor,
    noise: &Tensor,
    t: &Tensor,
    class_labels: Option<&Tensor>,
    dropout: Option<&mut Generator>,
    autocast: Option<Kind>,
) -> Tensor {
    per_sample_loss_cond(
        model,
        sched,
        config,
        x_0,
        noise,
        t,
        class_labels,
        dropout,
        autocast,
    )
    .mean(Kind::Float)
}

/// The loss of each sample of [`training_loss_cond`] (which is their mean): L_simple (times its
/// min-SNR weight), plus λ T L_t for the hybrid loss, or T L_t alone for `loss = "vlb"`.
///
/// # Shapes
/// As [`training_loss_cond`]; returns `[N]` f32.
#[allow(clippy::too_many_arguments)]
pub fn per_sample_loss_cond(
    model: &dyn Denoiser,
    sched: &ScheduleTensors,
    config: &ObjectiveConfig,
    x_0: &Tensor,
    noise: &Tensor,
    t: &Tensor,
    class_labels: Option<&Tensor>,
    dropout: Option<&mut Generator>,
    autocast: Option<Kind>,
) -> Tensor {
    let x_t = sched.add_noise(x_0, noise, t);
    let output = match dropout {
        Some(gen) => model::forward_train(model, &x_t, t, class_labels, gen, autocast),
        None => model::forward_cond(model, &x_t, t, class_labels, true, autocast),
    };
    if config.loss == LossKind::Vlb {
        return vlb_loss(sched, config.prediction, &output, x_0, &x_t, t);
    }
    let (predicted, model_v) = match config.variance {
        VarianceOutput::Fixed => (output, None),
        VarianceOutput::LearnedRange => split_output(&output, ModelVariance::LearnedRange),
    };
    let per_sample = simple_loss(sched, config, &predicted, x_0, noise, t);
    match model_v {
        None => per_sample,
        Some(model_v) => {
            let vlb =
                learned_range_vlb(sched, config.prediction, &predicted, &model_v, x_0, &x_t, t);
            let weight = HYBRID_LAMBDA * sched.schedule().n_steps() as f64;
            per_sample + vlb * weight
        }
    }
}

/// L_simple of each sample: the mean element loss of the prediction against its target (ε, x_0
/// or v), times its min-SNR-γ weight when set.
///
/// # Shapes
/// `predicted`, `x_0`, `noise`: `[N, C, H, W]`; `t`: `[N]`. Returns `[N]` f32.
///
/// # Panics
/// For `loss = "vlb"`, which has no L_simple ([`vlb_loss`] is its loss).
pub fn simple_loss(
    sched: &ScheduleTensors,
    config: &ObjectiveConfig,
    predicted: &Tensor,
    x_0: &Tensor,
    noise: &Tensor,
    t: &Tensor,
) -> Tensor {
    let target = match config.prediction {
        Prediction::Eps => noise.shallow_clone(),
        Prediction::X0 => x_0.shallow_clone(),
        Prediction::V => {
            extract(&sched.sqrt_alphas_cumprod, t, 4) * noise
                - extract(&sched.sqrt_one_minus_alphas_cumprod, t, 4) * x_0
        }
    };
    let element = match config.loss {
        LossKind::L1 => (predicted - &target).abs(),
        LossKind::L2 => (predicted - &target).square(),
        LossKind::Huber => predicted.huber_loss(&target, Reduction::None, config.huber_delta),
        LossKind::Vlb => panic!("objective.loss = \"vlb\" has no L_simple: call vlb_loss"),
    };
    let per_sample = element.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
    match config.min_snr_gamma {
        None => per_sample,
        Some(gamma) => {
            let snr = sched.snr.index_select(0, t);
            let clipped = snr.clamp_max(gamma);
            let weight = match config.prediction {
                Prediction::Eps => &clipped / &snr,
                Prediction::X0 => clipped,
                Prediction::V => &clipped / (&snr + 1.0),
            };
            per_sample * weight
        }
    }
}

/// L_vlb's term at each sample's t, in bits per dimension (the KL of L_{t−1}, or the decoder's
/// −log p(x_0 | x_1) at t = 0: [`vb_terms_bits`]), with p_θ's mean formed from `predicted`
/// with its gradient stopped and its log variance from `model_v` (Eq. 15), x̂_0 unclipped, in
/// f64 (improved-diffusion's `training_losses` with `frozen_out`). Only `model_v` gets a gradient.
/// The hybrid loss weights it by λ T: one t's term times T estimates L_vlb without bias.
///
/// # Shapes
/// `predicted`, `model_v`, `x_0`, `x_t`: `[N, C, H, W]`; `t`: `[N]`. Returns `[N]` f32.
pub fn learned_range_vlb(
    sched: &ScheduleTensors,
    prediction: Prediction,
    predicted: &Tensor,
    model_v: &Tensor,
    x_0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
) -> Tensor {
    let frozen = Tensor::cat(&[predicted.detach(), model_v.shallow_clone()], 1);
    vlb_bits(sched, prediction, &frozen, x_0, x_t, t)
}

/// The loss of `loss = "vlb"` for each sample: T·L_t in bits per dimension (L_{t−1}'s KL, or the
/// decoder's term at t = 0), from the whole learned-range `output` (the prediction and v_Σ, both
/// with their gradients), x̂_0 unclipped, in f64 (improved-diffusion's `RESCALED_KL`).
///
/// # Shapes
/// `output`: `[N, 2C, H, W]`; `x_0`, `x_t`: `[N, C, H, W]`; `t`: `[N]`. Returns `[N]` f32.
pub fn vlb_loss(
    sched: &ScheduleTensors,
    prediction: Prediction,
    output: &Tensor,
    x_0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
) -> Tensor {
    vlb_bits(sched, prediction, output, x_0, x_t, t) * sched.schedule().n_steps() as f64
}

/// L_t in bits per dimension for each sample from a learned-range `output`, in f64 with the
/// schedule's device tables ([`ScheduleTensors::bound`]); returns `[N]` f32.
fn vlb_bits(
    sched: &ScheduleTensors,
    prediction: Prediction,
    output: &Tensor,
    x_0: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
) -> Tensor {
    let x_t = x_t.detach().to_kind(Kind::Double);
    let x_0 = x_0.to_kind(Kind::Double);
    let tables = sched.bound();
    let p = reverse_distribution(
        tables,
        output,
        &x_t,
        t,
        prediction,
        ModelVariance::LearnedRange,
        false,
    );
    vb_terms_bits(tables, &x_0, &x_t, t, &p.mean, &p.log_variance).to_kind(Kind::Float)
}
