//! The training loop (Ho et al. 2020, Alg. 1) with EMA, checkpoints, exact resume, a NaN
//! guard, metrics and sample pictures.
//!
//! Reproducibility: the run owns a generator on its device ([`torch_ext::Generator`]) and
//! reseeds it from [`step_seed`]`(seed, step)` before drawing t and ε; the initial weights come
//! from a CPU generator seeded with the run's seed; and the loader's batches are a pure function
//! of (seed, epoch, index). So the complete random state of a run is its seed and its step, and a
//! resumed run on the CPU replays the uninterrupted run's losses exactly. Because the generator's
//! state at every step boundary is a function of (seed, step), checkpoints do not store it: the
//! step counter in `state.json` restores it.
//!
//! The one exception is dropout inside the network: tch's `dropout` takes no generator and draws
//! from libtorch's process-wide generator. For a network with dropout (the paper's U-Net), each
//! step therefore also reseeds that global generator, from a stream of the step's seed separate
//! from t and ε ([`dropout_seed`]). Resume stays exact, but a trainer of such a network shares
//! the global generator with anything else in the process that draws from it: two of them on
//! parallel threads can interleave each other's dropout masks. Networks without dropout never
//! touch the global generator.
//!
//! Class-conditional runs (`model.num_classes`, `ddpm train --class-cond`) take each batch's
//! labels from the loader and replace each by the null label with probability
//! `objective.p_uncond` ([`crate::objective::drop_labels`]), deciding from uniform draws of the
//! run's generator made after t and ε: the drops are a function of (seed, step) like the rest, so
//! resume stays exact, and t and ε are those the run would draw without classes.
//!
//! Data-parallel: the `*_distributed` constructors make one rank of a run over several processes
//! ([`Distributed`]); [`crate::distributed`] says what each rank does and what stays the same.
//! Without a [`Distributed`] (or with one rank) the loop is the single-process one, unchanged.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};
use torch_ext::dist::Distributed;
use torch_ext::Generator;

use data::{Batch, Dataset, Loader, LoaderConfig};
use model::Denoiser;
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;

use crate::checkpoint::{self, CheckpointContents, CheckpointState};
use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::objective::training_loss_cond;
use crate::optim::Adam;
use crate::run_dir::RunDir;
use crate::stats::{DeviceStats, StatsRead};
use crate::{SkippedCheckpoint, TrainError};
use sample::{sample, save_grid, ClassConditioning, SampleOptions, SamplerConfig};

mod data_parallel;
mod evaluation;
#[cfg(feature = "cuda")]
mod graph;

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
}

fn one() -> usize {
    1
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
struct StepTensors {
    loss: Tensor,
    grad_norm: Tensor,
    lr: Tensor,
    found_inf: Tensor,
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

/// The seed of libtorch's global generator for the dropout masks of step `step` (see the module
/// docs): [`step_seed`] of another run seed, so that the masks never reuse the t and ε stream.
pub fn dropout_seed(seed: u64, step: u64) -> i64 {
    step_seed(seed ^ 0xD40F_0E7A_5EED_0001, step)
}

/// Whether a run on `device` can train with [`Trainer::enable_cuda_graph`], checked without
/// building anything (for a front end to refuse `--cuda-graph` before loading data).
///
/// # Errors
/// [`TrainError::CudaGraph`] naming what is missing: a CUDA device, or this build's `cuda`
/// feature.
pub fn check_cuda_graph(device: Device) -> Result<(), TrainError> {
    if !cfg!(feature = "cuda") {
        return Err(TrainError::CudaGraph(
            "this build has no CUDA graph support: build with `--features cuda` (the `cuda` feature of the train and cli crates)".into(),
        ));
    }
    if !device.is_cuda() {
        return Err(TrainError::CudaGraph(format!(
            "CUDA graphs need a CUDA device, and this run is on {device:?}: pass --device cuda or drop --cuda-graph"
        )));
    }
    Ok(())
}

/// A training run in progress. It holds its run directory's lock ([`RunDir`]) until dropped.
pub struct Trainer {
    config: TrainConfig,
    run: RunDir,
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
    /// Draws t and ε; reseeded from [`step_seed`] every step.
    gen: Generator,
    step: u64,
    /// Steps skipped so far, as of the last read of `stats`.
    skipped_steps: u64,
    /// The NaN guard's counters, the window's loss and the last gradient norm, on the device.
    stats: DeviceStats,
    /// What the read at the current step found, for `run`'s metrics line.
    last_read: Option<StatsRead>,
    /// The step as a CUDA graph, once [`Trainer::enable_cuda_graph`] was called.
    #[cfg(feature = "cuda")]
    graphed: Option<graph::GraphedStep>,
    /// Non-trainable tensors the forward pass updates (BatchNorm running statistics), and a
    /// copy from before the current step: a skipped step must not leave NaN statistics behind.
    buffers: Vec<(Tensor, Tensor)>,
    /// Newer checkpoints that [`Trainer::resume`] passed over because they do not load.
    skipped_checkpoints: Vec<SkippedCheckpoint>,
    /// The data-parallel run this process is a rank of; `None` alone.
    dist: Option<Distributed>,
    /// The trainable parameters in the order the network made them: the gradients the ranks
    /// average.
    params: Vec<Tensor>,
    /// This process's stop request, sent with the next step's all-reduce.
    stop_local: bool,
    /// Whether some rank asked to stop, as the last step's all-reduce told.
    stop_agreed: bool,
    /// The world size of the checkpoint this run resumed from.
    resumed_world_size: Option<usize>,
    /// A class-conditional run's class names (its dataset's), for its checkpoints.
    class_names: Vec<String>,
    /// FID in the loop: the scorer the front end supplied, and the best checkpoint's record.
    quality: evaluation::QualityState,
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
    /// A fresh run of `config` on `dataset`, writing to `run_dir`: takes the directory's lock
    /// ([`RunDir::lock`]), then [`Trainer::create`].
    ///
    /// # Errors
    /// [`TrainError::Locked`] when another trainer holds the directory, then as
    /// [`Trainer::create`].
    pub fn new(
        config: TrainConfig,
        dataset: impl Into<Arc<Dataset>>,
        run_dir: &Path,
        device: Device,
    ) -> Result<Self, TrainError> {
        Self::create(RunDir::lock(run_dir)?, config, dataset, device)
    }

    /// A fresh run in the locked directory `run`; `config.json` is written there.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] when the directory already holds run files (see
    /// [`RunDir::clear`]); [`TrainError::Config`] when the dataset does not fit the model
    /// (channels, size) or the config is invalid; [`TrainError::Io`] when the run directory
    /// cannot be written.
    pub fn create(
        run: RunDir,
        config: TrainConfig,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
    ) -> Result<Self, TrainError> {
        Self::create_distributed(run, config, dataset, device, None)
    }

    /// [`Trainer::create`] for one rank of a data-parallel run (`None`: alone, as `create`).
    /// Rank 0 passes the locked directory ([`RunDir::lock`]) and checks and writes the files;
    /// the other ranks pass [`RunDir::follow`]. Every rank calls it at the same time: it ends by
    /// broadcasting rank 0's weights.
    ///
    /// # Errors
    /// As [`Trainer::create`]; [`TrainError::Config`] when the world size does not divide
    /// `batch_size`; [`TrainError::Distributed`] when the broadcast fails.
    ///
    /// # Panics
    /// When rank 0's `run` is not locked.
    pub fn create_distributed(
        run: RunDir,
        config: TrainConfig,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        if dist.as_ref().is_none_or(Distributed::is_main) {
            run.ensure_fresh()?;
        }
        let trainer = Self::build(run, config, dataset.into(), device, dist)?;
        trainer.write_config()?;
        trainer.sync_start()?;
        Ok(trainer)
    }

    /// A fresh run in the locked directory `run` that replaces an earlier one: its
    /// [`crate::run_dir::RUN_FILES`] are deleted once the configuration and the dataset have
    /// been checked (so a mistake in them costs no run), then `config.json` is written. Returns
    /// the trainer and the deleted paths.
    ///
    /// # Errors
    /// As [`Trainer::create`], and [`TrainError::Io`] when a file cannot be deleted.
    pub fn overwrite(
        run: RunDir,
        config: TrainConfig,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
    ) -> Result<(Self, Vec<PathBuf>), TrainError> {
        Self::overwrite_distributed(run, config, dataset, device, None)
    }

    /// [`Trainer::overwrite`] for one rank of a data-parallel run, as
    /// [`Trainer::create_distributed`]; only rank 0 deletes files (the others return an empty
    /// list).
    ///
    /// # Errors
    /// As [`Trainer::overwrite`] and [`Trainer::create_distributed`].
    ///
    /// # Panics
    /// When rank 0's `run` is not locked.
    pub fn overwrite_distributed(
        run: RunDir,
        config: TrainConfig,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<(Self, Vec<PathBuf>), TrainError> {
        let trainer = Self::build(run, config, dataset.into(), device, dist)?;
        let mut deleted = Vec::new();
        if trainer.is_writer() {
            deleted = trainer.run.run_files();
            trainer.run.clear()?;
        }
        trainer.write_config()?;
        trainer.sync_start()?;
        Ok((trainer, deleted))
    }

    /// Everything but the files: the network, EMA, optimizer, schedule and loader.
    fn build(
        run: RunDir,
        config: TrainConfig,
        dataset: Arc<Dataset>,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        assert!(
            !dist.as_ref().is_none_or(Distributed::is_main) || run.is_locked(),
            "the trainer that writes the run (rank 0) must hold the run directory's lock"
        );
        config.validate()?;
        if let Some(dist) = &dist {
            if !config.batch_size.is_multiple_of(dist.world_size()) {
                return Err(TrainError::Config(format!(
                    "batch_size = {} is the global batch and does not split over {} ranks: \
                     pick a multiple of {} (--batch-size)",
                    config.batch_size,
                    dist.world_size(),
                    dist.world_size()
                )));
            }
        }
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
        if let Some(k) = config.model.num_classes() {
            check_labels(&config, &dataset, k)?;
        }
        // Checked here, before the loader, whose message would speak of its `drop_last`: training
        // always drops the last partial batch, and that is no config key.
        if dataset.len() < config.batch_size {
            return Err(TrainError::Config(format!(
                "the dataset has {} images, fewer than one batch of {}: lower batch_size (--batch-size)",
                dataset.len(),
                config.batch_size
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
        let mut loader = Loader::new(dataset, &config.transform, loader_config)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        if let Some(dist) = &dist {
            loader = loader
                .sharded(dist.rank(), dist.world_size())
                .map_err(|e| TrainError::Config(e.to_string()))?;
        }
        let schedule = Schedule::new(&config.schedule)
            .map_err(|e| TrainError::Config(format!("schedule: {e}")))?;
        let sched = ScheduleTensors::new(&schedule, device);
        let gen = Generator::new(config.seed, device)
            .map_err(|e| TrainError::Config(format!("a random generator for {device:?}: {e}")))?;
        let model_vs = VarStore::new(device);
        let model = config
            .model
            .build_with(&model_vs.root(), &mut Generator::cpu(config.seed))
            .map_err(|e| TrainError::Config(e.to_string()))?;
        // The EMA network starts as a copy of the live one (Ema::new): its own initial weights
        // never matter.
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
        let run_dir = run.path().to_path_buf();
        let params = model_vs.trainable_variables();
        let class_names = match config.model.num_classes() {
            Some(_) => loader.dataset().class_names().to_vec(),
            None => Vec::new(),
        };
        Ok(Self {
            config,
            run,
            run_dir,
            device,
            model_vs,
            model,
            ema_vs,
            ema_model,
            ema,
            optim,
            sched,
            loader,
            gen,
            step: 0,
            skipped_steps: 0,
            stats: DeviceStats::new(device, 0, 0),
            last_read: None,
            #[cfg(feature = "cuda")]
            graphed: None,
            buffers,
            skipped_checkpoints: Vec::new(),
            dist,
            params,
            stop_local: false,
            stop_agreed: false,
            resumed_world_size: None,
            class_names,
            quality: evaluation::QualityState::default(),
        })
    }

    /// An IO error while writing `path`, naming the newest checkpoint when the disk is full.
    fn write_err(&self, path: &Path, e: std::io::Error) -> TrainError {
        TrainError::write(path, e, &self.run_dir.join(checkpoint::CHECKPOINTS_DIR))
    }

    fn write_config(&self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let config_path = self.run_dir.join("config.json");
        let json = serde_json::to_vec_pretty(&self.config).expect("configs serialise");
        fs::write(&config_path, json).map_err(|e| self.write_err(&config_path, e))
    }

    /// Continues the run in `run_dir` (taking its lock, [`RunDir::lock`]); see
    /// [`Trainer::resume_in`].
    ///
    /// # Errors
    /// [`TrainError::Locked`] when another trainer holds the directory, then as
    /// [`Trainer::resume_in`].
    pub fn resume(
        run_dir: &Path,
        from: Option<&Path>,
        config: Option<TrainConfig>,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
    ) -> Result<Self, TrainError> {
        Self::resume_in(RunDir::lock(run_dir)?, from, config, dataset, device)
    }

    /// Continues the run in the locked directory `run` from the checkpoint directory `from`, or
    /// from its newest checkpoint that loads: a newer one that does not (a truncated or damaged
    /// file, non-finite weights) is passed over and listed in
    /// [`Trainer::skipped_checkpoints`].
    ///
    /// The configuration is the one saved in the checkpoint unless `config` replaces it; then
    /// only the settings in [`crate::config::RESUME_MUTABLE`] may differ. `config.json` is
    /// rewritten, and `metrics.jsonl` cut back to the checkpoint's step, only once the
    /// checkpoint has loaded: a refused resume leaves the run's files as they were.
    ///
    /// # Errors
    /// [`TrainError::NoCheckpoint`] when there is none; [`TrainError::ResumeChange`] when
    /// `config` changes a setting that must stay fixed; [`TrainError::NoLoadableCheckpoint`]
    /// when none loads; with `from`, the error of that checkpoint ([`TrainError::Checkpoint`],
    /// [`TrainError::Model`], [`TrainError::OptimizerState`], …).
    pub fn resume_in(
        run: RunDir,
        from: Option<&Path>,
        config: Option<TrainConfig>,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
    ) -> Result<Self, TrainError> {
        Self::resume_distributed(run, from, config, dataset, device, None)
    }

    /// [`Trainer::resume_in`] for one rank of a data-parallel run, as
    /// [`Trainer::create_distributed`]: every rank reads the checkpoint, only rank 0 rewrites
    /// `config.json` and `metrics.jsonl`, and the ranks then check that they resumed at the same
    /// step and take rank 0's weights. The world size may differ from the checkpoint's (see
    /// [`crate::distributed`] for what that changes).
    ///
    /// # Errors
    /// As [`Trainer::resume_in`] and [`Trainer::create_distributed`]; [`TrainError::Rendezvous`]
    /// when the ranks resumed at different steps.
    ///
    /// # Panics
    /// When rank 0's `run` is not locked.
    pub fn resume_distributed(
        run: RunDir,
        from: Option<&Path>,
        config: Option<TrainConfig>,
        dataset: impl Into<Arc<Dataset>>,
        device: Device,
        dist: Option<Distributed>,
    ) -> Result<Self, TrainError> {
        let mut dist = dist;
        let dataset = dataset.into();
        let root = run.path().join(checkpoint::CHECKPOINTS_DIR);
        let candidates: Vec<PathBuf> = match from {
            Some(dir) => vec![dir.to_path_buf()],
            None => checkpoint::list(&root)
                .into_iter()
                .rev()
                .map(|(_, dir)| dir)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(TrainError::NoCheckpoint {
                dir: root,
                hint: "start a new run without --resume",
            });
        }
        let explicit = from.is_some();
        let mut skipped = Vec::new();
        let mut run = run;
        for dir in candidates {
            let state = match Self::read_resume_state(&dir) {
                Ok(state) => state,
                Err(err) if !explicit => {
                    skipped.push(SkippedCheckpoint {
                        dir,
                        reason: err.to_string(),
                    });
                    continue;
                }
                Err(err) => return Err(err),
            };
            let resolved = match &config {
                Some(given) => {
                    state.1.check_resume(given)?;
                    given.clone()
                }
                None => state.1.clone(),
            };
            let mut trainer = Self::build(run, resolved, dataset.clone(), device, dist.take())?;
            match trainer.load_checkpoint(&dir, &state.0) {
                Ok(()) => {
                    trainer.skipped_checkpoints = skipped;
                    trainer.resumed_world_size = Some(state.0.world_size);
                    trainer.write_config()?;
                    trainer.truncate_metrics()?;
                    trainer.load_best()?;
                    trainer.sync_start()?;
                    return Ok(trainer);
                }
                Err(err) if !explicit => {
                    skipped.push(SkippedCheckpoint {
                        dir,
                        reason: err.to_string(),
                    });
                    run = trainer.run;
                    dist = trainer.dist;
                }
                Err(err) => return Err(err),
            }
        }
        Err(TrainError::NoLoadableCheckpoint {
            dir: root,
            tried: skipped,
        })
    }

    /// A checkpoint's state and the configuration saved in it.
    fn read_resume_state(dir: &Path) -> Result<(CheckpointState, TrainConfig), TrainError> {
        let state = checkpoint::read_state(dir)?;
        let config =
            serde_json::from_value(state.config.clone()).map_err(|e| TrainError::Checkpoint {
                path: dir.join(checkpoint::STATE_FILE),
                message: format!("config: {e}"),
            })?;
        Ok((state, config))
    }

    /// Loads weights, EMA weights, optimizer moments and counters; every tensor is checked to
    /// be finite.
    fn load_checkpoint(&mut self, dir: &Path, state: &CheckpointState) -> Result<(), TrainError> {
        model::load_safetensors(&mut self.model_vs, &dir.join(checkpoint::MODEL_FILE))?;
        model::load_safetensors(&mut self.ema_vs, &dir.join(checkpoint::EMA_FILE))?;
        let optim_path = dir.join(checkpoint::OPTIMIZER_FILE);
        let optim_state = checkpoint::read_tensors(&optim_path)?;
        model::check_finite_named(&optim_state, &optim_path)?;
        let optim_state: Vec<(String, Tensor)> = optim_state
            .into_iter()
            .map(|(n, t)| (n, t.to_device(self.device)))
            .collect();
        let adam_steps =
            state
                .step
                .checked_sub(state.skipped_steps)
                .ok_or_else(|| TrainError::Checkpoint {
                    path: dir.join(checkpoint::STATE_FILE),
                    message: format!(
                        "skipped_steps {} is more than step {}",
                        state.skipped_steps, state.step
                    ),
                })?;
        self.optim.load_state(&optim_state, adam_steps)?;
        self.ema.set_updates(state.ema_updates);
        self.step = state.step;
        self.skipped_steps = state.skipped_steps;
        self.stats = DeviceStats::new(self.device, state.step, state.skipped_steps);
        Ok(())
    }

    /// Newer checkpoints that [`Trainer::resume`] passed over because they do not load, newest
    /// first.
    pub fn skipped_checkpoints(&self) -> &[SkippedCheckpoint] {
        &self.skipped_checkpoints
    }

    /// Drops metrics lines past the current step (written after the checkpoint we resume from).
    fn truncate_metrics(&self) -> Result<(), TrainError> {
        if !self.is_writer() {
            return Ok(());
        }
        let path = self.run_dir.join("metrics.jsonl");
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                // Training lines and evaluation lines alike carry their step.
                serde_json::from_str::<evaluation::StepOf>(line).is_ok_and(|r| r.step <= self.step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(&path, kept).map_err(|e| self.write_err(&path, e))
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
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

    /// Runs every following step as one CUDA graph (`--cuda-graph`): a few eager warm-up
    /// steps, then one captured step that later steps replay with a single launch. See the
    /// `graph` module for what stays outside the graph. A run that cannot be captured is refused
    /// here, before any step.
    ///
    /// # Errors
    /// [`TrainError::CudaGraph`] when the run is not on a CUDA device, when this build has no
    /// CUDA graph support (the `cuda` feature), or when CUDA fails.
    pub fn enable_cuda_graph(&mut self) -> Result<(), TrainError> {
        check_cuda_graph(self.device)?;
        #[cfg(feature = "cuda")]
        {
            self.graphed = Some(graph::GraphedStep::new(self.device)?);
        }
        Ok(())
    }

    /// Whether the steps run as a CUDA graph ([`Trainer::enable_cuda_graph`]).
    pub fn uses_cuda_graph(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.graphed.is_some();
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// The live weights' var store.
    pub fn model_vs(&self) -> &VarStore {
        &self.model_vs
    }

    /// The EMA weights' var store.
    pub fn ema_vs(&self) -> &VarStore {
        &self.ema_vs
    }

    /// The number of optimizer steps the run is configured for.
    pub fn total_steps(&self) -> u64 {
        self.config.total_steps(self.loader.batches_per_epoch())
    }

    fn autocast(&self) -> bool {
        self.config.precision.autocast(self.device)
    }

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
    fn step_with(&mut self, batch: &Batch) -> Result<StepOutcome, TrainError> {
        self.gen
            .set_seed(step_seed(self.config.seed, self.step) as u64);
        if self.config.model.uses_dropout() {
            // tch's dropout takes no generator: its masks come from libtorch's global one,
            // reseeded here so that they too are a function of (seed, step) (see the module docs).
            tch::manual_seed(dropout_seed(self.config.seed, self.step));
        }
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
    fn device_step(&mut self, x_0: &Tensor, labels: Option<&Tensor>) -> StepTensors {
        self.device_step_with(x_0, labels)
            .expect("a single-process step runs no collective")
    }

    /// [`Trainer::device_step`] with the data-parallel hooks: the rank's slice of the global
    /// draws, rank 0's BatchNorm buffers, the gradient average (by the rank group's Reducer
    /// during backward, or after it) and the loss all-reduce that carries the stop votes. Alone,
    /// each hook is a no-op.
    fn device_step_with(
        &mut self,
        x_0: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<StepTensors, TrainError> {
        let (t, noise, labels) = self.draw_step(x_0, labels)?;
        self.optim.zero_grad();
        self.broadcast_buffers()?;
        tch::no_grad(|| {
            for (live, backup) in &mut self.buffers {
                backup.copy_(live);
            }
        });
        self.before_forward()?;
        let loss = training_loss_cond(
            self.model.as_ref(),
            &self.sched,
            &self.config.objective,
            x_0,
            &noise,
            &t,
            labels.as_ref(),
            self.autocast(),
        );
        self.before_backward(&loss)?;
        loss.backward();
        self.average_gradients()?;
        let norm = self.optim.grad_norm();
        // Data-parallel: the mean over the ranks (and their stop requests travel along).
        let loss = self.global_loss(&loss)?;
        // Everything below stays on the device (see the docs above); n = step − skipped steps.
        let lr = self
            .config
            .optim
            .lr_tensor(self.optim.steps_tensor(), self.total_steps());
        let (found, found_inf) = self.stats.record(&loss, &norm, &lr);
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
        Ok(StepTensors {
            loss: loss.detach(),
            grad_norm: norm,
            lr,
            found_inf,
        })
    }

    /// The step's random draws, from the run's generator reseeded for the step: t and ε
    /// ([`Trainer::draw_t_and_noise`]), then, for a class-conditional run, the labels after
    /// label dropout ([`Trainer::draw_label_dropout`]).
    fn draw_step(
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
    fn reads_after_this_step(&self) -> bool {
        self.step.is_multiple_of(self.config.log_every)
            || self.step.is_multiple_of(self.config.checkpoint_every)
            || self.step >= self.total_steps()
    }

    /// Reads the device statistics and applies the NaN guard's abort rule.
    fn read_stats(&mut self) -> Result<StatsRead, TrainError> {
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

    /// Writes a checkpoint for the current step and returns its directory.
    ///
    /// # Errors
    /// As [`checkpoint::save`].
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        if !self.is_writer() {
            return self.wait_for_checkpoint();
        }
        let state = self.checkpoint_state();
        let contents = self.checkpoint_contents(&state);
        let dir = checkpoint::save(
            &self.run_dir.join("checkpoints"),
            &contents,
            self.config.keep_last,
        )?;
        self.checkpoint_barrier()?;
        Ok(dir)
    }

    /// What a checkpoint of the current step holds, with its `state`
    /// ([`Trainer::checkpoint_state`]).
    fn checkpoint_contents<'a>(&'a self, state: &'a CheckpointState) -> CheckpointContents<'a> {
        CheckpointContents {
            state,
            model: &self.model_vs,
            ema: &self.ema_vs,
            optimizer: self.optim.state_tensors(),
        }
    }

    /// The `state.json` of a checkpoint of the current step.
    fn checkpoint_state(&self) -> CheckpointState {
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
            autocast: self.autocast(),
            class_cond: self.config.model.num_classes().map(|k| ClassConditioning {
                labels: (0..n).map(|i| (i / 8) % k).collect(),
                guidance: 1.0,
            }),
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
        Ok(vec![grid_path, strip_path])
    }

    fn append_metrics(&self, record: &impl Serialize) -> Result<(), TrainError> {
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
            .map_err(|e| self.write_err(&path, e))
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
        self.with_grad_sync(|trainer| trainer.run_steps(hooks, stop))
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
        let mut window = (0u64, Instant::now()); // images, since
        self.stop_agreed = false;
        // Alone, a stop request is acted on before the next step; in a data-parallel run, once
        // the step's all-reduce has told every rank about it.
        let distributed = self.dist.is_some();
        let stop_now = |trainer: &Self| match distributed {
            false => stop.load(Ordering::SeqCst),
            true => trainer.stop_agreed,
        };
        while self.step < total {
            let (epoch, start) = self.loader.position(self.step);
            for batch in self.loader.epoch_from(epoch, start) {
                if stop_now(self) {
                    let dir = self.save_checkpoint()?;
                    hooks.on_checkpoint(&dir);
                    hooks.message(&format!(
                        "interrupted: checkpoint at step {} in {}",
                        self.step,
                        dir.display()
                    ));
                    return Ok(RunEnd::Interrupted);
                }
                self.stop_local = stop.load(Ordering::SeqCst);
                let outcome = self.step_with(&batch)?;
                hooks.on_step(self.step, epoch, &outcome);
                window.0 += (batch.shape[0] * self.world_size()) as u64;
                if self.step.is_multiple_of(self.config.log_every) || self.step == total {
                    // train_step read the device statistics at this step.
                    let read = self.last_read.take().expect("a read at every metrics step");
                    let record = MetricsRecord {
                        step: self.step,
                        epoch,
                        loss: read.window_loss,
                        lr: read.lr,
                        grad_norm: read.last_norm,
                        images_per_sec: window.0 as f64
                            / window.1.elapsed().as_secs_f64().max(1e-9),
                        skipped_steps: read.skipped,
                        world_size: self.world_size(),
                    };
                    self.stats.start_window(self.step, read.skipped);
                    self.append_metrics(&record)?;
                    hooks.on_metrics(&record);
                    window = (0, Instant::now());
                }
                if self.step.is_multiple_of(self.config.checkpoint_every) && self.step < total {
                    let dir = self.save_checkpoint()?;
                    hooks.on_checkpoint(&dir);
                }
                // A stop request skips the evaluation, as it skips the preview below.
                if self.evaluates_after_this_step(total) && !stop_now(self) {
                    if let Some(record) = self.evaluate()? {
                        hooks.on_evaluation(&record);
                    }
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
        let dir = self.save_checkpoint()?;
        hooks.on_checkpoint(&dir);
        // No rank waits on rank 0 after the last checkpoint: it samples alone.
        if self.config.sample_every_epochs > 0 && self.is_writer() {
            let files = self.write_samples("final")?;
            hooks.on_samples(&files);
        }
        Ok(RunEnd::Finished)
    }
}

/// The checks of a class-conditional run's dataset: it has labels, and they are below
/// `num_classes`.
fn check_labels(
    config: &TrainConfig,
    dataset: &Dataset,
    num_classes: i64,
) -> Result<(), TrainError> {
    let name = config.dataset.name();
    if dataset.n_classes() == 0 {
        return Err(TrainError::Config(format!(
            "model.num_classes = {num_classes} (--class-cond) needs class labels, but the {name} \
             dataset has none (an image folder has classes when its images sit in one \
             sub-folder per class): train it without classes"
        )));
    }
    let max = dataset.labels().iter().copied().max().unwrap_or(0);
    if i64::from(max) >= num_classes {
        return Err(TrainError::Config(format!(
            "the {name} dataset has labels up to {max} ({} classes) but model.num_classes is \
             {num_classes}: set model.num_classes to {} (or use --class-cond, which takes the \
             dataset's count)",
            dataset.n_classes(),
            dataset.n_classes()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ema::EmaConfig;
    use crate::objective::ObjectiveConfig;
    use crate::optim::OptimConfig;
    use data::{DatasetSpec, Split, TransformConfig};
    use model::{ModelConfig, SimpleUnetConfig};
    use schedule::BetaSchedule;

    /// 32 gray 8×8 images in 3 classes.
    fn labelled(n_classes: usize) -> Dataset {
        let pixels = (0..32 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let labels = (0..32u16).map(|i| i % n_classes as u16).collect();
        let names = (0..n_classes).map(|k| format!("class {k}")).collect();
        Dataset::new(pixels, labels, 1, 8, 8, names).unwrap()
    }

    fn config(num_classes: Option<i64>, p_uncond: f64) -> TrainConfig {
        TrainConfig {
            dataset: DatasetSpec::FashionMnist {
                split: Split::Train,
            },
            transform: TransformConfig {
                size: None,
                flip_p: 0.0,
                normalize: true,
            },
            batch_size: 16,
            n_workers: 1,
            schedule: BetaSchedule::Linear {
                n_steps: 50,
                start: 1e-4,
                end: 0.2,
            },
            model: ModelConfig::Simple(SimpleUnetConfig {
                in_channels: 1,
                out_channels: 1,
                image_size: 8,
                down_channels: vec![8, 16],
                up_channels: vec![16, 8],
                time_emb_dim: 16,
                num_classes,
                ..SimpleUnetConfig::seed_cifar10()
            }),
            objective: ObjectiveConfig {
                p_uncond,
                ..ObjectiveConfig::ho2020()
            },
            optim: OptimConfig::seed_notebook(),
            ema: EmaConfig {
                decay: 0.9,
                warmup: true,
            },
            precision: model::Precision::F32,
            seed: 5,
            epochs: None,
            max_steps: Some(10),
            checkpoint_every: 100,
            keep_last: 1,
            sample_every_epochs: 0,
            n_sample_images: 4,
            log_every: 1,
            max_nonfinite_in_a_row: 3,
            distributed: crate::DistConfig::default(),
            eval_every: 0,
            eval_samples: crate::config::default_eval_samples(),
            eval_sampler: crate::config::default_eval_sampler(),
        }
    }

    /// The draws of `step` for `batch`, as `Trainer::step_with` makes them.
    fn draws(trainer: &mut Trainer, step: u64, batch: &Batch) -> (Tensor, Tensor, Option<Tensor>) {
        trainer
            .gen
            .set_seed(step_seed(trainer.config.seed, step) as u64);
        let shape: Vec<i64> = batch.shape.iter().map(|&d| d as i64).collect();
        let x_0 = Tensor::from_slice(&batch.images).view(shape.as_slice());
        let labels = trainer
            .config
            .model
            .num_classes()
            .map(|_| Tensor::from_slice(&batch.labels));
        trainer.draw_step(&x_0, labels.as_ref()).unwrap()
    }

    /// Label dropout replaces labels by the null label at the configured rate, from the run's
    /// generator: the same step draws the same drops (resume-exact), a kept label is the
    /// dataset's, and t and ε are the draws of the same run without classes.
    #[test]
    fn labels_are_dropped_at_the_configured_rate_reproducibly() {
        let p_uncond = 0.25;
        let dir = tempfile::tempdir().unwrap();
        let mut trainer = Trainer::new(
            config(Some(3), p_uncond),
            labelled(3),
            &dir.path().join("cond"),
            Device::Cpu,
        )
        .unwrap();
        let mut plain = Trainer::new(
            config(None, p_uncond),
            labelled(3),
            &dir.path().join("plain"),
            Device::Cpu,
        )
        .unwrap();
        let batch = trainer.loader.batch(0, 0);
        let (n_steps, mut dropped, mut total) = (400u64, 0i64, 0i64);
        for step in 0..n_steps {
            let (t, noise, labels) = draws(&mut trainer, step, &batch);
            let labels = Vec::<i64>::try_from(labels.expect("labels")).unwrap();
            for (&seen, &given) in labels.iter().zip(&batch.labels) {
                assert!(seen == 3 || seen == given, "{seen} for label {given}");
            }
            dropped += labels.iter().filter(|&&l| l == 3).count() as i64;
            total += labels.len() as i64;
            if step < 3 {
                let (t_again, _, labels_again) = draws(&mut trainer, step, &batch);
                assert!(t_again.equal(&t));
                assert_eq!(Vec::<i64>::try_from(labels_again.unwrap()).unwrap(), labels);
                let (t_plain, noise_plain, none) = draws(&mut plain, step, &batch);
                assert!(none.is_none());
                assert!(t_plain.equal(&t) && noise_plain.equal(&noise));
            }
        }
        let rate = dropped as f64 / total as f64;
        let sigma = (p_uncond * (1.0 - p_uncond) / total as f64).sqrt();
        println!("label dropout: {dropped} of {total} labels, rate {rate:.4} (p_uncond {p_uncond}, sigma {sigma:.4})");
        assert!((rate - p_uncond).abs() < 4.0 * sigma, "rate {rate}");
        // p_uncond = 0 keeps every label, 1 drops them all.
        for (p, expect_null) in [(0.0, false), (1.0, true)] {
            let mut t = Trainer::new(
                config(Some(3), p),
                labelled(3),
                &dir.path().join(format!("p{p}")),
                Device::Cpu,
            )
            .unwrap();
            let labels = Vec::<i64>::try_from(draws(&mut t, 0, &batch).2.unwrap()).unwrap();
            if expect_null {
                assert!(labels.iter().all(|&l| l == 3), "{labels:?}");
            } else {
                assert_eq!(labels, batch.labels);
            }
        }
    }

    /// FID in the loop samples a class-conditional run class-balanced: the request carries one
    /// label per image, so it passes the sampler's checks and differs from null-label samples.
    #[test]
    fn evaluation_samples_of_a_class_conditional_run_are_class_balanced() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(Some(3), 0.1);
        cfg.eval_samples = 6;
        cfg.eval_sampler = SamplerConfig::Ddim {
            steps: 2,
            eta: 0.0,
            spacing: schedule::TimestepSpacing::Leading,
        };
        let mut trainer = Trainer::new(cfg, labelled(3), dir.path(), Device::Cpu).unwrap();
        // Ordinary weights for the near-zero layers, so that labels change the output.
        for (name, mut var) in trainer.ema_vs.variables() {
            if name.ends_with("output.weight") || name.ends_with("class_embedding.weight") {
                let _ = tch::no_grad(|| var.normal_(0.0, 1.0));
            }
        }
        let balanced = trainer.draw_eval_samples().unwrap();
        assert_eq!(balanced.size(), [6, 1, 8, 8]);
        trainer.config.model.set_num_classes(None);
        let ema = std::mem::replace(&mut trainer.ema_model, Box::new(NullLabels(None)));
        trainer.ema_model = Box::new(NullLabels(Some(ema)));
        let nulls = trainer.draw_eval_samples().unwrap();
        assert!(!balanced.equal(&nulls));
    }

    /// A class-conditional network seen without its classes (it samples its null label).
    #[derive(Debug)]
    struct NullLabels(Option<Box<dyn Denoiser>>);

    impl Denoiser for NullLabels {
        fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor {
            self.0.as_ref().unwrap().forward_t(xs, timesteps, train)
        }
    }

    #[test]
    fn a_class_conditional_run_refuses_datasets_without_fitting_labels_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let unlabelled = Dataset::new(vec![0; 32 * 64], vec![0; 32], 1, 8, 8, vec![]).unwrap();
        let err = Trainer::new(config(Some(3), 0.1), unlabelled, dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fashion-mnist dataset has none"), "{err}");
        let err = Trainer::new(config(Some(2), 0.1), labelled(3), dir.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fashion-mnist dataset has labels up to 2")
                && err.contains("model.num_classes is 2"),
            "{err}"
        );
        // Nothing was written by the refused runs.
        assert!(!dir.path().join("config.json").exists());
    }
}
