//! Exact resume for a network with dropout, whose masks come from a generator the run owns and
//! reseeds per step, with and without activation checkpointing; and two such runs at once in one
//! process, which do not disturb each other (nothing here draws from libtorch's global
//! generator).

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

/// Two runs with dropout on parallel threads of one process give the trajectories each gives
/// alone: their masks come from generators of their own, not from libtorch's global one.
#[test]
fn two_runs_with_dropout_in_one_process_do_not_disturb_each_other() {
    let other = || TrainConfig {
        seed: 6,
        ..dropout_config()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alone = (run(dropout_config(), a.path()), run(other(), b.path()));
    let (c, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let together = std::thread::scope(|scope| {
        let first = scope.spawn(|| run(dropout_config(), c.path()));
        let second = scope.spawn(|| {
            // Something else in the process draws from the global generator meanwhile.
            tch::manual_seed(3);
            let _ = tch::Tensor::randn([1000], (tch::Kind::Float, Device::Cpu));
            run(other(), d.path())
        });
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(alone, together);
    assert_ne!(alone.0, alone.1);
}

/// Resume is bit-exact with activation checkpointing (and dropout, whose masks the
/// recomputation replays), and checkpointing trains as the plain run does up to rounding.
#[test]
fn resume_with_checkpointing_replays_the_uninterrupted_run_exactly() {
    let mut config = dropout_config();
    config.model.set_gradient_checkpointing(true);
    let a = tempfile::tempdir().unwrap();
    let uninterrupted = run(config, a.path());
    let from = a
        .path()
        .join("checkpoints")
        .join(train::checkpoint::dir_name(3));
    let resumed_dir = tempfile::tempdir().unwrap();
    let mut resumed = resume(
        resumed_dir.path(),
        Some(&from),
        None,
        toy_dataset_of(32, 0),
        Device::Cpu,
    )
    .unwrap();
    resumed.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        &uninterrupted[3..],
        &trajectory(&metrics(resumed_dir.path()))[..]
    );

    let b = tempfile::tempdir().unwrap();
    let plain = run(dropout_config(), b.path());
    for (x, y) in uninterrupted.iter().zip(&plain) {
        let (lx, ly) = (f64::from_bits(x.1), f64::from_bits(y.1));
        assert!(
            (lx - ly).abs() <= 1e-5 * ly.abs(),
            "step {}: loss {lx} vs {ly}",
            x.0
        );
    }
}
