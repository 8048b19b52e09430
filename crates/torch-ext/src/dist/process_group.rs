//! c10d process groups (Gloo between CPU ranks, NCCL between GPUs with the `nccl` feature) and
//! their collectives on tensor lists.

use super::{c_int_of, c_string, check_rank, i64_of, millis, TcpStore};
use crate::ffi;
use crate::ffi::CGroup;
use crate::Result;
use std::ffi::{c_int, CString};
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

/// How a collective combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The element-wise sum.
    Sum,
    /// The element-wise mean over ranks (Gloo has no AVG: a sum, then a division by the world
    /// size; NCCL averages natively).
    Avg,
}

impl ReduceOp {
    fn code(self) -> c_int {
        // `te_reduce_op` in csrc/dist.cpp.
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
        }
    }
}

/// The network device (address) a Gloo group communicates through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlooDevice {
    /// This machine's address named by a hostname or IP (`createDeviceForHostname`), e.g.
    /// `"127.0.0.1"` for ranks on one machine. Note: the address of *this* rank's machine, not
    /// the master's.
    Hostname(String),
    /// A network interface, e.g. `"eth0"` (`createDeviceForInterface`, PyTorch's
    /// `GLOO_SOCKET_IFNAME`).
    Interface(String),
    /// Gloo's default: the address this machine's hostname resolves to, else loopback.
    Default,
}

impl GlooDevice {
    /// PyTorch's choice: the interface named by `GLOO_SOCKET_IFNAME` when set (the first one of
    /// a comma-separated list), else [`GlooDevice::Default`].
    pub fn from_env() -> Self {
        match std::env::var("GLOO_SOCKET_IFNAME") {
            Ok(names) if !names.trim().is_empty() => GlooDevice::Interface(
                names
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
            _ => GlooDevice::Default,
        }
    }
}

/// Options of a Gloo process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlooOptions {
    /// Bounds the rendezvous and every collective.
    pub timeout: Duration,
    /// The network device.
    pub device: GlooDevice,
    /// Worker threads that run the collectives (Gloo's default is 2).
    pub threads: usize,
}

impl GlooOptions {
    /// `timeout`, the device of [`GlooDevice::from_env`], and Gloo's 2 threads.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            device: GlooDevice::from_env(),
            threads: 2,
        }
    }
}

/// The communication backend of a [`ProcessGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, over TCP.
    Gloo,
    /// NCCL: CUDA tensors.
    Nccl,
}

/// A c10d process group: `world_size` ranks that run collectives together.
///
/// Every rank must call the same collectives in the same order. Dropping the group shuts it
/// down.
pub struct ProcessGroup {
    pub(super) raw: NonNull<CGroup>,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

// SAFETY: c10d backends are driven from several threads inside c10d itself; the shim's group
// object is only mutated by `shutdown`/`drop`, which take `&mut self`/`self`.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// A Gloo group of `world_size` ranks meeting through `store`, with [`GlooOptions::new`].
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when the other ranks do not arrive within `timeout`.
    pub fn gloo(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Self::gloo_with_options(store, rank, world_size, &GlooOptions::new(timeout))
    }

    /// A Gloo group with explicit options. The store's timeout becomes the group's.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a rank outside `0..world_size`; [`Error::Distributed`](crate::Error::Distributed)
    /// when the device cannot be created or the other ranks do not arrive within the timeout.
    pub fn gloo_with_options(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        options: &GlooOptions,
    ) -> Result<Self> {
        check_rank(rank, world_size)?;
        let (kind, arg) = match &options.device {
            GlooDevice::Hostname(host) => (0, c_string("the Gloo hostname", host)?),
            GlooDevice::Interface(name) => (1, c_string("the Gloo interface", name)?),
            GlooDevice::Default => (2, CString::default()),
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: a live store, a NUL-terminated string and a valid out-pointer.
        ffi::dist("ProcessGroup::gloo", unsafe {
            ffi::te_group_gloo(
                store.raw.as_ptr(),
                c_int_of("rank", rank)?,
                c_int_of("world size", world_size)?,
                millis(options.timeout)?,
                kind,
                arg.as_ptr(),
                c_int_of("thread count", options.threads)?,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a group"),
            rank,
            world_size,
            backend: Backend::Gloo,
        })
    }

    /// An NCCL group for CUDA tensors on device `device_index` (which becomes the current CUDA
    /// device: one process per GPU). `timeout` is NCCL's watchdog timeout.
    ///
    /// With NCCL a collective's [`wait`](Self::allreduce) only orders the current CUDA stream
    /// after it (no host synchronisation); a hung peer is caught by NCCL's watchdog, which by
    /// default tears the process down rather than returning an error.
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when CUDA or NCCL fail or the other ranks do not arrive.
    #[cfg(feature = "nccl")]
    pub fn nccl(
        store: &TcpStore,
        rank: usize,
        world_size: usize,
        device_index: usize,
        timeout: Duration,
    ) -> Result<Self> {
        check_rank(rank, world_size)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: a live store and a valid out-pointer.
        ffi::dist("ProcessGroup::nccl", unsafe {
            ffi::te_group_nccl(
                store.raw.as_ptr(),
                c_int_of("rank", rank)?,
                c_int_of("world size", world_size)?,
                millis(timeout)?,
                i64_of("device index", device_index)?,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a group"),
            rank,
            world_size,
            backend: Backend::Nccl,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// All-reduces every tensor of the list in place: afterwards each rank holds the sum (or
    /// mean) over ranks. One collective per tensor; see [`ProcessGroup::allreduce_bucketed`]
    /// for many small tensors.
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when a peer is gone or the timeout passes, or when the tensors
    /// are not on the backend's device type.
    pub fn allreduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        let handles = ffi::handles(tensors);
        // SAFETY: a live group and live handles with their length.
        ffi::dist("allreduce", unsafe {
            ffi::te_group_allreduce(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                op.code(),
            )
        })
    }

    /// All-reduces the list through flat buckets of at most `bucket_bytes` (a larger tensor
    /// gets a bucket of its own; tensors of different dtypes or devices never share one): each
    /// bucket is copied into one contiguous buffer, all buckets are all-reduced concurrently,
    /// then copied back. Use it on the gradients after `backward()`, with
    /// [`DEFAULT_BUCKET_BYTES`](super::DEFAULT_BUCKET_BYTES).
    ///
    /// # Errors
    /// As [`ProcessGroup::allreduce`]; [`Error::Distributed`](crate::Error::Distributed) for an undefined tensor (a
    /// parameter without a gradient) or a zero bucket size.
    pub fn allreduce_bucketed(
        &self,
        tensors: &mut [Tensor],
        op: ReduceOp,
        bucket_bytes: usize,
    ) -> Result<()> {
        let handles = ffi::handles(tensors);
        // SAFETY: a live group and live handles with their length.
        ffi::dist("allreduce_bucketed", unsafe {
            ffi::te_group_allreduce_bucketed(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                op.code(),
                i64_of("bucket size", bucket_bytes)?,
            )
        })
    }

    /// Copies rank `root`'s tensors into every rank's, in place (one collective per tensor).
    ///
    /// # Errors
    /// As [`ProcessGroup::allreduce`]; [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a root outside the world.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        check_rank(root, self.world_size)?;
        let handles = ffi::handles(tensors);
        // SAFETY: a live group and live handles with their length.
        ffi::dist("broadcast", unsafe {
            ffi::te_group_broadcast(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                c_int_of("root", root)?,
            )
        })
    }

    /// Copies rank `root`'s tensors into every rank's through buffers of at most `buffer_bytes`
    /// (`c10d::broadcast_coalesced`, what DDP does with the parameters and buffers at start-up,
    /// with [`DEFAULT_BROADCAST_BYTES`](super::DEFAULT_BROADCAST_BYTES)).
    ///
    /// # Errors
    /// As [`ProcessGroup::broadcast`].
    pub fn broadcast_coalesced(
        &self,
        tensors: &mut [Tensor],
        root: usize,
        buffer_bytes: usize,
    ) -> Result<()> {
        check_rank(root, self.world_size)?;
        let handles = ffi::handles(tensors);
        // SAFETY: a live group and live handles with their length.
        ffi::dist("broadcast_coalesced", unsafe {
            ffi::te_group_broadcast_coalesced(
                self.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                i64_of("buffer size", buffer_bytes)?,
                c_int_of("root", root)?,
            )
        })
    }

    /// Returns once every rank has called it.
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when a peer is gone or the timeout passes.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        ffi::dist("barrier", unsafe {
            ffi::te_group_barrier(self.raw.as_ptr())
        })
    }

    /// How many collectives this rank has started in the group so far (c10d's sequence number:
    /// every all-reduce, broadcast and barrier, those that DDP's Reducer starts included), for
    /// tests and diagnostics that count them.
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when the group was shut down.
    pub fn collectives_started(&self) -> Result<u64> {
        let mut n = 0u64;
        // SAFETY: a live group and a valid out-pointer.
        ffi::dist("sequence number", unsafe {
            ffi::te_group_sequence_number(self.raw.as_ptr(), &mut n)
        })?;
        Ok(n)
    }

    /// Shuts the group down (NCCL: destroys the communicators). Later collectives fail;
    /// dropping the group afterwards is fine. Dropping without calling it shuts down too.
    ///
    /// # Errors
    /// [`Error::Distributed`](crate::Error::Distributed) when the backend reports a failure while shutting down.
    pub fn shutdown(&mut self) -> Result<()> {
        // SAFETY: a live group.
        ffi::dist("shutdown", unsafe {
            ffi::te_group_shutdown(self.raw.as_ptr())
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: we own the group; reducers hold their own reference to the C++ objects.
        unsafe { ffi::te_group_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}
