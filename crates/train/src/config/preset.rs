//! The named starting points for `ddpm train --preset`.

use data::folder::FolderConfig;
use data::{DatasetSpec, Split, StreamConfig, TransformConfig};
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
    /// `fashion-mnist` with learned variances (Nichol & Dhariwal 2021, "Improved DDPM"): the
    /// U-Net outputs 2 channels, the v-prediction and v_Σ (Eq. 15), trained on the hybrid loss
    /// L_simple + 0.001 L_vlb (`objective.variance = "learned_range"`); everything else as
    /// `fashion-mnist`, so the two compare at equal settings (FID over all T and over 50
    /// respaced DDPM steps, bits/dim: `docs/training.md`). Not measured yet.
    FashionMnistLearned,
    /// Ho et al. 2020 on LSUN Church 256×256: the 114M U-Net ([`UNetConfig::ho2020_256`]), 1.2M
    /// steps, flips. The recipe the four share, each value cited, is in the source of the private
    /// `Preset::ddpm_256`.
    DdpmChurch256,
    /// Ho et al. 2020 on LSUN Bedroom 256×256: as `ddpm-church-256`, 2.4M steps, no flips.
    DdpmBedroom256,
    /// Ho et al. 2020 on LSUN Cat 256×256: as `ddpm-church-256`, 1.8M steps, flips.
    DdpmCat256,
    /// Ho et al. 2020 on CelebA-HQ 256×256: as `ddpm-church-256`, 0.5M steps, flips.
    DdpmCelebahq256,
}

impl Preset {
    /// Every preset, for listings.
    pub const ALL: [Preset; 8] = [
        Preset::Seed,
        Preset::DdpmCifar10,
        Preset::FashionMnist,
        Preset::FashionMnistLearned,
        Preset::DdpmChurch256,
        Preset::DdpmBedroom256,
        Preset::DdpmCat256,
        Preset::DdpmCelebahq256,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Seed => "seed",
            Preset::DdpmCifar10 => "ddpm-cifar10",
            Preset::FashionMnist => "fashion-mnist",
            Preset::FashionMnistLearned => "fashion-mnist-learned",
            Preset::DdpmChurch256 => "ddpm-church-256",
            Preset::DdpmBedroom256 => "ddpm-bedroom-256",
            Preset::DdpmCat256 => "ddpm-cat-256",
            Preset::DdpmCelebahq256 => "ddpm-celebahq-256",
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
                tensorboard: true,
                max_nonfinite_in_a_row: 20,
                distributed: DistConfig::default(),
                eval_every: 0,
                eval_samples: default_eval_samples(),
                eval_sampler: default_eval_sampler(),
                eval_reference: EvalReference::default(),
                init_from: None,
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
                // About 30 minutes on two CPU cores; the seed preset's EMA.
                epochs: Some(10),
                checkpoint_every: 500,
                sample_every_epochs: 1,
                ..Preset::Seed.config()
            },
            // Steps and flips from App. B; the sample grids come about every 50k steps at the
            // datasets' sizes (CelebA-HQ 30,000 images, Church 126,227, Cat 1,657,266, Bedroom
            // 3,033,042: 469, 1,972, 25,895 and 47,391 batches of 64 per epoch).
            Preset::FashionMnistLearned => Self::fashion_mnist_learned(),
            Preset::DdpmChurch256 => Self::ddpm_256(Self::lsun(), 1_200_000, true, 25),
            Preset::DdpmBedroom256 => Self::ddpm_256(Self::lsun(), 2_400_000, false, 1),
            Preset::DdpmCat256 => Self::ddpm_256(Self::lsun(), 1_800_000, true, 2),
            Preset::DdpmCelebahq256 => Self::ddpm_256(Self::celebahq(), 500_000, true, 100),
        }
    }

    /// `fashion-mnist` with learned variances: twice the output channels (the prediction, then
    /// v_Σ) and `objective.variance = "learned_range"` (the hybrid loss).
    fn fashion_mnist_learned() -> TrainConfig {
        let mut config = Preset::FashionMnist.config();
        if let ModelConfig::Ddpm(unet) = &mut config.model {
            unet.out_channels = 2 * unet.in_channels;
        }
        config.objective.variance = model::VarianceOutput::LearnedRange;
        config
    }

    /// The 256×256 recipe of Ho et al. 2020 (arXiv 2006.11239, App. B, and the official code's
    /// `scripts/run_lsun.py` and `run_celebahq.py`, hojonathanho/diffusion, whose `train`
    /// defaults spell it out): the 114M U-Net (`unet2d16b2c112244`, [`UNetConfig::ho2020_256`],
    /// no dropout: `dropout=0.0`), T = 1000 linear from 1e-4 to 0.02, L_simple (ε, L2), Adam at
    /// 2e-5 (`lr=2e-5`, App. B: "2 × 10⁻⁵ for the 256 × 256 images") with 5000 warm-up steps and
    /// gradients clipped to norm 1 (`warmup=5000`, `grad_clip=1.`), batch 64 (`total_bs=64`), EMA
    /// 0.9999, `max_steps` steps, random horizontal flips when `flip` (App. B: flips "for all
    /// other datasets except LSUN Bedroom"; the docstring of `run_lsun.py` passes `--randflip 0`
    /// for Cat instead, and the paper wins here).
    ///
    /// The data is `dataset` (see [`Preset::lsun`] and [`Preset::celebahq`]), streamed or read
    /// from `--data DIR`.
    fn ddpm_256(
        dataset: DatasetSpec,
        max_steps: u64,
        flip: bool,
        sample_every_epochs: u64,
    ) -> TrainConfig {
        TrainConfig {
            dataset,
            transform: TransformConfig {
                flip_p: if flip { 0.5 } else { 0.0 },
                ..TransformConfig::ho2020()
            },
            batch_size: 64,
            model: ModelConfig::Ddpm(UNetConfig::ho2020_256()),
            optim: OptimConfig {
                lr: 2e-5,
                ..OptimConfig::ho2020()
            },
            max_steps: Some(max_steps),
            sample_every_epochs,
            ..Preset::DdpmCifar10.config()
        }
    }

    /// An LSUN category as LSUN ships it, an LMDB of WebP images (`--data` names the directory
    /// of `data.mdb`), streamed: centre-cropped to the short side and resized to 256² with
    /// Lanczos, close to ProgressiveGAN's `dataset_tool.py create_lsun`, from which the paper's
    /// LSUN TFRecords came (a centre crop, then an antialiased resize).
    fn lsun() -> DatasetSpec {
        DatasetSpec::Lmdb {
            config: StreamConfig::new([256, 256]),
        }
    }

    /// CelebA-HQ at 256², taken as given: a folder of images without classes (`--data DIR`;
    /// images of another size are centre-cropped and resized as the folder kind does).
    fn celebahq() -> DatasetSpec {
        DatasetSpec::Folder {
            config: FolderConfig {
                class_subfolders: false,
                ..FolderConfig::new([256, 256])
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
    fn the_learned_variance_variant_differs_from_fashion_mnist_in_the_variance_only() {
        let (plain, learned) = (
            Preset::FashionMnist.config(),
            Preset::FashionMnistLearned.config(),
        );
        assert_eq!(
            learned.objective.variance,
            model::VarianceOutput::LearnedRange
        );
        assert_eq!(learned.model.out_channels(), 2);
        let mut back = learned.clone();
        back.objective.variance = plain.objective.variance;
        if let ModelConfig::Ddpm(unet) = &mut back.model {
            unet.out_channels = 1;
        }
        assert_eq!(back, plain);
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

    /// The four 256² presets against Ho et al. 2020, App. B, and `scripts/run_lsun.py` /
    /// `run_celebahq.py` of the official code (see [`Preset::ddpm_256`]).
    #[test]
    fn ddpm_256_presets_are_the_papers_setup() {
        use crate::objective::LossKind;
        use crate::optim::{LrDecay, OptimizerKind};

        for (preset, name, steps, flip_p, lsun) in [
            (
                Preset::DdpmChurch256,
                "ddpm-church-256",
                1_200_000,
                0.5,
                true,
            ),
            (
                Preset::DdpmBedroom256,
                "ddpm-bedroom-256",
                2_400_000,
                0.0,
                true,
            ),
            (Preset::DdpmCat256, "ddpm-cat-256", 1_800_000, 0.5, true),
            (
                Preset::DdpmCelebahq256,
                "ddpm-celebahq-256",
                500_000,
                0.5,
                false,
            ),
        ] {
            let c = preset.config();
            assert_eq!(preset.name(), name);
            // LSUN's LMDB or CelebA-HQ's unlabelled folder, 256×256 RGB, centre-cropped; flips
            // for all but LSUN Bedroom.
            let (size, channels, fit) = match &c.dataset {
                DatasetSpec::Lmdb { config } if lsun => (config.size, config.channels, config.fit),
                DatasetSpec::Folder { config } if !lsun => {
                    assert!(!config.class_subfolders, "{name}");
                    (config.size, config.channels, config.fit)
                }
                other => panic!("{name}: unexpected dataset {other:?}"),
            };
            assert_eq!(size, [256, 256], "{name}");
            assert_eq!(channels, 3, "{name}");
            assert_eq!(fit, data::folder::Fit::CenterCrop, "{name}");
            assert_eq!(c.transform.size, None, "{name}");
            assert_eq!(c.transform.flip_p, flip_p, "{name}");
            assert!(c.transform.normalize, "{name}");
            // Batch 64, the paper's step count.
            assert_eq!(c.batch_size, 64, "{name}");
            assert_eq!(c.max_steps, Some(steps), "{name}");
            assert_eq!(c.epochs, None, "{name}");
            // T = 1000 linear, L_simple.
            assert_eq!(
                c.schedule,
                BetaSchedule::Linear {
                    n_steps: 1000,
                    start: 1e-4,
                    end: 0.02
                },
                "{name}"
            );
            assert_eq!(c.objective.prediction, Prediction::Eps, "{name}");
            assert_eq!(c.objective.loss, LossKind::L2, "{name}");
            assert_eq!(c.objective.min_snr_gamma, None, "{name}");
            // Adam at 2e-5, 5000 warm-up steps, then constant; clip 1.
            let o = &c.optim;
            assert_eq!(o.kind, OptimizerKind::Adam, "{name}");
            assert_eq!((o.lr, o.beta1, o.beta2, o.eps), (2e-5, 0.9, 0.999, 1e-8));
            assert_eq!(o.weight_decay, 0.0, "{name}");
            assert_eq!(o.warmup_steps, 5000, "{name}");
            assert_eq!(o.decay, LrDecay::Constant, "{name}");
            assert_eq!(o.grad_clip, Some(1.0), "{name}");
            // EMA 0.9999.
            assert_eq!(c.ema.decay, 0.9999, "{name}");
            // The 114M U-Net: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 resnets per level,
            // attention at 16×16, GroupNorm 32, no dropout, 256×256×3. Its parameter count
            // (113,673,219) is pinned where the network is built: `model`'s
            // `ho2020_256_has_the_released_weights_parameter_count`, and `ddpm model summary
            // --preset` in the cli.
            assert_eq!(
                c.model,
                ModelConfig::Ddpm(UNetConfig::ho2020_256()),
                "{name}"
            );
            let ModelConfig::Ddpm(m) = &c.model else {
                unreachable!()
            };
            assert_eq!((m.in_channels, m.out_channels, m.image_size), (3, 3, 256));
            assert_eq!(m.channels, 128);
            assert_eq!(m.channel_mult, [1, 1, 2, 2, 4, 4]);
            assert_eq!(m.layers_per_block, 2);
            assert_eq!(m.attention_resolutions, [16]);
            assert_eq!(m.norm_num_groups, 32);
            assert_eq!(m.dropout, 0.0);
            assert_eq!(m.num_classes, None);
        }
    }
}
