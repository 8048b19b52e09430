//! The full training step against the bare model step, in one run, so their ratio is measured
//! on the same machine state (the loop's overhead target: ≤ 1.05×).
//!
//! - `bare`: forward (train mode), the loss, backward, and the same Adam update, on one batch
//!   already on the device — what `benches/unet.rs` times.
//! - `trainer`: `Trainer::train_step` on batches from the loader (background workers), with the
//!   per-step reseeding, t and ε draws, the NaN guard's one host read, and the EMA update.
//!
//! ```text
//! cargo bench -p train --bench step                         # fashion-mnist preset's model
//! DDPM_BENCH_PRESET=seed cargo bench -p train --bench step  # the notebook's model, batch 128
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use data::Dataset;
use tch::{nn::VarStore, Device, Kind, Tensor};
use train::objective::training_loss;
use train::optim::Adam;
use train::{OpenOptions, Preset, RunDir, Start, TrainConfig, Trainer};

#[path = "support/random_dataset.rs"]
mod random_dataset;
use random_dataset::random_dataset;

fn config() -> TrainConfig {
    let name = std::env::var("DDPM_BENCH_PRESET").unwrap_or_else(|_| "fashion-mnist".into());
    let mut config = Preset::from_name(&name)
        .expect("DDPM_BENCH_PRESET")
        .config();
    config.precision = model::Precision::F32;
    config
}

/// The same random images every time.
fn seeded_dataset(config: &TrainConfig) -> Dataset {
    tch::manual_seed(0);
    random_dataset(config)
}

fn bench(c: &mut Criterion) {
    if let Ok(n) = std::env::var("DDPM_BENCH_THREADS") {
        tch::set_num_threads(n.parse().expect("DDPM_BENCH_THREADS"));
    }
    let config = config();
    let device = Device::Cpu;
    let mut group = c.benchmark_group("train_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));

    // The bare step: everything but data, reseeding, the host read and EMA.
    let schedule = schedule::Schedule::new(&config.schedule).unwrap();
    let sched = schedule::tensor::ScheduleTensors::new(&schedule, device);
    let vs = VarStore::new(device);
    let net = config.model.build(&vs.root()).unwrap();
    let mut adam = Adam::new(&vs, config.optim.clone());
    let (ch, size) = (config.model.in_channels(), config.model.image_size());
    let b = config.batch_size as i64;
    let x_0 = Tensor::rand([b, ch, size, size], (Kind::Float, device)) * 2.0 - 1.0;
    let noise = Tensor::randn_like(&x_0);
    let t = Tensor::randint(schedule.n_steps() as i64, [b], (Kind::Int64, device));
    group.bench_function("bare", |bencher| {
        bencher.iter(|| {
            adam.zero_grad();
            let loss = training_loss(
                net.as_ref(),
                &sched,
                &config.objective,
                &x_0,
                &noise,
                &t,
                None,
            );
            loss.backward();
            adam.step(config.optim.lr);
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::open(
        RunDir::lock(dir.path()).unwrap(),
        Start::Fresh(config.clone()),
        seeded_dataset(&config),
        OpenOptions::new(device),
    )
    .unwrap();
    // A second loader like the trainer's: its workers make batches while the steps run, as in
    // `Trainer::run`.
    let loader = data::Loader::new(
        seeded_dataset(&config),
        &config.transform,
        trainer.loader().config().clone(),
    )
    .unwrap();
    let mut source = (0u64..).flat_map(|e| loader.epoch(e));
    group.bench_function("trainer", |bencher| {
        bencher.iter(|| {
            let batch = source.next().expect("endless epochs");
            trainer.train_step(&batch).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
