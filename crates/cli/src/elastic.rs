//! Elastic restarts of `ddpm train` and the launcher's summary of where each rank was.
//!
//! - A rank knows it was restarted from `TORCHELASTIC_RESTART_COUNT` (torchrun sets it, and so
//!   does `ddpm train --nproc-per-node N --max-restarts R`). A restarted rank given neither
//!   `--resume` nor `--resume-from` continues the run in `--run-dir` from its newest complete
//!   checkpoint, but only when that directory's `config.json` is this run's (the same resolved
//!   configuration); another run's directory is refused as before.
//! - When a rank fails, the launcher reads `<run>/ranks/` ([`train::elastic`]) and prints one
//!   line per rank: its step, phase and collective sequence number, so that a desync between
//!   the ranks, or a stalled rank, shows as different numbers.

use std::path::Path;

use anyhow::{bail, Context, Result};
use train::elastic::{self, Position, RankReport};
use train::{TrainConfig, TrainError};

/// torchrun's restart count, which the launcher of `--max-restarts` sets too.
pub const RESTART_COUNT_VAR: &str = "TORCHELASTIC_RESTART_COUNT";

/// How many times this rank's launch was restarted (0 on the first attempt, or outside a launch).
///
/// # Errors
/// When `TORCHELASTIC_RESTART_COUNT` is not a number.
pub fn restart_count() -> Result<u64> {
    match std::env::var(RESTART_COUNT_VAR) {
        Err(_) => Ok(0),
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{RESTART_COUNT_VAR}={text:?} is not a non-negative integer")),
    }
}

/// How a restarted rank starts in `run_dir`, whose `config.json` (if any) holds `saved`, given
/// the configuration `given` that its flags resolve to: `None` when the directory holds no run
/// yet (a fresh start), `Some(has_checkpoint)` when it holds this run.
///
/// # Errors
/// When `saved` is another run's configuration: names the first key that differs.
pub fn restart_plan(
    run_dir: &Path,
    restart: u64,
    saved: Option<&TrainConfig>,
    given: &TrainConfig,
) -> Result<Option<bool>> {
    let Some(saved) = saved else {
        return Ok(None);
    };
    if let Some(change) = saved.changes(given).first() {
        bail!(
            "restart {restart} ({RESTART_COUNT_VAR}): {} holds another run: its config.json has \
             {} = {}, this run {}; a restarted rank continues only its own run: pass the --run-dir \
             of this run, or --resume to continue that one",
            run_dir.display(),
            change.key,
            change.saved,
            change.given
        );
    }
    let has_checkpoint = match train::trainer::saved_config(run_dir, None) {
        Ok(_) => true,
        Err(TrainError::NoCheckpoint { .. } | TrainError::NoLoadableCheckpoint { .. }) => false,
        Err(err) => return Err(err.into()),
    };
    Ok(Some(has_checkpoint))
}

/// The configuration in `<run_dir>/config.json`; `None` when there is none.
///
/// # Errors
/// When it exists but does not read as a configuration.
pub fn saved_run_config(run_dir: &Path) -> Result<Option<TrainConfig>> {
    let path = run_dir.join("config.json");
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .with_context(|| format!("{} does not read as a run's configuration", path.display()))
}

/// Where one rank was when the launch failed.
#[derive(Debug, Clone)]
pub enum RankWhere {
    /// It wrote `rank-K.json` (a collective of it failed).
    Reported(RankReport),
    /// Its position record, as it stood; `stopped`: the process was stopped (SIGSTOP).
    Position {
        /// The record.
        position: Position,
        /// Whether the process was stopped when it was read.
        stopped: bool,
    },
    /// Nothing to read.
    Unknown,
}

impl RankWhere {
    /// The collective sequence number the rank had reached: the one it waited in, or its last
    /// completed one.
    pub fn reached(&self) -> Option<u64> {
        match self {
            Self::Reported(r) => Some(r.collectives_started),
            Self::Position { position, .. } => Some(position.last_completed_collective),
            Self::Unknown => None,
        }
    }

    /// Whether it came from the position record of a running rank (which may report later).
    fn may_report(&self) -> bool {
        matches!(self, Self::Position { stopped: false, .. } | Self::Unknown)
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.split(") ").nth(1).is_some_and(|s| s.starts_with('T')))
}

/// Where rank `rank` (process `pid`) of the run in `run_dir` is now.
pub fn rank_where(run_dir: &Path, rank: usize, pid: u32) -> RankWhere {
    if let Some(report) = elastic::read_report(&elastic::report_path(run_dir, rank)) {
        return RankWhere::Reported(report);
    }
    match elastic::read_position(&elastic::position_path(run_dir, rank)) {
        Some(position) => RankWhere::Position {
            position,
            stopped: is_stopped(pid),
        },
        None => RankWhere::Unknown,
    }
}

/// Replaces the entries of ranks that were running with their reports, where they wrote one
/// since (after the failure reached them).
pub fn refresh(run_dir: &Path, places: &mut [RankWhere]) {
    for (rank, place) in places.iter_mut().enumerate() {
        if place.may_report() {
            if let Some(report) = elastic::read_report(&elastic::report_path(run_dir, rank)) {
                *place = RankWhere::Reported(report);
            }
        }
    }
}

/// The launcher's summary: one line per rank, the lowest sequence number marked.
pub fn summary(run_dir: &Path, places: &[RankWhere]) -> String {
    let lowest = places.iter().filter_map(RankWhere::reached).min();
    let highest = places.iter().filter_map(RankWhere::reached).max();
    let mut out = format!(
        "where each rank was ({}):",
        run_dir.join(elastic::RANKS_DIR).display()
    );
    for (rank, place) in places.iter().enumerate() {
        let behind = lowest != highest && place.reached() == lowest;
        let line = match place {
            RankWhere::Reported(r) => format!(
                "step {}, {}, collective #{} (last completed #{}; rank-{rank}.json)",
                r.step, r.phase, r.collectives_started, r.last_completed_collective
            ),
            RankWhere::Position { position, stopped } => format!(
                "step {}, {}, collective #{} (last completed #{}; {})",
                position.step,
                position.phase,
                position.last_completed_collective,
                position.last_completed_collective,
                if *stopped {
                    "stopped: the process was not running"
                } else {
                    "its position record"
                }
            ),
            RankWhere::Unknown => "unknown (no record in ranks/)".to_string(),
        };
        out.push_str(&format!(
            "\n  rank {rank}: {line}{}",
            if behind { "  <- behind" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use train::elastic::Phase;

    #[test]
    fn the_summary_marks_the_rank_behind() {
        let places = [
            RankWhere::Reported(RankReport {
                rank: 0,
                world_size: 2,
                step: 12,
                phase: Phase::AllReduce,
                last_completed_collective: 37,
                collectives_started: 38,
                error: "timed out".into(),
            }),
            RankWhere::Position {
                position: Position {
                    step: 12,
                    phase: Phase::Forward,
                    last_completed_collective: 37,
                },
                stopped: true,
            },
        ];
        let text = summary(Path::new("run"), &places);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[1],
            "  rank 0: step 12, all-reduce, collective #38 (last completed #37; rank-0.json)"
        );
        assert!(lines[2].starts_with("  rank 1: step 12, forward, collective #37"));
        assert!(lines[2].ends_with("<- behind"), "{text}");
    }
}
