//! What a run writes besides its weights' updates: checkpoints of the current step, the lines of
//! `metrics.jsonl` and the sample pictures of the EMA weights, each also in the TensorBoard event
//! file (`summaries`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::Tensor;
use torch_ext::Generator;

use sample::{sample, save_grid, ClassConditioning, SampleOptions, SamplerConfig};

use super::summaries::MetricsLine;
use super::Trainer;
use crate::checkpoint::{self, CheckpointContents, CheckpointState};
use crate::scaler::LossScaler;
use crate::TrainError;

impl Trainer {
    /// An IO error while writing `path`, naming the newest checkpoint when the disk is full.
    pub(super) fn write_err(&self, path: &Path, e: std::io::Error) -> TrainError {
        TrainError::write(path, e, &self.run_dir.join(checkpoint::CHECKPOINTS_DIR))
    }

    /// Writes a checkpoint for the current step on this thread and returns its directory, once
    /// it is complete on disk (and, in a data-parallel run, once every rank knows it is). A
    /// write still in flight on the writer thread ([`Trainer::run`]'s) finishes first.
    ///
    /// # Errors
    /// The write in flight's error; as [`checkpoint::save`].
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        self.mark(crate::elastic::Phase::Checkpoint);
        self.checkpointed_step = Some(self.step);
        if !self.is_writer() {
            return self.wait_for_checkpoint();
        }
        self.writer.wait()?;
        let state = self.checkpoint_state();
        let contents = self.checkpoint_contents(&state);
        let dir = checkpoint::save(
            &self.run_dir.join(checkpoint::CHECKPOINTS_DIR),
            &contents,
            self.config.keep_last,
        )?;
        self.sync_summaries()?;
        self.checkpoint_barrier()?;
        Ok(dir)
    }

    /// Starts a checkpoint of the current step on the writer thread ([`crate::writer`]): waits
    /// for the write in flight (reporting it, and how long the step waited, through `hooks` and
    /// the next metrics line), copies the state to host memory, and returns. The other ranks of
    /// a data-parallel run go on at once: none of them reads the checkpoint before the run ends.
    ///
    /// # Errors
    /// The previous write's error.
    pub(super) fn start_checkpoint(
        &mut self,
        hooks: &mut dyn super::TrainHooks,
    ) -> Result<(), TrainError> {
        self.checkpointed_step = Some(self.step);
        if !self.is_writer() {
            return Ok(());
        }
        // The write in flight finishes first, before a second copy of the state is made.
        let since = std::time::Instant::now();
        if let Some(written) = self.writer.wait()? {
            let waited = since.elapsed().as_secs_f64();
            hooks.on_checkpoint(&written.dir);
            *self.checkpoint_wait.get_or_insert(0.0) += waited;
            hooks.message(&format!(
                "step {}: the checkpoint of step {} was still being written; waited {waited:.2} s \
                 for it",
                self.step, written.step
            ));
        }
        let state = self.checkpoint_state();
        let snapshot = self.checkpoint_contents(&state).to_host();
        let root = self.run_dir.join(checkpoint::CHECKPOINTS_DIR);
        self.writer.start(root, snapshot, self.config.keep_last)?;
        Ok(())
    }

    /// Reports a checkpoint that the writer thread finished since the last step.
    ///
    /// # Errors
    /// The write's error (a full disk, say): the run stops with it.
    pub(super) fn poll_checkpoint(
        &mut self,
        hooks: &mut dyn super::TrainHooks,
    ) -> Result<(), TrainError> {
        if let Some(written) = self.writer.poll()? {
            hooks.on_checkpoint(&written.dir);
        }
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any, and reports it.
    ///
    /// # Errors
    /// Its error.
    pub(super) fn finish_checkpoint(
        &mut self,
        hooks: &mut dyn super::TrainHooks,
    ) -> Result<(), TrainError> {
        if let Some(written) = self.writer.wait()? {
            hooks.on_checkpoint(&written.dir);
        }
        Ok(())
    }

    /// What a checkpoint of the current step holds, with its `state`
    /// ([`Trainer::checkpoint_state`]).
    pub(super) fn checkpoint_contents<'a>(
        &'a self,
        state: &'a CheckpointState,
    ) -> CheckpointContents<'a> {
        CheckpointContents {
            state,
            model: &self.model_vs,
            ema: &self.ema_vs,
            optimizer: self.optim.state_tensors(),
        }
    }

    /// The `state.json` of a checkpoint of the current step.
    pub(super) fn checkpoint_state(&self) -> CheckpointState {
        let (epoch, batch_in_epoch) = self.loader.position(self.step);
        CheckpointState {
            format_version: checkpoint::FORMAT_VERSION,
            step: self.step,
            epoch,
            batch_in_epoch: batch_in_epoch as u64,
            seed: self.config.seed,
            ema_updates: self.ema.updates(),
            skipped_steps: self.stats.skipped(),
            config: serde_json::to_value(&self.config).expect("configs serialise"),
            world_size: self.world_size(),
            class_names: self.class_names.clone(),
            loss_scale: self.scaler.as_ref().map(LossScaler::state),
            digests: Default::default(),
            timestep_history: self
                .importance
                .as_ref()
                .map(|i| i.sampler.history().to_vec()),
        }
    }

    /// Samples `n_sample_images` with the EMA weights and writes `samples/<tag>-grid.png` and
    /// `samples/<tag>-strip.png` (10 snapshots of the first chain, as in the notebook). A
    /// class-conditional run samples row r of the 8-wide grid for class r mod K (conditional,
    /// W = 1).
    ///
    /// # Errors
    /// [`TrainError::Io`] or [`TrainError::Sample`] naming the file when the images cannot be
    /// written.
    pub fn write_samples(&self, tag: &str) -> Result<Vec<PathBuf>, TrainError> {
        let c = self.config.model.in_channels();
        let s = self.config.model.image_size();
        let n = self.config.n_sample_images.max(1) as i64;
        let options = SampleOptions {
            prediction: self.config.objective.prediction,
            clip_x0: true,
            n_snapshots: 10,
            autocast: self.sampling_autocast(),
            class_cond: self.config.model.num_classes().map(|k| ClassConditioning {
                labels: (0..n).map(|i| (i / 8) % k).collect(),
                guidance: 1.0,
            }),
            initial_noise: None,
        };
        let mut gen = Generator::new(self.config.seed ^ 0x5A5A, self.device)
            .map_err(sample::SampleError::from)?;
        let out = sample(
            self.ema_model.as_ref(),
            &self.sched,
            &SamplerConfig::seed_notebook(),
            &options,
            [n, c, s, s],
            &mut gen,
            |_, _| {},
        )?;
        if !self.is_writer() {
            return Ok(Vec::new());
        }
        let dir = self.run_dir.join("samples");
        fs::create_dir_all(&dir).map_err(|e| self.write_err(&dir, e))?;
        let grid_path = dir.join(format!("{tag}-grid.png"));
        save_grid(&out.images, 8, &grid_path)?;
        let strip: Vec<Tensor> = out
            .snapshots
            .iter()
            .map(|(_, x)| x.narrow(0, 0, 1))
            .collect();
        let strip_path = dir.join(format!("{tag}-strip.png"));
        save_grid(&Tensor::cat(&strip, 0), strip.len().max(1), &strip_path)?;
        self.summarise_images(&[
            ("samples/grid", grid_path.as_path()),
            ("samples/strip", strip_path.as_path()),
        ])?;
        Ok(vec![grid_path, strip_path])
    }

    /// Appends `record` to `metrics.jsonl`, and its scalars to the TensorBoard event file at
    /// `step` (both flushed).
    pub(super) fn append_metrics(
        &self,
        step: u64,
        record: &impl MetricsLine,
    ) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let path = self.run_dir.join("metrics.jsonl");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| self.write_err(&path, e))?;
        // One write of the whole line, so that a reader never sees half of one.
        let line = serde_json::to_string(record).expect("records serialise") + "\n";
        f.write_all(line.as_bytes())
            .map_err(|e| self.write_err(&path, e))?;
        self.summarise_line(step, record)
    }
}
