//! Data-parallel training on libtorch's c10d, the engine under PyTorch's
//! `DistributedDataParallel`: Gloo between CPU ranks, NCCL between GPUs (feature `nccl`),
//! launched like torchrun (see [`torch_ext::LaunchEnv`]). No collective is home-made: the store,
//! the process group, the bucketed all-reduce and DDP's `Reducer` are c10d's, through
//! [`torch_ext::dist`].
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
//! - **Start.** Rank 0's weights and buffers (and EMA weights) are broadcast to every rank when
//!   the run starts or resumes, so all ranks start equal even if their initialisation differed.
//! - **Gradients.** After `backward()` the gradients are averaged over the ranks before anything
//!   reads them: gradient clipping sees the norm of the global batch's gradient, and the NaN guard
//!   decides on the averaged loss and gradient, so all ranks skip a step or take it together.
//!   Then every rank applies the same Adam update to the same weights: weights, optimizer moments
//!   and EMA stay identical on every rank without further communication. [`GradSync::Bucketed`]
//!   all-reduces ~25 MiB buckets after `backward()`; [`GradSync::Overlap`] uses DDP's `Reducer`,
//!   which all-reduces each bucket while the rest of `backward()` runs.
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
//!   when it hangs, after the timeout, with [`TrainError::Distributed`] naming the reporting rank,
//!   the operation and the step. The run never hangs forever.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use torch_ext::dist::{DEFAULT_BROADCAST_BYTES, DEFAULT_BUCKET_BYTES};
use torch_ext::{GlooDevice, GlooOptions, ProcessGroup, ReduceOp, TcpStore};

use crate::TrainError;

/// torchrun's variables, re-exported for the callers of [`Distributed::connect`].
pub use torch_ext::LaunchEnv;

/// The default of [`DistConfig::timeout_secs`].
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// How the ranks average their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradSync {
    /// After `backward()`, all-reduce the gradients in buckets of 25 MiB
    /// ([`ProcessGroup::allreduce_bucketed`]), all buckets in flight at once.
    #[default]
    Bucketed,
    /// DDP's `Reducer` ([`torch_ext::Reducer`]): each bucket is all-reduced from an autograd hook
    /// as soon as its gradients are ready, overlapping communication with the rest of
    /// `backward()`. Used by [`crate::Trainer::run`]; a bare [`crate::Trainer::train_step`]
    /// falls back to [`GradSync::Bucketed`].
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

/// This process's place in a data-parallel run: its rank, the world size, and the c10d process
/// group it runs collectives in. Every rank makes one, with the same launch variables, before
/// it builds its [`crate::Trainer`].
pub struct Distributed {
    group: ProcessGroup,
    /// The rendezvous store; the group holds its own reference, this one keeps rank 0's server
    /// obviously alive for the whole run.
    _store: TcpStore,
    env: LaunchEnv,
    timeout: Duration,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.env.rank)
            .field("world_size", &self.env.world_size)
            .field("local_rank", &self.env.local_rank)
            .field("backend", &self.group.backend())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether `host` names this machine's loopback interface.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The first line of a c10d message, without Gloo's `[path/file.cc:123] ` source locations.
fn short(message: &str) -> String {
    let mut line = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    while let Some(start) = line.find('[') {
        let Some(len) = line[start..].find("] ") else {
            break;
        };
        let inside = &line[start + 1..start + len];
        let is_location = [".cc:", ".cpp:", ".h:", ".hpp:"]
            .iter()
            .any(|ext| inside.contains(ext));
        if !is_location {
            break;
        }
        line.replace_range(start..start + len + 2, "");
    }
    line
}

impl Distributed {
    /// The run this process belongs to according to torchrun's variables
    /// ([`LaunchEnv::from_env`]), joined on `device`; `None` when it runs alone (`WORLD_SIZE`
    /// unset or 1).
    ///
    /// # Errors
    /// [`TrainError::Rendezvous`] for malformed variables, then as [`Distributed::connect`].
    pub fn from_env(device: Device, timeout: Duration) -> Result<Option<Self>, TrainError> {
        let env = LaunchEnv::from_env().map_err(|e| TrainError::Rendezvous {
            rank: None,
            world_size: None,
            message: format!("the launch variables are not usable: {e}"),
        })?;
        env.map(|env| Self::connect(env, device, timeout))
            .transpose()
    }

    /// Meets the other ranks: rank 0 hosts the store at `MASTER_ADDR:MASTER_PORT` (unless
    /// torchrun's agent does), every rank joins a Gloo group (`device` is the CPU) or an NCCL
    /// group on `device` (CUDA, feature `nccl`). Waits at most `timeout` for the others.
    ///
    /// # Errors
    /// [`TrainError::Rendezvous`] naming the cause and what to do: `MASTER_ADDR` does not
    /// resolve, `MASTER_PORT` is taken, a rank did not arrive within `timeout`, CUDA without
    /// NCCL in this build, or a device that is not `cuda:LOCAL_RANK`-compatible.
    pub fn connect(env: LaunchEnv, device: Device, timeout: Duration) -> Result<Self, TrainError> {
        let fail = |message: String| TrainError::Rendezvous {
            rank: Some(env.rank),
            world_size: Some(env.world_size),
            message,
        };
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        if let Err(e) = (env.master_addr.as_str(), env.master_port).to_socket_addrs() {
            return Err(fail(format!(
                "MASTER_ADDR={} does not resolve ({e}): set it to rank 0's host name or IP address",
                env.master_addr
            )));
        }
        let store = env.store(timeout).map_err(|e| {
            let message = e.to_string();
            let secs = timeout.as_secs();
            fail(
                if message.contains("EADDRINUSE") || message.contains("ddress already in use") {
                    format!(
                    "cannot host the rendezvous store at {addr}: MASTER_PORT={} is already in use; \
                     pick a free port (`ddpm train --nproc-per-node N` picks one itself)",
                    env.master_port
                )
                } else if env.rank == 0 && !env.agent_store {
                    format!(
                    "not all {} ranks joined the rendezvous store at {addr} within {secs} s ({}): \
                     start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or \
                     raise --dist-timeout",
                    env.world_size,
                    short(&message)
                )
                } else {
                    format!(
                    "cannot reach the rendezvous store at {addr} (MASTER_ADDR:MASTER_PORT) within \
                     {secs} s ({}): check that rank 0 runs, the address and port, and the firewall",
                    short(&message)
                )
                },
            )
        })?;
        let group =
            match device {
                Device::Cpu => {
                    let gloo_device = if is_loopback(&env.master_addr) {
                        // Every rank is on this machine: talk over loopback, whatever the host name
                        // resolves to.
                        GlooDevice::Hostname("127.0.0.1".into())
                    } else {
                        GlooDevice::from_env()
                    };
                    let options = GlooOptions {
                        device: gloo_device,
                        ..GlooOptions::new(timeout)
                    };
                    ProcessGroup::gloo_with_options(&store, env.rank, env.world_size, &options)
                }
                Device::Cuda(index) => {
                    if index != env.local_rank {
                        return Err(fail(format!(
                        "this rank runs on cuda:{index} but its LOCAL_RANK is {}: each rank takes \
                         cuda:LOCAL_RANK (pass --device cuda)",
                        env.local_rank
                    )));
                    }
                    match Self::nccl(&store, &env, index, timeout) {
                        Ok(group) => Ok(group),
                        Err(NcclError::Torch(e)) => Err(e),
                        Err(NcclError::Missing) => return Err(fail(
                            "training on CUDA across ranks needs NCCL, and this build has none: \
                             rebuild with `--features nccl`, or pass --device cpu"
                                .into(),
                        )),
                    }
                }
                other => {
                    return Err(fail(format!(
                        "data-parallel training runs on the CPU or CUDA, not on {other:?}"
                    )))
                }
            }
            .map_err(|e| {
                fail(format!(
                "the process group did not form within {} s ({}): every rank must start with the \
                 same MASTER_ADDR, MASTER_PORT and WORLD_SIZE",
                timeout.as_secs(),
                short(&e.to_string())
            ))
            })?;
        Ok(Self {
            group,
            _store: store,
            env,
            timeout,
        })
    }

    #[cfg(feature = "nccl")]
    fn nccl(
        store: &TcpStore,
        env: &LaunchEnv,
        index: usize,
        timeout: Duration,
    ) -> Result<ProcessGroup, NcclError> {
        ProcessGroup::nccl(store, env.rank, env.world_size, index, timeout)
            .map_err(NcclError::Torch)
    }

    #[cfg(not(feature = "nccl"))]
    fn nccl(
        _store: &TcpStore,
        _env: &LaunchEnv,
        _index: usize,
        _timeout: Duration,
    ) -> Result<ProcessGroup, NcclError> {
        Err(NcclError::Missing)
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// This process's rank on its machine (its GPU's index).
    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }

    /// Whether this is rank 0, the one that writes the run's files.
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// How long a collective waits for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The launch variables this run was joined with.
    pub fn launch_env(&self) -> &LaunchEnv {
        &self.env
    }

    /// The process group, for collectives of the caller's own (every rank must call the same
    /// ones in the same order).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// A failed collective as a [`TrainError::Distributed`].
    pub fn error(&self, op: impl Into<String>, err: &torch_ext::Error) -> TrainError {
        TrainError::Distributed {
            rank: self.rank(),
            world_size: self.world_size(),
            op: op.into(),
            message: short(&err.to_string()),
            timeout_secs: self.timeout.as_secs(),
        }
    }

    /// Waits until every rank gets here.
    ///
    /// # Errors
    /// [`TrainError::Distributed`] naming `op` when a rank is gone or the timeout passes.
    pub fn barrier(&self, op: &str) -> Result<(), TrainError> {
        self.group.barrier().map_err(|e| self.error(op, &e))
    }

    /// Copies rank 0's `tensors` into every rank's, in place, through coalesced buffers.
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn broadcast(&self, tensors: &mut [Tensor], op: &str) -> Result<(), TrainError> {
        if tensors.is_empty() {
            return Ok(());
        }
        self.group
            .broadcast_coalesced(tensors, 0, DEFAULT_BROADCAST_BYTES)
            .map_err(|e| self.error(op, &e))
    }

    /// Replaces every tensor by its mean over the ranks, in 25 MiB buckets.
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn average(&self, tensors: &mut [Tensor], op: &str) -> Result<(), TrainError> {
        if tensors.is_empty() {
            return Ok(());
        }
        self.group
            .allreduce_bucketed(tensors, ReduceOp::Avg, DEFAULT_BUCKET_BYTES)
            .map_err(|e| self.error(op, &e))
    }

    /// Replaces every tensor by its sum over the ranks.
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn sum(&self, tensors: &mut [Tensor], op: &str) -> Result<(), TrainError> {
        self.group
            .allreduce(tensors, ReduceOp::Sum)
            .map_err(|e| self.error(op, &e))
    }
}

enum NcclError {
    #[cfg_attr(feature = "nccl", allow(dead_code))]
    Missing,
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    Torch(torch_ext::Error),
}

/// What a failed collective's message adds: which peer to look at, and how long it waited.
pub(crate) fn peer_hint(rank: usize, world_size: usize, timeout_secs: u64) -> String {
    let who = if world_size == 2 {
        format!("rank {} (the other rank)", 1 - rank.min(1))
    } else {
        "another rank (the launcher's output names it)".to_string()
    };
    format!(
        "{who} exited, crashed or stopped answering (collectives wait at most {timeout_secs} s, \
         --dist-timeout); every rank stops: see that rank's output, then resume from the last \
         checkpoint with --resume"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c10d_messages_are_cut_to_their_first_line_without_the_source_location() {
        assert_eq!(
            short("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:41234\nException raised from ..."),
            "Connection closed by peer [127.0.0.1]:41234"
        );
        assert_eq!(
            short("Timed out waiting 2000ms"),
            "Timed out waiting 2000ms"
        );
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("::1"));
        assert!(!is_loopback("node0") && !is_loopback("10.0.0.1"));
    }

    #[test]
    fn the_peer_hint_names_the_other_rank_of_two() {
        assert!(peer_hint(0, 2, 5).starts_with("rank 1 (the other rank) exited"));
        assert!(peer_hint(1, 2, 5).starts_with("rank 0 (the other rank) exited"));
        assert!(peer_hint(3, 8, 300).contains("another rank"));
        assert!(peer_hint(3, 8, 300).contains("300 s"));
    }

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
