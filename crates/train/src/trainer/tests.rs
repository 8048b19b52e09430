//! Unit tests of the trainer that reach into its private state: the step's draws, label
//! dropout and the evaluation samples of a class-conditional run.

use super::*;
use crate::ema::EmaConfig;
use crate::objective::ObjectiveConfig;
use crate::optim::OptimConfig;
use data::{Batch, Dataset};
use data::{DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, SimpleUnetConfig};
use sample::SamplerConfig;
use schedule::BetaSchedule;

/// A fresh run of `config` on `dataset` in `dir` (locked), on the CPU.
fn fresh(config: TrainConfig, dataset: Dataset, dir: &Path) -> Result<Trainer, TrainError> {
    let (run, options) = (RunDir::lock(dir)?, OpenOptions::new(Device::Cpu));
    Trainer::open(run, Start::Fresh(config), dataset, options)
}

/// 32 gray 8×8 images in 3 classes.
fn labelled(n_classes: usize) -> Dataset {
    let pixels = (0..32 * 64).map(|i| (i * 7 % 251) as u8).collect();
    let labels = (0..32u16).map(|i| i % n_classes as u16).collect();
    let names = (0..n_classes).map(|k| format!("class {k}")).collect();
    Dataset::new(pixels, labels, 1, 8, 8, names).unwrap()
}

fn config(num_classes: Option<i64>, p_uncond: f64) -> TrainConfig {
    TrainConfig {
        dataset: DatasetSpec::FashionMnist {
            split: Split::Train,
        },
        transform: TransformConfig {
            size: None,
            flip_p: 0.0,
            normalize: true,
        },
        batch_size: 16,
        grad_accum: 1,
        n_workers: 1,
        schedule: BetaSchedule::Linear {
            n_steps: 50,
            start: 1e-4,
            end: 0.2,
        },
        model: ModelConfig::Simple(SimpleUnetConfig {
            in_channels: 1,
            out_channels: 1,
            image_size: 8,
            down_channels: vec![8, 16],
            up_channels: vec![16, 8],
            time_emb_dim: 16,
            num_classes,
            ..SimpleUnetConfig::seed_cifar10()
        }),
        objective: ObjectiveConfig {
            p_uncond,
            ..ObjectiveConfig::ho2020()
        },
        optim: OptimConfig::seed_notebook(),
        ema: EmaConfig {
            decay: 0.9,
            warmup: true,
        },
        precision: model::Precision::F32,
        seed: 5,
        epochs: None,
        max_steps: Some(10),
        checkpoint_every: 100,
        keep_last: 1,
        sample_every_epochs: 0,
        n_sample_images: 4,
        log_every: 1,
        tensorboard: true,
        max_nonfinite_in_a_row: 3,
        distributed: crate::DistConfig::default(),
        eval_every: 0,
        eval_samples: crate::config::default_eval_samples(),
        eval_sampler: crate::config::default_eval_sampler(),
        eval_reference: crate::config::EvalReference::default(),
        init_from: None,
    }
}

/// The draws of `step` for `batch`, as `Trainer::step_with` makes them.
fn draws(trainer: &mut Trainer, step: u64, batch: &Batch) -> (Tensor, Tensor, Option<Tensor>) {
    trainer
        .gen
        .set_seed(step_seed(trainer.config.seed, step) as u64);
    let shape: Vec<i64> = batch.shape.iter().map(|&d| d as i64).collect();
    let x_0 = Tensor::from_slice(&batch.images).view(shape.as_slice());
    let labels = trainer
        .config
        .model
        .num_classes()
        .map(|_| Tensor::from_slice(&batch.labels));
    trainer.draw_step(&x_0, labels.as_ref()).unwrap()
}

/// Label dropout replaces labels by the null label at the configured rate, from the run's
/// generator: the same step draws the same drops (resume-exact), a kept label is the
/// dataset's, and t and ε are the draws of the same run without classes.
#[test]
fn labels_are_dropped_at_the_configured_rate_reproducibly() {
    let p_uncond = 0.25;
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = fresh(
        config(Some(3), p_uncond),
        labelled(3),
        &dir.path().join("cond"),
    )
    .unwrap();
    let mut plain = fresh(
        config(None, p_uncond),
        labelled(3),
        &dir.path().join("plain"),
    )
    .unwrap();
    let batch = trainer.loader.batch(0, 0);
    let (n_steps, mut dropped, mut total) = (400u64, 0i64, 0i64);
    for step in 0..n_steps {
        let (t, noise, labels) = draws(&mut trainer, step, &batch);
        let labels = Vec::<i64>::try_from(labels.expect("labels")).unwrap();
        for (&seen, &given) in labels.iter().zip(&batch.labels) {
            assert!(seen == 3 || seen == given, "{seen} for label {given}");
        }
        dropped += labels.iter().filter(|&&l| l == 3).count() as i64;
        total += labels.len() as i64;
        if step < 3 {
            let (t_again, _, labels_again) = draws(&mut trainer, step, &batch);
            assert!(t_again.equal(&t));
            assert_eq!(Vec::<i64>::try_from(labels_again.unwrap()).unwrap(), labels);
            let (t_plain, noise_plain, none) = draws(&mut plain, step, &batch);
            assert!(none.is_none());
            assert!(t_plain.equal(&t) && noise_plain.equal(&noise));
        }
    }
    let rate = dropped as f64 / total as f64;
    let sigma = (p_uncond * (1.0 - p_uncond) / total as f64).sqrt();
    println!("label dropout: {dropped} of {total} labels, rate {rate:.4} (p_uncond {p_uncond}, sigma {sigma:.4})");
    assert!((rate - p_uncond).abs() < 4.0 * sigma, "rate {rate}");
    // p_uncond = 0 keeps every label, 1 drops them all.
    for (p, expect_null) in [(0.0, false), (1.0, true)] {
        let mut t = fresh(
            config(Some(3), p),
            labelled(3),
            &dir.path().join(format!("p{p}")),
        )
        .unwrap();
        let labels = Vec::<i64>::try_from(draws(&mut t, 0, &batch).2.unwrap()).unwrap();
        if expect_null {
            assert!(labels.iter().all(|&l| l == 3), "{labels:?}");
        } else {
            assert_eq!(labels, batch.labels);
        }
    }
}

/// FID in the loop samples a class-conditional run class-balanced: the request carries one
/// label per image, so it passes the sampler's checks and differs from null-label samples.
#[test]
fn evaluation_samples_of_a_class_conditional_run_are_class_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Some(3), 0.1);
    cfg.eval_samples = 6;
    cfg.eval_sampler = SamplerConfig::Ddim {
        steps: 2,
        eta: 0.0,
        spacing: schedule::TimestepSpacing::Leading,
        timesteps: None,
    };
    let mut trainer = fresh(cfg, labelled(3), dir.path()).unwrap();
    // Ordinary weights for the near-zero layers, so that labels change the output.
    for (name, mut var) in trainer.ema_vs.variables() {
        if name.ends_with("output.weight") || name.ends_with("class_embedding.weight") {
            let _ = tch::no_grad(|| var.normal_(0.0, 1.0));
        }
    }
    let balanced = trainer.draw_eval_samples().unwrap();
    assert_eq!(balanced.size(), [6, 1, 8, 8]);
    trainer.config.model.set_num_classes(None);
    let ema = std::mem::replace(&mut trainer.ema_model, Box::new(NullLabels(None)));
    trainer.ema_model = Box::new(NullLabels(Some(ema)));
    let nulls = trainer.draw_eval_samples().unwrap();
    assert!(!balanced.equal(&nulls));
}

/// A class-conditional network seen without its classes (it samples its null label).
#[derive(Debug)]
struct NullLabels(Option<Box<dyn Denoiser>>);

impl Denoiser for NullLabels {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor {
        self.0.as_ref().unwrap().forward_t(xs, timesteps, train)
    }
}

#[test]
fn a_class_conditional_run_refuses_datasets_without_fitting_labels_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let unlabelled = Dataset::new(vec![0; 32 * 64], vec![0; 32], 1, 8, 8, vec![]).unwrap();
    let err = fresh(config(Some(3), 0.1), unlabelled, dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("fashion-mnist dataset has none"), "{err}");
    let err = fresh(config(Some(2), 0.1), labelled(3), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fashion-mnist dataset has labels up to 2")
            && err.contains("model.num_classes is 2"),
        "{err}"
    );
    // Nothing was written by the refused runs.
    assert!(!dir.path().join("config.json").exists());
}
