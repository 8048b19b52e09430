//! The loop: [`Trainer::run`] trains to the configured number of steps with metrics lines,
//! checkpoints, evaluations and sample pictures, and tells a front end through [`TrainHooks`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::evaluation::EvalOutcome;
use super::{StepOutcome, Trainer};
use crate::elastic::Phase;
use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// The epoch of the last batch.
    pub epoch: u64,
    /// Mean loss over the finite steps since the previous record.
    pub loss: f64,
    /// The learning rate of the last step.
    pub lr: f64,
    /// The gradient norm of the last finite step, before clipping.
    pub grad_norm: f64,
    /// Training throughput since the previous record.
    pub images_per_sec: f64,
    /// Steps skipped for non-finite values since the start of the run.
    pub skipped_steps: u64,
    /// The number of data-parallel ranks (1 in records written before they existed).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Seconds the training thread waited since the previous record because a checkpoint came
    /// due while the previous one was still being written; absent when it did not wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_wait_s: Option<f64>,
}

fn one() -> usize {
    1
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// All steps done.
    Finished,
    /// Stopped on request (Ctrl-C) after a checkpoint.
    Interrupted,
}

/// Callbacks for a front end (progress bars, plots). Every method has a no-op default.
pub trait TrainHooks {
    /// Before the first step: the total and the step the run starts from.
    fn on_start(&mut self, _total_steps: u64, _start_step: u64, _batches_per_epoch: usize) {}
    /// After every step. Reading the outcome's values waits for the device to finish the step:
    /// a front end that shows the loss should take it from [`TrainHooks::on_metrics`].
    fn on_step(&mut self, _step: u64, _epoch: u64, _outcome: &StepOutcome) {}
    /// After a metrics line was written.
    fn on_metrics(&mut self, _record: &MetricsRecord) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _dir: &Path) {}
    /// After sample pictures were written.
    fn on_samples(&mut self, _files: &[PathBuf]) {}
    /// After an evaluation of the samples ([`crate::quality`]) was scored and recorded.
    fn on_evaluation(&mut self, _record: &crate::quality::EvalRecord) {}
    /// A line worth showing the user.
    fn message(&mut self, _text: &str) {}
}

/// No-op hooks.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

impl Trainer {
    /// Trains to the configured number of steps, checkpointing every `checkpoint_every` steps
    /// and at the end. When `stop` becomes true the current step finishes, a checkpoint is
    /// written and the run returns [`RunEnd::Interrupted`]. Data-parallel, each rank keeps its
    /// position in `<run>/ranks/` and, when a collective fails, writes where it was
    /// ([`crate::elastic`]) and says so through [`TrainHooks::message`].
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] when too many steps in a row are non-finite; IO errors.
    pub fn run(
        &mut self,
        hooks: &mut dyn TrainHooks,
        stop: &AtomicBool,
    ) -> Result<RunEnd, TrainError> {
        self.start_position_log()?;
        let result = self.with_grad_sync(|trainer| trainer.run_steps(hooks, stop));
        if let Err(err) = &result {
            // Where this rank was when a collective failed: `<run>/ranks/rank-K.json`.
            if let Some(line) = self.report_position(err) {
                hooks.message(&line);
            }
        }
        result
    }

    /// [`Trainer::run`], with the gradient averaging of a data-parallel run set up.
    fn run_steps(
        &mut self,
        hooks: &mut dyn TrainHooks,
        stop: &AtomicBool,
    ) -> Result<RunEnd, TrainError> {
        let total = self.total_steps();
        let per_epoch = self.loader.batches_per_epoch();
        self.check_scorer()?;
        hooks.on_start(total, self.step, per_epoch);
        // The metrics window: images, since.
        let mut window = (0u64, Instant::now());
        self.stop_agreed = false;
        // Alone, a stop request is acted on before the next step; in a data-parallel run, once
        // the step's all-reduce has told every rank about it.
        let distributed = self.dist.is_some();
        let stop_now = |trainer: &Self| match distributed {
            false => stop.load(Ordering::SeqCst),
            true => trainer.stop_agreed,
        };
        // A resumed run first runs the evaluation that a stop request abandoned or skipped.
        let mut pending = self.evaluation_pending(total)?;
        while self.step < total {
            let (epoch, start) = self.loader.position(self.step);
            let mut batches = self.loader.epoch_from(epoch, start);
            while let Some(batch) = {
                self.mark(Phase::Data);
                batches.next_batch()
            } {
                // An unreadable record of a streamed dataset stops the run, named.
                let batch = batch?;
                if pending && self.evaluate_in_loop(hooks, stop)? {
                    return self.stop_with_checkpoint(hooks);
                }
                pending = false;
                if stop_now(self) {
                    return self.stop_with_checkpoint(hooks);
                }
                self.stop_local = stop.load(Ordering::SeqCst);
                let outcome = self.step_with(&batch)?;
                hooks.on_step(self.step, epoch, &outcome);
                // A checkpoint written since, or its error, is reported here.
                self.poll_checkpoint(hooks)?;
                window.0 += (batch.shape[0] * self.world_size()) as u64;
                if self.step.is_multiple_of(self.config.log_every) || self.step == total {
                    let record = self.write_metrics(epoch, window)?;
                    hooks.on_metrics(&record);
                    window = (0, Instant::now());
                }
                if self.step.is_multiple_of(self.config.checkpoint_every) && self.step < total {
                    self.start_checkpoint(hooks)?;
                }
                // A stop request skips the evaluation, as it skips the preview below.
                if self.evaluates_after_this_step(total)
                    && !stop_now(self)
                    && self.evaluate_in_loop(hooks, stop)?
                {
                    return self.stop_with_checkpoint(hooks);
                }
                if self.step >= total {
                    break;
                }
            }
            let finished_epoch = self.loader.position(self.step).1 == 0;
            let k = self.config.sample_every_epochs;
            // A stop request skips the preview: sampling can take longer than a job's grace
            // period after SIGTERM, and the checkpoint comes first.
            let stopping = stop_now(self);
            if finished_epoch && k > 0 && (epoch + 1) % k == 0 && self.step < total && !stopping {
                let files = self.write_samples(&format!("epoch-{:04}", epoch + 1))?;
                hooks.on_samples(&files);
            }
        }
        self.finish_checkpoint(hooks)?;
        let dir = self.save_checkpoint()?;
        hooks.on_checkpoint(&dir);
        // No rank waits on rank 0 after the last checkpoint: it samples alone.
        if self.config.sample_every_epochs > 0 && self.is_writer() {
            let files = self.write_samples("final")?;
            hooks.on_samples(&files);
        }
        Ok(RunEnd::Finished)
    }

    /// Evaluates now, unless a stop request comes first; true when it did (the evaluation was
    /// abandoned, on every rank), and the run must stop.
    fn evaluate_in_loop(
        &mut self,
        hooks: &mut dyn TrainHooks,
        stop: &AtomicBool,
    ) -> Result<bool, TrainError> {
        self.mark(Phase::Evaluation);
        if self.is_writer() {
            hooks.message(&format!(
                "step {}: evaluating {} EMA samples",
                self.step, self.config.eval_samples
            ));
        }
        match self.evaluate_unless(&|| stop.load(Ordering::SeqCst))? {
            EvalOutcome::Recorded(record) => hooks.on_evaluation(&record),
            EvalOutcome::Waited => {}
            EvalOutcome::Abandoned => {
                hooks.message(&format!(
                    "the evaluation of step {} was abandoned for the stop request: a --resume \
                     runs it again",
                    self.step
                ));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the stop request's checkpoint and ends the run as interrupted. A checkpoint of
    /// this step that is already written, or in flight (the signal came while the step waited
    /// for the writer), is finished and kept rather than written a second time: a stop takes
    /// one write at most.
    fn stop_with_checkpoint(&mut self, hooks: &mut dyn TrainHooks) -> Result<RunEnd, TrainError> {
        self.finish_checkpoint(hooks)?;
        let dir = if self.checkpointed_step == Some(self.step) {
            // Every rank took this branch (they all record the step); the others wait here
            // until rank 0's write is complete, as they would for a new one.
            self.sync_summaries()?;
            self.checkpoint_barrier()?;
            self.run_dir
                .join(crate::checkpoint::CHECKPOINTS_DIR)
                .join(crate::checkpoint::dir_name(self.step))
        } else {
            let dir = self.save_checkpoint()?;
            hooks.on_checkpoint(&dir);
            dir
        };
        hooks.message(&format!(
            "interrupted: checkpoint at step {} in {}",
            self.step,
            dir.display()
        ));
        Ok(RunEnd::Interrupted)
    }

    /// Writes the metrics line of the current step, of the epoch `epoch`, whose window saw
    /// `window.0` images since `window.1`; starts the next window of the device statistics.
    fn write_metrics(
        &mut self,
        epoch: u64,
        window: (u64, Instant),
    ) -> Result<MetricsRecord, TrainError> {
        // train_step read the device statistics at this step.
        let read = self.last_read.take().expect("a read at every metrics step");
        let record = MetricsRecord {
            step: self.step,
            epoch,
            loss: read.window_loss,
            lr: read.lr,
            grad_norm: read.last_norm,
            images_per_sec: window.0 as f64 / window.1.elapsed().as_secs_f64().max(1e-9),
            skipped_steps: read.skipped,
            world_size: self.world_size(),
            checkpoint_wait_s: self.checkpoint_wait.take(),
        };
        self.stats.start_window(self.step, read.skipped);
        self.append_metrics(self.step, &record)?;
        Ok(record)
    }
}
