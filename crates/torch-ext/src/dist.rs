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

use crate::ffi::{self, CGroup, CReducer, CStore};
use crate::{Error, Result};
use std::ffi::{c_int, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

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

/// Where this process stands in a run launched by torchrun (or anything that sets the same
/// variables): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
/// `MASTER_PORT` and `TORCHELASTIC_USE_AGENT_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process's rank among all processes.
    pub rank: usize,
    /// The number of processes.
    pub world_size: usize,
    /// This process's rank on its machine (its GPU index, one process per GPU).
    pub local_rank: usize,
    /// The number of processes on this machine.
    pub local_world_size: usize,
    /// The store's host.
    pub master_addr: String,
    /// The store's port.
    pub master_port: u16,
    /// torchrun's agent hosts the store: every rank, rank 0 included, connects as a client.
    pub agent_store: bool,
}

impl LaunchEnv {
    /// Reads the launch variables of this process. `None` when the process runs alone
    /// (`WORLD_SIZE` unset or 1), as a plain `cargo run` does.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `WORLD_SIZE` > 1 but a variable is missing or malformed.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`LaunchEnv::from_env`] with the variables looked up by `var`.
    ///
    /// # Errors
    /// As [`LaunchEnv::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let parse = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(value) => value.trim().parse().map(Some).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{name}={value:?} is not a non-negative integer"
                    ))
                }),
            }
        };
        let required = |name: &str| -> Result<usize> {
            parse(name)?.ok_or_else(|| {
                Error::InvalidArgument(format!("WORLD_SIZE is set but {name} is not"))
            })
        };
        let world_size = match parse("WORLD_SIZE")? {
            None | Some(1) => return Ok(None),
            Some(0) => return Err(Error::InvalidArgument("WORLD_SIZE=0".into())),
            Some(n) => n,
        };
        let rank = required("RANK")?;
        check_rank(rank, world_size)?;
        let master_addr = var("MASTER_ADDR")
            .filter(|addr| !addr.trim().is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("WORLD_SIZE is set but MASTER_ADDR is not".into())
            })?;
        let port = required("MASTER_PORT")?;
        let master_port = u16::try_from(port)
            .map_err(|_| Error::InvalidArgument(format!("MASTER_PORT={port} is not a port")))?;
        Ok(Some(Self {
            rank,
            world_size,
            local_rank: parse("LOCAL_RANK")?.unwrap_or(rank),
            local_world_size: parse("LOCAL_WORLD_SIZE")?.unwrap_or(world_size),
            master_addr: master_addr.trim().to_string(),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        }))
    }

    /// The store this rank meets the others through, as `torch.distributed` makes it: a
    /// client of torchrun's agent store when there is one, otherwise hosted by rank 0.
    ///
    /// # Errors
    /// As [`TcpStore::new`].
    pub fn store(&self, timeout: Duration) -> Result<TcpStore> {
        if self.agent_store {
            TcpStore::connect(&self.master_addr, self.master_port, timeout)
        } else {
            TcpStore::new(
                &self.master_addr,
                self.master_port,
                self.world_size,
                self.rank == 0,
                timeout,
            )
        }
    }
}

/// A c10d `TCPStore`: the key-value store ranks meet through.
pub struct TcpStore {
    raw: NonNull<CStore>,
}

// SAFETY: c10d stores are used from several threads inside c10d itself (each call takes the
// store's lock or its own socket).
unsafe impl Send for TcpStore {}
// SAFETY: as above.
unsafe impl Sync for TcpStore {}

impl TcpStore {
    /// Hosts (`is_server`) or joins the store at `addr:port` for `world_size` ranks.
    ///
    /// The server waits, up to `timeout`, until all `world_size` ranks (itself included) have
    /// connected; a client retries connecting for about `timeout` (libtorch's randomised
    /// backoff can overshoot it by up to about as much again). `timeout` also bounds every
    /// later `get` and the rendezvous of process groups made from this store.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the port is taken, the server cannot be reached, or not all
    /// ranks arrive in time.
    pub fn new(
        addr: &str,
        port: u16,
        world_size: usize,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Self> {
        Self::create(addr, port, Some(world_size), is_server, timeout)
    }

    /// Joins the store at `addr:port` as a client without knowing the world size, as every rank
    /// does under torchrun with `TORCHELASTIC_USE_AGENT_STORE=True`.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server cannot be reached within about `timeout` (see
    /// [`TcpStore::new`]).
    pub fn connect(addr: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::create(addr, port, None, false, timeout)
    }

    fn create(
        addr: &str,
        port: u16,
        world_size: Option<usize>,
        is_server: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let host = c_string("the store address", addr)?;
        let world = match world_size {
            Some(n) if n >= 1 => i64_of("world size", n)?,
            Some(n) => {
                return Err(Error::InvalidArgument(format!(
                    "world size must be at least 1, got {n}"
                )))
            }
            None => -1,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: a NUL-terminated host and a valid out-pointer.
        ffi::dist("TcpStore", unsafe {
            ffi::te_tcp_store_new(
                host.as_ptr(),
                port,
                world,
                c_int::from(is_server),
                millis(timeout)?,
                &mut raw,
            )
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a store"),
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server is gone.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = c_string("the key", key)?;
        // SAFETY: a live store, a NUL-terminated key, `value` valid for its length.
        ffi::dist("TcpStore::set", unsafe {
            ffi::te_store_set(self.raw.as_ptr(), key.as_ptr(), value.as_ptr(), value.len())
        })
    }

    /// The value of `key`, waiting (up to the store's timeout) until some rank sets it.
    ///
    /// # Errors
    /// [`Error::Distributed`] on timeout or when the server is gone.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key = c_string("the key", key)?;
        let mut data = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: a live store, a NUL-terminated key and valid out-pointers.
        ffi::dist("TcpStore::get", unsafe {
            ffi::te_store_get(self.raw.as_ptr(), key.as_ptr(), &mut data, &mut len)
        })?;
        // SAFETY: on success `data` holds `len` bytes from malloc, which we copy and free.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::te_free_bytes(data) };
        Ok(value)
    }

    /// Adds `delta` to the integer at `key` (0 when unset) and returns the new value: a
    /// cross-rank counter.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the server is gone or the value is not an integer.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key = c_string("the key", key)?;
        let mut out = 0i64;
        // SAFETY: a live store, a NUL-terminated key and a valid out-pointer.
        ffi::dist("TcpStore::add", unsafe {
            ffi::te_store_add(self.raw.as_ptr(), key.as_ptr(), delta, &mut out)
        })?;
        Ok(out)
    }
}

impl Drop for TcpStore {
    fn drop(&mut self) {
        // SAFETY: we own this reference; process groups hold their own.
        unsafe { ffi::te_store_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStore").finish_non_exhaustive()
    }
}

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
    raw: NonNull<CGroup>,
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
    /// [`Error::Distributed`] when the other ranks do not arrive within `timeout`.
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
    /// [`Error::InvalidArgument`] for a rank outside `0..world_size`; [`Error::Distributed`]
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
    /// [`Error::Distributed`] when CUDA or NCCL fail or the other ranks do not arrive.
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
    /// [`Error::Distributed`] when a peer is gone or the timeout passes, or when the tensors
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
    /// [`DEFAULT_BUCKET_BYTES`].
    ///
    /// # Errors
    /// As [`ProcessGroup::allreduce`]; [`Error::Distributed`] for an undefined tensor (a
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
    /// As [`ProcessGroup::allreduce`]; [`Error::InvalidArgument`] for a root outside the world.
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
    /// with [`DEFAULT_BROADCAST_BYTES`]).
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
    /// [`Error::Distributed`] when a peer is gone or the timeout passes.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: a live group.
        ffi::dist("barrier", unsafe {
            ffi::te_group_barrier(self.raw.as_ptr())
        })
    }

    /// Shuts the group down (NCCL: destroys the communicators). Later collectives fail;
    /// dropping the group afterwards is fine. Dropping without calling it shuts down too.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the backend reports a failure while shutting down.
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

fn check_rank(rank: usize, world_size: usize) -> Result<()> {
    if world_size == 0 || rank >= world_size {
        return Err(Error::InvalidArgument(format!(
            "rank {rank} is outside a world of {world_size}"
        )));
    }
    Ok(())
}

/// Options of a [`Reducer`], DDP's constructor arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReducerOptions {
    /// The size of each gradient bucket (DDP's `bucket_cap_mb`).
    pub bucket_bytes: usize,
    /// The size of the first bucket, kept small so that communication starts early.
    pub first_bucket_bytes: usize,
    /// Traverse the autograd graph from the outputs each step to mark parameters that get no
    /// gradient (needed when some parameters are unused in a step; costs a traversal).
    pub find_unused_parameters: bool,
    /// Let the gradients be views into the buckets (saves a copy and memory).
    pub gradient_as_bucket_view: bool,
}

impl Default for ReducerOptions {
    /// `torch.nn.parallel.DistributedDataParallel`'s defaults.
    fn default() -> Self {
        Self {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            first_bucket_bytes: DEFAULT_FIRST_BUCKET_BYTES,
            find_unused_parameters: false,
            gradient_as_bucket_view: false,
        }
    }
}

/// DDP's gradient reducer (`c10d::Reducer`): it hooks into autograd and all-reduces each
/// bucket of gradients as soon as backward has produced them, so that communication overlaps
/// with the rest of the backward pass. After `backward()` returns every parameter's gradient is
/// the mean over ranks.
///
/// Each step, on every rank: [`Reducer::prepare_for_forward`], the forward pass,
/// [`Reducer::prepare_for_backward`] with the loss, then `loss.backward()`. Broadcast the
/// parameters from rank 0 first ([`ProcessGroup::broadcast_coalesced`]) so that all ranks start
/// equal.
pub struct Reducer<'g> {
    raw: NonNull<CReducer>,
    _group: PhantomData<&'g ProcessGroup>,
}

impl<'g> Reducer<'g> {
    /// A reducer for `params` (leaf tensors that require grad, in the model's order), with
    /// DDP's bucket assignment (`compute_bucket_assignment_by_size`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty list; [`Error::Distributed`] when a parameter
    /// does not require grad or the group rejects the setup.
    pub fn new(
        group: &'g ProcessGroup,
        params: &[Tensor],
        options: ReducerOptions,
    ) -> Result<Self> {
        if params.is_empty() {
            return Err(Error::InvalidArgument(
                "a Reducer needs at least one parameter".into(),
            ));
        }
        let handles = ffi::handles(params);
        let mut raw = std::ptr::null_mut();
        // SAFETY: a live group, live handles with their length and a valid out-pointer.
        ffi::dist("Reducer::new", unsafe {
            ffi::te_reducer_new(
                group.raw.as_ptr(),
                handles.as_ptr(),
                handles.len(),
                i64_of("bucket size", options.bucket_bytes)?,
                i64_of("first bucket size", options.first_bucket_bytes)?,
                c_int::from(options.find_unused_parameters),
                c_int::from(options.gradient_as_bucket_view),
                &mut raw,
            )
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a reducer"),
            _group: PhantomData,
        })
    }

    /// Call before each forward pass. After the first step it rebuilds the buckets once, in
    /// the order gradients became ready (a collective, as in DDP); returns whether it did.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the previous step's reduction did not finish (e.g. a
    /// parameter got no gradient without `find_unused_parameters`) or a peer is gone.
    pub fn prepare_for_forward(&mut self) -> Result<bool> {
        let mut rebuilt: c_int = 0;
        // SAFETY: a live reducer and a valid out-pointer.
        ffi::dist("Reducer::prepare_for_forward", unsafe {
            ffi::te_reducer_prepare_for_forward(self.raw.as_ptr(), &mut rebuilt)
        })?;
        Ok(rebuilt != 0)
    }

    /// Call after the forward pass and before `backward()` with the tensors the loss is
    /// computed from (typically the loss itself).
    ///
    /// # Errors
    /// [`Error::Distributed`] when the reducer is in a bad state.
    pub fn prepare_for_backward(&mut self, outputs: &[&Tensor]) -> Result<()> {
        let handles: Vec<_> = outputs.iter().map(|t| ffi::handle(t)).collect();
        // SAFETY: a live reducer and live handles with their length.
        ffi::dist("Reducer::prepare_for_backward", unsafe {
            ffi::te_reducer_prepare_for_backward(self.raw.as_ptr(), handles.as_ptr(), handles.len())
        })
    }
}

impl Drop for Reducer<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the reducer; its destructor removes the autograd hooks.
        unsafe { ffi::te_reducer_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Reducer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Two-rank tests over 127.0.0.1: the test binary runs itself again as rank 1 (environment
    //! `TORCH_EXT_RANK=1`, `--exact` the same test), and rank 0 checks that rank 1 succeeded.

    use super::*;
    use crate::Generator;
    use std::process::{Child, Command};
    use std::time::Instant;
    use tch::{Device, Kind};

    const RANK_VAR: &str = "TORCH_EXT_RANK";
    const PORT_VAR: &str = "TORCH_EXT_PORT";
    /// Bounds the rendezvous of the two processes: generous, for a loaded machine where the
    /// second process (a fresh copy of this binary, loading libtorch) starts slowly. The tests
    /// of failures use short timeouts of their own.
    const TIMEOUT: Duration = Duration::from_secs(30);
    /// The group timeout of the tests in which a peer fails.
    const SHORT_TIMEOUT: Duration = Duration::from_secs(5);
    const HOST: &str = "127.0.0.1";

    /// Kills the child on every exit path of rank 0 (a failed assertion included).
    struct Peer(Child);

    impl Peer {
        fn wait_success(mut self) {
            let status = self.0.wait().unwrap();
            assert!(status.success(), "rank 1 failed: {status}");
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind((HOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    /// When this process is rank 1 of `test`: its rank and port. Otherwise `None`.
    fn as_peer() -> Option<(usize, u16)> {
        let rank = std::env::var(RANK_VAR).ok()?.parse().unwrap();
        let port = std::env::var(PORT_VAR).unwrap().parse().unwrap();
        Some((rank, port))
    }

    /// Starts rank 1 of `test` (the test's name within this module) on `port`.
    fn spawn_peer(test: &str, port: u16) -> Peer {
        let name = format!("dist::tests::{test}");
        let child = Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(RANK_VAR, "1")
            .env(PORT_VAR, port.to_string())
            .spawn()
            .unwrap();
        Peer(child)
    }

    /// Runs `body(rank, group)` on two ranks: here as rank 0 and in a child as rank 1.
    fn two_ranks(test: &str, body: impl FnOnce(usize, &ProcessGroup)) {
        two_ranks_with_store(test, |rank, _, group| body(rank, group));
    }

    /// [`two_ranks`] with the store the group was made from.
    fn two_ranks_with_store(test: &str, body: impl FnOnce(usize, &TcpStore, &ProcessGroup)) {
        let (rank, port, peer) = match as_peer() {
            Some((rank, port)) => (rank, port, None),
            None => {
                let port = free_port();
                (0, port, Some(spawn_peer(test, port)))
            }
        };
        let store = TcpStore::new(HOST, port, 2, rank == 0, TIMEOUT).unwrap();
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(TIMEOUT)
        };
        let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
        assert_eq!(
            (group.rank(), group.world_size(), group.backend()),
            (rank, 2, Backend::Gloo)
        );
        body(rank, &store, &group);
        drop(group);
        if let Some(peer) = peer {
            peer.wait_success();
        }
    }

    fn values(xs: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&xs.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// Rank `rank`'s contribution: `(rank + 1) · (0, 1, 2, …)`, integers exact in f32.
    fn contribution(rank: usize, shape: &[i64], kind: Kind) -> Tensor {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (kind, Device::Cpu)) * (rank as i64 + 1)).reshape(shape)
    }

    #[test]
    fn allreduce_sums_and_averages_exactly() {
        two_ranks("allreduce_sums_and_averages_exactly", |rank, group| {
            let shapes: [&[i64]; 2] = [&[3, 4], &[5]];
            let mut xs: Vec<Tensor> = shapes
                .iter()
                .map(|s| contribution(rank, s, Kind::Float))
                .collect();
            xs.push(contribution(rank, &[4], Kind::Int64));
            group.allreduce(&mut xs, ReduceOp::Sum).unwrap();
            for x in &xs {
                // (1 + 2) · i
                let expected: Vec<f64> = (0..x.numel()).map(|i| 3.0 * i as f64).collect();
                assert_eq!(values(x), expected);
            }
            assert_eq!(xs[2].kind(), Kind::Int64);

            let mut ys = vec![contribution(rank, &[6], Kind::Float)];
            group.allreduce(&mut ys, ReduceOp::Avg).unwrap();
            let expected: Vec<f64> = (0..6).map(|i| 1.5 * i as f64).collect();
            assert_eq!(values(&ys[0]), expected);

            // An integer mean is refused on both ranks before anything is sent, and the group
            // still works afterwards.
            let mut ints = vec![contribution(rank, &[2], Kind::Int64)];
            let err = group.allreduce(&mut ints, ReduceOp::Avg).unwrap_err();
            assert!(err.to_string().contains("floating-point"), "{err}");
            assert_eq!(
                values(&ints[0]),
                values(&contribution(rank, &[2], Kind::Int64))
            );
            group.allreduce(&mut ints, ReduceOp::Sum).unwrap();
            assert_eq!(values(&ints[0]), [0.0, 3.0]);
        });
    }

    #[test]
    fn broadcast_copies_the_roots_values() {
        two_ranks("broadcast_copies_the_roots_values", |rank, group| {
            let mut xs = vec![
                contribution(rank, &[2, 3], Kind::Float),
                contribution(rank, &[4], Kind::Double),
            ];
            group.broadcast(&mut xs, 0).unwrap();
            assert_eq!(
                values(&xs[0]),
                values(&contribution(0, &[2, 3], Kind::Float))
            );
            assert_eq!(values(&xs[1]), values(&contribution(0, &[4], Kind::Double)));
            // From rank 1 too.
            let mut ys = vec![contribution(rank, &[3], Kind::Float)];
            group.broadcast(&mut ys, 1).unwrap();
            assert_eq!(values(&ys[0]), [0.0, 2.0, 4.0]);
            assert!(matches!(
                group.broadcast(&mut ys, 2),
                Err(Error::InvalidArgument(_))
            ));
        });
    }

    #[test]
    fn barrier_waits_for_the_slower_rank() {
        two_ranks("barrier_waits_for_the_slower_rank", |rank, group| {
            group.barrier().unwrap();
            let start = Instant::now();
            if rank == 1 {
                std::thread::sleep(Duration::from_millis(600));
            }
            group.barrier().unwrap();
            if rank == 0 {
                assert!(
                    start.elapsed() >= Duration::from_millis(500),
                    "{:?}",
                    start.elapsed()
                );
            }
        });
    }

    #[test]
    fn store_set_get_add_across_ranks() {
        two_ranks_with_store("store_set_get_add_across_ranks", |rank, store, group| {
            store
                .set(
                    &format!("from{rank}"),
                    format!("hello from {rank}").as_bytes(),
                )
                .unwrap();
            // `get` waits until the other rank has set its key.
            let other = 1 - rank;
            assert_eq!(
                store.get(&format!("from{other}")).unwrap(),
                format!("hello from {other}").as_bytes()
            );
            store.add("arrived", 1).unwrap();
            group.barrier().unwrap();
            assert_eq!(store.add("arrived", 0).unwrap(), 2);
        });
    }

    #[test]
    fn bucketed_allreduce_averages_every_tensor() {
        two_ranks("bucketed_allreduce_averages_every_tensor", |rank, group| {
            // Different gradients per rank; a 64-byte bucket forces several buckets, and a
            // tensor bigger than a bucket, and two dtypes.
            let shapes: [&[i64]; 5] = [&[3], &[4, 2], &[40], &[2], &[1, 1]];
            let mut grads: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    contribution(rank, s, if i == 3 { Kind::Double } else { Kind::Float })
                        + i as f64
                })
                .collect();
            let expected: Vec<Vec<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let kind = if i == 3 { Kind::Double } else { Kind::Float };
                    values(
                        &((contribution(0, s, kind) + contribution(1, s, kind)) / 2.0 + i as f64),
                    )
                })
                .collect();
            group
                .allreduce_bucketed(&mut grads, ReduceOp::Avg, 64)
                .unwrap();
            for (i, g) in grads.iter().enumerate() {
                assert_eq!(values(g), expected[i], "tensor {i}");
                assert_eq!(g.size(), shapes[i].to_vec());
            }
            assert_eq!(grads[3].kind(), Kind::Double);
            // One big bucket gives the same, and SUM works too.
            let mut sums = vec![
                contribution(rank, &[7], Kind::Float),
                contribution(rank, &[2, 2], Kind::Float),
            ];
            group
                .allreduce_bucketed(&mut sums, ReduceOp::Sum, DEFAULT_BUCKET_BYTES)
                .unwrap();
            assert_eq!(values(&sums[1]), [0.0, 3.0, 6.0, 9.0]);
        });
    }

    #[test]
    fn broadcast_coalesced_makes_all_ranks_equal_to_the_root() {
        two_ranks(
            "broadcast_coalesced_makes_all_ranks_equal_to_the_root",
            |rank, group| {
                let make = |seed| {
                    let mut gen = Generator::cpu(seed);
                    vec![
                        gen.randn(&[10, 3], (Kind::Float, Device::Cpu)).unwrap(),
                        gen.randn(&[7], (Kind::Float, Device::Cpu)).unwrap(),
                        gen.randn(&[2, 2, 2], (Kind::Double, Device::Cpu)).unwrap(),
                    ]
                };
                let mut params = make(rank as u64);
                let expected = make(0);
                // A small buffer: several coalesced broadcasts.
                group.broadcast_coalesced(&mut params, 0, 64).unwrap();
                for (p, e) in params.iter().zip(&expected) {
                    assert!(p.equal(e));
                }
            },
        );
    }

    #[test]
    fn reducer_averages_gradients_during_backward() {
        two_ranks(
            "reducer_averages_gradients_during_backward",
            |rank, group| {
                // loss = Σ_j Σ_i w_j[i] · x_j[i] (rank-dependent x): dloss/dw_j = x_j, so after the
                // reduced backward every rank's grad must be (x_j(rank 0) + x_j(rank 1)) / 2.
                let shapes: [&[i64]; 3] = [&[300], &[4, 5], &[1000]];
                let params: Vec<Tensor> = shapes
                    .iter()
                    .map(|s| Tensor::zeros(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true))
                    .collect();
                let mut gen = Generator::cpu(17);
                let mut start = params
                    .iter()
                    .map(|p| gen.randn_like(p).unwrap())
                    .collect::<Vec<_>>();
                if rank == 1 {
                    start = start.iter().map(|t| t + 1.0).collect();
                }
                tch::no_grad(|| {
                    for (p, s) in params.iter().zip(&start) {
                        p.shallow_clone().copy_(s);
                    }
                });
                let mut weights = params.iter().map(Tensor::shallow_clone).collect::<Vec<_>>();
                group
                    .broadcast_coalesced(&mut weights, 0, DEFAULT_BROADCAST_BYTES)
                    .unwrap();
                let inputs = |r: usize, step: usize| -> Vec<Tensor> {
                    let mut gen = Generator::cpu(100 * step as u64 + r as u64);
                    params.iter().map(|p| gen.randn_like(p).unwrap()).collect()
                };
                let options = ReducerOptions {
                    // Small buckets: several of them, reduced while backward runs.
                    bucket_bytes: 2048,
                    first_bucket_bytes: 1024,
                    ..ReducerOptions::default()
                };
                let mut reducer = Reducer::new(group, &params, options).unwrap();
                let mut rebuilt = vec![];
                for step in 0..3 {
                    rebuilt.push(reducer.prepare_for_forward().unwrap());
                    for p in &params {
                        let mut g = p.grad();
                        if g.defined() {
                            let _ = g.zero_();
                        }
                    }
                    let xs = inputs(rank, step);
                    let loss = params
                        .iter()
                        .zip(&xs)
                        .map(|(w, x)| (w * x).sum(Kind::Float))
                        .reduce(|a, b| a + b)
                        .unwrap();
                    reducer.prepare_for_backward(&[&loss]).unwrap();
                    loss.backward();
                    let (x0, x1) = (inputs(0, step), inputs(1, step));
                    for j in 0..params.len() {
                        let expected = (&x0[j] + &x1[j]) / 2.0;
                        let diff = (params[j].grad() - expected).abs().max().double_value(&[]);
                        assert!(diff < 1e-6, "step {step}, param {j}: {diff}");
                    }
                }
                // DDP rebuilds the buckets once, before the second forward pass.
                assert_eq!(rebuilt, [false, true, false]);
                // The parameters started equal to rank 0's after the broadcast.
                let rank0_start = {
                    let mut gen = Generator::cpu(17);
                    params
                        .iter()
                        .map(|p| gen.randn_like(p).unwrap())
                        .collect::<Vec<_>>()
                };
                for (p, s) in params.iter().zip(&rank0_start) {
                    assert!(p.detach().equal(s));
                }
            },
        );
    }

    #[test]
    fn a_collective_fails_within_the_timeout_when_the_peer_is_killed() {
        let test = "a_collective_fails_within_the_timeout_when_the_peer_is_killed";
        if let Some((rank, port)) = as_peer() {
            let store = TcpStore::new(HOST, port, 2, false, TIMEOUT).unwrap();
            let options = GlooOptions {
                device: GlooDevice::Hostname(HOST.into()),
                ..GlooOptions::new(SHORT_TIMEOUT)
            };
            let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
            group.barrier().unwrap();
            // Rank 0 kills this process here.
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let port = free_port();
        let mut peer = spawn_peer(test, port);
        let store = TcpStore::new(HOST, port, 2, true, TIMEOUT).unwrap();
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(SHORT_TIMEOUT)
        };
        let group = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap();
        group.barrier().unwrap();
        peer.0.kill().unwrap();
        peer.0.wait().unwrap();
        let start = Instant::now();
        let mut xs = vec![Tensor::ones([4], (Kind::Float, Device::Cpu))];
        let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(
                err,
                Error::Distributed {
                    op: "allreduce",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            elapsed < SHORT_TIMEOUT + Duration::from_secs(3),
            "took {elapsed:?}: {err}"
        );
        // The group stays usable for an error report: the next collective fails too, promptly.
        let start = Instant::now();
        assert!(group.barrier().is_err());
        assert!(start.elapsed() < SHORT_TIMEOUT + Duration::from_secs(3));
    }

    #[test]
    fn a_collective_times_out_when_the_peer_stalls() {
        let test = "a_collective_times_out_when_the_peer_stalls";
        let timeout = Duration::from_secs(2);
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(timeout)
        };
        if let Some((rank, port)) = as_peer() {
            let store = TcpStore::new(HOST, port, 2, false, TIMEOUT).unwrap();
            let group = ProcessGroup::gloo_with_options(&store, rank, 2, &options).unwrap();
            group.barrier().unwrap();
            // Alive, connected, and never joining the next collective (rank 0 kills us).
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let port = free_port();
        let _peer = spawn_peer(test, port);
        let store = TcpStore::new(HOST, port, 2, true, TIMEOUT).unwrap();
        let group = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap();
        group.barrier().unwrap();
        let start = Instant::now();
        let mut xs = vec![Tensor::ones([4], (Kind::Float, Device::Cpu))];
        let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, Error::Distributed { .. }), "{err}");
        assert!(
            elapsed >= timeout - Duration::from_millis(100),
            "failed before the timeout ({elapsed:?}): {err}"
        );
        assert!(
            elapsed < timeout + Duration::from_secs(3),
            "took {elapsed:?}: {err}"
        );
    }

    #[test]
    fn the_rendezvous_fails_within_the_timeout_when_the_peer_never_starts() {
        if as_peer().is_some() {
            return;
        }
        let timeout = Duration::from_secs(2);
        // The store's server waits for both ranks' clients.
        let start = Instant::now();
        let err = TcpStore::new(HOST, free_port(), 2, true, timeout).unwrap_err();
        assert!(
            matches!(err, Error::Distributed { op: "TcpStore", .. }),
            "{err}"
        );
        assert!(
            start.elapsed() < timeout + Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // A client finds no server (libtorch's randomised connect backoff can overshoot the
        // timeout by up to about as much again).
        let start = Instant::now();
        assert!(TcpStore::connect(HOST, free_port(), timeout).is_err());
        assert!(
            start.elapsed() < 2 * timeout + Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );

        // A store that does not wait for workers, and a group whose rank 1 never arrives.
        let store = TcpStore::new(HOST, free_port(), 1, true, timeout).unwrap();
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(timeout)
        };
        let start = Instant::now();
        let err = ProcessGroup::gloo_with_options(&store, 0, 2, &options).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Distributed {
                    op: "ProcessGroup::gloo",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            start.elapsed() < timeout + Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_launch_environment_is_read_like_torchrun_writes_it() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            None
        );
        let env = LaunchEnv::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            env,
            LaunchEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "node0".into(),
                master_port: 29500,
                agent_store: true,
            }
        );
        let env = LaunchEnv::from_vars(vars(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (env.local_rank, env.local_world_size, env.agent_store),
            (1, 2, false)
        );
        for bad in [
            &[
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ][..],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ],
            &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")],
            &[
                ("WORLD_SIZE", "2"),
                ("RANK", "0"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "70000"),
            ],
            &[("WORLD_SIZE", "two")],
        ] {
            let err = LaunchEnv::from_vars(vars(bad)).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_arguments_are_rejected_before_c10d() {
        if as_peer().is_some() {
            return;
        }
        assert!(matches!(
            TcpStore::new(HOST, 1, 0, true, TIMEOUT),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            TcpStore::new(HOST, 1, 1, true, Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
        let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
        assert!(matches!(
            ProcessGroup::gloo(&store, 2, 2, TIMEOUT),
            Err(Error::InvalidArgument(_))
        ));
        store.set("k", b"v").unwrap();
        assert_eq!(store.get("k").unwrap(), b"v");
        assert_eq!(store.add("n", 2).unwrap(), 2);
        assert_eq!(store.add("n", 3).unwrap(), 5);
    }

    #[cfg(feature = "cuda-tests")]
    #[test]
    fn a_single_rank_nccl_group_runs_collectives_on_the_gpu() {
        if as_peer().is_some() {
            return;
        }
        // One GPU: NCCL allows one rank per device, so a world of one.
        let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
        let mut group = ProcessGroup::nccl(&store, 0, 1, 0, TIMEOUT).unwrap();
        assert_eq!(group.backend(), Backend::Nccl);
        let cuda = (Kind::Float, Device::Cuda(0));
        let mut xs = vec![Tensor::arange(6, cuda), Tensor::ones([3, 3], cuda)];
        group.allreduce(&mut xs, ReduceOp::Avg).unwrap();
        group
            .allreduce_bucketed(&mut xs, ReduceOp::Sum, 16)
            .unwrap();
        group
            .broadcast_coalesced(&mut xs, 0, DEFAULT_BROADCAST_BYTES)
            .unwrap();
        group.barrier().unwrap();
        assert_eq!(values(&xs[0]), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(xs[1].device(), Device::Cuda(0));
        group.shutdown().unwrap();
    }

    #[test]
    fn a_single_rank_group_reduces_to_itself() {
        if as_peer().is_some() {
            return;
        }
        let store = TcpStore::new(HOST, free_port(), 1, true, TIMEOUT).unwrap();
        let options = GlooOptions {
            device: GlooDevice::Hostname(HOST.into()),
            ..GlooOptions::new(TIMEOUT)
        };
        let mut group = ProcessGroup::gloo_with_options(&store, 0, 1, &options).unwrap();
        let mut xs = vec![Tensor::from_slice(&[1.0f32, 2.0])];
        group.allreduce(&mut xs, ReduceOp::Avg).unwrap();
        assert_eq!(values(&xs[0]), [1.0, 2.0]);
        group.barrier().unwrap();
        group.shutdown().unwrap();
        let err = group.allreduce(&mut xs, ReduceOp::Sum).unwrap_err();
        assert!(err.to_string().contains("shut down"), "{err}");
    }
}
