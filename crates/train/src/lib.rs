//! DDPM training on libtorch (Ho et al. 2020, Alg. 1): the forward process on tensors, losses,
//! Adam with saveable moments, EMA, atomic checkpoints and the training loop. Sampling lives in
//! the `sample` crate and FID in `eval`; the loop uses `sample` for its preview images and its
//! evaluation samples, which a [`SampleScorer`] the front end supplies scores ([`quality`]).
//!
//! - [`config`]: [`TrainConfig`] and its presets (`seed`, `ddpm-cifar10`, `fashion-mnist`).
//! - [`objective`]: ε/x_0/v targets, L1/L2/Huber, min-SNR-γ weighting.
//! - [`optim`]: Adam/AdamW with warm-up, cosine decay and clipping; moments are checkpointed.
//! - [`ema`]: the weight average sampling uses.
//! - [`checkpoint`]: atomic checkpoint directories.
//! - [`run_dir`]: the run directory's exclusive lock and its files.
//! - [`stats`]: the loop's per-step statistics and NaN guard, kept on the device.
//! - [`tensorboard`]: the run's TensorBoard event files (`<run>/tb/`).
//! - [`trainer`]: [`Trainer::open`] (a fresh, replaced or resumed run, alone or one rank of
//!   several), the step, checkpoints and the loop.
//! - [`quality`]: FID in the loop: scored samples every `eval_every` steps, the best checkpoint.
//! - [`distributed`]: data-parallel training over c10d (Gloo, NCCL), launched like torchrun; its
//!   docs say what changes when a run spans several processes. The rank group itself
//!   ([`torch_ext::Distributed`]) lives in `torch-ext`.

pub mod card;
pub mod checkpoint;
pub mod config;
pub mod digest;
pub mod distributed;
pub mod elastic;
pub mod ema;
pub mod memory;
pub mod objective;
pub mod optim;
pub mod quality;
pub mod run_dir;
pub mod scaler;
pub mod stats;
pub mod tensorboard;
pub mod timesteps;
pub mod trainer;
pub mod writer;

pub use config::{ConfigChange, EvalReference, Preset, TrainConfig};
pub use distributed::DistConfig;
pub use quality::{EvalRecord, SampleScorer, Scores};
pub use run_dir::RunDir;
pub use trainer::{
    MetricsRecord, OpenOptions, RunEnd, Start, StepOutcome, StepValues, TrainHooks, Trainer,
};

use std::path::{Path, PathBuf};

/// Errors of the training crate. Variants tied to a file carry its path and the source error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run directory is a file (or another non-directory).
    #[error(
        "{} is a file, not a run directory: pass another --run-dir (a new run makes its directory)",
        path.display()
    )]
    RunDirNotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The run directory's lock file is a directory (or another non-file).
    #[error(
        "{} is a directory, not the run's lock file: remove it (rmdir) and start again",
        path.display()
    )]
    LockNotAFile {
        /// The lock file's path.
        path: PathBuf,
    },
    /// A configuration field has an invalid value; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A file or directory of the run (checkpoint, metrics, config, samples) cannot be read or
    /// written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file that exists but cannot be used: corrupt, of another format version, or
    /// holding tensors that do not fit.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// No checkpoint where one is needed.
    #[error("no checkpoint under {}: {hint}", dir.display())]
    NoCheckpoint {
        /// The directory that was searched.
        dir: PathBuf,
        /// What to do instead.
        hint: &'static str,
    },
    /// Optimizer moments that do not fit the model's parameters.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    /// EMA weights that do not fit the model's parameters.
    #[error("EMA: {0}")]
    Ema(String),
    /// Weights that cannot be loaded into the network (the error names the file and keys).
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Sampling preview images failed.
    #[error(transparent)]
    Sample(#[from] sample::SampleError),
    /// A dataset record that cannot be read during training (a streamed LMDB or TFRecord
    /// dataset's unreadable record, named).
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Scoring the samples of an evaluation (FID in the loop, [`quality`]) failed.
    #[error("the evaluation at step {step}: {message}")]
    Evaluation {
        /// The step being evaluated.
        step: u64,
        /// The scorer's error.
        message: String,
    },
    /// A training step that cannot run as a CUDA graph, or a capture that failed.
    #[error("CUDA graph: {0}")]
    CudaGraph(String),
    /// NaN or infinity where a finite value is required.
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// Another process trains in the run directory (it holds the directory's lock).
    #[error(
        "{} is in use by another `ddpm train` ({}): wait for it to finish or stop it, or pass another --run-dir",
        dir.display(),
        pid.map_or_else(|| "PID unknown".to_string(), |p| format!("PID {p}"))
    )]
    Locked {
        /// The run directory.
        dir: PathBuf,
        /// The holder's PID, as written in the lock file.
        pid: Option<u32>,
    },
    /// A fresh run into a directory that already holds a run's files.
    #[error(
        "{} already holds a run ({}): pass --resume to continue it, --overwrite to delete those files and start over, or another --run-dir",
        dir.display(),
        files.join(", ")
    )]
    RunExists {
        /// The run directory.
        dir: PathBuf,
        /// The run files found there.
        files: Vec<String>,
    },
    /// A resume that would change a setting that must stay fixed for the whole run.
    #[error(
        "--resume cannot change `{key}`: the run has {saved}, this command gives {given}; \
         only {} may change on resume: start a new run (another --run-dir) to change it",
        config::RESUME_MUTABLE.join(", ")
    )]
    ResumeChange {
        /// The dotted config key.
        key: String,
        /// Its value in the checkpoint, as JSON.
        saved: String,
        /// The value asked for, as JSON.
        given: String,
    },
    /// A checkpoint chosen for a resume (`--resume-from`) whose configuration differs from the
    /// run directory's `config.json` in a setting that must stay fixed: it is another run's.
    #[error(
        "{} is a checkpoint of another run: its `{key}` is {checkpoint_value}, the run in {} has \
         {run_value} (config.json); only {} may differ on resume: pick a checkpoint of this run, or resume \
         it into its own run directory (or a new --run-dir)",
        checkpoint.display(),
        run_dir.display(),
        config::RESUME_MUTABLE.join(", ")
    )]
    AnotherRun {
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// The run directory.
        run_dir: PathBuf,
        /// The first dotted config key that differs.
        key: String,
        /// Its value in the checkpoint, as JSON.
        checkpoint_value: String,
        /// Its value in the run's `config.json`, as JSON.
        run_value: String,
    },
    /// The file system is full (or the quota is used up) while the run writes a file.
    #[error(
        "{reason} while writing {}; {}",
        path.display(),
        match previous {
            Some(step) => format!("the previous checkpoint (step {step}) is intact: free some space and resume"),
            None => "no checkpoint was written before it: free some space and start again".to_string(),
        }
    )]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// "no space left on device" or "disk quota exceeded".
        reason: &'static str,
        /// The step of the newest complete checkpoint, if there is one.
        previous: Option<u64>,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The rank group failed: the ranks of a data-parallel run could not meet or disagree on
    /// where they start ([`DistError::Rendezvous`](torch_ext::dist::DistError::Rendezvous)), or a collective failed or timed out
    /// ([`DistError::Collective`](torch_ext::dist::DistError::Collective)). Its message is the rank group's own.
    #[error(transparent)]
    Dist(#[from] torch_ext::dist::DistError),
    /// `--resume` found checkpoints, but none of them loads.
    #[error(
        "no checkpoint under {} loads:\n  {}",
        dir.display(),
        tried.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n  ")
    )]
    NoLoadableCheckpoint {
        /// The checkpoints folder.
        dir: PathBuf,
        /// Each checkpoint tried, newest first, with why it did not load.
        tried: Vec<SkippedCheckpoint>,
    },
}

/// A checkpoint that `--resume` passed over because it does not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Why it does not load.
    pub reason: String,
}

impl std::fmt::Display for SkippedCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.dir.display(), self.reason)
    }
}

impl TrainError {
    /// An IO error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An IO error on `path` while a run writes it: [`TrainError::DiskFull`] when the disk is
    /// full or the quota used up (naming the newest complete checkpoint under
    /// `checkpoints`), else [`TrainError::Io`].
    pub fn write(path: &Path, source: std::io::Error, checkpoints: &Path) -> Self {
        let reason = match source.kind() {
            std::io::ErrorKind::StorageFull => "no space left on device",
            std::io::ErrorKind::QuotaExceeded => "disk quota exceeded",
            _ => return Self::io(path, source),
        };
        Self::DiskFull {
            path: path.to_path_buf(),
            reason,
            previous: checkpoint::list(checkpoints).last().map(|(step, _)| *step),
            source,
        }
    }
}
