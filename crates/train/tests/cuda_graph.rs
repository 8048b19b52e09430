//! Training steps as a CUDA graph against eager steps (feature `cuda-tests`, a CUDA device).

#![cfg(feature = "cuda-tests")]

mod common;
use common::{fresh, simple_unet, tiny_config, tiny_unet, toy_dataset};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use model::{ModelConfig, Precision};
use tch::Device;
use train::config::TrainConfig;
use train::optim::OptimConfig;
use train::trainer::{MetricsRecord, NoHooks};

fn config(model: ModelConfig, precision: Precision) -> TrainConfig {
    TrainConfig {
        model,
        optim: OptimConfig {
            lr: 3e-3,
            warmup_steps: 4,
            grad_clip: Some(1.0),
            ..OptimConfig::seed_notebook()
        },
        precision,
        checkpoint_every: 5,
        ..tiny_config()
    }
}

fn run(config: TrainConfig, dir: &Path, graph: bool) -> Vec<MetricsRecord> {
    let mut trainer = fresh(config, toy_dataset(), dir, Device::Cuda(0)).unwrap();
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
        (simple_unet(), Precision::F32),
        (tiny_unet(0.3), Precision::F32),
        (tiny_unet(0.3), Precision::Bf16),
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
