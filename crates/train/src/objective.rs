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

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use model::{Denoiser, Prediction};
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
}

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
    let x_t = sched.add_noise(x_0, noise, t);
    let output = match dropout {
        Some(gen) => model::forward_train(model, &x_t, t, class_labels, gen, autocast),
        None => model::forward_cond(model, &x_t, t, class_labels, true, autocast),
    };
    let target = match config.prediction {
        Prediction::Eps => noise.shallow_clone(),
        Prediction::X0 => x_0.shallow_clone(),
        Prediction::V => {
            extract(&sched.sqrt_alphas_cumprod, t, 4) * noise
                - extract(&sched.sqrt_one_minus_alphas_cumprod, t, 4) * x_0
        }
    };
    let element = match config.loss {
        LossKind::L1 => (&output - &target).abs(),
        LossKind::L2 => (&output - &target).square(),
        LossKind::Huber => output.huber_loss(&target, Reduction::None, config.huber_delta),
    };
    let per_sample = element.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
    match config.min_snr_gamma {
        None => per_sample.mean(Kind::Float),
        Some(gamma) => {
            let snr = sched.snr.index_select(0, t);
            let clipped = snr.clamp_max(gamma);
            let weight = match config.prediction {
                Prediction::Eps => &clipped / &snr,
                Prediction::X0 => clipped,
                Prediction::V => &clipped / (&snr + 1.0),
            };
            (per_sample * weight).mean(Kind::Float)
        }
    }
}
