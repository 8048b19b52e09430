//! Exact resume for a network with dropout, whose masks come from libtorch's global generator
//! (tch's dropout takes no generator; the trainer reseeds that one per step). Its own test
//! binary, so that no other test in the process draws from the global generator meanwhile.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use data::{Dataset, DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, Precision, UNetConfig};
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
    for i in 0..32u32 {
        for y in 0..8 {
            for x in 0..8 {
                let on = if i % 2 == 0 { y < 4 } else { x < 4 };
                pixels.push(if on { 230 } else { 20 } + (i % 7) as u8);
            }
        }
    }
    Dataset::new(pixels, vec![0; 32], 1, 8, 8, vec!["toy".into()]).unwrap()
}

fn dropout_config() -> TrainConfig {
    TrainConfig {
        dataset: DatasetSpec::FashionMnist {
            split: Split::Train,
        },
        transform: TransformConfig {
            size: None,
            flip_p: 0.5,
            normalize: true,
        },
        batch_size: 8,
        n_workers: 1,
        schedule: BetaSchedule::Linear {
            n_steps: 50,
            start: 1e-4,
            end: 0.2,
        },
        model: ModelConfig::Ddpm(UNetConfig {
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
        }),
        objective: ObjectiveConfig::ho2020(),
        optim: OptimConfig {
            lr: 3e-3,
            grad_clip: Some(1.0),
            ..OptimConfig::ho2020()
        },
        ema: EmaConfig {
            decay: 0.99,
            warmup: true,
        },
        precision: Precision::F32,
        distributed: train::distributed::DistConfig::default(),
        eval_every: 0,
        eval_samples: train::config::default_eval_samples(),
        eval_sampler: train::config::default_eval_sampler(),
        seed: 5,
        epochs: Some(2),
        max_steps: None,
        checkpoint_every: 3,
        keep_last: 10,
        sample_every_epochs: 0,
        n_sample_images: 4,
        log_every: 1,
        max_nonfinite_in_a_row: 3,
    }
}

fn metrics(run_dir: &Path) -> Vec<MetricsRecord> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (loss, grad norm) bits of every step.
fn trajectory(records: &[MetricsRecord]) -> Vec<(u64, u64, u64)> {
    records
        .iter()
        .map(|r| (r.step, r.loss.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

fn run(config: TrainConfig, dir: &Path) -> Vec<(u64, u64, u64)> {
    let mut trainer = Trainer::new(config, toy_dataset(), dir, Device::Cpu).unwrap();
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
    let mut resumed = Trainer::resume(
        resumed_dir.path(),
        Some(&ckpt),
        None,
        toy_dataset(),
        Device::Cpu,
    )
    .unwrap();
    resumed.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let replayed = trajectory(&metrics(resumed_dir.path()));
    assert_eq!(replayed.len(), 5);
    assert_eq!(&uninterrupted[3..], &replayed[..]);
}
