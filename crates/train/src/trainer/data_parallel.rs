//! The data-parallel parts of [`Trainer`] (see [`crate::distributed`] for what they do and
//! why): which rank writes, the start-of-run broadcast, each step's draws, buffer broadcast,
//! gradient average and loss all-reduce, and the checkpoint barrier. Without a
//! [`Distributed`] context every method here is the single-process behaviour or a no-op.

use std::path::PathBuf;

use tch::{Device, Kind, Tensor};
use torch_ext::dist::{DistError, Distributed, GradSync};

use super::{step_seed, Trainer};
use crate::checkpoint;
use crate::elastic::{self, Phase, Position, PositionLog};
use crate::TrainError;

/// The seed offset of rank `rank`'s own random stream (dropout masks) in a data-parallel run.
fn rank_stream(rank: usize) -> u64 {
    (rank as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl Trainer {
    /// Whether this process writes the run's files: alone, or rank 0.
    pub(super) fn is_writer(&self) -> bool {
        self.dist.as_ref().is_none_or(Distributed::is_main)
    }

    /// The number of data-parallel ranks (1 alone).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, Distributed::world_size)
    }

    /// The data-parallel run this trainer is a rank of; `None` alone.
    pub fn distributed(&self) -> Option<&Distributed> {
        self.dist.as_ref()
    }

    /// The world size of the run up to the checkpoint this one resumed from; `None` for a fresh
    /// run.
    pub fn resumed_world_size(&self) -> Option<usize> {
        self.resumed_world_size
    }

    /// `op` at the current step, for error messages.
    pub(super) fn at_step(&self, op: &str) -> String {
        format!("{op} at step {}", self.step)
    }

    /// Makes every rank start from rank 0's state: checks that the ranks resumed at the same
    /// step, then broadcasts rank 0's weights, buffers and EMA weights.
    pub(super) fn sync_start(&self) -> Result<(), TrainError> {
        let Some(dist) = self.dist.as_ref() else {
            return Ok(());
        };
        let counters = [self.step, self.skipped_steps, self.ema.updates()].map(|v| v as i64);
        let mut rank0 = vec![Tensor::from_slice(&counters).to_device(self.device)];
        dist.broadcast(&mut rank0, "the broadcast of rank 0's step at the start")?;
        let rank0 = Vec::<i64>::try_from(&rank0[0].to_device(Device::Cpu)).expect("3 counters");
        if rank0 != counters {
            return Err(TrainError::Dist(DistError::Rendezvous {
                rank: Some(dist.rank()),
                world_size: Some(dist.world_size()),
                message: format!(
                    "this rank starts at step {} but rank 0 at step {}: every rank must resume from \
                     the same checkpoint (one run directory, on a file system they share)",
                    self.step, rank0[0]
                ),
            }));
        }
        let mut tensors: Vec<Tensor> = checkpoint::named_tensors(&self.model_vs)
            .into_iter()
            .chain(checkpoint::named_tensors(&self.ema_vs))
            .map(|(_, t)| t)
            .collect();
        Ok(dist.broadcast(
            &mut tensors,
            "the broadcast of rank 0's weights at the start",
        )?)
    }

    /// The step's timesteps and noise for the images `x_0`, drawn after the step's reseed.
    /// Data-parallel: the draws of the whole global batch, exactly as one process makes them,
    /// of which this rank keeps its slice (the one its images come from); then the dropout
    /// generator is reseeded with a stream of this rank's own.
    pub(super) fn draw_t_and_noise(
        &mut self,
        x_0: &Tensor,
        n_train: i64,
    ) -> Result<(Tensor, Tensor), TrainError> {
        let on_device = "the run's generator is on its device";
        let Some(dist) = self.dist.as_ref() else {
            let t = self.draw_t(x_0.size()[0], n_train)?;
            let noise = self.gen.randn_like(x_0).expect(on_device);
            return Ok((t, noise));
        };
        let (rank, world) = (dist.rank(), dist.world_size());
        let mut shape = x_0.size();
        let (global, local) = (self.config.batch_size as i64, shape[0]);
        if local * world as i64 != global {
            return Err(TrainError::Config(format!(
                "rank {rank} got a batch of {local} images, not its share of the global batch of \
                 {global} over {world} ranks"
            )));
        }
        let start = rank as i64 * local;
        shape[0] = global;
        let t = self
            .gen
            .randint(0, n_train, &[global], self.device)
            .expect(on_device)
            .narrow(0, start, local);
        let noise = self
            .gen
            .randn(shape.as_slice(), (x_0.kind(), self.device))
            .expect(on_device)
            .narrow(0, start, local);
        // Each rank's dropout masks come from a stream of its own.
        self.dropout_gen
            .set_seed(step_seed(self.config.seed ^ rank_stream(rank), self.step) as u64);
        Ok((t, noise))
    }

    /// Label dropout for a class-conditional run: one uniform draw per image of the global batch
    /// from the run's generator (after t and ε), of which this rank keeps its slice, as for the
    /// noise; a label whose draw is below `objective.p_uncond` becomes the null label. So W ranks
    /// drop the labels one process with the whole batch drops.
    pub(super) fn draw_label_dropout(&mut self, labels: &Tensor) -> Result<Tensor, TrainError> {
        let null_label = self
            .config
            .model
            .num_classes()
            .expect("labels only for a class-conditional run");
        let local = labels.size()[0];
        let (global, start) = match self.dist.as_ref() {
            None => (local, 0),
            Some(dist) => (self.config.batch_size as i64, dist.rank() as i64 * local),
        };
        let mut uniforms = Tensor::empty([global], (Kind::Float, self.device));
        self.gen
            .uniform_(&mut uniforms, 0.0, 1.0)
            .expect("the run's generator is on its device");
        Ok(crate::objective::drop_labels(
            labels,
            &uniforms.narrow(0, start, local),
            self.config.objective.p_uncond,
            null_label,
        ))
    }

    /// DDP's `broadcast_buffers`: before each forward pass, BatchNorm's running statistics
    /// become rank 0's.
    pub(super) fn broadcast_buffers(&self) -> Result<(), TrainError> {
        let Some(dist) = &self.dist else {
            return Ok(());
        };
        let mut live: Vec<Tensor> = self
            .buffers
            .iter()
            .map(|(l, _)| l.shallow_clone())
            .collect();
        Ok(dist.broadcast(
            &mut live,
            &self.at_step("the broadcast of rank 0's buffers"),
        )?)
    }

    /// Runs `body` with the gradients averaged as `distributed.grad_sync` says: with
    /// [`GradSync::Overlap`] the rank group owns DDP's Reducer over the parameters for the
    /// length of `body`, and drops it afterwards, on every exit path, so that a bare
    /// [`Trainer::train_step`] averages after `backward()` again. Alone, just `body`.
    pub(super) fn with_grad_sync<T>(
        &mut self,
        body: impl FnOnce(&mut Self) -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        let mode = self.config.distributed.grad_sync;
        let Some(dist) = self.dist.as_mut().filter(|_| mode == GradSync::Overlap) else {
            return body(self);
        };
        dist.start_grad_sync(mode, &self.params, "setting up DDP's gradient Reducer")?;
        let result = body(self);
        if let Some(dist) = self.dist.as_mut() {
            dist.end_grad_sync();
        }
        result
    }

    /// Before the forward pass: the Reducer's bookkeeping (and, after its first step, its one
    /// bucket rebuild, a collective); nothing without a Reducer.
    pub(super) fn before_forward(&mut self) -> Result<(), TrainError> {
        let op = self.at_step("the Reducer's bucket rebuild");
        match self.dist.as_mut() {
            Some(dist) => Ok(dist.before_forward(&op)?),
            None => Ok(()),
        }
    }

    /// Before `backward()`: arms the Reducer's autograd hooks on the loss; nothing without a
    /// Reducer.
    pub(super) fn before_backward(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        let op = self.at_step("the Reducer's backward setup");
        match self.dist.as_mut() {
            Some(dist) => Ok(dist.before_backward(loss, &op)?),
            None => Ok(()),
        }
    }

    /// After `backward()`: every gradient becomes its mean over the ranks, unless the Reducer
    /// already made it so during backward.
    pub(super) fn average_gradients(&self) -> Result<(), TrainError> {
        match &self.dist {
            Some(dist) => Ok(dist.average_gradients(
                &self.params,
                &self.at_step("the all-reduce of the gradients"),
            )?),
            None => Ok(()),
        }
    }

    /// The step's loss as the NaN guard and the metrics see it: alone, the loss; data-parallel,
    /// its mean over the ranks, from one small all-reduce that also carries this rank's stop
    /// request (so that every rank takes the same skip decision and stops after the same step).
    pub(super) fn global_loss(&mut self, loss: &Tensor) -> Result<Tensor, TrainError> {
        let Some(dist) = self.dist.as_ref() else {
            return Ok(loss.detach());
        };
        let stop = Tensor::from(f32::from(u8::from(self.stop_local))).to_device(self.device);
        let mut shared = vec![Tensor::stack(
            &[loss.detach().to_kind(Kind::Float), stop],
            0,
        )];
        dist.sum(&mut shared, &self.at_step("the all-reduce of the losses"))?;
        let mean = shared[0].get(0) / dist.world_size() as f64;
        self.stop_agreed = shared[0].double_value(&[1]) > 0.0;
        Ok(mean)
    }

    /// The other ranks' part of [`Trainer::save_checkpoint`]: wait for rank 0 to write it.
    pub(super) fn wait_for_checkpoint(&self) -> Result<PathBuf, TrainError> {
        self.checkpoint_barrier()?;
        Ok(self
            .run_dir
            .join(checkpoint::CHECKPOINTS_DIR)
            .join(checkpoint::dir_name(self.step)))
    }

    /// Every rank waits here while rank 0 writes a checkpoint.
    pub(super) fn checkpoint_barrier(&self) -> Result<(), TrainError> {
        match &self.dist {
            Some(dist) => Ok(dist.barrier(&self.at_step("the barrier after rank 0's checkpoint"))?),
            None => Ok(()),
        }
    }

    /// Records this rank's position ([`crate::elastic`]); nothing alone.
    pub(super) fn mark(&self, phase: Phase) {
        if let (Some(log), Some(dist)) = (&self.position, &self.dist) {
            let seq = dist
                .group()
                .collectives_started()
                .unwrap_or(log.last().last_completed_collective);
            log.mark(Position {
                step: self.step,
                phase,
                last_completed_collective: seq,
            });
        }
    }

    /// Starts this rank's position log in `<run>/ranks/`; nothing alone.
    pub(super) fn start_position_log(&mut self) -> Result<(), TrainError> {
        let Some(dist) = &self.dist else {
            return Ok(());
        };
        let start = Position {
            step: self.step,
            phase: Phase::Data,
            last_completed_collective: dist.group().collectives_started().unwrap_or(0),
        };
        let log = PositionLog::create(&self.run_dir, dist.rank(), start)
            .map_err(|e| self.write_err(&elastic::position_path(&self.run_dir, dist.rank()), e))?;
        self.position = Some(log);
        Ok(())
    }

    /// After `err`: when it is a failed collective, writes `<run>/ranks/rank-K.json` and returns
    /// the line that says where this rank was.
    pub(super) fn report_position(&self, err: &TrainError) -> Option<String> {
        let TrainError::Dist(DistError::Collective { .. }) = err else {
            return None;
        };
        let (log, dist) = (self.position.as_ref()?, self.dist.as_ref()?);
        let started = dist.group().collectives_started().unwrap_or(0);
        Some(
            match log.write_report(dist.world_size(), started, err.to_string()) {
                Ok((path, r)) => format!(
                    "rank {} was at step {}, phase {}, last completed collective #{} (started \
                     #{}): {}",
                    r.rank,
                    r.step,
                    r.phase,
                    r.last_completed_collective,
                    r.collectives_started,
                    path.display()
                ),
                Err(e) => format!(
                    "rank {} cannot write where it was to {}: {e}",
                    dist.rank(),
                    elastic::report_path(&self.run_dir, dist.rank()).display()
                ),
            },
        )
    }

    /// A restarted run (`restart` > 0): appends its [`elastic::RestartRecord`] to
    /// `metrics.jsonl` (rank 0), with the steps redone since the `furthest` step an earlier
    /// attempt had completed ([`elastic::furthest_step`]).
    ///
    /// # Errors
    /// When `metrics.jsonl` cannot be written.
    pub fn record_restart(
        &self,
        restart: u64,
        furthest: Option<u64>,
    ) -> Result<elastic::RestartRecord, TrainError> {
        let record = elastic::RestartRecord {
            step: self.step,
            restart,
            steps_redone: furthest.unwrap_or(self.step).saturating_sub(self.step),
        };
        self.append_metrics(self.step, &record)?;
        Ok(record)
    }
}
