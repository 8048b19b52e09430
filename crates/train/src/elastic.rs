//! Where each rank of a data-parallel run was, and the record of an elastic restart.
//!
//! Every rank keeps its position (the step, the [`Phase`] of that step, and the c10d sequence
//! number of its last completed collective) in `<run>/ranks/rank-K.position`, a fixed-size
//! record rewritten in place at each change of phase ([`PositionLog`]), so that a launcher can
//! read where a rank stands even when that rank is stopped (SIGSTOP) or killed. A rank whose
//! collective fails (a peer died, or the timeout passed) writes `<run>/ranks/rank-K.json`
//! ([`RankReport`]) with the sequence number of the collective it was waiting in as well.
//! Two ranks that ran different collectives show different numbers there; a stalled rank
//! shows a lower number than those that wait for it.
//!
//! A restarted run (torchrun's `--max-restarts`, or `ddpm train --max-restarts`) appends a
//! [`RestartRecord`] to `metrics.jsonl`: the restart count, the step it resumed at, and the
//! steps the ranks had taken beyond that checkpoint, which it takes again
//! ([`furthest_step`] reads them from the positions the previous attempt left).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The folder of a run directory that holds the ranks' positions and reports.
pub const RANKS_DIR: &str = "ranks";

/// The size of a `rank-K.position` record: JSON padded with spaces, then a newline.
const POSITION_BYTES: usize = 160;

/// The part of a training step a rank is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the next batch of the loader.
    Data,
    /// The forward pass (with rank 0's BatchNorm buffers broadcast before it).
    Forward,
    /// The backward pass (with DDP's Reducer, its all-reduces run during it).
    Backward,
    /// The all-reduce of the gradients, or of the losses and stop requests.
    AllReduce,
    /// The optimizer and EMA update.
    Optimizer,
    /// Writing a checkpoint, or waiting at the barrier while rank 0 writes it.
    Checkpoint,
    /// Evaluating samples (FID in the loop), or waiting while rank 0 does.
    Evaluation,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::AllReduce => "all-reduce",
            Phase::Optimizer => "optimizer",
            Phase::Checkpoint => "checkpoint",
            Phase::Evaluation => "evaluation",
        })
    }
}

/// Where a rank is: its step, the phase of it, and its last completed collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Optimizer steps completed (the rank works on step `step + 1`).
    pub step: u64,
    /// The phase of the step.
    pub phase: Phase,
    /// c10d's sequence number of the last collective the rank completed (all the collectives
    /// it had started when it entered `phase` had completed).
    pub last_completed_collective: u64,
}

/// `<run>/ranks/rank-K.json`: where rank K was when a collective failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankReport {
    /// The rank that writes it.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// Optimizer steps completed.
    pub step: u64,
    /// The phase it was in.
    pub phase: Phase,
    /// c10d's sequence number of its last completed collective.
    pub last_completed_collective: u64,
    /// c10d's sequence number of the last collective it started: the one that failed, when
    /// it is greater than `last_completed_collective`.
    pub collectives_started: u64,
    /// The failure, as the rank reports it.
    pub error: String,
}

/// A `metrics.jsonl` line of a restarted run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// The step the run resumed at (its newest complete checkpoint).
    pub step: u64,
    /// How many times the ranks have been restarted (`TORCHELASTIC_RESTART_COUNT`).
    pub restart: u64,
    /// The steps the previous attempt had taken beyond `step`, taken again.
    pub steps_redone: u64,
}

/// `<run>/ranks/rank-K.json`.
pub fn report_path(run_dir: &Path, rank: usize) -> PathBuf {
    run_dir.join(RANKS_DIR).join(format!("rank-{rank}.json"))
}

/// `<run>/ranks/rank-K.position`.
pub fn position_path(run_dir: &Path, rank: usize) -> PathBuf {
    run_dir
        .join(RANKS_DIR)
        .join(format!("rank-{rank}.position"))
}

/// The position in a `rank-K.position` file; `None` when it is missing or unreadable.
pub fn read_position(path: &Path) -> Option<Position> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_str(String::from_utf8_lossy(&bytes).trim()).ok()
}

/// The report in a `rank-K.json` file; `None` when it is missing or unreadable.
pub fn read_report(path: &Path) -> Option<RankReport> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// The furthest step the run in `run_dir` had completed, according to the positions in its
/// `ranks/` folder and the lines of its `metrics.jsonl`; `None` when there are none. Read it
/// before a resume cuts `metrics.jsonl` back.
pub fn furthest_step(run_dir: &Path) -> Option<u64> {
    let positions = fs::read_dir(run_dir.join(RANKS_DIR))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "position"))
        .filter_map(|path| read_position(&path))
        .map(|position| position.step);
    #[derive(Deserialize)]
    struct StepOf {
        step: u64,
    }
    let text = fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let metrics = text
        .lines()
        .filter_map(|line| serde_json::from_str::<StepOf>(line).ok())
        .map(|record| record.step);
    positions.chain(metrics).max()
}

/// A rank's `rank-K.position` file, rewritten in place at each [`PositionLog::mark`].
///
/// Writing it is best effort: a failed write (a full disk) is ignored, since the position is
/// a diagnostic and must never stop the run.
#[derive(Debug)]
pub struct PositionLog {
    file: File,
    run_dir: PathBuf,
    rank: usize,
    last: Mutex<Position>,
}

impl PositionLog {
    /// Starts rank `rank`'s log in `run_dir` at `start`, and removes the report a previous
    /// attempt of the run left (`rank-K.json`).
    ///
    /// # Errors
    /// When the `ranks/` folder or the file cannot be made.
    pub fn create(run_dir: &Path, rank: usize, start: Position) -> std::io::Result<Self> {
        fs::create_dir_all(run_dir.join(RANKS_DIR))?;
        let _ = fs::remove_file(report_path(run_dir, rank));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(position_path(run_dir, rank))?;
        let log = Self {
            file,
            run_dir: run_dir.to_path_buf(),
            rank,
            last: Mutex::new(start),
        };
        log.mark(start);
        Ok(log)
    }

    /// Records that the rank is at `position`.
    pub fn mark(&self, position: Position) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = position;
        let json = serde_json::to_string(&position).expect("positions serialise");
        let mut record = format!("{json:<width$}", width = POSITION_BYTES - 1);
        record.push('\n');
        let _ = self.file.write_at(record.as_bytes(), 0);
    }

    /// The last position marked.
    pub fn last(&self) -> Position {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `rank-K.json` from the last position, with `collectives_started` and the
    /// `error`; returns its path.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_report(
        &self,
        world_size: usize,
        collectives_started: u64,
        error: String,
    ) -> std::io::Result<(PathBuf, RankReport)> {
        let last = self.last();
        let report = RankReport {
            rank: self.rank,
            world_size,
            step: last.step,
            phase: last.phase,
            last_completed_collective: last.last_completed_collective,
            collectives_started: collectives_started.max(last.last_completed_collective),
            error,
        };
        let path = report_path(&self.run_dir, self.rank);
        let json = serde_json::to_vec_pretty(&report).expect("reports serialise");
        fs::write(&path, json)?;
        Ok((path, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_rewritten_in_place_and_read_back_and_the_furthest_step_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let at = |step, phase, seq| Position {
            step,
            phase,
            last_completed_collective: seq,
        };
        std::fs::create_dir_all(dir.path().join(RANKS_DIR)).unwrap();
        std::fs::write(report_path(dir.path(), 0), "{}").unwrap();
        let log = PositionLog::create(dir.path(), 0, at(3, Phase::Data, 10)).unwrap();
        assert!(!report_path(dir.path(), 0).exists(), "a stale report stays");
        log.mark(at(12, Phase::AllReduce, 1234));
        log.mark(at(4, Phase::Forward, 11));
        let path = position_path(dir.path(), 0);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            POSITION_BYTES as u64
        );
        assert_eq!(read_position(&path), Some(at(4, Phase::Forward, 11)));
        let other = PositionLog::create(dir.path(), 1, at(9, Phase::Checkpoint, 50)).unwrap();
        assert_eq!(furthest_step(dir.path()), Some(9));
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            "{\"step\":11}\n{\"step\":10}\n",
        )
        .unwrap();
        assert_eq!(furthest_step(dir.path()), Some(11));
        let (report_file, report) = other.write_report(2, 51, "timed out".into()).unwrap();
        assert_eq!(read_report(&report_file), Some(report.clone()));
        assert_eq!(report.phase, Phase::Checkpoint);
        assert_eq!(
            (report.last_completed_collective, report.collectives_started),
            (50, 51)
        );
        let text = std::fs::read_to_string(report_file).unwrap();
        assert!(text.contains("\"phase\": \"checkpoint\""), "{text}");
        assert_eq!(Phase::AllReduce.to_string(), "all-reduce");
        assert_eq!(furthest_step(&dir.path().join("nothing")), None);
    }
}
