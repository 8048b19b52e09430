//! Exponential moving average of the weights (Ho et al. 2020, App. B: decay 0.9999), kept on the
//! model's device. Sampling and evaluation use these weights by default.

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

use crate::TrainError;

/// EMA settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaConfig {
    /// The decay d in θ_ema ← d·θ_ema + (1 − d)·θ.
    pub decay: f64,
    /// Warm-up: use min(d, (1 + n) / (10 + n)) at update n, so that early averages are not
    /// dominated by the random initialisation (as in the official TF code's `ema` helper users
    /// and diffusers' `EMAModel`).
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

/// Pairs of (average, live) tensors, matched by name once so that an update does no lookups.
#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    /// Trainable weights: averaged.
    averaged: Vec<(Tensor, Tensor)>,
    /// Buffers such as BatchNorm running statistics: copied.
    copied: Vec<(Tensor, Tensor)>,
    updates: u64,
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
        let (mut averaged, mut copied) = (Vec::new(), Vec::new());
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
                averaged.push((e, p.shallow_clone()));
            } else {
                copied.push((e, p.shallow_clone()));
            }
        }
        Ok(Self {
            config,
            averaged,
            copied,
            updates: 0,
        })
    }

    /// The number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Sets the update count (on resume, after the averaged weights were loaded).
    pub fn set_updates(&mut self, updates: u64) {
        self.updates = updates;
    }

    /// One update after an optimizer step.
    pub fn update(&mut self) {
        let d = self.config.decay_at(self.updates);
        tch::no_grad(|| {
            for (e, p) in &mut self.averaged {
                let _ = e.lerp_(p, 1.0 - d);
            }
            for (e, p) in &mut self.copied {
                e.copy_(p);
            }
        });
        self.updates += 1;
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
