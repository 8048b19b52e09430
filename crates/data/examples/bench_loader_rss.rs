//! The loader's resident memory while it streams a whole epoch of an LMDB (the check:
//! 50,000 synthetic 256² records under 500 MB). `scripts/bench/loader_rss.sh` writes the
//! database and runs this.
//!
//! Usage: `bench_loader_rss LMDB_DIR SIZE BATCH WORKERS` reads one epoch with the training
//! loader (shuffled, flips, [-1, 1]) and prints one JSON line: records, batches, seconds, the
//! peak resident set (`VmHWM`), and the largest anonymous and file-backed parts seen between
//! batches, in MB.

use std::path::Path;
use std::time::Instant;

use data::{Loader, LoaderConfig, StreamConfig, StreamDataset, TransformConfig};

/// `(VmHWM, RssAnon, RssFile)` in kB from /proc/self/status.
fn memory() -> [u64; 3] {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    [field("VmHWM:"), field("RssAnon:"), field("RssFile:")]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        5,
        "usage: bench_loader_rss LMDB_DIR SIZE BATCH WORKERS"
    );
    let size: usize = args[2].parse().expect("SIZE");
    let batch_size: usize = args[3].parse().expect("BATCH");
    let n_workers: usize = args[4].parse().expect("WORKERS");
    let started = Instant::now();
    let stream = StreamDataset::open_lmdb(Path::new(&args[1]), StreamConfig::new([size, size]))
        .expect("opens the LMDB");
    let n_records = stream.len();
    let after_open = memory();
    let config = LoaderConfig {
        batch_size,
        shuffle: true,
        drop_last: true,
        seed: 0,
        n_workers,
        prefetch: 2 * n_workers,
    };
    let transform = TransformConfig {
        size: None,
        flip_p: 0.5,
        normalize: true,
    };
    let loader = Loader::new(stream, &transform, config).expect("a loader");
    let (mut max_anon, mut max_file, mut n_batches) = (0, 0, 0);
    for batch in loader.epoch(0) {
        std::hint::black_box(&batch);
        let [_, anon, file] = memory();
        (max_anon, max_file) = (max_anon.max(anon), max_file.max(file));
        n_batches += 1;
    }
    let [hwm, _, _] = memory();
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "{{\"records\": {n_records}, \"batches\": {n_batches}, \"batch\": {batch_size}, \"workers\": {n_workers}, \"seconds\": {:.1}, \"peak_rss_mb\": {:.1}, \"max_anon_mb\": {:.1}, \"max_file_mb\": {:.1}, \"rss_after_open_mb\": {:.1}}}",
        started.elapsed().as_secs_f64(),
        mb(hwm),
        mb(max_anon),
        mb(max_file),
        mb(after_open[1] + after_open[2])
    );
}
