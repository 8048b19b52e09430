//! Helpers for the end-to-end tests: find the `ddpm` binary that cargo built beside us and run it.
//!
//! Also the doctest host of the documentation: the Rust snippets of `README.md` and `docs/*.md`
//! compile (and, unless marked `no_run`, run) under `cargo test -p e2e --doc`, so a snippet that
//! no longer compiles against the crates fails a test. `tests/docs.rs` checks that every
//! markdown file with Rust in it is listed here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `ddpm` binary of the same profile as this test (`target/<profile>/ddpm`).
///
/// `cargo xtask test` builds it before the tests; a plain `cargo test --workspace` builds it too,
/// because the `cli` package has integration tests of its own.
pub fn ddpm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/ddpm
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("ddpm");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cli` (cargo xtask test does it)",
        bin.display()
    );
    bin
}

/// A `Command` for `ddpm` with the given arguments.
pub fn ddpm(args: &[&str]) -> Command {
    let mut cmd = Command::new(ddpm_bin());
    cmd.args(args);
    cmd
}

/// Runs `ddpm` and returns its output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    ddpm(args).output().expect("cannot start ddpm")
}

/// The repository's `shared/` folder (a sibling of the checkout), holding small real data.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Writes a CIFAR-10 binary file `synthetic_batch.bin` in `dir` with `n` records of smooth
/// images (labels `i % 10`) and returns its path.
pub fn synthetic_cifar(dir: &Path, n: usize) -> PathBuf {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        for c in 0..3 {
            for p in 0..1024 {
                bytes.push(((p / 32 + p % 32) * (c + 1) * 3 + i * 17) as u8);
            }
        }
    }
    let path = dir.join("synthetic_batch.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The model override (`--set model=…`) that makes the seed preset tiny: a 2-level SimpleUnet.
pub const TINY_MODEL: &str = r#"{"arch":"simple","in_channels":3,"out_channels":3,"image_size":28,"down_channels":[8,16],"up_channels":[16,8],"time_emb_dim":16,"batch_norm_eps":0.001,"batch_norm_momentum":0.01}"#;

/// Trains the seed preset, made tiny (the 2-level SimpleUnet, T = 50, 2 steps of batch 8 on
/// 16 synthetic CIFAR images), into `dir/run`, and returns the run directory.
pub fn train_tiny(dir: &Path) -> PathBuf {
    train_tiny_with(dir, 16, &[])
}

/// [`train_tiny`] made class-conditional (`--class-cond`: the 10 CIFAR-10 classes of 20
/// synthetic images, two of each).
pub fn train_tiny_class_cond(dir: &Path) -> PathBuf {
    train_tiny_with(dir, 20, &["--class-cond"])
}

/// [`train_tiny`] on `n_images` synthetic images, with `extra` arguments.
pub fn train_tiny_with(dir: &Path, n_images: usize, extra: &[&str]) -> PathBuf {
    let data = synthetic_cifar(dir, n_images);
    let run_dir = dir.join("run");
    let model = format!("model={TINY_MODEL}");
    let mut args = vec![
        "train",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data",
        data.to_str().expect("UTF-8 temporary paths"),
        "--run-dir",
        run_dir.to_str().expect("UTF-8 temporary paths"),
        "--max-steps",
        "2",
        "--set",
        "batch_size=8",
        "--set",
        &model,
        "--set",
        r#"schedule={"kind":"linear","n_steps":50,"start":0.0001,"end":0.2}"#,
        "--set",
        "sample_every_epochs=0",
        "--set",
        "n_workers=1",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(
        out.status.success(),
        "ddpm train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_dir
}

/// Overwrites the first value of the tensor `name` in a safetensors file with NaN (the tensor
/// must be float32); `None` picks the first float32 tensor in name order. Returns the tensor's
/// name. Written against the file format (an 8-byte header length, a JSON header, the data), so
/// the tests need no libtorch.
pub fn poison_safetensors(path: &Path, name: Option<&str>) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut names: Vec<&String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, _)| k)
        .collect();
    names.sort();
    let name = match name {
        Some(n) => names
            .into_iter()
            .find(|k| *k == n)
            .expect("a float32 tensor of that name"),
        None => names[0],
    }
    .clone();
    let begin = header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + header_len + begin;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
    name
}

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The markdown documentation, one item per file, each documented by the file itself so that
/// rustdoc tests its Rust snippets. Compiled only for doctests.
#[cfg(doctest)]
pub mod markdown {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../docs/setup.md")]
    pub struct Setup;
    #[doc = include_str!("../../docs/training.md")]
    pub struct Training;
    #[doc = include_str!("../../docs/sampling.md")]
    pub struct Sampling;
    #[doc = include_str!("../../docs/class-conditional.md")]
    pub struct ClassConditional;
    #[doc = include_str!("../../docs/evaluation.md")]
    pub struct Evaluation;
    #[doc = include_str!("../../docs/multi-gpu.md")]
    pub struct MultiGpu;
    #[doc = include_str!("../../docs/library.md")]
    pub struct Library;
    #[doc = include_str!("../../docs/benchmarks.md")]
    pub struct Benchmarks;
}
