//! The parts of libtorch's C++ API that tch 0.24 does not bind, behind a safe Rust API over
//! [`tch::Tensor`].
//!
//! # What is bound
//!
//! | module | libtorch | for |
//! | --- | --- | --- |
//! | [`generator`] | `at::Generator` (CPU, CUDA) and the random ops that take one | randomness a run owns, independent of `tch::manual_seed` |
//! | [`mod@checkpoint`] | a custom autograd node (`torch::autograd::Node`) that recomputes a Rust closure in backward | activation checkpointing (`torch.utils.checkpoint`, which is Python only) |
//! | [`foreach`] | `at::_foreach_{lerp_,norm,mul_,add_,zero_}`, `at::_fused_adam_`, `at::_fused_adamw_` | EMA, gradient clipping and Adam in a few kernel launches |
//! | [`autocast`] | `at::autocast::{set,get}_autocast_dtype`, `{set,is}_autocast_enabled` (per device type), `{set,is}_autocast_cache_enabled` | bf16 and fp16 autocast on CUDA and the CPU, and autocast under CUDA graph capture |
//! | [`amp`] | `at::_amp_foreach_non_finite_check_and_unscale_`, `at::_amp_update_scale_` | the dynamic loss scale of fp16 training, on the device |
//! | [`host_memory`] | glibc's `mallopt` (not libtorch) | peak resident memory near the peak of live CPU tensors with checkpointing, no page faults for reused blocks otherwise |
//! | [`pickle`] | `torch::jit::Unpickler` on a `PyTorchStreamReader` (what `torch::jit::pickle_load` runs) | reading `torch.save`d state dicts (diffusers' `diffusion_pytorch_model.bin`) |
//! | `dist` (feature `dist`) | c10d: `TCPStore`, `ProcessGroupGloo`, `ProcessGroupNCCL` (feature `nccl`), `broadcast_coalesced`, `Reducer`; torchrun's variables; the rank group `Distributed` | data-parallel training as DDP does it, and sampling across ranks |
//! | `cuda` (feature `cuda`) | `at::cuda::CUDAGraph` (with `register_generator_state`), CUDA stream pool, stream guard, stream waits | capturing and replaying a step |
//!
//! # Features
//!
//! - `dist` (default): the `dist` module, c10d and Gloo (`csrc/dist.cpp`, compiled with
//!   `USE_DISTRIBUTED USE_C10D_GLOO` against the Gloo headers). The workspace turns the
//!   default off, and `train` and `cli` turn `dist` on, so that `model`, `sample` and `eval`
//!   build without the Gloo headers;
//! - `nccl`: `ProcessGroup::nccl` (compiled with `USE_C10D_NCCL`, linked against
//!   libtorch_cuda); implies `dist`;
//! - `cuda`: the `cuda` module;
//! - `cuda-tests`: both, plus the tests that need a GPU (`cargo xtask test --cuda`).
//!
//! # Safety model
//!
//! The C++ shim lives in `csrc/` and exposes `extern "C"` functions only, all declared in
//! `csrc/torch_ext.h`; `tests/ffi_header.rs` checks the Rust declarations against it. Tensors
//! cross the boundary as tch's own raw handles (`tch::Tensor::as_ptr`, which point at a
//! heap-allocated `at::Tensor`); tensors the shim creates come back as new handles that tch owns
//! (`Tensor::from_ptr`, freed by tch's `Drop`). Every C++ entry point runs its body inside
//! `try`/`catch` and returns a heap-allocated message on failure, which the Rust side turns into
//! an [`Error`] and frees: no C++ exception and no Rust panic crosses the boundary. Shim objects
//! (generators, stores, process groups, reducers, CUDA graphs) are owned by Rust types that free
//! them in `Drop`. dtypes cross as 0-element "carrier" tensors of that dtype, so the mapping
//! between tch's `Kind` and `c10::ScalarType` is tch's own and nothing here hard-codes it.
//!
//! # Building
//!
//! `build.rs` compiles the shim with the `cc` crate against the libtorch that torch-sys links
//! (`DEP_TCH_LIBTORCH_LIB`); with `dist`, also `csrc/dist.cpp` with `-DUSE_DISTRIBUTED
//! -DUSE_C10D_GLOO`. libtorch has Gloo linked in but ships no Gloo headers: `cargo xtask setup`
//! fetches them (Debian's `libgloo-dev`, `apt-get download` + `dpkg -x`, no root needed) into
//! `.deps/gloo/`; `DDPM_GLOO_INCLUDE` overrides the location, and an empty
//! `DDPM_GLOO_INCLUDE=` says that there are none (a build that needs them then fails at once).
//! The `nccl` and `cuda` features also need CUDA and NCCL headers: the torch pip wheel brings `nvidia/{cu13,nccl}/include`, and `cargo xtask setup` installs the
//! missing `crt/` and `nv/target` headers (`nvidia-cuda-crt`, `nvidia-cuda-cccl` from PyPI)
//! into `.deps/cuda-headers/`; `DDPM_CUDA_INCLUDE` (a `:`-separated list) overrides them. Both
//! features build on a machine without a GPU.
//!
//! Executables that use this crate call `build_support::link_libtorch()` from their `build.rs`,
//! as every executable of the workspace does.

#![warn(missing_docs)]

pub mod amp;
pub mod autocast;
pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "dist")]
pub mod dist;
mod ffi;
pub mod foreach;
pub mod generator;
pub mod host_memory;
pub mod log;
pub mod pickle;

pub use autocast::{
    get_autocast_dtype, is_autocast_cache_enabled, set_autocast_cache_enabled, set_autocast_dtype,
    AutocastCacheGuard, AutocastDtypeGuard, AutocastGuard,
};
pub use checkpoint::checkpoint;
#[cfg(feature = "dist")]
pub use dist::{
    DistError, Distributed, GlooDevice, GlooOptions, GradSync, LaunchEnv, ProcessGroup, ReduceOp,
    Reducer, ReducerOptions, TcpStore,
};
pub use foreach::{AdamConfig, AdamTensors};
pub use generator::Generator;
pub use pickle::load_state_dict;

use std::path::PathBuf;

/// Errors of this crate. Messages from libtorch are its C++ exception messages, without the
/// C++ backtrace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A libtorch call threw: `op` names the shim function, `message` is libtorch's.
    #[error("{op}: {message}")]
    Torch {
        /// The operation that failed, e.g. `"fused_adam_"`.
        op: &'static str,
        /// The C++ exception's message.
        message: String,
    },
    /// A c10d call (store, process group, collective, reducer) threw or timed out.
    #[error("{op}: {message}")]
    Distributed {
        /// The operation that failed, e.g. `"allreduce"`.
        op: &'static str,
        /// The C++ exception's message.
        message: String,
    },
    /// An argument was rejected before reaching libtorch.
    #[error("{0}")]
    InvalidArgument(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a `torch.save`d dict of str -> tensor.
    #[error("{path}: {message}")]
    StateDict {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
