//! Exact resume for a network with dropout, whose masks come from libtorch's global generator
//! (tch's dropout takes no generator; the trainer reseeds that one per step). Its own test
//! binary, so that no other test in the process draws from the global generator meanwhile.

mod common;
use common::{fresh, metrics, resume, tiny_config, tiny_unet, toy_dataset_of};

use std::path::Path;
use std::sync::atomic::AtomicBool;

use model::ModelConfig;
use tch::Device;
use train::config::TrainConfig;
use train::optim::OptimConfig;
use train::trainer::{MetricsRecord, NoHooks};

fn dropout_config() -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        model: tiny_unet(0.3),
        optim: OptimConfig {
            lr: 3e-3,
            grad_clip: Some(1.0),
            ..OptimConfig::ho2020()
        },
        seed: 5,
        epochs: Some(2),
        checkpoint_every: 3,
        ..tiny_config()
    }
}

/// (loss, grad norm) bits of every step.
fn trajectory(records: &[MetricsRecord]) -> Vec<(u64, u64, u64)> {
    records
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

fn run(config: TrainConfig, dir: &Path) -> Vec<(u64, u64, u64)> {
    let mut trainer = fresh(config, toy_dataset_of(32, 0), dir, Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    trajectory(&metrics(dir))
}

/// One test, not several: tests of one binary run on parallel threads, and two dropout
/// trainers at once would reseed the global generator under each other.
#[test]
fn resume_with_dropout_replays_the_uninterrupted_run_exactly() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let uninterrupted = run(dropout_config(), a.path());
    assert_eq!(uninterrupted.len(), 8);
    // A second run agrees with the first: the masks are a function of the seed and the step,
    // not of how far the global generator had got.
    tch::manual_seed(98);
    assert_eq!(uninterrupted, run(dropout_config(), b.path()));
    // And dropout is active: without it the gradients differ (the losses of the first step
    // agree, since the official initialisation zeroes every residual branch's last layer).
    let mut no_dropout = dropout_config();
    if let ModelConfig::Ddpm(unet) = &mut no_dropout.model {
        unet.dropout = 0.0;
    }
    let c = tempfile::tempdir().unwrap();
    let without = run(no_dropout, c.path());
    assert_ne!(
        uninterrupted[0].2, without[0].2,
        "dropout did not change the gradient"
    );

    let resumed_dir = tempfile::tempdir().unwrap();
    let ckpt = a
        .path()
        .join("checkpoints")
        .join(train::checkpoint::dir_name(3));
    // Something else draws from the global generator before the resumed run.
    tch::manual_seed(99);
    let _ = tch::Tensor::randn([1000], (tch::Kind::Float, Device::Cpu));
    let mut resumed = resume(
        resumed_dir.path(),
        Some(&ckpt),
        None,
        toy_dataset_of(32, 0),
        Device::Cpu,
    )
    .unwrap();
    resumed.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let replayed = trajectory(&metrics(resumed_dir.path()));
    assert_eq!(replayed.len(), 5);
    assert_eq!(&uninterrupted[3..], &replayed[..]);
}
