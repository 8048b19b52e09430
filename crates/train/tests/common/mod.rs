//! What the training tests share: the toy dataset, a tiny configuration and its networks,
//! opening a run, and reading `metrics.jsonl` back.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;

use data::{Dataset, DatasetSpec, Split, TransformConfig};
use model::{ModelConfig, Precision, SimpleUnetConfig, UNetConfig};
use schedule::BetaSchedule;
use tch::{Device, Kind, Tensor};
use train::checkpoint;
use train::config::TrainConfig;
use train::ema::EmaConfig;
use train::objective::ObjectiveConfig;
use train::optim::OptimConfig;
use train::trainer::{MetricsRecord, NoHooks, OpenOptions, Start};
use train::{RunDir, TrainError, Trainer};

/// 64 gray 8×8 images of two kinds (bright top half or bright left half, labelled 0 "top" and
/// 1 "left"): easy to learn.
pub fn toy_dataset() -> Dataset {
    toy_dataset_of(64, 0)
}

/// `n` images of [`toy_dataset`]'s two kinds, each pixel brighter by `ramp` per column (a
/// per-image variation).
pub fn toy_dataset_of(n: u32, ramp: u8) -> Dataset {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        for y in 0..8 {
            for x in 0..8u8 {
                let on = if i % 2 == 0 { y < 4 } else { x < 4 };
                pixels.push(if on { 230 } else { 20 } + (i % 7) as u8 + x * ramp);
            }
        }
        labels.push((i % 2) as u16);
    }
    Dataset::new(pixels, labels, 1, 8, 8, vec!["top".into(), "left".into()]).unwrap()
}

/// A 2-level SimpleUnet of 8 and 16 channels for 8×8 gray images (BatchNorm, whose running
/// statistics are buffers).
pub fn simple_unet() -> ModelConfig {
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

/// The paper's U-Net made tiny: two levels of 8 and 16 channels, attention at 4×4, with
/// `dropout`.
pub fn tiny_unet(dropout: f64) -> ModelConfig {
    ModelConfig::Ddpm(UNetConfig {
        in_channels: 1,
        out_channels: 1,
        image_size: 8,
        channels: 8,
        channel_mult: vec![1, 2],
        layers_per_block: 1,
        attention_resolutions: vec![4],
        dropout,
        norm_num_groups: 4,
        ..UNetConfig::ho2020_cifar10()
    })
}

/// Three epochs of [`simple_unet`] on [`toy_dataset`] in batches of 16, a checkpoint every 4
/// steps, a metrics line every step; the tests change what they test with `..tiny_config()`.
pub fn tiny_config() -> TrainConfig {
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
        grad_accum: 1,
        n_workers: 1,
        schedule: BetaSchedule::Linear {
            n_steps: 50,
            start: 1e-4,
            end: 0.2,
        },
        model: simple_unet(),
        objective: ObjectiveConfig::ho2020(),
        optim: OptimConfig {
            lr: 3e-3,
            grad_clip: Some(1.0),
            ..OptimConfig::seed_notebook()
        },
        ema: EmaConfig {
            decay: 0.99,
            warmup: true,
        },
        precision: Precision::F32,
        seed: 3,
        epochs: Some(3),
        max_steps: None,
        checkpoint_every: 4,
        keep_last: 10,
        sample_every_epochs: 0,
        n_sample_images: 4,
        log_every: 1,
        tensorboard: true,
        max_nonfinite_in_a_row: 3,
        distributed: train::DistConfig::default(),
        eval_every: 0,
        eval_samples: train::config::default_eval_samples(),
        eval_sampler: train::config::default_eval_sampler(),
        eval_reference: train::EvalReference::default(),
        init_from: None,
    }
}

/// `tiny_config` with `model`, 3 steps, Adam at 3e-3 with a clip of 0.05 that binds (so a rank
/// or a micro-batch clipping by its own gradient's norm would show), and a fast EMA.
pub fn clipped_config(model: ModelConfig) -> TrainConfig {
    TrainConfig {
        model,
        optim: OptimConfig {
            lr: 3e-3,
            grad_clip: Some(0.05),
            warmup_steps: 0,
            ..OptimConfig::ho2020()
        },
        ema: EmaConfig {
            decay: 0.9,
            warmup: false,
        },
        seed: 11,
        epochs: None,
        max_steps: Some(3),
        checkpoint_every: 1000,
        ..tiny_config()
    }
}

/// A fresh run of `config` on `dataset` in `dir` on `device`, alone ([`Start::Fresh`]).
pub fn fresh(
    config: TrainConfig,
    dataset: Dataset,
    dir: &Path,
    device: Device,
) -> Result<Trainer, TrainError> {
    Trainer::open(
        RunDir::lock(dir)?,
        Start::Fresh(config),
        dataset,
        OpenOptions::new(device),
    )
}

/// The run in `dir` resumed from `from` (or its newest checkpoint that loads), with `config`
/// (or the saved one), alone ([`Start::Resume`]).
pub fn resume(
    dir: &Path,
    from: Option<&Path>,
    config: Option<TrainConfig>,
    dataset: Dataset,
    device: Device,
) -> Result<Trainer, TrainError> {
    let start = Start::Resume {
        from: from.map(Path::to_path_buf),
        config,
    };
    Trainer::open(RunDir::lock(dir)?, start, dataset, OpenOptions::new(device))
}

/// The lines of `metrics.jsonl` in `run_dir`, of a run without evaluations.
pub fn metrics(run_dir: &Path) -> Vec<MetricsRecord> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The tensors of `file` in the newest checkpoint under `run_dir`, in name order.
pub fn last_checkpoint(run_dir: &Path, file: &str) -> Vec<(String, Tensor)> {
    let ckpt = checkpoint::latest(&run_dir.join(checkpoint::CHECKPOINTS_DIR)).unwrap();
    let mut tensors = checkpoint::read_tensors(&ckpt.join(file)).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// `(max over tensors of ‖a − b‖ / ‖a‖, ‖a − b‖ / ‖a‖ over all values, max |a − b|)`.
pub fn relative_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, f64, f64) {
    let (worst, overall, max_abs, _) = relative_difference_named(a, b);
    (worst, overall, max_abs)
}

/// [`relative_difference`] and the name of the tensor with the largest relative difference.
pub fn relative_difference_named(
    a: &[(String, Tensor)],
    b: &[(String, Tensor)],
) -> (f64, f64, f64, String) {
    assert_eq!(a.len(), b.len());
    let mut worst_name = String::new();
    let (mut worst, mut diff_sq, mut norm_sq, mut max_abs) = (0.0f64, 0.0, 0.0, 0.0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let d = (ta - tb).to_kind(Kind::Double);
        let (dn, an) = (
            d.norm().double_value(&[]),
            ta.to_kind(Kind::Double).norm().double_value(&[]),
        );
        if an > 0.0 && dn / an > worst {
            worst = dn / an;
            worst_name = na.clone();
        }
        diff_sq += dn * dn;
        norm_sq += an * an;
        max_abs = max_abs.max(d.abs().max().double_value(&[]));
    }
    (worst, (diff_sq / norm_sq).sqrt(), max_abs, worst_name)
}

/// Runs `config` to the end, resumes a copy from step 4, and checks that the two agree bit for
/// bit; returns the uninterrupted run's directory.
pub fn assert_resume_is_exact(config: TrainConfig) -> tempfile::TempDir {
    let full = tempfile::tempdir().unwrap();
    let mut trainer = fresh(config, toy_dataset(), full.path(), Device::Cpu).unwrap();
    trainer.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let uninterrupted = metrics(full.path());
    assert_eq!(uninterrupted.len(), 12);

    // Continue from the checkpoint at step 4 (mid-epoch 1) in another directory.
    let resumed_dir = tempfile::tempdir().unwrap();
    let ckpt = full
        .path()
        .join("checkpoints")
        .join(train::checkpoint::dir_name(4));
    let mut resumed = resume(
        resumed_dir.path(),
        Some(&ckpt),
        None,
        toy_dataset(),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(resumed.step(), 4);
    resumed.run(&mut NoHooks, &AtomicBool::new(false)).unwrap();
    let replayed = metrics(resumed_dir.path());
    assert_eq!(replayed.len(), 8);
    for (a, b) in uninterrupted[4..].iter().zip(&replayed) {
        assert_eq!((a.step, a.epoch), (b.step, b.epoch));
        assert_eq!(
            a.loss.to_bits(),
            b.loss.to_bits(),
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert_eq!(
            a.grad_norm.to_bits(),
            b.grad_norm.to_bits(),
            "step {}",
            a.step
        );
        assert_eq!(a.lr, b.lr);
    }
    // And the final weights agree bit for bit, EMA included.
    let last = |dir: &Path, file: &str| {
        let ckpt = train::checkpoint::latest(&dir.join("checkpoints")).unwrap();
        let mut tensors = train::checkpoint::read_tensors(&ckpt.join(file)).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    for file in [
        train::checkpoint::MODEL_FILE,
        train::checkpoint::EMA_FILE,
        train::checkpoint::OPTIMIZER_FILE,
    ] {
        let (uninterrupted, resumed) = (last(full.path(), file), last(resumed_dir.path(), file));
        assert!(!uninterrupted.is_empty(), "{file}: no tensors");
        assert_eq!(uninterrupted.len(), resumed.len(), "{file}: tensor count");
        for ((na, ta), (nb, tb)) in uninterrupted.iter().zip(&resumed) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{file}: {na} differs after resume");
        }
    }
    full
}
