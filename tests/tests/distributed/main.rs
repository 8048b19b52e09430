//! Data-parallel `ddpm train` as a user launches it: `--nproc-per-node 2` end to end, stop
//! signals through the launcher, a rank that dies or hangs, and the errors that must come
//! before training. Two ranks over 127.0.0.1 with Gloo, the tiny SimpleUnet, one thread each.
//!
//! One test binary in three parts: [`training`] (the launch, signals, dead and hung ranks, set-up
//! errors, torchrun), [`sampling`] (`ddpm sample` and `eval fid` across ranks, and their
//! launcher's stops) and [`elastic`] (restarts and where each rank was). The helpers are here.

mod elastic;
mod sampling;
mod training;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    checkpoint_entries, ddpm, kill, metric_lines, sample_cpu, stderr_of, synthetic_cifar,
    tiny_train_args, wait_for, wait_output,
};

/// The tiny seed preset: batches of 8 (4 per rank), no sampling, a metrics line per step.
fn tiny_args(data: &Path, run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--set", "log_every=1"];
    args.extend_from_slice(extra);
    tiny_train_args(data, run_dir, &args)
}

/// A run that would go on for hours, unless stopped.
const LONG: [&str; 6] = [
    "--max-steps",
    "100000",
    "--epochs",
    "100000",
    "--set",
    "checkpoint_every=100000",
];

fn command(args: &[String], envs: &[(&str, String)]) -> Command {
    let mut cmd = ddpm(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn alive(pid: u32) -> bool {
    // A zombie still answers `kill -0`; its state in /proc says it is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
}

/// The PIDs the launcher prints: `rank 0 PID 123, rank 1 PID 124`.
fn launcher_pids(stderr: &str) -> Option<Vec<u32>> {
    let line = stderr.lines().find(|l| l.contains("ranks meet on"))?;
    let pids: Vec<u32> = line
        .split("PID ")
        .skip(1)
        .map(|rest| {
            rest.trim_end_matches(')')
                .split([',', ')'])
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    Some(pids)
}

/// Starts the launcher with stderr in a file (so that the test can read it while it runs).
fn spawn_launcher(args: &[String], log: &Path) -> Child {
    ddpm(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
