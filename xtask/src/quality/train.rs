//! The two trainings of the race: `ddpm train` and the PyTorch peer (`scripts/quality/train_peer.py`)
//! as processes that get SIGTERM when the budget is spent, one after the other or side by side,
//! with the load average around each.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{Phases, Race};
use crate::run_checked;

/// How long the Rust trainer may take to exit after SIGTERM (it finishes its step and writes a
/// checkpoint).
const RUST_GRACE: Duration = Duration::from_secs(300);
/// How long the peer may take after SIGTERM: it samples then.
const PEER_GRACE: Duration = Duration::from_secs(6 * 3600);

/// How long each side trained and the load average around it.
pub(super) struct Trained {
    /// Seconds from the Rust trainer's start to its signal (or its exit).
    pub rust_seconds: f64,
    /// The same for the peer; `None` without one.
    pub peer_seconds: Option<f64>,
    /// The 1-minute load average before and after the Rust training.
    pub rust_load: [f64; 2],
    /// The same for the peer (NaN without one).
    pub peer_load: [f64; 2],
}

/// The peer's python: the set-up's, with the peer's packages installed where it lacks them
/// (`scripts/bench/requirements.txt`: diffusers, which brings safetensors, and numpy), as
/// `cargo xtask bench` installs them, so a race runs on a fresh set-up.
pub(super) fn peer_python(root: &Path) -> Result<PathBuf> {
    crate::bench::python(root)
}

/// Trains the Rust side, then the peer (or both at once with `--concurrent`), each for the
/// budget.
pub(super) fn train_sides(race: &Race, phases: &mut Phases) -> Result<Trained> {
    let mut train = rust_command(race);
    let mut peer = race
        .python
        .as_ref()
        .map(|python| peer_command(race, python));
    let budget = race.budget();
    let (threads, minutes) = (race.threads, race.plan.minutes);
    let t0 = Instant::now();
    if race.args.concurrent {
        eprintln!("== Rust and PyTorch at once, {threads} threads each, for {minutes} min");
        let before = load_average();
        let mut procs = vec![Timed::spawn(&mut train, "ddpm train", RUST_GRACE)?];
        if let Some(peer) = peer.as_mut() {
            wait_for_config(&race.config_path())?;
            procs.push(Timed::spawn(peer, "train_peer.py", PEER_GRACE)?);
        }
        let seconds = supervise(&mut procs, budget)?;
        let load = [before, load_average()];
        phases.record("train_both_and_peer_sample", t0);
        return Ok(Trained {
            rust_seconds: seconds[0],
            peer_seconds: seconds.get(1).copied(),
            rust_load: load,
            peer_load: load,
        });
    }
    eprintln!(
        "== Rust: ddpm train --preset {} for {minutes} min on {threads} threads",
        race.args.preset
    );
    let before = load_average();
    let mut procs = [Timed::spawn(&mut train, "ddpm train", RUST_GRACE)?];
    let rust_seconds = supervise(&mut procs, budget)?[0];
    let rust_load = [before, load_average()];
    phases.record("rust_train", t0);
    let Some(peer) = peer.as_mut() else {
        return Ok(Trained {
            rust_seconds,
            peer_seconds: None,
            rust_load,
            peer_load: [f64::NAN; 2],
        });
    };
    eprintln!("== PyTorch: scripts/quality/train_peer.py for {minutes} min on {threads} threads");
    let t0 = Instant::now();
    let before = load_average();
    let mut procs = [Timed::spawn(peer, "train_peer.py", PEER_GRACE)?];
    let peer_seconds = supervise(&mut procs, budget)?[0];
    let peer_load = [before, load_average()];
    phases.record("peer_train_and_sample", t0);
    Ok(Trained {
        rust_seconds,
        peer_seconds: Some(peer_seconds),
        rust_load,
        peer_load,
    })
}

/// `ddpm train --preset P` for the race: the budget ends the run, not the epochs, and no preview
/// grids are drawn inside it.
fn rust_command(race: &Race) -> Command {
    let args = race.args;
    let mut train = Command::new(&race.ddpm);
    train.current_dir(&race.root).args([
        "train",
        "--preset",
        &args.preset,
        "--run-dir",
        &race.run_dir.to_string_lossy(),
        "--data",
        &race.data_dir.to_string_lossy(),
        "--device",
        "cpu",
        "--threads",
        &race.threads.to_string(),
        "--seed",
        &args.seed.to_string(),
        "--offline",
        "--progress-every",
        "500",
        "--set",
        "epochs=100000",
        "--set",
        "sample_every_epochs=0",
    ]);
    for set in &args.sets {
        train.args(["--set", set]);
    }
    train
}

/// The peer: reads the Rust run's resolved `config.json`, trains the same recipe, then samples
/// with every sampler of the plan.
fn peer_command(race: &Race, python: &Path) -> Command {
    let mut peer = Command::new(python);
    peer.current_dir(&race.root)
        .arg(race.root.join("scripts/quality/train_peer.py"))
        .args(["--config", &race.config_path().to_string_lossy()])
        .args(["--data", &race.data_dir.to_string_lossy()])
        .args(["--out", &race.peer_dir.to_string_lossy()])
        .args(["--threads", &race.threads.to_string()])
        .args(["--seed", &race.args.seed.to_string()])
        .args(["--samples", &race.plan.samples.to_string()]);
    for s in &race.plan.samplers {
        peer.arg("--sampler")
            .arg(format!("{}={}", s.name(), s.peer_config()));
    }
    peer
}

/// Waits (at most 2 minutes) for `ddpm train` to write the configuration the peer reads.
fn wait_for_config(config_path: &Path) -> Result<()> {
    let since = Instant::now();
    while !config_path.exists() {
        ensure!(
            since.elapsed() < Duration::from_secs(120),
            "ddpm train wrote no {} within 2 minutes",
            config_path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The 1-minute load average, or NaN where /proc is missing.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A training process that gets SIGTERM `budget` after it started.
struct Timed {
    child: Child,
    what: &'static str,
    started: Instant,
    /// How long it may take to exit after the signal (the peer samples then).
    grace: Duration,
    /// Seconds from the start to the signal.
    signalled: Option<f64>,
    /// Seconds from the start to the signal, or to its exit when it ended by itself.
    seconds: Option<f64>,
}

impl Timed {
    fn spawn(cmd: &mut Command, what: &'static str, grace: Duration) -> Result<Self> {
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(Self {
            child,
            what,
            started,
            grace,
            signalled: None,
            seconds: None,
        })
    }

    /// Signals it when its time is up; returns whether it has exited (successfully).
    fn poll(&mut self, budget: Duration) -> Result<bool> {
        if self.seconds.is_some() {
            return Ok(true);
        }
        if let Some(status) = self.child.try_wait()? {
            ensure!(status.success(), "{} failed with {status}", self.what);
            let own = self.started.elapsed().as_secs_f64();
            self.seconds = Some(self.signalled.unwrap_or(own));
            return Ok(true);
        }
        let elapsed = self.started.elapsed();
        match self.signalled {
            None if elapsed >= budget => {
                eprintln!(
                    "== {}: {:.0} s are up, SIGTERM",
                    self.what,
                    budget.as_secs_f64()
                );
                run_checked(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
                self.signalled = Some(elapsed.as_secs_f64());
            }
            Some(at) if elapsed.as_secs_f64() >= at + self.grace.as_secs_f64() => {
                let _ = self.child.kill();
                bail!(
                    "{} did not exit within {} s of SIGTERM",
                    self.what,
                    self.grace.as_secs()
                );
            }
            _ => {}
        }
        Ok(false)
    }
}

impl Drop for Timed {
    /// A process still running when the race ends early (the other side failed) is stopped, so
    /// that it does not go on writing into a folder the next attempt removes.
    fn drop(&mut self) {
        if self.seconds.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("== stopping {}: the race ended without it", self.what);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls every process until all have exited; returns their seconds (see [`Timed::seconds`]).
fn supervise(procs: &mut [Timed], budget: Duration) -> Result<Vec<f64>> {
    loop {
        let mut done = true;
        for p in procs.iter_mut() {
            done &= p.poll(budget)?;
        }
        if done {
            return Ok(procs
                .iter()
                .map(|p| p.seconds.unwrap_or(f64::NAN))
                .collect());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_left_running_is_stopped_when_the_race_ends_early() {
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let timed = Timed::spawn(&mut sleep, "sleep", Duration::from_secs(1)).unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", timed.child.id()));
        assert!(proc_dir.exists());
        drop(timed);
        // Killed and reaped: no process, not even a zombie, has the PID.
        assert!(!proc_dir.exists(), "{} is still there", proc_dir.display());
    }
}
