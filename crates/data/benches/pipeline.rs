//! The input pipeline of the seed notebook on CIFAR-10-shaped data: decode records from memory,
//! resize 32→28, random flip, scale to [-1, 1], batches of 128. Throughput is in images.
//!
//! The images are the 20 real CIFAR-10 test images under `shared/data/cifar10/`, repeated to
//! 10,000 records (or random bytes if the file is absent). `normalize_only` is the peer: the
//! same batches without the resize, i.e. little more than the u8→f32 copy.
//!
//! ```text
//! cargo bench -p data --bench pipeline
//! ```
//!
//! With a relative `CARGO_TARGET_DIR`, criterion writes its reports under `crates/data/`, where
//! they are git-ignored.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use data::cifar::{parse_cifar10, CIFAR10_RECORD_LEN};
use data::{Loader, LoaderConfig, TransformConfig};

const FIRST20: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/cifar10/test_batch_first20.bin"
);
const N_RECORDS: usize = 10_000;
const BATCH: usize = 128;

fn records() -> Vec<u8> {
    let real = std::fs::read(FIRST20).unwrap_or_else(|_| {
        // Deterministic filler when the shared data is absent; labels kept in range.
        (0..20 * CIFAR10_RECORD_LEN)
            .map(|i| {
                if i % CIFAR10_RECORD_LEN == 0 {
                    3
                } else {
                    ((i * 2_654_435_761) >> 13) as u8
                }
            })
            .collect()
    });
    real.iter()
        .copied()
        .cycle()
        .take(N_RECORDS * CIFAR10_RECORD_LEN)
        .collect()
}

fn loader(bytes: &[u8], transform: &TransformConfig, n_workers: usize) -> Loader {
    let dataset = parse_cifar10(bytes, Path::new("bench")).unwrap();
    let config = LoaderConfig {
        n_workers,
        ..LoaderConfig::seed_cifar10(0)
    };
    Loader::new(dataset, transform, config).unwrap()
}

fn bench_pipeline(c: &mut Criterion) {
    let bytes = records();
    let mut group = c.benchmark_group("pipeline");

    group.throughput(Throughput::Elements(N_RECORDS as u64));
    group.bench_function("decode_10k_records", |b| {
        b.iter(|| parse_cifar10(black_box(&bytes), Path::new("bench")).unwrap())
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    let batch_bytes = &bytes[..BATCH * CIFAR10_RECORD_LEN];
    group.bench_function("decode_resize_flip_normalize_batch128", |b| {
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            loader(black_box(batch_bytes), &TransformConfig::seed_cifar10(), 0).batch(epoch, 0)
        })
    });
    for (name, transform) in [
        (
            "resize_flip_normalize_batch128",
            TransformConfig::seed_cifar10(),
        ),
        ("normalize_only_batch128", TransformConfig::plain()),
    ] {
        let loader = loader(&bytes, &transform, 0);
        let n_batches = loader.batches_per_epoch();
        group.bench_function(name, |b| {
            let mut step = 0;
            b.iter(|| {
                step += 1;
                loader.batch((step / n_batches) as u64, step % n_batches)
            })
        });
    }

    // The loader as training uses it: a whole epoch of 78 batches, made by background workers.
    let per_epoch = (N_RECORDS / BATCH * BATCH) as u64;
    group.throughput(Throughput::Elements(per_epoch));
    group.sample_size(20);
    for n_workers in [1, 2] {
        let loader = loader(&bytes, &TransformConfig::seed_cifar10(), n_workers);
        group.bench_function(format!("epoch_10k_{n_workers}_workers"), |b| {
            let mut epoch = 0;
            b.iter(|| {
                epoch += 1;
                loader
                    .epoch(epoch)
                    .map(|batch| batch.images.len())
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
