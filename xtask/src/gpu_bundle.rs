//! `cargo xtask gpu-bundle`: everything a lent GPU machine needs to check the CUDA paths, built
//! here, in one folder (and a `.tar.gz` of it): the `ddpm` and `bench_serve` binaries, the CUDA
//! test binaries (`model`'s `cuda` tests; `torch-ext`'s unit tests with the `cuda-tests` feature:
//! CUDA generators, CUDA graphs, a one-rank NCCL group), the PyTorch peer scripts and `run.sh`.
//!
//! The GPU machine has python3 with torch 2.11.0 and no cargo: `run.sh` points
//! `LD_LIBRARY_PATH` at that torch's `lib/` (the binaries' rpath names this machine's libtorch)
//! and writes `out/report.json`. `bash run.sh --cpu-smoke` runs the same steps on the CPU at toy
//! sizes, so that the script is tested here before a GPU is spent on it; `--dev` bundles the dev
//! profile for that (the real bundle is release). Binaries are stripped of debug information so
//! the folder stays small enough to carry.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, root, run_checked};

/// Arguments of `cargo xtask gpu-bundle`.
#[derive(Debug, clap::Args)]
pub struct GpuBundleArgs {
    /// Bundle the dev profile (fast to build; for `run.sh --cpu-smoke` here).
    #[arg(long)]
    dev: bool,
    /// The folder to write (default target/gpu-bundle).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The test executables a `cargo test --no-run --message-format=json` run reports.
fn test_executables(args: &[&str]) -> Result<Vec<PathBuf>> {
    let out = cargo()
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo test --no-run {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        if let (true, Some(exe)) = (is_test, msg["executable"].as_str()) {
            found.push(PathBuf::from(exe));
        }
    }
    if found.is_empty() {
        bail!("cargo test --no-run {args:?} reported no test executable");
    }
    Ok(found)
}

fn copy_stripped(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    // Debug sections only: the symbols stay, so a crash still names its function.
    run_checked(Command::new("strip").arg("--strip-debug").arg(to))
        .with_context(|| format!("strip {}", to.display()))
}

/// Builds the bundle and returns its folder.
pub fn run(args: GpuBundleArgs) -> Result<PathBuf> {
    let root = root();
    crate::setup::setup(&root)?;
    let profile = if args.dev { "dev" } else { "release" };
    let profile_dir = if args.dev { "debug" } else { "release" };
    eprintln!("== building ddpm and bench_serve ({profile})");
    run_checked(cargo().args([
        "build",
        "--profile",
        profile,
        "-p",
        "cli",
        "--bin",
        "ddpm",
        "-p",
        "train",
        "--example",
        "bench_serve",
    ]))?;
    eprintln!("== building the CUDA test binaries ({profile})");
    let mut tests = test_executables(&[
        "--profile",
        profile,
        "-p",
        "model",
        "--features",
        "model/cuda-tests",
        "--test",
        "cuda",
    ])?;
    tests.extend(test_executables(&[
        "--profile",
        profile,
        "-p",
        "torch-ext",
        "--features",
        "torch-ext/cuda-tests",
        "--lib",
    ])?);

    let out = args.out.unwrap_or_else(|| root.join("target/gpu-bundle"));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    for dir in [
        "bin/tests",
        "scripts/bench",
        "scripts/golden",
        "scripts/gpu",
    ] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let target = root.join("target").join(profile_dir);
    copy_stripped(&target.join("ddpm"), &out.join("bin/ddpm"))?;
    copy_stripped(
        &target.join("examples/bench_serve"),
        &out.join("bin/bench_serve"),
    )?;
    for exe in &tests {
        // `model-<hash>` / `torch_ext-<hash>` -> `model` / `torch_ext`, by crate.
        let name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-').map(|(stem, _)| stem.to_string()))
            .unwrap_or_else(|| "test".into());
        copy_stripped(exe, &out.join("bin/tests").join(name))?;
    }
    for script in [
        "scripts/bench/peer.py",
        "scripts/bench/unet_torch.py",
        "scripts/golden/model_diffusers.py",
        "scripts/golden/model_simple.py",
        "scripts/gpu/report.py",
    ] {
        std::fs::copy(root.join(script), out.join(script))
            .with_context(|| format!("cannot copy {script}"))?;
    }
    // The entry point; it finds everything relative to itself.
    std::fs::copy(root.join("scripts/gpu/run.sh"), out.join("run.sh"))?;
    let tarball = out.with_extension("tar.gz");
    run_checked(
        Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(out.parent().expect("a parent"))
            .arg(out.file_name().expect("a name")),
    )?;
    let size: u64 = walk_size(&out);
    eprintln!(
        "== wrote {} ({:.1} MiB) and {}",
        out.display(),
        size as f64 / (1024.0 * 1024.0),
        tarball.display()
    );
    Ok(out)
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
