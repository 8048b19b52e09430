//! Stop requests for a training run: SIGINT (Ctrl-C), SIGTERM (SLURM, Kubernetes and systemd
//! stop jobs with it), SIGHUP (the terminal went away) and SIGUSR1 (SLURM's `--signal=USR1@90`
//! warning) all ask the run to finish its step, write a checkpoint and exit 0. A second request
//! exits at once, without a checkpoint, with status 128 + the signal's number (as the shell
//! reports a death by that signal); checkpoints are written atomically, so this loses only the
//! steps since the previous one.
//!
//! One signal delivered twice within [`REPEAT_WINDOW`] is one request: coreutils' `timeout`
//! sends its signal to the command and then to the command's process group, so `timeout 2h
//! ddpm train …` gets SIGTERM twice within microseconds, and without this lost the final
//! checkpoint; a person's second Ctrl-C comes later than that.
//!
//! A SIGHUP that is ignored when the process starts (`nohup ddpm train …`) stays ignored: a
//! user who asked to survive the terminal's hangup gets that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

/// A command that ended because it was asked to stop, not because it failed: the `ddpm`
/// process exits with 128 + `signal`, as the shell reports a death by that signal.
#[derive(Debug)]
pub struct Stopped {
    /// The stop signal.
    pub signal: i32,
    /// The work that stopped: "training", "sampling".
    pub work: &'static str,
    /// What the processes did, e.g. "rank 0 exited with status 130".
    pub detail: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} stopped by {} ({})",
            self.work,
            name(self.signal),
            self.detail
        )?;
        if self.work == "training" {
            write!(
                f,
                "; --resume continues from the newest complete checkpoint"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Stopped {}

/// The exit status of a command that ended with `err`: 128 + the signal for a [`Stopped`]
/// anywhere in its chain, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Stopped>())
        .map_or(1, |stopped| 128 + stopped.signal)
}

/// Whether `signal` is ignored (`SIG_IGN`), as `nohup` leaves SIGHUP.
pub(crate) fn is_ignored(signal: i32) -> bool {
    // SAFETY: a null `act` makes sigaction only read the current disposition into `old`, which
    // is a valid, zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// How close two deliveries of one signal are taken as one request.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_millis(200);

/// Tells a new stop request from one signal delivered twice (see [`REPEAT_WINDOW`]).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    /// The last request's signal and when it came.
    last: Option<(i32, Instant)>,
}

impl Requests {
    /// Whether `signal`, arriving `at`, is a new request: not the signal of the previous
    /// request again within [`REPEAT_WINDOW`] of it.
    pub(crate) fn is_new(&mut self, signal: i32, at: Instant) -> bool {
        let repeat = matches!(self.last, Some((s, t)) if s == signal && at.saturating_duration_since(t) < REPEAT_WINDOW);
        if !repeat {
            self.last = Some((signal, at));
        }
        !repeat
    }
}

/// Sets `stop` on the first stop signal (printing what happens next when `announce`; the ranks
/// of a data-parallel run other than 0 leave that to rank 0) and exits on the second.
///
/// # Errors
/// When the handlers cannot be installed.
pub fn stop_on_signals(stop: Arc<AtomicBool>, announce: bool) -> Result<()> {
    let mut wanted = vec![SIGINT, SIGTERM, SIGUSR1];
    if !is_ignored(SIGHUP) {
        wanted.push(SIGHUP);
    }
    let mut signals = Signals::new(&wanted).context("cannot install the signal handlers")?;
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            let mut requests = Requests::default();
            for signal in signals.forever() {
                if !requests.is_new(signal, Instant::now()) {
                    continue;
                }
                if stop.swap(true, Ordering::SeqCst) {
                    eprintln!("second {}: exiting now without a checkpoint", name(signal));
                    // `_exit`: no atexit handlers or static destructors while the main thread
                    // may be inside libtorch.
                    signal_hook::low_level::exit(128 + signal);
                }
                if announce {
                    eprintln!(
                        "{}: finishing the current step and writing a checkpoint (send it again to quit now)",
                        name(signal)
                    );
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_signal_delivered_twice_at_once_is_one_request() {
        let t0 = Instant::now();
        let mut requests = Requests::default();
        assert!(requests.is_new(SIGTERM, t0));
        // coreutils' timeout: the command, then its process group, microseconds apart.
        assert!(!requests.is_new(SIGTERM, t0 + Duration::from_micros(30)));
        // Another signal, or the same one after the window, is a second request.
        assert!(requests.is_new(SIGINT, t0 + Duration::from_millis(1)));
        assert!(requests.is_new(SIGINT, t0 + Duration::from_millis(1) + REPEAT_WINDOW));
    }
}
