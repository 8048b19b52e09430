//! Training steps as a CUDA graph against eager steps (feature `cuda-tests`, a CUDA device).

#![cfg(feature = "cuda-tests")]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use data::{Dataset, DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, Precision, SimpleUnetConfig, UNetConfig};
use schedule::BetaSchedule;
use tch::Device;
use train::config::TrainConfig;
use train::ema::EmaConfig;
use train::objective::ObjectiveConfig;
use train::optim::OptimConfig;
use train::trainer::{MetricsRecord, NoHooks};
use train::Trainer;

fn toy_dataset() -> Dataset {
    let mut pixels = Vec::new();
    for i in 0..64u32 {
        for y in 0..8 {
            for x in 0..8 {
                let on = if i % 2 == 0 { y < 4 } else { x < 4 };
                pixels.push(if on { 230 } else { 20 } + (i % 7) as u8);
            }
        }
    }
    Dataset::new(pixels, vec![0; 64], 1, 8, 8, vec!["toy".into()]).unwrap()
}

fn config(model: ModelConfig, precision: Precision) -> TrainConfig {
    TrainConfig {
        dataset: DatasetSpec::FashionMnist {
            split: Split::Train,
        },
        transform: TransformConfig {
            size: None,
            flip_p: 0.5,
            normalize: true,
        },
        batch_size: 16,
        n_workers: 1,
        schedule: BetaSchedule::Linear {
            n_steps: 50,
            start: 1e-4,
            end: 0.2,
        },
        model,
        distributed: train::distributed::DistConfig::default(),
        eval_every: 0,
        eval_samples: train::config::default_eval_samples(),
        eval_sampler: train::config::default_eval_sampler(),
        objective: ObjectiveConfig::ho2020(),
        optim: OptimConfig {
            lr: 3e-3,
            warmup_steps: 4,
            grad_clip: Some(1.0),
            ..OptimConfig::seed_notebook()
        },
        ema: EmaConfig {
            decay: 0.99,
            warmup: true,
        },
        precision,
        seed: 3,
        epochs: Some(3),
        max_steps: None,
        checkpoint_every: 5,
        keep_last: 10,
        sample_every_epochs: 0,
        n_sample_images: 4,
        log_every: 1,
        max_nonfinite_in_a_row: 3,
    }
}

fn simple() -> ModelConfig {
    ModelConfig::Simple(SimpleUnetConfig {
        in_channels: 1,
        out_channels: 1,
        image_size: 8,
        down_channels: vec![8, 16],
        up_channels: vec![16, 8],
        time_emb_dim: 16,
        ..SimpleUnetConfig::seed_cifar10()
    })
}

fn unet_with_dropout() -> ModelConfig {
    ModelConfig::Ddpm(UNetConfig {
        in_channels: 1,
        out_channels: 1,
        image_size: 8,
        channels: 8,
        channel_mult: vec![1, 2],
        layers_per_block: 1,
        attention_resolutions: vec![4],
        dropout: 0.3,
        norm_num_groups: 4,
        ..UNetConfig::ho2020_cifar10()
    })
}

fn run(config: TrainConfig, dir: &Path, graph: bool) -> Vec<MetricsRecord> {
    let mut trainer = Trainer::new(config, toy_dataset(), dir, Device::Cuda(0)).unwrap();
    if graph {
        trainer.enable_cuda_graph().unwrap();
        assert!(trainer.uses_cuda_graph());
    }
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 12 steps: 3 eager warm-up steps, one captured, 8 replayed. Every step's loss, gradient norm
/// and learning rate match the eager run's (up to cuDNN's algorithm choices), with BatchNorm
/// buffers (SimpleUnet), dropout from the global generator (U-Net) and bf16 autocast.
#[test]
fn graphed_steps_compute_the_eager_steps() {
    tch::Cuda::cudnn_set_benchmark(false);
    for (model, precision) in [
        (simple(), Precision::F32),
        (unet_with_dropout(), Precision::F32),
        (unet_with_dropout(), Precision::Bf16),
    ] {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let eager = run(config(model.clone(), precision), a.path(), false);
        let graphed = run(config(model, precision), b.path(), true);
        assert_eq!(eager.len(), 12);
        assert_eq!(graphed.len(), 12);
        for (e, g) in eager.iter().zip(&graphed) {
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(1e-3);
            assert!(
                close(e.loss, g.loss),
                "{precision:?} step {}: {} vs {}",
                e.step,
                e.loss,
                g.loss
            );
            assert!(
                close(e.grad_norm, g.grad_norm),
                "{precision:?} step {}",
                e.step
            );
            assert_eq!(e.lr, g.lr, "step {}", e.step);
            assert_eq!(g.skipped_steps, 0);
        }
    }
}
