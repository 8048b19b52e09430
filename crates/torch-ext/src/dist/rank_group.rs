//! The rank group: this process's place in a launch ([`Distributed`]) with the operations a
//! data-parallel training loop or a sharded sampler needs (barrier, broadcast, average, sum,
//! the gradient average in either [`GradSync`] mode), each naming what the ranks were doing when
//! it fails ([`DistError`]).
//!
//! It takes plain settings (a timeout, a gradient-sync mode) and knows nothing of the training
//! configuration, so sampling and scoring across ranks use it without the training crate.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use tch::{Device, Tensor};

use super::reducer::OwnedReducer;
use super::{
    GlooDevice, GlooOptions, LaunchEnv, ProcessGroup, ReduceOp, ReducerOptions, TcpStore,
    DEFAULT_BROADCAST_BYTES, DEFAULT_BUCKET_BYTES,
};

/// How the ranks average their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradSync {
    /// After `backward()`, all-reduce the gradients in buckets of 25 MiB
    /// ([`ProcessGroup::allreduce_bucketed`]), all buckets in flight at once.
    #[default]
    Bucketed,
    /// DDP's `Reducer` ([`super::Reducer`]): each bucket is all-reduced from an autograd hook as
    /// soon as its gradients are ready, overlapping communication with the rest of `backward()`.
    Overlap,
}

/// Errors of the rank group: the ranks could not meet, or a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The ranks of a launch could not meet (before any work starts), or they disagree on where
    /// they start.
    #[error(
        "{}{message}",
        match (rank, world_size) {
            (Some(r), Some(w)) => format!("rank {r} of {w}: "),
            _ => String::new(),
        }
    )]
    Rendezvous {
        /// The rank that reports it, when known.
        rank: Option<usize>,
        /// The number of ranks, when known.
        world_size: Option<usize>,
        /// What went wrong and what to do.
        message: String,
    },
    /// A collective failed or timed out: another rank exited, crashed or hangs. `rank` is the
    /// rank that reports it.
    #[error(
        "rank {rank} of {world_size}: {op} failed ({message}): {}",
        peer_hint(*rank, *world_size, *timeout_secs, next)
    )]
    Collective {
        /// The rank that reports the failure.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// What the ranks were doing, e.g. "the all-reduce of the gradients at step 12".
        op: String,
        /// c10d's message, first line.
        message: String,
        /// How long collectives wait.
        timeout_secs: u64,
        /// What to do once the failed rank's cause is fixed ([`Distributed::set_next_step`]).
        next: String,
    },
}

/// What a failed collective's message advises by default, once the cause is fixed.
pub const RUN_AGAIN: &str = "run the command again";

/// What a failed collective's message adds: which peer to look at, how long it waited, and
/// what to do `next` (resume a training run, run a sampling command again).
pub fn peer_hint(rank: usize, world_size: usize, timeout_secs: u64, next: &str) -> String {
    let who = if world_size == 2 {
        format!("rank {} (the other rank)", 1 - rank.min(1))
    } else {
        "another rank (the launcher's output names it)".to_string()
    };
    format!(
        "{who} exited, crashed or stopped answering (collectives wait at most {timeout_secs} s, \
         --dist-timeout); every rank stops: see that rank's output, then {next}"
    )
}

/// This process's place in a launch: its rank, the world size, and the c10d process group it
/// runs collectives in. Every rank makes one, with the same launch variables.
pub struct Distributed {
    /// DDP's Reducer while the gradients are averaged with [`GradSync::Overlap`]. Declared
    /// before `group`, so that it is dropped before the group shuts down.
    reducer: Option<OwnedReducer>,
    group: ProcessGroup,
    /// The rendezvous store; the group holds its own reference, this one keeps rank 0's server
    /// obviously alive for the whole run and serves [`Distributed::exchange`].
    store: TcpStore,
    env: LaunchEnv,
    timeout: Duration,
    /// What a failed collective's message advises ([`RUN_AGAIN`] unless set).
    next_step: String,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.env.rank)
            .field("world_size", &self.env.world_size)
            .field("local_rank", &self.env.local_rank)
            .field("backend", &self.group.backend())
            .field("timeout", &self.timeout)
            .field("grad_sync", &self.grad_sync())
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

/// Why no NCCL group was made.
enum NcclError {
    #[cfg_attr(feature = "nccl", allow(dead_code))]
    Missing,
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    Torch(crate::Error),
}

impl Distributed {
    /// The launch this process belongs to according to torchrun's variables
    /// ([`LaunchEnv::from_env`]), joined on `device`; `None` when it runs alone (`WORLD_SIZE`
    /// unset or 1).
    ///
    /// # Errors
    /// [`DistError::Rendezvous`] for malformed variables, then as [`Distributed::connect`].
    pub fn from_env(device: Device, timeout: Duration) -> Result<Option<Self>, DistError> {
        let env = LaunchEnv::from_env().map_err(|e| DistError::Rendezvous {
            rank: None,
            world_size: None,
            message: format!("the launch variables are not usable: {e}"),
        })?;
        env.map(|env| Self::connect(env, device, timeout))
            .transpose()
    }

    /// Meets the other ranks: rank 0 hosts the store at `MASTER_ADDR:MASTER_PORT` (unless
    /// torchrun's agent does), every rank joins a Gloo group (`device` is the CPU) or an NCCL
    /// group on `device` (CUDA, feature `nccl`). Waits at most `timeout` for the others, and
    /// every later collective waits as long.
    ///
    /// # Errors
    /// [`DistError::Rendezvous`] naming the cause and what to do: `MASTER_ADDR` does not
    /// resolve, `MASTER_PORT` is taken, a rank did not arrive within `timeout`, CUDA without
    /// NCCL in this build, or a device that is not `cuda:LOCAL_RANK`-compatible.
    pub fn connect(env: LaunchEnv, device: Device, timeout: Duration) -> Result<Self, DistError> {
        let fail = |message: String| DistError::Rendezvous {
            rank: Some(env.rank),
            world_size: Some(env.world_size),
            message,
        };
        let store = Self::store(&env, timeout).map_err(fail)?;
        let group = Self::group_on(&store, &env, device, timeout).map_err(fail)?;
        Ok(Self {
            reducer: None,
            group,
            store,
            env,
            timeout,
            next_step: RUN_AGAIN.to_string(),
        })
    }

    /// Sets what a failed collective's message advises once its cause is fixed: a training
    /// run says "resume from the last checkpoint with --resume"; the default is [`RUN_AGAIN`].
    pub fn set_next_step(&mut self, next: impl Into<String>) {
        self.next_step = next.into();
    }

    /// The rendezvous store, or what went wrong and what to do.
    fn store(env: &LaunchEnv, timeout: Duration) -> Result<TcpStore, String> {
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        if let Err(e) = (env.master_addr.as_str(), env.master_port).to_socket_addrs() {
            return Err(format!(
                "MASTER_ADDR={} does not resolve ({e}): set it to rank 0's host name or IP address",
                env.master_addr
            ));
        }
        env.store(timeout).map_err(|e| {
            let message = e.to_string();
            let secs = timeout.as_secs();
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
            }
        })
    }

    /// The process group on `device`, or what went wrong and what to do.
    fn group_on(
        store: &TcpStore,
        env: &LaunchEnv,
        device: Device,
        timeout: Duration,
    ) -> Result<ProcessGroup, String> {
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
                    ProcessGroup::gloo_with_options(store, env.rank, env.world_size, &options)
                }
                Device::Cuda(index) => {
                    if index != env.local_rank {
                        return Err(format!(
                        "this rank runs on cuda:{index} but its LOCAL_RANK is {}: each rank takes \
                         cuda:LOCAL_RANK (pass --device cuda)",
                        env.local_rank
                    ));
                    }
                    match Self::nccl(store, env, index, timeout) {
                        Ok(group) => Ok(group),
                        Err(NcclError::Torch(e)) => Err(e),
                        Err(NcclError::Missing) => return Err(
                            "running on CUDA across ranks needs NCCL, and this build has none: \
                             rebuild with `--features nccl`, or pass --device cpu"
                                .into(),
                        ),
                    }
                }
                other => {
                    return Err(format!(
                        "data-parallel work runs on the CPU or CUDA, not on {other:?}"
                    ))
                }
            };
        group.map_err(|e| {
            format!(
                "the process group did not form within {} s ({}): every rank must start with the \
                 same MASTER_ADDR, MASTER_PORT and WORLD_SIZE",
                timeout.as_secs(),
                short(&e.to_string())
            )
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

    /// Whether this is rank 0, the one that writes the outputs.
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// How long a collective waits for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The launch variables this process was joined with.
    pub fn launch_env(&self) -> &LaunchEnv {
        &self.env
    }

    /// The process group, for collectives of the caller's own (every rank must call the same
    /// ones in the same order).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// A failed collective `op` as a [`DistError::Collective`] that names this rank.
    pub fn error(&self, op: impl Into<String>, err: &crate::Error) -> DistError {
        DistError::Collective {
            rank: self.rank(),
            world_size: self.world_size(),
            op: op.into(),
            message: short(&err.to_string()),
            timeout_secs: self.timeout.as_secs(),
            next: self.next_step.clone(),
        }
    }

    /// Waits until every rank gets here.
    ///
    /// # Errors
    /// [`DistError::Collective`] naming `op` when a rank is gone or the timeout passes.
    pub fn barrier(&self, op: &str) -> Result<(), DistError> {
        self.group.barrier().map_err(|e| self.error(op, &e))
    }

    /// Every rank's `value`, in rank order: each rank publishes its own under `key/RANK` in the
    /// rendezvous store and reads the others'. Shapes play no part, so the ranks may use it to
    /// compare what they are about to do before the first collective that would fail (or
    /// abort) if they disagreed. Every rank must call it with the same `key`, once.
    ///
    /// A barrier before the reads means that no read waits for a rank that is gone, and one
    /// after them that rank 0 (which may host the store) stays until every rank has read.
    ///
    /// # Errors
    /// [`DistError::Collective`] naming `op` when a rank is gone, the timeout passes or the
    /// store cannot be reached.
    pub fn exchange(&self, key: &str, value: &[u8], op: &str) -> Result<Vec<Vec<u8>>, DistError> {
        let rank_key = |rank: usize| format!("{key}/{rank}");
        self.store
            .set(&rank_key(self.rank()), value)
            .map_err(|e| self.error(op, &e))?;
        self.barrier(op)?;
        let values = (0..self.world_size())
            .map(|rank| {
                self.store
                    .get(&rank_key(rank))
                    .map_err(|e| self.error(op, &e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.barrier(op)?;
        Ok(values)
    }

    /// Copies rank 0's `tensors` into every rank's, in place, through coalesced buffers.
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn broadcast(&self, tensors: &mut [Tensor], op: &str) -> Result<(), DistError> {
        if tensors.is_empty() {
            return Ok(());
        }
        self.group
            .broadcast_coalesced(tensors, 0, DEFAULT_BROADCAST_BYTES)
            .map_err(|e| self.error(op, &e))
    }

    /// Copies rank `root`'s `tensors` into every rank's, in place (one collective per tensor):
    /// how the ranks collect what one of them made.
    ///
    /// # Errors
    /// As [`Distributed::barrier`], and for a `root` outside the world.
    pub fn broadcast_from(
        &self,
        tensors: &mut [Tensor],
        root: usize,
        op: &str,
    ) -> Result<(), DistError> {
        self.group
            .broadcast(tensors, root)
            .map_err(|e| self.error(op, &e))
    }

    /// Replaces every tensor by its mean over the ranks, in 25 MiB buckets.
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn average(&self, tensors: &mut [Tensor], op: &str) -> Result<(), DistError> {
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
    pub fn sum(&self, tensors: &mut [Tensor], op: &str) -> Result<(), DistError> {
        self.group
            .allreduce(tensors, ReduceOp::Sum)
            .map_err(|e| self.error(op, &e))
    }

    /// Averages the gradients of `params` in `mode` from now on, until
    /// [`Distributed::end_grad_sync`]. [`GradSync::Overlap`] builds DDP's Reducer over `params`
    /// (leaf tensors that require grad, in the model's order), which this group owns; each
    /// step then calls [`Distributed::before_forward`], [`Distributed::before_backward`] and,
    /// after `backward()`, [`Distributed::average_gradients`].
    ///
    /// # Errors
    /// [`DistError::Collective`] naming `op` when the Reducer cannot be built.
    pub fn start_grad_sync(
        &mut self,
        mode: GradSync,
        params: &[Tensor],
        op: &str,
    ) -> Result<(), DistError> {
        self.reducer = None;
        if mode == GradSync::Overlap {
            let reducer = OwnedReducer::new(&self.group, params, ReducerOptions::default())
                .map_err(|e| self.error(op, &e))?;
            self.reducer = Some(reducer);
        }
        Ok(())
    }

    /// Back to [`GradSync::Bucketed`]: drops the Reducer, and with it its autograd hooks.
    pub fn end_grad_sync(&mut self) {
        self.reducer = None;
    }

    /// How the gradients are averaged now.
    pub fn grad_sync(&self) -> GradSync {
        match self.reducer {
            Some(_) => GradSync::Overlap,
            None => GradSync::Bucketed,
        }
    }

    /// Before a forward pass: the Reducer's bookkeeping (and, after its first step, its one
    /// bucket rebuild, a collective). Nothing with [`GradSync::Bucketed`].
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn before_forward(&mut self, op: &str) -> Result<(), DistError> {
        let Some(reducer) = self.reducer.as_mut() else {
            return Ok(());
        };
        match reducer.prepare_for_forward() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(op, &e)),
        }
    }

    /// Before `backward()`: arms the Reducer's autograd hooks on `loss`. Nothing with
    /// [`GradSync::Bucketed`].
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn before_backward(&mut self, loss: &Tensor, op: &str) -> Result<(), DistError> {
        let Some(reducer) = self.reducer.as_mut() else {
            return Ok(());
        };
        match reducer.prepare_for_backward(&[loss]) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(op, &e)),
        }
    }

    /// After `backward()`: every defined gradient of `params` becomes its mean over the ranks,
    /// unless the Reducer already made it so during backward ([`GradSync::Overlap`]).
    ///
    /// # Errors
    /// As [`Distributed::barrier`].
    pub fn average_gradients(&self, params: &[Tensor], op: &str) -> Result<(), DistError> {
        if self.reducer.is_some() {
            return Ok(());
        }
        let mut grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        self.average(&mut grads, op)
    }
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
        assert!(peer_hint(0, 2, 5, RUN_AGAIN).starts_with("rank 1 (the other rank) exited"));
        assert!(peer_hint(1, 2, 5, RUN_AGAIN).starts_with("rank 0 (the other rank) exited"));
        assert!(peer_hint(3, 8, 300, RUN_AGAIN).contains("another rank"));
        assert!(peer_hint(3, 8, 300, RUN_AGAIN).contains("300 s"));
        assert!(peer_hint(3, 8, 300, "resume").ends_with("then resume"));
    }
}
