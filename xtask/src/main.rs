//! `cargo xtask …`: libtorch set-up, dataset downloads, the test suite, benchmarks and the quality race
//! (the cargo-xtask pattern, as in rust-analyzer). It never links libtorch itself, so it
//! builds on a machine that has none yet.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod bench;
mod chaos;
#[cfg(test)]
mod doc_commands;
mod fetch;
mod gpu_bundle;
mod quality;
mod readers;
mod setup;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provide libtorch 2.11.0 ($LIBTORCH, a python3 with torch, or a new .venv) and link it as `.libtorch`;
    /// fetch the Gloo (and CUDA) headers torch-ext compiles against into `.deps/`.
    Setup,
    /// Set up (libtorch, diffusers for the fixture scripts, tensorboard for the event-file
    /// tests), then run the whole test suite
    /// (extra arguments go to `cargo test`).
    Test {
        /// Also run the CUDA tests (needs a GPU).
        #[arg(long)]
        cuda: bool,
        /// Arguments passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every benchmark, with PyTorch eager side by side, and write a JSON + markdown report.
    Bench(bench::BenchArgs),
    /// The quality race: train a preset for M minutes in Rust and, with the same recipe, in
    /// PyTorch; sample both with their EMA weights and score them with the Rust FID and KID
    /// against the Fashion-MNIST test set; write a JSON + markdown report with sample grids.
    Quality(quality::QualityArgs),
    /// Pack the release binaries, the CUDA test binaries, the PyTorch peer and a run.sh that
    /// checks and times everything on a GPU machine without cargo into one archive; then
    /// smoke-test the archive on the CPU.
    GpuBundle(gpu_bundle::BundleArgs),
    /// A soak of elastic training: a tiny 2-rank job under SIGKILL, SIGTERM and SIGSTOP at
    /// random moments, restarted until it reaches its step count, then compared byte for byte
    /// with an uninterrupted run of the same seed. Not part of CI.
    Chaos(chaos::ChaosArgs),
    #[command(flatten)]
    Fetch(fetch::FetchCommand),
}

/// The repository root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// A `cargo` command that is the same cargo that runs us.
pub fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command and fails with its name when it fails.
pub fn run_checked(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// The trimmed stdout of `git ARGS` in `root` (empty when git fails).
pub fn git(root: &std::path::Path, args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The set-up's python (`.venv/bin/python`), or `python3` where there is none.
pub fn venv_python(root: &std::path::Path) -> PathBuf {
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(&root()).map(|_| ()),
        Command::Test { cuda, args } => {
            setup::setup(&root())?;
            // Tests that check exports against diffusers run the checked-in Python scripts: make
            // sure the set-up's python has diffusers, and tell the tests which python that is.
            let python = bench::python(&root())?;
            // And the readers the tests check our files with (TensorBoard's).
            readers::install(&root(), &python)?;
            // The end-to-end tests drive the `ddpm` binary: build it first.
            run_checked(cargo().args(["build", "-p", "cli", "--bin", "ddpm"]))?;
            let mut cmd = cargo();
            cmd.env("DDPM_PYTHON", &python);
            cmd.args(["test", "--workspace"]);
            if cuda {
                cmd.args([
                    "--features",
                    "cli/cuda-tests,model/cuda-tests,train/cuda-tests,torch-ext/cuda-tests",
                ]);
            }
            run_checked(cmd.args(args))
        }
        Command::Bench(args) => bench::run(args),
        Command::Quality(args) => quality::run(args),
        Command::GpuBundle(args) => gpu_bundle::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Fetch(command) => fetch::run(command),
    }
}
