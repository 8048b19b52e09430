//! The dynamic loss scale of fp16 training (`precision = "fp16"`), with the semantics of
//! `torch.amp.GradScaler`: the loss is multiplied by the scale before backward, so that small
//! f16 gradients do not underflow; the gradients are divided by it before anything reads them,
//! in one fused pass that also flags NaN and infinite values (`found_inf`); a step with
//! `found_inf` set is skipped and the scale halves, and every `growth_interval` finite steps in a
//! row it doubles. Initial scale 2^16, growth 2, backoff 0.5, interval 2,000: GradScaler's
//! defaults.
//!
//! Everything stays on the device: the scale and the growth tracker are tensors updated by
//! libtorch's `_amp_update_scale_`, and `found_inf` feeds the skip that the NaN guard already
//! makes in the fused Adam kernel and the EMA lerp ([`torch_ext::amp`]). The host reads the
//! scale only to write it into a checkpoint ([`LossScaleState`]), so that a resumed run goes on
//! with the scale the uninterrupted one had.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::TrainError;

/// The scaler's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerSettings {
    /// The scale at the first step.
    pub init_scale: f64,
    /// The factor the scale grows by after `growth_interval` finite steps in a row.
    pub growth_factor: f64,
    /// The factor the scale shrinks by after a step with a non-finite gradient.
    pub backoff_factor: f64,
    /// Finite steps in a row before the scale grows.
    pub growth_interval: i64,
}

impl Default for ScalerSettings {
    /// `torch.amp.GradScaler`'s defaults: 2^16, 2, 0.5, 2000.
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// What a checkpoint keeps of the scaler (`state.json`'s `loss_scale`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaleState {
    /// The current scale.
    pub scale: f64,
    /// Finite steps in a row since the scale last changed.
    pub growth_tracker: i64,
}

/// A dynamic loss scale on a device.
#[derive(Debug)]
pub struct LossScaler {
    settings: ScalerSettings,
    /// One-element f32.
    scale: Tensor,
    /// One-element i32.
    growth_tracker: Tensor,
    /// One-element f32: 1 when the last unscale found a NaN or an infinity.
    found_inf: Tensor,
}

impl LossScaler {
    /// A scaler with [`ScalerSettings::default`] on `device`.
    pub fn new(device: Device) -> Self {
        Self::with_settings(ScalerSettings::default(), device)
    }

    /// A scaler with `settings` on `device`.
    pub fn with_settings(settings: ScalerSettings, device: Device) -> Self {
        Self {
            settings,
            scale: Tensor::full([1], settings.init_scale, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// The current scale (a one-element f32 tensor on the device).
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    /// `loss · scale`, what backward runs on.
    ///
    /// # Shapes
    /// `loss`: 0-dim; returns 0-dim f32.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.reshape([])
    }

    /// Divides every gradient by the scale in place (`GradScaler.unscale_`: by the reciprocal
    /// computed in f64, then rounded to f32) and returns `found_inf` (one-element f32, 1 when a
    /// gradient holds a NaN or an infinity), which [`LossScaler::update`] reads next.
    ///
    /// # Errors
    /// [`TrainError::Config`] when libtorch rejects the gradients (another device or dtype).
    pub fn unscale_(&mut self, grads: &mut [Tensor]) -> Result<&Tensor, TrainError> {
        let _ = self.found_inf.zero_();
        let inv_scale = self
            .scale
            .to_kind(Kind::Double)
            .reciprocal()
            .to_kind(Kind::Float);
        torch_ext::amp::non_finite_check_and_unscale_(grads, &self.found_inf, &inv_scale)
            .map_err(|e| TrainError::Config(format!("the loss scaler's unscale: {e}")))?;
        Ok(&self.found_inf)
    }

    /// After the step: backs off on the last unscale's `found_inf`, or counts a finite step and
    /// grows the scale every `growth_interval` of them (`GradScaler.update`), on the device.
    pub fn update(&mut self) {
        let s = self.settings;
        torch_ext::amp::update_scale_(
            &mut self.scale,
            &self.growth_tracker,
            &self.found_inf,
            s.growth_factor,
            s.backoff_factor,
            s.growth_interval,
        )
        .expect("the scaler's own tensors have the dtypes _amp_update_scale_ takes");
    }

    /// The scale and growth tracker, read from the device (for a checkpoint).
    pub fn state(&self) -> LossScaleState {
        LossScaleState {
            scale: self.scale.double_value(&[0]),
            growth_tracker: self.growth_tracker.int64_value(&[0]),
        }
    }

    /// Restores a checkpoint's scale and growth tracker.
    ///
    /// # Errors
    /// [`TrainError::Config`] for a scale that is not positive and finite or a negative tracker.
    pub fn load_state(&mut self, state: LossScaleState) -> Result<(), TrainError> {
        if !(state.scale.is_finite() && state.scale > 0.0) || state.growth_tracker < 0 {
            return Err(TrainError::Config(format!(
                "loss_scale {{ scale: {}, growth_tracker: {} }} is invalid: the scale must be \
                 positive and finite, the tracker at least 0",
                state.scale, state.growth_tracker
            )));
        }
        let _ = self.scale.fill_(state.scale);
        let _ = self.growth_tracker.fill_(state.growth_tracker);
        Ok(())
    }
}
