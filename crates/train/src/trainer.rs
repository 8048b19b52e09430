//! The training loop (Ho et al. 2020, Alg. 1) with EMA, checkpoints, exact resume, a NaN
//! guard, metrics and sample pictures.
//!
//! Reproducibility: every step reseeds libtorch from (seed, step) before drawing t, ε and
//! dropout masks, and the loader's batches are a pure function of (seed, epoch, index). So the
//! complete random state of a run is its seed and its step, and a resumed run on the CPU
//! replays the uninterrupted run's losses exactly.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use data::{Batch, Dataset, Loader, LoaderConfig};
use model::Denoiser;
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;

use crate::checkpoint::{self, CheckpointContents, CheckpointState};
use crate::config::{Precision, TrainConfig};
use crate::ema::Ema;
use crate::objective::training_loss;
use crate::optim::Adam;
use crate::TrainError;
use sample::{sample, save_grid, SampleOptions, SamplerConfig};

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
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The loss (NaN or infinite when skipped).
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
    /// Whether the update was skipped for a non-finite loss or gradient.
    pub skipped: bool,
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
    /// After every step.
    fn on_step(&mut self, _step: u64, _epoch: u64, _outcome: &StepOutcome) {}
    /// After a metrics line was written.
    fn on_metrics(&mut self, _record: &MetricsRecord) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _dir: &Path) {}
    /// After sample pictures were written.
    fn on_samples(&mut self, _files: &[PathBuf]) {}
    /// A line worth showing the user.
    fn message(&mut self, _text: &str) {}
}

/// No-op hooks.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// The seed of step `step` of a run seeded with `seed` (SplitMix64 of the pair), so that every
/// step's randomness is independent of the steps before it.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed
        ^ step
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x6A09_E667_F3BC_C908);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// A training run in progress.
pub struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    device: Device,
    model_vs: VarStore,
    model: Box<dyn Denoiser>,
    ema_vs: VarStore,
    ema_model: Box<dyn Denoiser>,
    ema: Ema,
    optim: Adam,
    sched: ScheduleTensors,
    loader: Loader,
    step: u64,
    skipped_steps: u64,
    nonfinite_in_a_row: u32,
    /// Non-trainable tensors the forward pass updates (BatchNorm running statistics), and a
    /// copy from before the current step: a skipped step must not leave NaN statistics behind.
    buffers: Vec<(Tensor, Tensor)>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run_dir", &self.run_dir)
            .field("step", &self.step)
            .finish()
    }
}

impl Trainer {
    /// A fresh run of `config` on `dataset`, writing to `run_dir` (created; `config.json` is
    /// written there).
    ///
    /// # Errors
    /// [`TrainError::Config`] when the dataset does not fit the model (channels, size) or the
    /// config is invalid; [`TrainError::Io`] when the run directory cannot be written.
    pub fn new(
        config: TrainConfig,
        dataset: Dataset,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if dataset.channels() as i64 != config.model.in_channels() {
            return Err(TrainError::Config(format!(
                "the dataset has {} channel(s) but model.in_channels is {}: pick a matching model",
                dataset.channels(),
                config.model.in_channels()
            )));
        }
        let out_size = config
            .transform
            .size
            .map_or([dataset.height(), dataset.width()], |s| s);
        let size = config.model.image_size();
        if out_size != [size as usize, size as usize] {
            return Err(TrainError::Config(format!(
                "images are {}x{} after the transform but the model expects {size}x{size}: set transform.size",
                out_size[0], out_size[1]
            )));
        }
        let loader_config = LoaderConfig {
            batch_size: config.batch_size,
            shuffle: true,
            drop_last: true,
            seed: config.seed,
            n_workers: config.n_workers,
            prefetch: 2 * config.n_workers.max(1),
        };
        let loader = Loader::new(dataset, &config.transform, loader_config)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        if loader.batches_per_epoch() == 0 {
            return Err(TrainError::Config(format!(
                "the dataset has {} images, fewer than one batch of {}: lower batch_size",
                loader.dataset().len(),
                config.batch_size
            )));
        }
        let schedule = Schedule::new(&config.schedule)
            .map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        let sched = ScheduleTensors::new(&schedule, device);
        tch::manual_seed(config.seed as i64);
        let model_vs = VarStore::new(device);
        let model = config
            .model
            .build(&model_vs.root())
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let ema_vs = VarStore::new(device);
        let ema_model = config
            .model
            .build(&ema_vs.root())
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let ema = Ema::new(config.ema.clone(), &ema_vs, &model_vs)?;
        let optim = Adam::new(&model_vs, config.optim.clone());
        let buffers = checkpoint::named_tensors(&model_vs)
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(_, t)| {
                let backup = t.copy();
                (t, backup)
            })
            .collect();
        fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let config_path = run_dir.join("config.json");
        let json = serde_json::to_vec_pretty(&config).expect("configs serialise");
        fs::write(&config_path, json).map_err(|e| TrainError::io(&config_path, e))?;
        Ok(Self {
            config,
            run_dir: run_dir.to_path_buf(),
            device,
            model_vs,
            model,
            ema_vs,
            ema_model,
            ema,
            optim,
            sched,
            loader,
            step: 0,
            skipped_steps: 0,
            nonfinite_in_a_row: 0,
            buffers,
        })
    }

    /// Continues the run in `run_dir` from its newest checkpoint (or `from`, a checkpoint
    /// directory), with the configuration saved in it unless `config` replaces it.
    ///
    /// # Errors
    /// [`TrainError::NoCheckpoint`] when there is none; [`TrainError::Checkpoint`],
    /// [`TrainError::Model`] or [`TrainError::OptimizerState`] when it is unreadable or does not
    /// match the model.
    pub fn resume(
        run_dir: &Path,
        from: Option<&Path>,
        config: Option<TrainConfig>,
        dataset: Dataset,
        device: Device,
    ) -> Result<Self, TrainError> {
        let root = run_dir.join("checkpoints");
        let dir = match from {
            Some(dir) => dir.to_path_buf(),
            None => checkpoint::latest(&root).ok_or_else(|| TrainError::NoCheckpoint {
                dir: root.clone(),
                hint: "start a new run without --resume",
            })?,
        };
        let state = checkpoint::read_state(&dir)?;
        let config = match config {
            Some(c) => c,
            None => serde_json::from_value(state.config.clone()).map_err(|e| {
                TrainError::Checkpoint {
                    path: dir.join(checkpoint::STATE_FILE),
                    message: format!("config: {e}"),
                }
            })?,
        };
        let mut trainer = Self::new(config, dataset, run_dir, device)?;
        trainer.load_weights(&dir)?;
        let optim_state = checkpoint::read_tensors(&dir.join(checkpoint::OPTIMIZER_FILE))?;
        let optim_state: Vec<(String, Tensor)> = optim_state
            .into_iter()
            .map(|(n, t)| (n, t.to_device(device)))
            .collect();
        trainer
            .optim
            .load_state(&optim_state, state.step - state.skipped_steps)?;
        trainer.ema.set_updates(state.ema_updates);
        trainer.step = state.step;
        trainer.skipped_steps = state.skipped_steps;
        trainer.truncate_metrics()?;
        Ok(trainer)
    }

    fn load_weights(&mut self, dir: &Path) -> Result<(), TrainError> {
        model::load_safetensors(&mut self.model_vs, &dir.join(checkpoint::MODEL_FILE))?;
        model::load_safetensors(&mut self.ema_vs, &dir.join(checkpoint::EMA_FILE))?;
        Ok(())
    }

    /// Drops metrics lines past the current step (written after the checkpoint we resume from).
    fn truncate_metrics(&self) -> Result<(), TrainError> {
        let path = self.run_dir.join("metrics.jsonl");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<MetricsRecord>(line).is_ok_and(|r| r.step <= self.step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(&path, kept).map_err(|e| TrainError::io(&path, e))
    }

    /// The resolved configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The live network.
    pub fn model(&self) -> &dyn Denoiser {
        self.model.as_ref()
    }

    /// The EMA network (what sampling uses).
    pub fn ema_model(&self) -> &dyn Denoiser {
        self.ema_model.as_ref()
    }

    /// The schedule's tensors.
    pub fn schedule(&self) -> &ScheduleTensors {
        &self.sched
    }

    /// The loader.
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    /// The live weights' var store.
    pub fn model_vs(&self) -> &VarStore {
        &self.model_vs
    }

    /// The number of optimizer steps the run is configured for.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps(self.loader.batches_per_epoch())
    }

    fn autocast(&self) -> bool {
        self.config.precision == Precision::Bf16 && self.device.is_cuda()
    }

    /// One optimizer step on `batch` (Alg. 1): draws t and ε from the step's seed, updates the
    /// weights and the EMA unless the loss or gradient is not finite.
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] after `max_nonfinite_in_a_row` skipped steps in a row.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepOutcome, TrainError> {
        tch::manual_seed(step_seed(self.config.seed, self.step));
        let shape: Vec<i64> = batch.shape.iter().map(|&d| d as i64).collect();
        let x_0 = Tensor::from_slice(&batch.images)
            .view(shape.as_slice())
            .to_device(self.device);
        let n_train = self.sched.schedule().n_steps() as i64;
        let t = Tensor::randint(n_train, [shape[0]], (Kind::Int64, self.device));
        let noise = Tensor::randn_like(&x_0);
        self.optim.zero_grad();
        tch::no_grad(|| {
            for (live, backup) in &mut self.buffers {
                backup.copy_(live);
            }
        });
        let loss = training_loss(
            self.model.as_ref(),
            &self.sched,
            &self.config.objective,
            &x_0,
            &noise,
            &t,
            self.autocast(),
        );
        loss.backward();
        let norm = self.optim.grad_norm();
        // One device-to-host read per step, for both numbers.
        let stats =
            Vec::<f64>::try_from(Tensor::stack(&[loss.detach(), norm], 0).to_kind(Kind::Double))
                .expect("two scalars");
        let (loss_value, grad_norm) = (stats[0], stats[1]);
        let lr = self
            .config
            .optim
            .lr_at(self.step - self.skipped_steps, self.total_steps());
        let skipped = !loss_value.is_finite() || !grad_norm.is_finite();
        if skipped {
            self.skipped_steps += 1;
            self.nonfinite_in_a_row += 1;
            self.optim.zero_grad();
            tch::no_grad(|| {
                for (live, backup) in &mut self.buffers {
                    live.copy_(backup);
                }
            });
            if self.nonfinite_in_a_row >= self.config.max_nonfinite_in_a_row {
                return Err(TrainError::NonFinite(format!(
                    "{} steps in a row had a non-finite loss or gradient (last at step {}, loss {loss_value}, grad norm {grad_norm}); \
                     the run stops here: lower optim.lr, set optim.grad_clip, or check the data",
                    self.nonfinite_in_a_row, self.step
                )));
            }
        } else {
            self.nonfinite_in_a_row = 0;
            if let Some(max) = self.config.optim.grad_clip {
                self.optim.clip_grad_norm(grad_norm, max);
            }
            self.optim.step(lr);
            self.ema.update();
        }
        self.step += 1;
        Ok(StepOutcome {
            loss: loss_value,
            grad_norm,
            lr,
            skipped,
        })
    }

    /// Writes a checkpoint for the current step and returns its directory.
    ///
    /// # Errors
    /// As [`checkpoint::save`].
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let (epoch, batch_in_epoch) = self.loader.position(self.step);
        let state = CheckpointState {
            format_version: checkpoint::FORMAT_VERSION,
            step: self.step,
            epoch,
            batch_in_epoch: batch_in_epoch as u64,
            seed: self.config.seed,
            ema_updates: self.ema.updates(),
            skipped_steps: self.skipped_steps,
            config: serde_json::to_value(&self.config).expect("configs serialise"),
        };
        let contents = CheckpointContents {
            state: &state,
            model: &self.model_vs,
            ema: &self.ema_vs,
            optimizer: self.optim.state_tensors(),
        };
        checkpoint::save(
            &self.run_dir.join("checkpoints"),
            &contents,
            self.config.keep_last,
        )
    }

    /// Samples `n_sample_images` with the EMA weights and writes `samples/<tag>-grid.png` and
    /// `samples/<tag>-strip.png` (10 snapshots of the first chain, as in the notebook).
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
            autocast: self.autocast(),
        };
        let out = sample(
            self.ema_model.as_ref(),
            &self.sched,
            &SamplerConfig::seed_notebook(),
            &options,
            [n, c, s, s],
            self.config.seed ^ 0x5A5A,
            |_, _| {},
        )?;
        let dir = self.run_dir.join("samples");
        fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let grid_path = dir.join(format!("{tag}-grid.png"));
        save_grid(&out.images, 8, &grid_path)?;
        let strip: Vec<Tensor> = out
            .snapshots
            .iter()
            .map(|(_, x)| x.narrow(0, 0, 1))
            .collect();
        let strip_path = dir.join(format!("{tag}-strip.png"));
        save_grid(&Tensor::cat(&strip, 0), strip.len().max(1), &strip_path)?;
        Ok(vec![grid_path, strip_path])
    }

    fn append_metrics(&self, record: &MetricsRecord) -> Result<(), TrainError> {
        let path = self.run_dir.join("metrics.jsonl");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))
    }

    /// Trains to the configured number of steps, checkpointing every `checkpoint_every` steps
    /// and at the end. When `stop` becomes true the current step finishes, a checkpoint is
    /// written and the run returns [`RunEnd::Interrupted`].
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] when too many steps in a row are non-finite; IO errors.
    pub fn run(
        &mut self,
        hooks: &mut dyn TrainHooks,
        stop: &AtomicBool,
    ) -> Result<RunEnd, TrainError> {
        let total = self.total_steps();
        let per_epoch = self.loader.batches_per_epoch();
        hooks.on_start(total, self.step, per_epoch);
        let mut window = (0.0f64, 0u64, 0u64, Instant::now()); // loss sum, finite steps, images, since
        let mut last_norm = 0.0;
        while self.step < total {
            let (epoch, start) = self.loader.position(self.step);
            for batch in self.loader.epoch_from(epoch, start) {
                if stop.load(Ordering::SeqCst) {
                    let dir = self.save_checkpoint()?;
                    hooks.on_checkpoint(&dir);
                    hooks.message(&format!(
                        "interrupted: checkpoint at step {} in {}",
                        self.step,
                        dir.display()
                    ));
                    return Ok(RunEnd::Interrupted);
                }
                let outcome = self.train_step(&batch)?;
                hooks.on_step(self.step, epoch, &outcome);
                window.2 += batch.shape[0] as u64;
                if !outcome.skipped {
                    window.0 += outcome.loss;
                    window.1 += 1;
                    last_norm = outcome.grad_norm;
                }
                if self.step.is_multiple_of(self.config.log_every) || self.step == total {
                    let record = MetricsRecord {
                        step: self.step,
                        epoch,
                        loss: if window.1 > 0 {
                            window.0 / window.1 as f64
                        } else {
                            f64::NAN
                        },
                        lr: outcome.lr,
                        grad_norm: last_norm,
                        images_per_sec: window.2 as f64
                            / window.3.elapsed().as_secs_f64().max(1e-9),
                        skipped_steps: self.skipped_steps,
                    };
                    self.append_metrics(&record)?;
                    hooks.on_metrics(&record);
                    window = (0.0, 0, 0, Instant::now());
                }
                if self.step.is_multiple_of(self.config.checkpoint_every) && self.step < total {
                    let dir = self.save_checkpoint()?;
                    hooks.on_checkpoint(&dir);
                }
                if self.step >= total {
                    break;
                }
            }
            let finished_epoch = self.loader.position(self.step).1 == 0;
            let k = self.config.sample_every_epochs;
            if finished_epoch && k > 0 && (epoch + 1) % k == 0 && self.step < total {
                let files = self.write_samples(&format!("epoch-{:04}", epoch + 1))?;
                hooks.on_samples(&files);
            }
        }
        let dir = self.save_checkpoint()?;
        hooks.on_checkpoint(&dir);
        if self.config.sample_every_epochs > 0 {
            let files = self.write_samples("final")?;
            hooks.on_samples(&files);
        }
        Ok(RunEnd::Finished)
    }
}
