//! Exponential moving average of the weights (Ho et al. 2020, App. B: decay 0.9999), kept on the
//! model's device. Sampling and evaluation use these weights by default.
//!
//! An update is one multi-tensor lerp over all weights (`torch._foreach_lerp_`, through
//! torch-ext). The update count, the warm-up decay that depends on it, and the choice to skip an
//! update (a step with non-finite gradients) all stay on the device, so an update never waits
//! for the host.

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};
use torch_ext::foreach;

use crate::TrainError;

/// EMA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// The decay d in θ_ema ← d·θ_ema + (1 − d)·θ.
    pub decay: f64,
    /// Warm-up: use min(d, (1 + n) / (10 + n)) at update n, so that early averages are not
    /// dominated by the random initialisation (TensorFlow's `ExponentialMovingAverage` given
    /// `num_updates`, and diffusers' `EMAModel` without `use_ema_warmup`).
    pub warmup: bool,
}

impl EmaConfig {
    /// Ho et al. 2020: decay 0.9999.
    pub fn ho2020() -> Self {
        Self {
            decay: 0.9999,
            warmup: true,
        }
    }

    /// Checks that the decay is in [0, 1].
    ///
    /// # Errors
    /// [`TrainError::Config`] naming `ema.decay`.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(0.0..=1.0).contains(&self.decay) {
            return Err(TrainError::Config(format!(
                "ema.decay = {} is invalid: it must be in [0, 1]",
                self.decay
            )));
        }
        Ok(())
    }

    /// The decay used at update `n` (0-based).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup {
            self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
        } else {
            self.decay
        }
    }
}

/// The averaged and live tensors, matched by name once so that an update does no lookups.
#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    /// Trainable weights: averaged, `averaged[i]` towards `live[i]`.
    averaged: Vec<Tensor>,
    live: Vec<Tensor>,
    /// Buffers such as BatchNorm running statistics: copied.
    copied: Vec<(Tensor, Tensor)>,
    /// Updates so far, a 0-dim f64 tensor on the model's device.
    updates: Tensor,
}

impl Ema {
    /// Starts the average at the live weights.
    ///
    /// # Errors
    /// [`TrainError::Ema`] when the two stores do not hold the same names and shapes.
    pub fn new(
        config: EmaConfig,
        ema_vs: &VarStore,
        model_vs: &VarStore,
    ) -> Result<Self, TrainError> {
        let live = model_vs.variables();
        let mut shadow: Vec<(String, Tensor)> = ema_vs.variables().into_iter().collect();
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        if shadow.len() != live.len() {
            return Err(TrainError::Ema(format!(
                "EMA model has {} tensors, the model {}",
                shadow.len(),
                live.len()
            )));
        }
        let (mut averaged, mut live_weights, mut copied) = (Vec::new(), Vec::new(), Vec::new());
        for (name, mut e) in shadow {
            let p = live
                .get(&name)
                .ok_or_else(|| TrainError::Ema(format!("the model lacks EMA tensor `{name}`")))?;
            if p.size() != e.size() {
                return Err(TrainError::Ema(format!(
                    "EMA tensor `{name}` has another shape than the model's"
                )));
            }
            tch::no_grad(|| e.copy_(p));
            if p.requires_grad() {
                averaged.push(e);
                live_weights.push(p.shallow_clone());
            } else {
                copied.push((e, p.shallow_clone()));
            }
        }
        let device = model_vs.device();
        Ok(Self {
            config,
            averaged,
            live: live_weights,
            copied,
            updates: Tensor::zeros([], (Kind::Double, device)),
        })
    }

    /// The number of updates so far (reads the device-side count: a synchronisation).
    pub fn updates(&self) -> u64 {
        self.updates.double_value(&[]) as u64
    }

    /// Sets the update count (on resume, after the averaged weights were loaded).
    pub fn set_updates(&mut self, updates: u64) {
        let _ = self.updates.fill_(updates as f64);
    }

    /// The decay of the next update, [`EmaConfig::decay_at`] of the device-side count, as a
    /// 0-dim f64 tensor on the model's device.
    pub fn decay_tensor(&self) -> Tensor {
        if !self.config.warmup {
            return self.updates.full_like(self.config.decay);
        }
        ((&self.updates + 1.0) / (&self.updates + 10.0)).clamp_max(self.config.decay)
    }

    /// One update after an optimizer step.
    pub fn update(&mut self) {
        self.update_unless(None);
    }

    /// One update, skipped on the device when `skip` (a 0-dim f32 tensor, e.g. the optimizer's
    /// `found_inf`) holds 1: then neither the averages, nor the copied buffers, nor the count
    /// change. The skip is a lerp weight of 0, so the live weights must be finite (they are when
    /// the optimizer skipped the same step); the copied buffers may hold NaN.
    pub fn update_unless(&mut self, skip: Option<&Tensor>) {
        let mut weight: Tensor = 1.0 - self.decay_tensor();
        if let Some(skip) = skip {
            weight *= 1.0 - skip.to_kind(Kind::Double);
        }
        tch::no_grad(|| {
            if let Some(first) = self.averaged.first() {
                let weight = weight.to_kind(first.kind());
                foreach::foreach_lerp_tensor_(&mut self.averaged, &self.live, &weight)
                    .expect("EMA and live weights of one device and dtype");
            }
            let skip = skip.map(|s| s.gt(0.5));
            for (e, p) in &mut self.copied {
                match &skip {
                    None => e.copy_(p),
                    Some(skip) => {
                        let kept = e.where_self(skip, p);
                        e.copy_(&kept);
                    }
                }
            }
        });
        let _ = match skip {
            None => self.updates.g_add_scalar_(1.0),
            Some(skip) => self.updates.g_add_(&(1.0 - skip.to_kind(Kind::Double))),
        };
    }

    /// The model's device.
    pub fn device(&self) -> Device {
        self.updates.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    #[test]
    fn averages_weights_and_copies_buffers() {
        let model = nn::VarStore::new(Device::Cpu);
        let mut w = model.root().var_copy("w", &Tensor::from_slice(&[1.0f32]));
        let mut b = model.root().zeros_no_train("running_mean", &[1]);
        let shadow = nn::VarStore::new(Device::Cpu);
        let _ = shadow.root().zeros("w", &[1]);
        let _ = shadow.root().zeros_no_train("running_mean", &[1]);
        let mut ema = Ema::new(
            EmaConfig {
                decay: 0.9,
                warmup: false,
            },
            &shadow,
            &model,
        )
        .unwrap();
        tch::no_grad(|| {
            w.copy_(&Tensor::from_slice(&[2.0f32]));
            b.copy_(&Tensor::from_slice(&[5.0f32]));
        });
        ema.update();
        let vars = shadow.variables();
        assert!((vars["w"].double_value(&[0]) - 1.1).abs() < 1e-6);
        assert_eq!(vars["running_mean"].double_value(&[0]), 5.0);
        assert_eq!(ema.updates(), 1);

        // A skipped update changes nothing, even with NaN in a copied buffer; an unskipped one
        // through the same path is a plain update.
        tch::no_grad(|| {
            w.copy_(&Tensor::from_slice(&[9.0f32]));
            b.copy_(&Tensor::from_slice(&[f32::NAN]));
        });
        ema.update_unless(Some(&Tensor::from(1.0f32)));
        assert!((vars["w"].double_value(&[0]) - 1.1).abs() < 1e-6);
        assert_eq!(vars["running_mean"].double_value(&[0]), 5.0);
        assert_eq!(ema.updates(), 1);
        tch::no_grad(|| {
            w.copy_(&Tensor::from_slice(&[3.0f32]));
            b.copy_(&Tensor::from_slice(&[7.0f32]));
        });
        ema.update_unless(Some(&Tensor::from(0.0f32)));
        assert!((vars["w"].double_value(&[0]) - (0.9 * 1.1 + 0.1 * 3.0)).abs() < 1e-6);
        assert_eq!(vars["running_mean"].double_value(&[0]), 7.0);
        assert_eq!(ema.updates(), 2);
    }

    #[test]
    fn the_device_decay_follows_the_warmup() {
        let model = nn::VarStore::new(Device::Cpu);
        let _ = model.root().zeros("w", &[1]);
        let shadow = nn::VarStore::new(Device::Cpu);
        let _ = shadow.root().zeros("w", &[1]);
        let config = EmaConfig {
            decay: 0.999,
            warmup: true,
        };
        let mut ema = Ema::new(config.clone(), &shadow, &model).unwrap();
        for n in [0u64, 1, 5, 100, 5000] {
            ema.set_updates(n);
            let device = ema.decay_tensor().double_value(&[]);
            assert!((device - config.decay_at(n)).abs() < 1e-15, "{n}");
        }
    }

    #[test]
    fn warmup_decay_grows_towards_the_target() {
        let c = EmaConfig {
            decay: 0.9999,
            warmup: true,
        };
        assert!((c.decay_at(0) - 0.1).abs() < 1e-12);
        assert!(c.decay_at(100) < c.decay_at(1000));
        assert_eq!(c.decay_at(10_000_000), 0.9999);
        assert!(EmaConfig {
            decay: 1.5,
            warmup: false
        }
        .validate()
        .is_err());
    }
}
