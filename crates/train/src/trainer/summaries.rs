//! The run's TensorBoard event files (`<run>/tb/`, [`crate::tensorboard`]): opened with the
//! run, with the resolved configuration as the text summary `config`; fed by every line of
//! `metrics.jsonl` (its scalars, then a flush) and every sample picture (`samples/grid`,
//! `samples/strip`); synced at every checkpoint. Rank 0 writes them; `tensorboard: false`
//! (`ddpm train --no-tensorboard`) turns them off. A resume at step N cuts the files back to N,
//! as it cuts `metrics.jsonl`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use super::run_loop::MetricsRecord;
use super::Trainer;
use crate::quality::EvalRecord;
use crate::tensorboard::{self, EventWriter, TB_DIR};
use crate::TrainError;

/// A line of `metrics.jsonl`, and the scalars it shows in TensorBoard.
pub(super) trait MetricsLine: Serialize {
    /// (tag, value) of each scalar.
    fn scalars(&self) -> Vec<(&'static str, f64)>;
}

impl MetricsLine for MetricsRecord {
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("train/loss", self.loss),
            ("train/lr", self.lr),
            ("train/grad_norm", self.grad_norm),
            ("train/skipped_steps", self.skipped_steps as f64),
            ("train/images_per_sec", self.images_per_sec),
        ]
    }
}

impl MetricsLine for EvalRecord {
    /// FID and KID, and the FID again as `eval/best_fid` when it made the new best checkpoint.
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![("eval/fid", self.fid)];
        out.extend(self.kid.map(|kid| ("eval/kid", kid)));
        if self.best {
            out.push(("eval/best_fid", self.fid));
        }
        out
    }
}

/// The trainer's event writer: `None` when off, or on the ranks other than 0.
pub(super) type Summaries = Option<Mutex<EventWriter>>;

impl Trainer {
    /// Opens the event files at the current step and writes the configuration; on resume, the
    /// files are cut back to the step even when TensorBoard is now off.
    pub(super) fn open_tensorboard(&mut self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let dir = self.run_dir.join(TB_DIR);
        if !self.config.tensorboard {
            tensorboard::cut_after(&dir, self.step).map_err(|e| self.disk_full(e))?;
            return Ok(());
        }
        let mut writer = EventWriter::open(&dir, self.step).map_err(|e| self.disk_full(e))?;
        let json = serde_json::to_string_pretty(&self.config).expect("configs serialise");
        writer
            .text("config", self.step, &format!("```json\n{json}\n```"))
            .and_then(|()| writer.flush())
            .map_err(|e| self.disk_full(e))?;
        self.summaries = Some(Mutex::new(writer));
        Ok(())
    }

    /// The event writer, when there is one.
    fn event_writer(&self) -> Option<MutexGuard<'_, EventWriter>> {
        let writer = self.summaries.as_ref()?;
        // A panic while holding the lock left at worst a record unwritten.
        Some(
            writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The scalars of a metrics line at `step`, flushed.
    pub(super) fn summarise_line(
        &self,
        step: u64,
        line: &impl MetricsLine,
    ) -> Result<(), TrainError> {
        let Some(mut writer) = self.event_writer() else {
            return Ok(());
        };
        writer
            .scalars(step, &line.scalars())
            .and_then(|()| writer.flush())
            .map_err(|e| self.disk_full(e))
    }

    /// The sample pictures `files` (tag, PNG file) at the current step, flushed.
    pub(super) fn summarise_images(&self, files: &[(&str, &Path)]) -> Result<(), TrainError> {
        let Some(mut writer) = self.event_writer() else {
            return Ok(());
        };
        for (tag, png) in files {
            writer
                .image_file(tag, self.step, png)
                .map_err(|e| self.disk_full(e))?;
        }
        writer.flush().map_err(|e| self.disk_full(e))
    }

    /// Writes the event file out to the disk, as a checkpoint is.
    pub(super) fn sync_summaries(&self) -> Result<(), TrainError> {
        match self.event_writer() {
            Some(mut writer) => writer.sync().map_err(|e| self.disk_full(e)),
            None => Ok(()),
        }
    }

    /// An IO error of the event files as [`Trainer::write_err`] names it (the disk is full).
    fn disk_full(&self, err: TrainError) -> TrainError {
        match err {
            TrainError::Io { path, source } => self.write_err(&path, source),
            other => other,
        }
    }
}

impl MetricsLine for crate::elastic::RestartRecord {
    /// The restart count and the steps it takes again, as `elastic/*` scalars.
    fn scalars(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("elastic/restart", self.restart as f64),
            ("elastic/steps_redone", self.steps_redone as f64),
        ]
    }
}
