//! `ddpm train` as a user runs it: stop signals, crashes mid-checkpoint, the run-directory lock,
//! fresh runs into old directories, resume rules and fallbacks, a full disk, logs without a
//! terminal, bad flags.
//!
//! One test binary in two parts: `signals` (stops, signals and crashes mid-checkpoint) and `runs`
//! (the lock, fresh runs, resume, full disks, logs, bad flags). The helpers they share are here.

mod runs;
mod signals;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    complete_checkpoints, ddpm, fill, kill, metric_lines, path_arg, run, run_err, run_ok,
    sample_cpu, spawn, stderr_of, synthetic_cifar, tiny_model, tiny_train_args, train_tiny,
    wait_exit, wait_for, Tmpfs,
};

/// Overrides that make the seed preset tiny: a 2-level SimpleUnet, batches of 8, no sampling,
/// a checkpoint every 2 steps.
fn tiny_args(data: &Path, run_dir: &Path) -> Vec<String> {
    args_with(data, run_dir, &[])
}

/// [`tiny_args`], then `extra`.
fn args_with(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--threads", "1", "--set", "checkpoint_every=2"];
    args.extend_from_slice(extra);
    tiny_train_args(data, run_dir, &args)
}

/// `ddpm sample` of a 2-image DDIM-2 grid from the run's newest complete checkpoint, which
/// must succeed.
fn sample_a_grid(run_dir: &Path, grid: &Path) {
    let args = [
        "--threads",
        "1",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "-n",
        "2",
    ];
    let sampled = sample_cpu(run_dir, &[&args[..], &["--grid", path_arg(grid)]].concat());
    assert!(sampled.status.success(), "{}", stderr_of(&sampled));
}

fn signal(child: &Child, sig: &str) {
    kill(child.id(), sig);
}

fn state_step(run_dir: &Path, name: &str) -> u64 {
    let text =
        std::fs::read_to_string(run_dir.join("checkpoints").join(name).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["step"].as_u64().unwrap()
}

/// Resuming proves a checkpoint loadable: weights, EMA and optimizer state all read back.
fn resume_for(data: &Path, run_dir: &Path, max_steps: u64) {
    let mut args = tiny_args(data, run_dir);
    args.extend([
        "--resume".into(),
        "--max-steps".into(),
        max_steps.to_string(),
    ]);
    let out = run(&args);
    assert!(out.status.success(), "resume failed: {}", stderr_of(&out));
    let names = complete_checkpoints(run_dir);
    assert_eq!(state_step(run_dir, names.last().unwrap()), max_steps);
}

/// The steps of `metrics.jsonl`; every line must parse.
fn metric_steps(run_dir: &Path) -> Vec<u64> {
    metric_lines(run_dir)
        .iter()
        .map(|record| record["step"].as_u64().unwrap())
        .collect()
}
