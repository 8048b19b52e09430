//! The training step (Ho et al. 2020, Alg. 1): the step's draws, forward, backward, the NaN
//! guard, clipping, Adam and the EMA, all on the device, and the reads of the device statistics.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

use data::Batch;

use super::{dropout_seed, step_seed, Trainer};
use crate::elastic::Phase;
use crate::objective::{per_sample_loss_cond, ObjectiveConfig, TimestepSampling};
use crate::optim::Adam;
use crate::stats::StatsRead;
use crate::timesteps::ImportanceSampler;
use crate::TrainError;

/// Importance sampling of t (`objective.timestep_sampling = "importance"`): the sampler, and
/// the loss weights 1/(T p_t) of the current step's draws.
#[derive(Debug)]
pub(super) struct Importance {
    pub(super) sampler: ImportanceSampler,
    /// `[N]` f32 on the device, set by [`Importance::draw`].
    weights: Option<Tensor>,
}

impl Importance {
    /// For `objective.timestep_sampling = "importance"`, a sampler of `n_steps` timesteps with no
    /// history yet (t is drawn uniformly until every t has its losses); `None` otherwise.
    pub(super) fn for_objective(objective: &ObjectiveConfig, n_steps: usize) -> Option<Self> {
        (objective.timestep_sampling == TimestepSampling::Importance).then(|| Self {
            sampler: ImportanceSampler::new(n_steps),
            weights: None,
        })
    }

    /// Restores the history saved in a checkpoint's `state.json` (`path`).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming `path` when it has no history or a bad one.
    pub(super) fn load(
        &mut self,
        history: Option<Vec<Vec<f64>>>,
        path: &Path,
    ) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let history = history.ok_or_else(|| {
            bad(
                "no timestep_history, which objective.timestep_sampling = \"importance\" \
                 needs to resume exactly"
                    .into(),
            )
        })?;
        let n_steps = self.sampler.history().len();
        self.sampler = ImportanceSampler::from_history(history, n_steps).map_err(bad)?;
        Ok(())
    }

    /// Draws the t of `n` samples: `n` uniforms from the run's generator, mapped through the
    /// sampler's CDF on the host; keeps their loss weights for the step.
    ///
    /// # Errors
    /// [`TrainError::Config`] when the generator cannot draw on `device`.
    fn draw(&mut self, gen: &mut Generator, n: i64, device: Device) -> Result<Tensor, TrainError> {
        let mut uniforms = Tensor::zeros([n], (Kind::Double, device));
        gen.uniform_(&mut uniforms, 0.0, 1.0)
            .map_err(|e| TrainError::Config(format!("drawing t on {device:?}: {e}")))?;
        let uniforms = Vec::<f64>::try_from(uniforms.to_device(Device::Cpu)).expect("f64 draws");
        let (t, weights) = self.sampler.draw(&uniforms);
        let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        self.weights = Some(Tensor::from_slice(&weights).to_device(device));
        Ok(Tensor::from_slice(&t).to_device(device))
    }

    /// Records the step's per-sample losses (before their weights) at their `t`.
    fn record(&mut self, t: &Tensor, losses: &Tensor) {
        let t = Vec::<i64>::try_from(t.to_device(Device::Cpu)).expect("int64 timesteps");
        let host = losses.to_kind(Kind::Double).to_device(Device::Cpu);
        self.sampler
            .update(&t, &Vec::<f64>::try_from(host).expect("f64 losses"));
    }
}

impl Trainer {
    /// t for this process's `n` samples from the run's generator: by importance sampling
    /// ([`Importance::draw`]) or uniformly on 0..T.
    ///
    /// # Errors
    /// As [`Importance::draw`].
    pub(super) fn draw_t(&mut self, n: i64, n_train: i64) -> Result<Tensor, TrainError> {
        match self.importance.as_mut() {
            Some(importance) => importance.draw(&mut self.gen, n, self.device),
            None => Ok(self
                .gen
                .randint(0, n_train, &[n], self.device)
                .expect("the run's generator is on its device")),
        }
    }
}

/// What one step did, as 0-dim tensors on the device: [`Trainer::train_step`] returns before
/// the device has finished the step, and nothing is read back until asked. The first of the
/// accessors reads all four values in one transfer (a synchronisation) and keeps them.
#[derive(Debug)]
pub struct StepOutcome {
    loss: Tensor,
    grad_norm: Tensor,
    lr: Tensor,
    found_inf: Tensor,
    values: std::cell::OnceCell<StepValues>,
}

/// A step's outputs on the device: what [`Trainer::device_step`] returns and a captured graph
/// overwrites at each replay.
#[derive(Debug)]
pub(super) struct StepTensors {
    pub(super) loss: Tensor,
    pub(super) grad_norm: Tensor,
    pub(super) lr: Tensor,
    pub(super) found_inf: Tensor,
}

impl From<StepTensors> for StepOutcome {
    fn from(t: StepTensors) -> Self {
        Self {
            loss: t.loss,
            grad_norm: t.grad_norm,
            lr: t.lr,
            found_inf: t.found_inf,
            values: std::cell::OnceCell::new(),
        }
    }
}

/// The values of a [`StepOutcome`], on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepValues {
    /// The loss (NaN or infinite when skipped).
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Whether the update was skipped for a non-finite loss or gradient.
    pub skipped: bool,
}

impl StepOutcome {
    /// All four values (reads them from the device the first time).
    pub fn values(&self) -> StepValues {
        *self.values.get_or_init(|| {
            let parts = [&self.loss, &self.grad_norm, &self.lr, &self.found_inf]
                .map(|t| t.detach().to_kind(Kind::Double).reshape([]));
            let v = Vec::<f64>::try_from(Tensor::stack(&parts, 0)).expect("four scalars");
            StepValues {
                loss: v[0],
                grad_norm: v[1],
                lr: v[2],
                skipped: v[3] != 0.0,
            }
        })
    }

    /// The loss (NaN or infinite when skipped).
    pub fn loss(&self) -> f64 {
        self.values().loss
    }

    /// The gradient norm before clipping.
    pub fn grad_norm(&self) -> f64 {
        self.values().grad_norm
    }

    /// The learning rate used.
    pub fn lr(&self) -> f64 {
        self.values().lr
    }

    /// Whether the update was skipped for a non-finite loss or gradient.
    pub fn skipped(&self) -> bool {
        self.values().skipped
    }
}

impl Trainer {
    /// One optimizer step on `batch` (Alg. 1): draws t and ε from the run's generator reseeded
    /// with [`step_seed`], updates the weights and the EMA unless the loss or gradient is not
    /// finite.
    ///
    /// The step does not wait for the device: the non-finite check, the skip, gradient clipping,
    /// the learning-rate schedule and the EMA decay are all decided on the device (the fused
    /// Adam kernel and the EMA lerp read a `found_inf` flag), and the loss and norm accumulate
    /// there. The statistics are read every `log_every` and `checkpoint_every` steps and at the
    /// last step, and the NaN guard's rule is checked then: a run whose steps were non-finite
    /// `max_nonfinite_in_a_row` times in a row stops at the first read after that.
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] at a read that finds `max_nonfinite_in_a_row` skipped steps in
    /// a row since the previous one.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepOutcome, TrainError> {
        self.step_with(batch)
    }

    /// [`Trainer::train_step`], with the gradients averaged by DDP's `Reducer` while
    /// [`Trainer::run`] has the rank group hold one (data-parallel runs average them after
    /// backward otherwise).
    pub(super) fn step_with(&mut self, batch: &Batch) -> Result<StepOutcome, TrainError> {
        self.gen
            .set_seed(step_seed(self.config.seed, self.step) as u64);
        // The dropout masks too are a function of (seed, step) (see the module docs).
        self.dropout_gen
            .set_seed(dropout_seed(self.config.seed, self.step) as u64);
        let shape: Vec<i64> = batch.shape.iter().map(|&d| d as i64).collect();
        let images = Tensor::from_slice(&batch.images).view(shape.as_slice());
        let x_0 = if self.device.is_cuda() {
            // From pageable memory the copy would wait for the device to finish the previous
            // step; from pinned memory it is queued behind it.
            images
                .pin_memory(self.device)
                .to_device_(self.device, Kind::Float, true, false)
        } else {
            images
        };
        // The labels of a class-conditional run, on the device as the images are.
        let labels = self.config.model.num_classes().map(|_| {
            let labels = Tensor::from_slice(&batch.labels);
            if self.device.is_cuda() {
                labels
                    .pin_memory(self.device)
                    .to_device_(self.device, Kind::Int64, true, false)
            } else {
                labels
            }
        });
        #[cfg(feature = "cuda")]
        let outcome = match self.graphed.take() {
            Some(mut graphed) => {
                let outcome = graphed.step(self, x_0, labels);
                self.graphed = Some(graphed);
                outcome?
            }
            None => StepOutcome::from(self.device_step_with(&x_0, labels.as_ref())?),
        };
        #[cfg(not(feature = "cuda"))]
        let outcome = StepOutcome::from(self.device_step_with(&x_0, labels.as_ref())?);
        self.step += 1;
        if self.reads_after_this_step() {
            self.read_stats()?;
        }
        Ok(outcome)
    }

    /// The device's part of a step on `x_0` and, for a class-conditional run, its `labels`
    /// (both already on the device): every kernel from the t and ε draws to the EMA update, with
    /// no host synchronisation and no host-side state changed but the tensors' contents, so that
    /// a CUDA graph can capture it.
    #[cfg(feature = "cuda")]
    pub(super) fn device_step(&mut self, x_0: &Tensor, labels: Option<&Tensor>) -> StepTensors {
        self.device_step_with(x_0, labels)
            .expect("a single-process step runs no collective")
    }

    /// [`Trainer::device_step`] with the data-parallel hooks: the rank's slice of the global
    /// draws, rank 0's BatchNorm buffers, the gradient average (by the rank group's Reducer
    /// during backward, or after it) and the loss all-reduce that carries the stop votes. Alone,
    /// each hook is a no-op.
    pub(super) fn device_step_with(
        &mut self,
        x_0: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<StepTensors, TrainError> {
        let (t, noise, labels) = self.draw_step(x_0, labels)?;
        self.optim.zero_grad();
        self.mark(Phase::Forward);
        self.broadcast_buffers()?;
        tch::no_grad(|| {
            for (live, backup) in &mut self.buffers {
                backup.copy_(live);
            }
        });
        let loss = self.forward_backward(x_0, &noise, &t, labels.as_ref())?;
        self.mark(Phase::AllReduce);
        self.average_gradients()?;
        let overflow = self.unscale_gradients()?;
        let norm = self.optim.grad_norm();
        // Data-parallel: the mean over the ranks (and their stop requests travel along).
        let loss = self.global_loss(&loss)?;
        self.mark(Phase::Optimizer);
        // Everything below stays on the device (see the docs above); n = step − skipped steps.
        let lr = self
            .config
            .optim
            .lr_tensor(self.optim.steps_tensor(), self.total_steps());
        let (found, found_inf) = self.stats.record(&loss, &norm, &lr, overflow.as_ref());
        let clip = self
            .config
            .optim
            .grad_clip
            .map(|max| Adam::clip_scale(&norm, max));
        self.optim.step_on_device(&lr, &found_inf, clip.as_ref());
        tch::no_grad(|| {
            // A skipped step must not leave NaN statistics behind.
            for (live, backup) in &mut self.buffers {
                let restored = backup.where_self(&found, live);
                live.copy_(&restored);
            }
        });
        self.ema.update_unless(Some(&found_inf));
        if let Some(scaler) = self.scaler.as_mut() {
            scaler.update();
        }
        Ok(StepTensors {
            loss: loss.detach(),
            grad_norm: norm,
            lr,
            found_inf,
        })
    }

    /// The forward and backward passes of a step on this rank's images `x_0` with their draws:
    /// one pass, or with `grad_accum = K` one per micro-batch of `len / K` images (slices of the
    /// same draws, in order), each loss scaled by 1/K so that the summed gradient is the
    /// whole batch's. Data-parallel with the Reducer, only the last pass arms its hooks (DDP's
    /// `no_sync` for the others), so the gradients are averaged once per step. Returns the
    /// loss of the rank's whole batch (the mean of the micro-batches' losses), detached.
    ///
    /// # Errors
    /// [`TrainError::Config`] when `x_0` does not split into K micro-batches; the Reducer's
    /// errors.
    fn forward_backward(
        &mut self,
        x_0: &Tensor,
        noise: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor, TrainError> {
        let k = self.config.grad_accum.max(1) as i64;
        let local = x_0.size()[0];
        if local % k != 0 {
            return Err(TrainError::Config(format!(
                "a batch of {local} images does not split into grad_accum = {k} micro-batches: \
                 {local} / {k} is not a whole number of images"
            )));
        }
        let micro = local / k;
        let weights = self.importance.as_mut().and_then(|i| i.weights.take());
        let mut losses = Vec::new();
        let mut total: Option<Tensor> = None;
        for idx in 0..k {
            let last = idx + 1 == k;
            let part = |xs: &Tensor| {
                if k == 1 {
                    xs.shallow_clone()
                } else {
                    xs.narrow(0, idx * micro, micro)
                }
            };
            if last {
                self.before_forward()?;
            }
            if k > 1 {
                self.mark(Phase::Forward);
            }
            let autocast = self.autocast();
            let per_sample = per_sample_loss_cond(
                self.model.as_ref(),
                &self.sched,
                &self.config.objective,
                &part(x_0),
                &part(noise),
                &part(t),
                labels.map(part).as_ref(),
                Some(&mut self.dropout_gen),
                autocast,
            );
            // Importance sampling weights each loss by 1/(T p_t) and records it unweighted.
            let loss = match &weights {
                None => per_sample.mean(Kind::Float),
                Some(w) => {
                    losses.push(per_sample.detach());
                    (&per_sample * part(w)).mean(Kind::Float)
                }
            };
            // The mean over a micro-batch, divided by K, is the micro-batch's share of the mean
            // over the whole batch (K = 1 keeps the loss as it is, bit for bit).
            let share = if k == 1 { loss } else { loss / k as f64 };
            // fp16: backward runs on the loss times the scale, so that small gradients survive.
            let scaled = match &self.scaler {
                Some(scaler) => scaler.scale_loss(&share),
                None => share.shallow_clone(),
            };
            self.mark(Phase::Backward);
            if last {
                self.before_backward(&scaled)?;
            }
            scaled.backward();
            let detached = share.detach();
            total = Some(match total {
                None => detached,
                Some(sum) => sum + detached,
            });
        }
        if let Some(importance) = self.importance.as_mut() {
            importance.record(t, &Tensor::cat(&losses, 0));
        }
        Ok(total.expect("at least one micro-batch"))
    }

    /// fp16: divides the (averaged) gradients by the loss scale and returns the scaler's
    /// `found_inf`, 1 when one of them overflowed; `None` at other precisions.
    ///
    /// # Errors
    /// As [`crate::scaler::LossScaler::unscale_`].
    fn unscale_gradients(&mut self) -> Result<Option<Tensor>, TrainError> {
        let Some(scaler) = self.scaler.as_mut() else {
            return Ok(None);
        };
        let mut grads: Vec<Tensor> = self
            .params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        Ok(Some(scaler.unscale_(&mut grads)?.shallow_clone()))
    }

    /// The step's random draws, from the run's generator reseeded for the step: t and ε
    /// ([`Trainer::draw_t_and_noise`]), then, for a class-conditional run, the labels after
    /// label dropout ([`Trainer::draw_label_dropout`]).
    pub(super) fn draw_step(
        &mut self,
        x_0: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Option<Tensor>), TrainError> {
        let n_train = self.sched.schedule().n_steps() as i64;
        let (t, noise) = self.draw_t_and_noise(x_0, n_train)?;
        let labels = labels
            .map(|labels| self.draw_label_dropout(labels))
            .transpose()?;
        Ok((t, noise, labels))
    }

    /// Whether the step just taken ends with a read of the device statistics: at metrics lines,
    /// checkpoints and the last step.
    pub(super) fn reads_after_this_step(&self) -> bool {
        self.step.is_multiple_of(self.config.log_every)
            || self.step.is_multiple_of(self.config.checkpoint_every)
            || self.step >= self.total_steps()
    }

    /// Reads the device statistics and applies the NaN guard's abort rule.
    pub(super) fn read_stats(&mut self) -> Result<StatsRead, TrainError> {
        let read = self.stats.read(self.step);
        self.skipped_steps = read.skipped;
        self.last_read = Some(read);
        let max = self.config.max_nonfinite_in_a_row;
        if read.worst_in_a_row >= u64::from(max) {
            return Err(TrainError::NonFinite(format!(
                "{} steps in a row had a non-finite loss or gradient (seen at step {}, {} skipped in all); \
                 the run stops here: lower optim.lr, set optim.grad_clip, or check the data",
                read.worst_in_a_row, self.step, read.skipped
            )));
        }
        Ok(read)
    }
}
