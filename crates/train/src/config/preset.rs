//! The named starting points for `ddpm train --preset`.

use data::{DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, Precision, Prediction, SimpleUnetConfig, UNetConfig};
use schedule::BetaSchedule;

use super::{default_eval_sampler, default_eval_samples, EvalReference, TrainConfig};
use crate::distributed::DistConfig;
use crate::ema::EmaConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use crate::TrainError;

/// The named starting points for `ddpm train --preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The teaching notebook, bugs fixed: CIFAR-10 train+test at 28×28, T=300 linear,
    /// SimpleUnet, L1, Adam 1e-3, batch 128, 100 epochs, a strip every 5 epochs.
    Seed,
    /// Ho et al. 2020 on CIFAR-10: 32×32, T=1000 linear, the paper's U-Net (35.7M), L2,
    /// Adam 2e-4 with 5000 warm-up steps, clip 1.0, EMA 0.9999, dropout 0.1, flips, batch 128,
    /// 800k steps.
    DdpmCifar10,
    /// Fashion-MNIST 28×28×1 with a small paper U-Net ([`UNetConfig::fashion_mnist`]: widths
    /// 16/32/64, attention at 7×7), cosine T=300, v-prediction with L2, Adam 2e-3 with 200
    /// warm-up steps, clip 1.0, EMA 0.999, batch 64, flips, 10 epochs: good samples in half an
    /// hour on two CPU cores.
    ///
    /// Measured 2026-12-01 (commit dc9bb21, 2-core Xeon, 30 minutes, 9,523 steps): FID 36.5 with
    /// DDPM over all 300 steps (σ² = β̃) and 40.1 with DDIM-50 (η = 0), 1.10× the chain; 1,000
    /// EMA samples against the first 1,000 test images (the floor of real data: 23.2). With
    /// ε-prediction (commit f0ce2b6) the same budget gave 33.8 and 45.2 (1.34×). The SimpleUnet
    /// preset before both scored 142.5 and 207.5 after its 3 epochs.
    /// `docs/results/runs/fashion-mnist-preset-ablation/`.
    FashionMnist,
}

impl Preset {
    /// Every preset, for listings.
    pub const ALL: [Preset; 3] = [Preset::Seed, Preset::DdpmCifar10, Preset::FashionMnist];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Seed => "seed",
            Preset::DdpmCifar10 => "ddpm-cifar10",
            Preset::FashionMnist => "fashion-mnist",
        }
    }

    /// Parses a name given by [`Preset::name`].
    ///
    /// # Errors
    /// [`TrainError::Config`] listing the valid names.
    pub fn from_name(name: &str) -> Result<Self, TrainError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                TrainError::Config(format!(
                    "unknown preset `{name}`: use one of {}",
                    names.join(", ")
                ))
            })
    }

    /// The preset's configuration.
    pub fn config(self) -> TrainConfig {
        match self {
            Preset::Seed => TrainConfig {
                dataset: DatasetSpec::seed_cifar10(),
                transform: TransformConfig::seed_cifar10(),
                batch_size: 128,
                grad_accum: 1,
                n_workers: 2,
                schedule: BetaSchedule::seed_notebook(),
                model: ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
                objective: ObjectiveConfig::seed_notebook(),
                optim: OptimConfig::seed_notebook(),
                // The notebook has no EMA; a mild one costs little and sampling uses it.
                ema: EmaConfig {
                    decay: 0.999,
                    warmup: true,
                },
                precision: Precision::Bf16,
                seed: 0,
                epochs: Some(100),
                max_steps: None,
                checkpoint_every: 1000,
                keep_last: 3,
                sample_every_epochs: 5,
                n_sample_images: 64,
                log_every: 10,
                max_nonfinite_in_a_row: 20,
                distributed: DistConfig::default(),
                eval_every: 0,
                eval_samples: default_eval_samples(),
                eval_sampler: default_eval_sampler(),
                eval_reference: EvalReference::default(),
            },
            Preset::DdpmCifar10 => TrainConfig {
                dataset: DatasetSpec::Cifar10 {
                    split: Split::Train,
                },
                transform: TransformConfig::ho2020(),
                schedule: BetaSchedule::ho2020(),
                model: ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
                objective: ObjectiveConfig::ho2020(),
                optim: OptimConfig::ho2020(),
                ema: EmaConfig::ho2020(),
                epochs: None,
                max_steps: Some(800_000),
                checkpoint_every: 5000,
                sample_every_epochs: 50,
                ..Preset::Seed.config()
            },
            Preset::FashionMnist => TrainConfig {
                dataset: DatasetSpec::FashionMnist {
                    split: Split::Train,
                },
                transform: TransformConfig {
                    size: None,
                    flip_p: 0.5,
                    normalize: true,
                },
                batch_size: 64,
                model: ModelConfig::Ddpm(UNetConfig::fashion_mnist()),
                // Cosine, so that x_T is pure noise at this short T (the notebook's linear
                // schedule at T = 300 leaves sqrt(abar_T) = 0.22 of the image, which sampling
                // from N(0, I) never sees).
                schedule: BetaSchedule::Cosine {
                    n_steps: 300,
                    s: schedule::COSINE_S,
                    max_beta: schedule::COSINE_MAX_BETA,
                },
                // v-prediction (Salimans & Ho 2022): at 12 minutes it brought DDIM-50 from 1.62×
                // the ancestral chain's FID to 1.15× (the ablation in docs/results/runs/).
                objective: ObjectiveConfig {
                    prediction: Prediction::V,
                    ..ObjectiveConfig::ho2020()
                },
                optim: OptimConfig {
                    lr: 2e-3,
                    warmup_steps: 200,
                    grad_clip: Some(1.0),
                    ..OptimConfig::seed_notebook()
                },
                ema: EmaConfig {
                    decay: 0.999,
                    warmup: true,
                },
                // About 30 minutes on two CPU cores.
                epochs: Some(10),
                checkpoint_every: 500,
                sample_every_epochs: 1,
                ..Preset::Seed.config()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip() {
        for preset in Preset::ALL {
            let config = preset.config();
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name()));
            let json = serde_json::to_string(&config).unwrap();
            let back: TrainConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, config);
            assert_eq!(Preset::from_name(preset.name()).unwrap(), preset);
        }
    }

    #[test]
    fn seed_preset_is_the_notebook() {
        let c = Preset::Seed.config();
        assert_eq!(c.batch_size, 128);
        assert_eq!(c.epochs, Some(100));
        assert_eq!(c.optim.lr, 1e-3);
        assert_eq!(c.objective.loss, crate::objective::LossKind::L1);
        assert_eq!(c.schedule, BetaSchedule::seed_notebook());
        assert_eq!(c.sample_every_epochs, 5);
    }

    /// `ddpm-cifar10` against Ho et al. 2020, App. B (CIFAR-10), and the defaults of the official
    /// code's `scripts/run_cifar.py` (hojonathanho/diffusion), which spell out the same values
    /// together with the warm-up and the gradient clip.
    #[test]
    fn ddpm_cifar10_preset_is_the_papers_setup() {
        use crate::objective::LossKind;
        use crate::optim::{LrDecay, OptimizerKind};

        let c = Preset::DdpmCifar10.config();
        // CIFAR-10's 50k training images at their own 32×32, random horizontal flips
        // (`randflip=1`), scaled to [-1, 1].
        assert_eq!(
            c.dataset,
            DatasetSpec::Cifar10 {
                split: Split::Train
            }
        );
        assert_eq!(c.transform.size, None);
        assert_eq!(c.transform.flip_p, 0.5);
        assert!(c.transform.normalize);
        // Batch 128 (`total_bs=128`), 800k steps.
        assert_eq!(c.batch_size, 128);
        assert_eq!(c.max_steps, Some(800_000));
        assert_eq!(c.epochs, None);
        assert_eq!(c.total_steps(50_000 / 128), 800_000);
        // T = 1000, β linear from 1e-4 to 0.02 (§4, `beta_schedule='linear'`).
        assert_eq!(
            c.schedule,
            BetaSchedule::Linear {
                n_steps: 1000,
                start: 1e-4,
                end: 0.02
            }
        );
        // L_simple: the L2 loss on ε (Eq. 14, `model_mean_type='eps'`, `loss_type='mse'`),
        // unweighted.
        assert_eq!(c.objective.prediction, Prediction::Eps);
        assert_eq!(c.objective.loss, LossKind::L2);
        assert_eq!(c.objective.min_snr_gamma, None);
        // Adam at 2e-4 (`lr=2e-4`) with TF's Adam defaults (β = 0.9, 0.999; the code passes
        // ε = 1e-8), no weight decay, 5000 linear warm-up steps (`warmup=5000`), then constant;
        // gradients clipped to global norm 1 (`grad_clip=1.`).
        let o = &c.optim;
        assert_eq!(o.kind, OptimizerKind::Adam);
        assert_eq!((o.lr, o.beta1, o.beta2, o.eps), (2e-4, 0.9, 0.999, 1e-8));
        assert_eq!(o.weight_decay, 0.0);
        assert_eq!(o.warmup_steps, 5000);
        assert_eq!(o.decay, LrDecay::Constant);
        assert_eq!(o.grad_clip, Some(1.0));
        assert!(o.lr_at(0, 800_000) < 2e-4 * 1e-3);
        assert_eq!(o.lr_at(4999, 800_000), 2e-4);
        assert_eq!(o.lr_at(799_999, 800_000), 2e-4);
        // EMA of the weights with decay 0.9999. (`ema.warmup`, min(d, (1 + n)/(10 + n)), is not
        // the paper's: the official code's `make_ema` uses 0.9999 from the second update on.)
        assert_eq!(c.ema.decay, 0.9999);
        // The 35.7M-parameter U-Net: ch 128, ch_mult (1, 2, 2, 2), two residual blocks per
        // level, self-attention at 16×16, dropout 0.1.
        let ModelConfig::Ddpm(m) = &c.model else {
            panic!("ddpm-cifar10 must use the paper's U-Net, got {:?}", c.model);
        };
        assert_eq!((m.in_channels, m.out_channels, m.image_size), (3, 3, 32));
        assert_eq!(m.channels, 128);
        assert_eq!(m.channel_mult, [1, 2, 2, 2]);
        assert_eq!(m.layers_per_block, 2);
        assert_eq!(m.attention_resolutions, [16]);
        assert_eq!(m.dropout, 0.1);
    }
}
