//! The training thread's stall per checkpoint of the 256² presets' U-Net
//! (`UNetConfig::ho2020_256`, `ddpm-church-256`: 114M parameters, so 1.8 GB of weights, EMA and
//! Adam moments), written as the loop wrote it before (`sync_write`: [`checkpoint::save`] on the
//! training thread) and as it writes it now (`async_stall`: the copy to host memory,
//! [`CheckpointContents::to_host`], and the hand-over to the writer thread,
//! [`CheckpointWriter::start`]; the write itself then runs beside training and is not timed).
//! Each async iteration first waits, untimed, for the previous write, so every stall is measured
//! without a write in flight.
//!
//! ```text
//! DDPM_BENCH_DIR=/scratch/dir cargo bench -p train --bench checkpoint
//! ```
//!
//! Run as a smoke test (`cargo test --benches`), it times the notebook's SimpleUnet instead. It
//! writes about 4 GB at a time under `DDPM_BENCH_DIR` (default: the system's temporary
//! folder) and deletes it at the end. `DDPM_BENCH_DEVICE=cuda` puts the state on the GPU (the
//! copy then goes to pinned memory with one synchronisation).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use model::{ModelConfig, SimpleUnetConfig, UNetConfig};
use tch::nn::VarStore;
use tch::{Device, Tensor};
use train::checkpoint::{self, CheckpointContents, CheckpointState};
use train::writer::CheckpointWriter;

fn device() -> Device {
    match std::env::var("DDPM_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn state(step: u64) -> CheckpointState {
    CheckpointState {
        format_version: checkpoint::FORMAT_VERSION,
        step,
        epoch: 0,
        batch_in_epoch: step,
        seed: 0,
        ema_updates: step,
        skipped_steps: 0,
        config: serde_json::json!({}),
        world_size: 1,
        class_names: Vec::new(),
        loss_scale: None,
        digests: Default::default(),
        timestep_history: None,
    }
}

/// The checkpoint of `state`: the two stores and the moments, without copies.
fn contents<'a>(
    state: &'a CheckpointState,
    (model, ema, optimizer): (&'a VarStore, &'a VarStore, &[(String, Tensor)]),
) -> CheckpointContents<'a> {
    CheckpointContents {
        state,
        model,
        ema,
        optimizer: optimizer
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
    }
}

fn benches(c: &mut Criterion) {
    let threads = std::env::var("DDPM_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let device = device();
    // `cargo test --benches` (`cargo xtask bench --quick`) runs each bench once as a smoke test:
    // the notebook's small network then, not 1.8 GB.
    let full = std::env::args().any(|a| a == "--bench");
    let config = match full {
        true => ModelConfig::Ddpm(UNetConfig::ho2020_256()),
        false => ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
    };
    let (model_vs, ema_vs) = (VarStore::new(device), VarStore::new(device));
    let _net = config.build(&model_vs.root()).unwrap();
    let _ema = config.build(&ema_vs.root()).unwrap();
    // Adam's two moments per parameter, with values (pages that were never written would make
    // the copy look cheaper than it is).
    let optimizer: Vec<(String, Tensor)> = checkpoint::named_tensors(&model_vs)
        .into_iter()
        .flat_map(|(n, t)| {
            let m = tch::no_grad(|| &t * 0.1);
            let v = tch::no_grad(|| &t * &t);
            [(format!("exp_avg.{n}"), m), (format!("exp_avg_sq.{n}"), v)]
        })
        .collect();
    let base = std::env::var_os("DDPM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(base).unwrap();
    let stores = (&model_vs, &ema_vs, optimizer.as_slice());
    let mut group = c.benchmark_group("checkpoint_stall/ho2020_256");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    let sync_root = scratch.path().join("sync");
    group.bench_function("sync_write", |b| {
        b.iter_custom(|iters| {
            let mut stalled = Duration::ZERO;
            for i in 0..iters {
                let state = state(i + 1);
                let start = Instant::now();
                checkpoint::save(&sync_root, &contents(&state, stores), 1).unwrap();
                stalled += start.elapsed();
            }
            stalled
        })
    });
    let async_root = scratch.path().join("async");
    let mut writer = CheckpointWriter::default();
    group.bench_function("async_stall", |b| {
        b.iter_custom(|iters| {
            let mut stalled = Duration::ZERO;
            for i in 0..iters {
                writer.wait().unwrap();
                let state = state(i + 1);
                let start = Instant::now();
                let snapshot = contents(&state, stores).to_host();
                writer.start(async_root.clone(), snapshot, 1).unwrap();
                stalled += start.elapsed();
            }
            writer.wait().unwrap();
            stalled
        })
    });
    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
