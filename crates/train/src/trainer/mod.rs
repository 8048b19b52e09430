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
//! Dropout inside the network (the paper's U-Net) draws its masks from a second generator the
//! run owns, passed to the network's training forward pass ([`model::Denoiser::forward_train`])
//! and reseeded every step from a stream of the step's seed separate from t and ε
//! ([`dropout_seed`]; data-parallel, one stream per rank). So its state too is a function of
//! (seed, step[, rank]), resume stays exact, and nothing in the training path touches
//! libtorch's global generator: two trainers in one process never disturb each other.
//!
//! Class-conditional runs (`model.num_classes`, `ddpm train --class-cond`) take each batch's
//! labels from the loader and replace each by the null label with probability
//! `objective.p_uncond` ([`crate::objective::drop_labels`]), deciding from uniform draws of the
//! run's generator made after t and ε: the drops are a function of (seed, step) like the rest, so
//! resume stays exact, and t and ε are those the run would draw without classes.
//!
//! Gradient accumulation (`grad_accum = K`, `ddpm train --grad-accum K`): the step's draws
//! (t, ε, label drops) are made for the whole batch as without it, then the forward and backward
//! passes run over K slices of `batch / K` images (per rank), each loss scaled by 1/K, so that
//! the summed gradient is the whole batch's mean gradient. Clipping, the NaN guard, Adam, the EMA
//! and the metrics come once, after the last pass. BatchNorm normalises each micro-batch by its
//! own statistics, and dropout masks continue the step's stream pass after pass: for networks
//! with either, K changes what a step computes, as the number of ranks does.
//!
//! Data-parallel: [`OpenOptions::distributed`] makes one rank of a run over several processes
//! ([`Distributed`]); [`crate::distributed`] says what each rank does and what stays the same.
//! Without a [`Distributed`] (or with one rank) the loop is the single-process one, unchanged.
//!
//! The parts: [`Trainer::open`] and the checks of a run (`open`), the step (`step`), checkpoints,
//! metrics lines and sample pictures (`save`), the loop and its hooks (`run_loop`), FID in the
//! loop (`evaluation`), the TensorBoard event files (`summaries`), the data-parallel hooks (`data_parallel`) and the CUDA graph (`graph`).

use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Device, Tensor};
use torch_ext::dist::Distributed;
use torch_ext::Generator;

use data::Loader;
use model::Denoiser;
use schedule::tensor::ScheduleTensors;

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::optim::Adam;
use crate::run_dir::RunDir;
use crate::scaler::LossScaler;
use crate::stats::{DeviceStats, StatsRead};
use crate::{SkippedCheckpoint, TrainError};

mod data_parallel;
mod evaluation;
#[cfg(feature = "cuda")]
mod graph;
mod init_from;
mod open;
mod run_loop;
mod save;
mod step;
mod summaries;
#[cfg(test)]
mod tests;

pub use init_from::{check_source, InitReport};
pub use open::{saved_config, OpenOptions, Start};
pub use run_loop::{MetricsRecord, NoHooks, RunEnd, TrainHooks};
pub use step::{StepOutcome, StepValues};

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

/// The seed of the run's dropout generator at step `step` (see the module docs): [`step_seed`]
/// of another run seed, so that the masks never reuse the t and ε stream.
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
    /// Draws the network's dropout masks; reseeded from [`dropout_seed`] (or the rank's stream)
    /// every step.
    dropout_gen: Generator,
    /// fp16's dynamic loss scale; `None` at other precisions.
    scaler: Option<LossScaler>,
    /// `objective.timestep_sampling = "importance"`: the sampler of t, and the loss weights
    /// 1/(T p_t) of the step's draws.
    importance: Option<step::Importance>,
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
    /// Newer checkpoints that a resume passed over because they do not load.
    skipped_checkpoints: Vec<SkippedCheckpoint>,
    /// The run files that [`Start::Overwrite`] deleted.
    deleted_files: Vec<PathBuf>,
    /// What a fresh run with `init_from` took from its source.
    init_report: Option<InitReport>,
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
    /// Writes [`Trainer::run`]'s checkpoints off the training thread, one at a time.
    writer: crate::writer::CheckpointWriter,
    /// Seconds waited for the writer since the last metrics line, if it was waited for.
    checkpoint_wait: Option<f64>,
    /// The step of the newest checkpoint this process wrote or started writing, on every rank
    /// (rank 0 writes it): a stop request at that step does not write it a second time.
    checkpointed_step: Option<u64>,
    /// What checking the digests of the checkpoint this run resumed from found.
    resumed_verified: Option<crate::digest::Verified>,
    /// A class-conditional run's class names (its dataset's), for its checkpoints.
    class_names: Vec<String>,
    /// FID in the loop: the scorer the front end supplied, and the best checkpoint's record.
    quality: evaluation::QualityState,
    /// Data-parallel: where this rank is (`<run>/ranks/rank-K.position`), from the start of
    /// [`Trainer::run`].
    position: Option<crate::elastic::PositionLog>,
    /// The TensorBoard event file (`summaries`), opened with the run.
    summaries: summaries::Summaries,
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
    /// Newer checkpoints that a resume ([`Start::Resume`]) passed over because they do not load, newest
    /// first.
    pub fn skipped_checkpoints(&self) -> &[SkippedCheckpoint] {
        &self.skipped_checkpoints
    }

    /// What checking the digests of the checkpoint a resume loaded found: `Unverified` for one
    /// written before checkpoints had digests (a front end says so); `None` for a fresh run.
    pub fn resumed_verification(&self) -> Option<crate::digest::Verified> {
        self.resumed_verified
    }

    /// What a fresh run with `init_from` set took from its source (`None` for other runs, and
    /// on resume, which reads the run's own checkpoint).
    pub fn init_report(&self) -> Option<&InitReport> {
        self.init_report.as_ref()
    }

    /// The run files that [`Start::Overwrite`] deleted (empty otherwise, and on the ranks
    /// other than 0).
    pub fn deleted_files(&self) -> &[PathBuf] {
        &self.deleted_files
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
    /// [`TrainError::CudaGraph`] when the network checkpoints its activations
    /// (`model.gradient_checkpointing`), when the run is not on a CUDA device, when this build
    /// has no CUDA graph support (the `cuda` feature), or when CUDA fails.
    pub fn enable_cuda_graph(&mut self) -> Result<(), TrainError> {
        if self.config.model.gradient_checkpointing() {
            // The recomputation runs from inside backward with host-side work a replay would
            // skip (copies of the dropout generator's state, a nested autograd pass).
            return Err(TrainError::CudaGraph(
                "activation checkpointing cannot be captured in a CUDA graph: its recomputation \
                 does host-side work during backward (generator state copies, a nested autograd \
                 pass) that a replay would skip; drop --cuda-graph or --gradient-checkpointing"
                    .into(),
            ));
        }
        if self.importance.is_some() {
            // Drawing t needs the host's loss history, updated from each step's losses.
            return Err(TrainError::CudaGraph(
                "objective.timestep_sampling = \"importance\" draws t on the host from the \
                 losses of earlier steps, which a captured graph cannot read: drop --cuda-graph \
                 or use timestep_sampling = \"uniform\""
                    .into(),
            ));
        }
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

    /// The dtype the network trains in under autocast (`None`: f32).
    pub(super) fn autocast(&self) -> Option<tch::Kind> {
        self.config.precision.autocast_kind(self.device)
    }

    /// The dtype the network samples in (previews, evaluations): as trained on CUDA, f32 on the
    /// CPU.
    pub(super) fn sampling_autocast(&self) -> Option<tch::Kind> {
        self.config.precision.sampling_kind(self.device)
    }
}
