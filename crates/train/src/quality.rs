//! Sample quality during training ("FID in the loop", as lucidrains' trainer and the StyleGAN
//! family score snapshots while they train): every `eval_every` steps, and at the last step,
//! the trainer draws `eval_samples` images with the EMA weights and `eval_sampler`, a
//! [`SampleScorer`] scores them, an [`EvalRecord`] line goes to `metrics.jsonl`, and the
//! checkpoint with the lowest FID so far is kept in `checkpoints/best/`.
//!
//! The trainer does not know what FID is: the scorer is a trait object the front end supplies
//! ([`crate::Trainer::set_scorer`]). The `ddpm` binary builds one from the `eval` crate (the
//! TF-FID Inception TorchScript and the training set's reference statistics, cached beside the
//! dataset); a library user can do the same in a few lines, or score with anything else whose
//! first number is lower for better samples. So the training crate links no Inception network
//! and no dense linear algebra, and its bookkeeping (records, the best checkpoint, resume) is
//! tested with a stand-in scorer.
//!
//! ```text
//! <run>/checkpoints/best/
//!     model.safetensors, ema.safetensors, optimizer.safetensors, state.json   a checkpoint
//!     fid.json                                                                its BestRecord
//! ```
//!
//! `best/` is written as `best.tmp/` (every file fsynced), the old `best/` renamed to
//! `best.old/`, `best.tmp/` renamed to `best/`, and `best.old/` deleted; a crash between the two
//! renames leaves `best.old/`, which the next trainer on the run directory puts back. The
//! checkpoint listing ([`crate::checkpoint::list`]) only sees `step-N` directories, so `best/`
//! is never pruned by `keep_last` nor taken for the newest checkpoint by `--resume`; it is a
//! complete checkpoint, so `ddpm sample --checkpoint <run>/checkpoints/best` samples from it and
//! `--resume-from best` continues from it.
//!
//! Randomness: the evaluation images come from their own generators (the request's batches,
//! seeded from the run's seed with a fixed offset, the same at every evaluation, so that two
//! evaluations differ by the weights only), never from the run's generator: a run with
//! evaluations trains bit for bit as the same run without them.
//!
//! Data-parallel: rank 0 samples and scores alone while the other ranks wait at a barrier, which
//! like every collective waits at most `distributed.timeout_secs` (`--dist-timeout`): set it
//! above the time an evaluation takes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Tensor;

use sample::SamplerConfig;

use crate::checkpoint;
use crate::TrainError;

/// The folder of the best checkpoint under `<run>/checkpoints`.
pub const BEST_DIR: &str = "best";

/// The [`BestRecord`] inside [`BEST_DIR`].
pub const BEST_RECORD_FILE: &str = "fid.json";

/// The error a scorer returns; the trainer wraps it in [`TrainError::Evaluation`].
pub type ScoreError = Box<dyn std::error::Error + Send + Sync>;

/// Scores a set of samples; lower is better. The `ddpm` binary's scorer is the FID against the
/// training set's reference statistics, with the KID beside it.
pub trait SampleScorer: Send {
    /// What the scores depend on besides the samples (for FID: the network and its file's hash,
    /// the resize, the reference statistics), as JSON. It is recorded with the best checkpoint,
    /// so that a resumed run with another protocol does not compare its scores with the old.
    fn protocol(&self) -> Value;

    /// Scores `images`, `[N, C, H, W]` u8 on the CPU (the samples quantised as the sample PNGs
    /// are).
    ///
    /// # Errors
    /// Whatever prevents scoring; the run stops with it.
    fn score(&mut self, images: &Tensor) -> Result<Scores, ScoreError>;

    /// [`SampleScorer::score`], given up when `stop` holds: a scorer that takes long (a CPU
    /// Inception over a thousand samples takes minutes) checks it between chunks and returns
    /// `None`, so that a stop signal's checkpoint need not wait for it. The default scores in
    /// one go.
    ///
    /// # Errors
    /// As [`SampleScorer::score`].
    fn score_unless(
        &mut self,
        images: &Tensor,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Scores>, ScoreError> {
        if stop() {
            return Ok(None);
        }
        self.score(images).map(Some)
    }
}

/// What a [`SampleScorer`] says about a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The Fréchet Inception Distance (or the scorer's main number): lower is better; the best
    /// checkpoint is the one with the lowest.
    pub fid: f64,
    /// The Kernel Inception Distance, when the scorer computes it.
    pub kid: Option<f64>,
    /// The standard deviation of the KID over its subsets.
    pub kid_std: Option<f64>,
}

/// One evaluation's line in `metrics.jsonl` (training lines are [`crate::MetricsRecord`]s; an
/// evaluation line is the one with `fid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps taken when the samples were drawn.
    pub step: u64,
    /// The epoch of the last batch.
    pub epoch: u64,
    /// The FID of the samples.
    pub fid: f64,
    /// Their KID, when scored.
    pub kid: Option<f64>,
    /// The KID's standard deviation over its subsets.
    pub kid_std: Option<f64>,
    /// The number of samples.
    pub n_samples: usize,
    /// How they were drawn (always with the EMA weights).
    pub sampler: SamplerConfig,
    /// Whether this evaluation made the new best checkpoint.
    pub best: bool,
    /// Seconds spent sampling.
    pub sample_seconds: f64,
    /// Seconds spent scoring.
    pub score_seconds: f64,
}

/// `checkpoints/best/fid.json`: which step the best checkpoint is, its scores, and how they
/// were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    /// The checkpoint's step.
    pub step: u64,
    /// Its FID.
    pub fid: f64,
    /// Its KID, when scored.
    pub kid: Option<f64>,
    /// The number of samples scored.
    pub n_samples: usize,
    /// The sampler they were drawn with.
    pub sampler: SamplerConfig,
    /// [`SampleScorer::protocol`] of the scorer.
    pub protocol: Value,
}

impl BestRecord {
    /// Whether a new evaluation of `n_samples` drawn with `sampler` and scored under `protocol`
    /// can be compared with this record: only then may a higher FID leave the best checkpoint
    /// in place.
    pub fn comparable(&self, n_samples: usize, sampler: &SamplerConfig, protocol: &Value) -> bool {
        self.n_samples == n_samples && &self.sampler == sampler && &self.protocol == protocol
    }
}

/// `<checkpoints>/best`.
pub fn best_dir(checkpoints: &Path) -> PathBuf {
    checkpoints.join(BEST_DIR)
}

fn sibling(checkpoints: &Path, suffix: &str) -> PathBuf {
    checkpoints.join(format!("{BEST_DIR}{suffix}"))
}

/// Reads the best checkpoint's record under `checkpoints` (`<run>/checkpoints`), if there is
/// one. Reading changes nothing on disk; see [`recover_best`].
///
/// # Errors
/// [`TrainError::Checkpoint`] naming `fid.json` when it exists but does not parse.
pub fn read_best(checkpoints: &Path) -> Result<Option<BestRecord>, TrainError> {
    let path = best_dir(checkpoints).join(BEST_RECORD_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Checkpoint {
            path,
            message: format!("the best checkpoint's record does not parse: {e}"),
        })
}

/// Puts `best.old/` back as `best/` when a crash left it between the two renames of
/// `write_best` (only the trainer holding the run directory's lock may call this).
///
/// # Errors
/// [`TrainError::Io`] when the rename fails.
pub fn recover_best(checkpoints: &Path) -> Result<(), TrainError> {
    let (best, old) = (best_dir(checkpoints), sibling(checkpoints, ".old"));
    if !best.exists() && old.join(checkpoint::STATE_FILE).is_file() {
        fs::rename(&old, &best).map_err(|e| TrainError::io(&best, e))?;
    }
    Ok(())
}

/// Writes `contents` and `record` as `checkpoints/best/`, replacing the previous best atomically
/// (see the module docs). Returns the directory.
///
/// # Errors
/// As [`checkpoint::save`].
pub(crate) fn write_best(
    checkpoints: &Path,
    contents: &checkpoint::CheckpointContents<'_>,
    record: &BestRecord,
) -> Result<PathBuf, TrainError> {
    let json = serde_json::to_vec_pretty(record).expect("records serialise");
    let tmp = checkpoint::write_staged(
        checkpoints,
        BEST_DIR,
        &contents.snapshot(),
        &[(BEST_RECORD_FILE, &json)],
    )?;
    let (best, old) = (best_dir(checkpoints), sibling(checkpoints, ".old"));
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    if best.exists() {
        fs::rename(&best, &old).map_err(|e| TrainError::io(&best, e))?;
    }
    fs::rename(&tmp, &best).map_err(|e| TrainError::io(&best, e))?;
    checkpoint::fsync_dir(checkpoints)?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn store(value: f32) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _ = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[value, value]));
        vs
    }

    fn record(step: u64, fid: f64) -> BestRecord {
        BestRecord {
            step,
            fid,
            kid: None,
            n_samples: 4,
            sampler: crate::config::default_eval_sampler(),
            protocol: serde_json::json!({"scorer": "test"}),
        }
    }

    fn state(step: u64) -> checkpoint::CheckpointState {
        checkpoint::CheckpointState {
            format_version: checkpoint::FORMAT_VERSION,
            step,
            epoch: 0,
            batch_in_epoch: step,
            seed: 1,
            ema_updates: step,
            skipped_steps: 0,
            config: serde_json::json!({}),
            world_size: 1,
            class_names: Vec::new(),
            loss_scale: None,
            digests: Default::default(),
            timestep_history: None,
        }
    }

    #[test]
    fn best_is_replaced_whole_and_stays_out_of_the_checkpoint_list() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_best(dir.path()).unwrap(), None);
        for (step, value) in [(10, 1.0f32), (20, 2.0)] {
            let (model, ema) = (store(value), store(value + 0.5));
            let contents = checkpoint::CheckpointContents {
                state: &state(step),
                model: &model,
                ema: &ema,
                optimizer: vec![],
            };
            let best = write_best(
                dir.path(),
                &contents,
                &record(step, 100.0 - f64::from(value)),
            )
            .unwrap();
            assert_eq!(best, dir.path().join("best"));
        }
        assert_eq!(read_best(dir.path()).unwrap(), Some(record(20, 98.0)));
        let best = best_dir(dir.path());
        assert_eq!(checkpoint::read_state(&best).unwrap().step, 20);
        let ema = checkpoint::read_tensors(&best.join(checkpoint::EMA_FILE)).unwrap();
        assert_eq!(ema[0].1.double_value(&[0]), 2.5);
        // Only `best` is left: no staging or old directory, and the step list ignores it.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["best"]);
        assert!(checkpoint::list(dir.path()).is_empty());
    }

    #[test]
    fn a_crash_between_the_renames_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (model, ema) = (store(1.0), store(2.0));
        let contents = checkpoint::CheckpointContents {
            state: &state(5),
            model: &model,
            ema: &ema,
            optimizer: vec![],
        };
        write_best(dir.path(), &contents, &record(5, 3.0)).unwrap();
        // As if the process died after renaming best/ to best.old/.
        fs::rename(best_dir(dir.path()), dir.path().join("best.old")).unwrap();
        assert_eq!(read_best(dir.path()).unwrap(), None);
        recover_best(dir.path()).unwrap();
        assert_eq!(read_best(dir.path()).unwrap(), Some(record(5, 3.0)));
    }

    #[test]
    fn records_compare_only_under_the_same_protocol() {
        let r = record(1, 2.0);
        let protocol = serde_json::json!({"scorer": "test"});
        let sampler = crate::config::default_eval_sampler();
        assert!(r.comparable(4, &sampler, &protocol));
        assert!(!r.comparable(5, &sampler, &protocol));
        assert!(!r.comparable(4, &sample::SamplerConfig::seed_notebook(), &protocol));
        assert!(!r.comparable(4, &sampler, &serde_json::json!({"scorer": "other"})));
    }
}
