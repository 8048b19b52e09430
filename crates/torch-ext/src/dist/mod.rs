//! Data-parallel training through libtorch's c10d, as PyTorch's `torch.distributed` and
//! `DistributedDataParallel` use it: a TCP key-value store for the rendezvous, a Gloo (CPU) or
//! NCCL (CUDA, feature `nccl`) process group, collectives on tensor lists, and two ways to
//! all-reduce gradients:
//!
//! - [`ProcessGroup::allreduce_bucketed`]: after `backward()`, flatten the gradients into
//!   buckets of ~25 MiB and all-reduce each bucket (all in flight at once);
//! - [`Reducer`]: DDP's own engine, which all-reduces each bucket from autograd hooks as soon as
//!   its gradients are ready, overlapping communication with the rest of the backward pass.
//!
//! Every collective waits at most the group's timeout (Gloo) and returns
//! [`Error::Distributed`] instead of hanging when a peer is gone.
//!
//! # Launching
//!
//! Under `torchrun --no-python --nproc_per_node=N ./program`, [`LaunchEnv::from_env`] reads
//! `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` and friends, and [`LaunchEnv::store`]
//! makes the store as `torch.distributed` does: rank 0 hosts it ([`TcpStore::new`] with
//! `is_server`), unless `TORCHELASTIC_USE_AGENT_STORE=True`, where torchrun's agent hosts it and
//! every rank connects as a client ([`TcpStore::connect`]). A typical start:
//!
//! ```no_run
//! # fn main() -> torch_ext::Result<()> {
//! use std::time::Duration;
//! use torch_ext::{LaunchEnv, ProcessGroup};
//! if let Some(env) = LaunchEnv::from_env()? {
//!     let timeout = Duration::from_secs(300);
//!     let store = env.store(timeout)?;
//!     let group = ProcessGroup::gloo(&store, env.rank, env.world_size, timeout)?;
//!     // broadcast_coalesced the parameters from rank 0, then train with a Reducer or
//!     // allreduce_bucketed after each backward.
//! #   let _ = group;
//! }
//! # Ok(()) }
//! ```
//!
//! # Files
//!
//! | file | what |
//! | --- | --- |
//! | `launch.rs` | [`LaunchEnv`]: torchrun's variables, and the store they lead to |
//! | `store.rs` | [`TcpStore`] |
//! | `process_group.rs` | [`ProcessGroup`] (Gloo, NCCL) and its collectives |
//! | `reducer.rs` | [`Reducer`], DDP's gradient engine |
//! | `rank_group.rs` | [`Distributed`]: one rank of a launch, with the operations a data-parallel loop or a sharded sampler needs, and its error type [`DistError`] |

mod launch;
mod process_group;
mod rank_group;
mod reducer;
mod store;

pub use launch::LaunchEnv;
pub use process_group::{Backend, GlooDevice, GlooOptions, ProcessGroup, ReduceOp};
pub use rank_group::{peer_hint, DistError, Distributed, GradSync, RUN_AGAIN};
pub use reducer::{Reducer, ReducerOptions};
pub use store::TcpStore;

use crate::{Error, Result};
use std::ffi::{c_int, CString};
use std::time::Duration;

/// The bucket size of DDP's gradient buckets (`c10d::kDefaultBucketBytesCap`, 25 MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;
/// The size of DDP's first, smaller gradient bucket (`c10d::kDefaultFirstBucketBytes`, 1 MiB).
pub const DEFAULT_FIRST_BUCKET_BYTES: usize = 1024 * 1024;
/// The buffer size DDP broadcasts its parameters in at start-up (250 MiB).
pub const DEFAULT_BROADCAST_BYTES: usize = 250 * 1024 * 1024;

fn millis(timeout: Duration) -> Result<i64> {
    let ms = i64::try_from(timeout.as_millis())
        .map_err(|_| Error::InvalidArgument(format!("timeout {timeout:?} is too long")))?;
    if ms <= 0 {
        return Err(Error::InvalidArgument(format!(
            "timeout must be at least 1 ms, got {timeout:?}"
        )));
    }
    Ok(ms)
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte: {s:?}")))
}

fn c_int_of(what: &str, value: usize) -> Result<c_int> {
    c_int::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is out of range")))
}

fn i64_of(what: &str, value: usize) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is out of range")))
}

fn check_rank(rank: usize, world_size: usize) -> Result<()> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::InvalidArgument(format!(
            "rank {rank} is outside a world of {world_size}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
