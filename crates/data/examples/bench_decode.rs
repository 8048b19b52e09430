//! Decode, centre-crop and resize throughput of encoded images, the work of a streamed
//! dataset's loader per record (`scripts/bench/decode.sh` runs it beside
//! `scripts/bench/decode_peer.py`, Pillow doing the same, with the same number of threads).
//!
//! Usage: `bench_decode DIR SIZE THREADS SECONDS` decodes every file of DIR (its extension says
//! nothing: the content decides), crops the centre to the short side and resizes to SIZE² with
//! Pillow's antialiased Lanczos (`data::stream::fit_lanczos`), over and over on THREADS threads
//! for about SECONDS, and prints one JSON line: images per second in all and per thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use data::folder::Fit;
use data::images::decode_image_bytes;
use data::stream::fit_lanczos;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(
        args.len(),
        5,
        "usage: bench_decode DIR SIZE THREADS SECONDS"
    );
    let dir = PathBuf::from(&args[1]);
    let size: usize = args[2].parse().expect("SIZE");
    let threads: usize = args[3].parse().expect("THREADS");
    let seconds: f64 = args[4].parse().expect("SECONDS");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("DIR")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let encoded: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("file"))
        .collect();
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (encoded, done) = (&encoded, &done);
            scope.spawn(move || {
                let mut i = t;
                while started.elapsed() < budget {
                    let bytes = &encoded[i % encoded.len()];
                    let (chw, in_size) = decode_image_bytes(bytes, 3).expect("decodes");
                    let out = fit_lanczos(&chw, 3, in_size, [size, size], Fit::CenterCrop)
                        .expect("resizes");
                    std::hint::black_box(out);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += threads;
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    println!(
        "{{\"impl\": \"rust\", \"dir\": {:?}, \"size\": {size}, \"threads\": {threads}, \"images\": {n}, \"seconds\": {elapsed:.3}, \"images_per_s\": {rate:.2}, \"per_thread\": {:.2}}}",
        dir.display().to_string(),
        rate / threads as f64
    );
}
