//! Data-parallel training on libtorch's c10d, the engine under PyTorch's
//! `DistributedDataParallel`: Gloo between CPU ranks, NCCL between GPUs (feature `nccl`),
//! launched like torchrun (see [`torch_ext::LaunchEnv`]). No collective is home-made: the store,
//! the process group, the bucketed all-reduce and DDP's `Reducer` are c10d's, and the rank group
//! that joins them ([`torch_ext::Distributed`]) lives in [`torch_ext::dist`], below this crate,
//! so that sampling across ranks needs no training code. This module holds the run's settings
//! ([`DistConfig`]) and turns the rank group's errors into [`TrainError`]s.
//!
//! # What a distributed run does
//!
//! - **Batch.** `batch_size` is the *global* batch: each of the `W` ranks trains on
//!   `batch_size / W` images per step (a configuration error when `W` does not divide it), so the
//!   learning rate, the warm-up and the number of steps mean the same whatever `W`.
//! - **Data.** Every rank walks the same seeded permutation of the dataset per epoch, cut into the
//!   same global batches, and rank `r` takes slice `r` of each ([`data::Loader::sharded`]): every
//!   image is seen once per epoch across the ranks, whatever `W`.
//! - **Noise.** Every rank draws the timesteps `t` and the noise `ε` of the whole global batch
//!   from the step's seed, exactly as a single process does, and keeps slice `r`. So the noise
//!   differs between ranks and is reproducible, and `W` ranks with `B / W` images see the same
//!   images, `t` and `ε` as one process with `B` images: they compute the same step up to the
//!   order of floating-point sums (one global-batch `randn` per rank per step costs little next
//!   to the network). Dropout masks come from a stream per rank and step.
//! - **Same settings.** Before anything that depends on them, the ranks compare their resolved
//!   configurations and the version of the program through the rendezvous store
//!   ([`check_same_config`]); a difference stops every rank with an error that names the first
//!   differing key, both values and both ranks, instead of diverging replicas or an abort inside
//!   Gloo. Only `n_workers` (threads making batches, a choice of each machine) may differ.
//! - **Start.** Rank 0's weights and buffers (and EMA weights) are broadcast to every rank when
//!   the run starts or resumes, so all ranks start equal even if their initialisation differed.
//! - **Gradients.** After `backward()` the gradients are averaged over the ranks before anything
//!   reads them: gradient clipping sees the norm of the global batch's gradient, and the NaN guard
//!   decides on the averaged loss and gradient, so all ranks skip a step or take it together.
//!   Then every rank applies the same Adam update to the same weights: weights, optimizer moments
//!   and EMA stay identical on every rank without further communication. [`GradSync::Bucketed`]
//!   all-reduces ~25 MiB buckets after `backward()`; [`GradSync::Overlap`] uses DDP's `Reducer`,
//!   which all-reduces each bucket while the rest of `backward()` runs.
//! - **Accumulation.** With `grad_accum = K` each rank's `B / W` images go through K passes of
//!   `B / (K · W)`, sliced from the rank's slice of the global draws, and the gradients are
//!   averaged once, after the last pass: [`GradSync::Bucketed`] all-reduces then, and the
//!   `Reducer`'s hooks are armed for the last pass only (its `prepare_for_backward` is skipped
//!   before the others, which is what DDP's `no_sync` does), so a step starts no more
//!   collectives than with K = 1.
//! - **BatchNorm** (the `simple` U-Net): batch statistics are each rank's own (`B / W` images), and
//!   rank 0's running statistics are broadcast before every forward pass, as DDP's default
//!   `broadcast_buffers=True` does. The paper's U-Net (GroupNorm) has no buffers.
//! - **Stop requests.** Each step's small all-reduce of the loss also carries a "stop requested"
//!   flag, so SIGINT/SIGTERM on any rank stops every rank after the same step, with one final
//!   checkpoint.
//! - **Files.** Rank 0 alone takes the run directory's lock and writes `config.json`,
//!   `metrics.jsonl` (whose records carry `world_size`), checkpoints and sample pictures; the
//!   other ranks wait at a barrier while it writes a checkpoint. Epoch previews are computed by
//!   every rank (the same weights and seed give the same pictures) so that no rank waits for
//!   another's sampling, and written by rank 0.
//! - **Resume.** With the same world size a resumed run replays the uninterrupted one bit for bit
//!   on the CPU. With another world size it continues with the same global batch, data order,
//!   `t` and `ε`; what changes is the order of floating-point sums in the gradient average (last
//!   bits), the dropout masks (one stream per rank), and the BatchNorm batch statistics (computed
//!   over `B / W` images per rank), so the run is equivalent but not bit-identical.
//! - **Faults.** Every collective waits at most `distributed.timeout_secs` (`--dist-timeout`,
//!   300 s by default): when a rank dies, the others fail at once (its connections close) or,
//!   when it hangs, after the timeout, with [`DistError::Collective`] (in [`TrainError::Dist`]) naming the reporting rank,
//!   the operation and the step. The run never hangs forever.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use torch_ext::dist::{DistError, Distributed, GradSync};

use crate::config::TrainConfig;
use crate::TrainError;

/// The settings that may differ between the ranks of one run: they change neither what a rank
/// computes nor which collectives it takes part in.
pub const PER_RANK: [&str; 1] = ["n_workers"];

/// The store key under which each rank publishes its settings ([`check_same_config`]).
const CONFIG_KEY: &str = "ddpm/config";

/// Checks that every rank of `dist` runs `config` with this version of the program: each rank
/// publishes both (as JSON) in the rendezvous store and compares every other rank's with rank
/// 0's, so every rank reaches the same verdict. Call it on every rank, before the first
/// collective whose shapes depend on the configuration. [`PER_RANK`] settings are not compared.
///
/// # Errors
/// [`DistError::Rendezvous`] (in [`TrainError::Dist`]) naming the first differing key (or the versions), its value on
/// both ranks and both ranks; [`TrainError::Dist`] when the exchange itself fails.
pub fn check_same_config(config: &TrainConfig, dist: &Distributed) -> Result<(), TrainError> {
    let mine = json!({ "version": env!("CARGO_PKG_VERSION"), "config": config });
    let all = dist.exchange(
        CONFIG_KEY,
        mine.to_string().as_bytes(),
        "the comparison of the ranks' settings",
    )?;
    let fail = |message: String| {
        TrainError::Dist(DistError::Rendezvous {
            rank: Some(dist.rank()),
            world_size: Some(dist.world_size()),
            message,
        })
    };
    let unreadable = |rank: usize, e: serde_json::Error| {
        fail(format!(
            "rank {rank} published settings this rank cannot read ({e}): start every rank with \
             the same version of ddpm"
        ))
    };
    let values = all
        .iter()
        .enumerate()
        .map(|(rank, bytes)| {
            serde_json::from_slice::<Value>(bytes).map_err(|e| unreadable(rank, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config_of = |rank: usize| {
        serde_json::from_value::<TrainConfig>(values[rank]["config"].clone())
            .map_err(|e| unreadable(rank, e))
    };
    let config_0 = config_of(0)?;
    for rank in 1..values.len() {
        let (version_0, version) = (&values[0]["version"], &values[rank]["version"]);
        if version != version_0 {
            return Err(fail(format!(
                "the ranks run different versions of ddpm: {version_0} on rank 0 and {version} on \
                 rank {rank}: start every rank with the same program"
            )));
        }
        let config = config_of(rank)?;
        let first = config_0
            .changes(&config)
            .into_iter()
            .find(|change| !PER_RANK.contains(&change.key.as_str()));
        if let Some(change) = first {
            return Err(fail(format!(
                "the ranks were started with different settings: `{}` is {} on rank 0 and {} on \
                 rank {rank}: start every rank with the same flags and configuration",
                change.key, change.saved, change.given
            )));
        }
    }
    Ok(())
}

/// The default of [`DistConfig::timeout_secs`].
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// [`GradSync`] in `config.json` and `--set distributed.grad_sync=MODE`: `"bucketed"` or
/// `"overlap"`. ([`crate::Trainer::run`] uses the mode; a bare [`crate::Trainer::train_step`]
/// averages after `backward()`, as [`GradSync::Bucketed`] does.)
#[derive(Serialize, Deserialize)]
#[serde(remote = "GradSync", rename_all = "lowercase")]
enum GradSyncName {
    Bucketed,
    Overlap,
}

/// Settings of data-parallel training; they do not change what a run learns, and may change on
/// resume. A run in one process ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    /// Seconds that the rendezvous and every collective wait for the other ranks before the run
    /// stops with an error naming the operation (`--dist-timeout`).
    pub timeout_secs: u64,
    /// How gradients are averaged (`--grad-sync`).
    #[serde(with = "GradSyncName")]
    pub grad_sync: GradSync,
}

impl Default for DistConfig {
    /// PyTorch's defaults: `bucketed` all-reduce is what DDP does without overlap; the timeout is
    /// five minutes, shorter than c10d's 30 so that a dead peer is noticed within a coffee break.
    fn default() -> Self {
        Self {
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            grad_sync: GradSync::Bucketed,
        }
    }
}

impl DistConfig {
    /// The timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Checks the values, naming the bad field.
    ///
    /// # Errors
    /// [`TrainError::Config`] for a zero timeout.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.timeout_secs == 0 {
            return Err(TrainError::Config(
                "distributed.timeout_secs = 0 is invalid: it must be at least 1 (--dist-timeout)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_round_trips_and_rejects_a_zero_timeout() {
        let config = DistConfig {
            timeout_secs: 7,
            grad_sync: GradSync::Overlap,
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(json, r#"{"timeout_secs":7,"grad_sync":"overlap"}"#);
        assert_eq!(serde_json::from_str::<DistConfig>(&json).unwrap(), config);
        let zero = DistConfig {
            timeout_secs: 0,
            ..DistConfig::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--dist-timeout"));
    }
}
