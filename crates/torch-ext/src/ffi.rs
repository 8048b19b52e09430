//! Declarations of the C++ shim's `extern "C"` functions (`csrc/*.cpp`) and the helpers that
//! turn their error strings into [`Error`]s.
//!
//! `csrc/torch_ext.h` declares the same functions for the C++, which compiles against it;
//! `tests/ffi_header.rs` fails, naming the function, when a declaration here differs from the
//! header's (C types mapped to their Rust spelling) or is missing on either side.
//!
//! Every function returning `*mut c_char` returns null on success and otherwise a `malloc`ed
//! message that [`take_error`] frees. Tensor handles are tch's `*mut C_tensor` (an
//! `at::Tensor*` on the C++ side).

use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// An `at::Generator` on the heap.
#[repr(C)]
pub(crate) struct CGenerator {
    _private: [u8; 0],
}

#[cfg(feature = "dist")]
/// A `c10::intrusive_ptr<c10d::Store>` on the heap.
#[repr(C)]
pub(crate) struct CStore {
    _private: [u8; 0],
}

#[cfg(feature = "dist")]
/// A process group (backend + ProcessGroup wrapper) on the heap.
#[repr(C)]
pub(crate) struct CGroup {
    _private: [u8; 0],
}

#[cfg(feature = "dist")]
/// A `std::shared_ptr<c10d::Reducer>` on the heap.
#[repr(C)]
pub(crate) struct CReducer {
    _private: [u8; 0],
}

/// The named tensors of a loaded state dict.
#[repr(C)]
pub(crate) struct CNamedTensors {
    _private: [u8; 0],
}

/// An `at::cuda::CUDAGraph` on the heap.
#[cfg(feature = "cuda")]
#[repr(C)]
pub(crate) struct CCudaGraph {
    _private: [u8; 0],
}

/// A `c10::cuda::CUDAStream` on the heap.
#[cfg(feature = "cuda")]
#[repr(C)]
pub(crate) struct CCudaStream {
    _private: [u8; 0],
}

/// A `c10::cuda::CUDAStreamGuard` on the heap.
#[cfg(feature = "cuda")]
#[repr(C)]
pub(crate) struct CCudaStreamGuard {
    _private: [u8; 0],
}

/// An error message owned by the shim (null: success).
pub(crate) type CError = *mut c_char;

/// `te_checkpoint_run` of csrc/torch_ext.h: runs a checkpointed block (see `checkpoint.rs`).
pub(crate) type CheckpointRun = unsafe extern "C" fn(
    closure: *mut c_void,
    inputs: *const *mut C_tensor,
    n: usize,
    out: *mut *mut C_tensor,
    message: *mut c_char,
    capacity: usize,
) -> c_int;

/// `te_checkpoint_drop` of csrc/torch_ext.h: frees a checkpointed block's closure.
pub(crate) type CheckpointDrop = unsafe extern "C" fn(closure: *mut c_void);

// Device type codes of `te_device_type` in csrc/core.cpp.
pub(crate) const DEVICE_CPU: c_int = 0;
pub(crate) const DEVICE_CUDA: c_int = 1;
pub(crate) const DEVICE_MPS: c_int = 2;
pub(crate) const DEVICE_VULKAN: c_int = 3;

extern "C" {
    pub(crate) fn te_free_error(error: *mut c_char);
    pub(crate) fn te_set_cpp_log_level(level: c_int) -> CError;

    // Generators.
    pub(crate) fn te_generator_cpu(seed: u64, out: *mut *mut CGenerator) -> CError;
    pub(crate) fn te_generator_cuda(
        seed: u64,
        device_index: i64,
        out: *mut *mut CGenerator,
    ) -> CError;
    pub(crate) fn te_generator_free(gen: *mut CGenerator);
    pub(crate) fn te_generator_seed(gen: *mut CGenerator, out: *mut u64) -> CError;
    pub(crate) fn te_generator_set_seed(gen: *mut CGenerator, seed: u64) -> CError;
    pub(crate) fn te_generator_get_state(gen: *mut CGenerator, out: *mut *mut C_tensor) -> CError;
    pub(crate) fn te_generator_set_state(gen: *mut CGenerator, state: *mut C_tensor) -> CError;
    pub(crate) fn te_generator_default(
        device_type: c_int,
        device_index: i64,
        out: *mut *mut CGenerator,
    ) -> CError;
    pub(crate) fn te_normal_(t: *mut C_tensor, mean: f64, std: f64, gen: *mut CGenerator)
        -> CError;
    pub(crate) fn te_uniform_(t: *mut C_tensor, from: f64, to: f64, gen: *mut CGenerator)
        -> CError;
    pub(crate) fn te_bernoulli_(t: *mut C_tensor, p: f64, gen: *mut CGenerator) -> CError;
    pub(crate) fn te_random_(t: *mut C_tensor, from: i64, to: i64, gen: *mut CGenerator) -> CError;
    pub(crate) fn te_randperm_out(out: *mut C_tensor, n: i64, gen: *mut CGenerator) -> CError;

    // Multi-tensor ops.
    pub(crate) fn te_foreach_lerp_scalar_(
        xs: *const *mut C_tensor,
        n: usize,
        ends: *const *mut C_tensor,
        n_ends: usize,
        weight: f64,
    ) -> CError;
    pub(crate) fn te_foreach_lerp_tensor_(
        xs: *const *mut C_tensor,
        n: usize,
        ends: *const *mut C_tensor,
        n_ends: usize,
        weight: *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_foreach_norm(
        xs: *const *mut C_tensor,
        n: usize,
        ord: f64,
        out: *mut *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_foreach_mul_scalar_(xs: *const *mut C_tensor, n: usize, scalar: f64)
        -> CError;
    pub(crate) fn te_amp_foreach_non_finite_check_and_unscale_(
        grads: *const *mut C_tensor,
        n: usize,
        found_inf: *mut C_tensor,
        inv_scale: *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_foreach_mul_tensor_(
        xs: *const *mut C_tensor,
        n: usize,
        scalar: *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_foreach_add_scalar_(xs: *const *mut C_tensor, n: usize, scalar: f64)
        -> CError;
    pub(crate) fn te_foreach_add_list_(
        xs: *const *mut C_tensor,
        n: usize,
        others: *const *mut C_tensor,
        n_others: usize,
        alpha: f64,
    ) -> CError;
    pub(crate) fn te_foreach_zero_(xs: *const *mut C_tensor, n: usize) -> CError;

    // Activation checkpointing.
    pub(crate) fn te_checkpoint(
        run: CheckpointRun,
        drop: CheckpointDrop,
        closure: *mut c_void,
        inputs: *const *mut C_tensor,
        n_inputs: usize,
        params: *const *mut C_tensor,
        n_params: usize,
        out: *mut *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_fused_adam_(
        adamw: c_int,
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        max_exp_avg_sqs: *const *mut C_tensor,
        n_max: usize,
        state_steps: *const *mut C_tensor,
        n: usize,
        lr: f64,
        lr_tensor: *mut C_tensor,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        amsgrad: c_int,
        maximize: c_int,
        grad_scale: *mut C_tensor,
        found_inf: *mut C_tensor,
    ) -> CError;

    // Autocast.
    pub(crate) fn te_set_autocast_dtype(device_type: c_int, carrier: *mut C_tensor) -> CError;
    pub(crate) fn te_get_autocast_dtype(device_type: c_int, out: *mut *mut C_tensor) -> CError;
    pub(crate) fn te_set_autocast_enabled(
        device_type: c_int,
        enabled: c_int,
        previous: *mut c_int,
    ) -> CError;
    pub(crate) fn te_set_autocast_cache_enabled(enabled: c_int) -> CError;
    pub(crate) fn te_is_autocast_cache_enabled(out: *mut c_int) -> CError;

    // Pickle.
    pub(crate) fn te_load_state_dict(
        data: *const c_char,
        len: usize,
        out: *mut *mut CNamedTensors,
    ) -> CError;
    pub(crate) fn te_load_state_dict_file(
        path: *const c_char,
        out: *mut *mut CNamedTensors,
    ) -> CError;
    pub(crate) fn te_named_tensors_len(named: *const CNamedTensors) -> usize;
    pub(crate) fn te_named_tensors_get(
        named: *const CNamedTensors,
        index: usize,
        name: *mut *const c_char,
        name_len: *mut usize,
        tensor: *mut *mut C_tensor,
    ) -> CError;
    pub(crate) fn te_named_tensors_free(named: *mut CNamedTensors);
}

// c10d (csrc/dist.cpp).
#[cfg(feature = "dist")]
extern "C" {
    pub(crate) fn te_free_bytes(bytes: *mut u8);
    pub(crate) fn te_tcp_store_new(
        host: *const c_char,
        port: u16,
        world_size: i64,
        is_server: c_int,
        timeout_ms: i64,
        out: *mut *mut CStore,
    ) -> CError;
    pub(crate) fn te_store_free(store: *mut CStore);
    pub(crate) fn te_store_set(
        store: *mut CStore,
        key: *const c_char,
        value: *const u8,
        len: usize,
    ) -> CError;
    pub(crate) fn te_store_get(
        store: *mut CStore,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
    ) -> CError;
    pub(crate) fn te_store_add(
        store: *mut CStore,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
    ) -> CError;
    pub(crate) fn te_group_gloo(
        store: *mut CStore,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        device_kind: c_int,
        device_arg: *const c_char,
        threads: c_int,
        out: *mut *mut CGroup,
    ) -> CError;
    #[cfg(feature = "nccl")]
    pub(crate) fn te_group_nccl(
        store: *mut CStore,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        device_index: i64,
        out: *mut *mut CGroup,
    ) -> CError;
    pub(crate) fn te_group_allreduce(
        group: *mut CGroup,
        xs: *const *mut C_tensor,
        n: usize,
        op: c_int,
    ) -> CError;
    pub(crate) fn te_group_broadcast(
        group: *mut CGroup,
        xs: *const *mut C_tensor,
        n: usize,
        root: c_int,
    ) -> CError;
    pub(crate) fn te_group_barrier(group: *mut CGroup) -> CError;
    pub(crate) fn te_group_sequence_number(group: *mut CGroup, out: *mut u64) -> CError;
    pub(crate) fn te_group_allreduce_bucketed(
        group: *mut CGroup,
        xs: *const *mut C_tensor,
        n: usize,
        op: c_int,
        bucket_bytes: i64,
    ) -> CError;
    pub(crate) fn te_group_broadcast_coalesced(
        group: *mut CGroup,
        xs: *const *mut C_tensor,
        n: usize,
        buffer_bytes: i64,
        root: c_int,
    ) -> CError;
    pub(crate) fn te_group_shutdown(group: *mut CGroup) -> CError;
    pub(crate) fn te_group_free(group: *mut CGroup);
    pub(crate) fn te_reducer_new(
        group: *mut CGroup,
        params: *const *mut C_tensor,
        n: usize,
        bucket_bytes: i64,
        first_bucket_bytes: i64,
        find_unused_parameters: c_int,
        gradient_as_bucket_view: c_int,
        out: *mut *mut CReducer,
    ) -> CError;
    pub(crate) fn te_reducer_prepare_for_forward(
        reducer: *mut CReducer,
        rebuilt: *mut c_int,
    ) -> CError;
    pub(crate) fn te_reducer_prepare_for_backward(
        reducer: *mut CReducer,
        outputs: *const *mut C_tensor,
        n: usize,
    ) -> CError;
    pub(crate) fn te_reducer_free(reducer: *mut CReducer);
}

#[cfg(feature = "cuda")]
extern "C" {
    pub(crate) fn te_cuda_graph_new(keep_graph: c_int, out: *mut *mut CCudaGraph) -> CError;
    pub(crate) fn te_cuda_graph_free(graph: *mut CCudaGraph);
    pub(crate) fn te_cuda_graph_capture_begin(graph: *mut CCudaGraph) -> CError;
    pub(crate) fn te_cuda_graph_capture_end(graph: *mut CCudaGraph) -> CError;
    pub(crate) fn te_cuda_graph_register_generator(
        graph: *mut CCudaGraph,
        gen: *mut CGenerator,
    ) -> CError;
    pub(crate) fn te_cuda_graph_replay(graph: *mut CCudaGraph) -> CError;
    pub(crate) fn te_cuda_memory_stats(device_index: i64, out: *mut i64) -> CError;
    pub(crate) fn te_cuda_reset_peak_memory_stats(device_index: i64) -> CError;
    pub(crate) fn te_cuda_graph_reset(graph: *mut CCudaGraph) -> CError;
    pub(crate) fn te_cuda_stream_from_pool(
        device_index: i64,
        high_priority: c_int,
        out: *mut *mut CCudaStream,
    ) -> CError;
    pub(crate) fn te_cuda_stream_current(device_index: i64, out: *mut *mut CCudaStream) -> CError;
    pub(crate) fn te_cuda_stream_free(stream: *mut CCudaStream);
    pub(crate) fn te_cuda_stream_synchronize(stream: *mut CCudaStream) -> CError;
    pub(crate) fn te_cuda_stream_wait_stream(
        stream: *mut CCudaStream,
        other: *mut CCudaStream,
    ) -> CError;
    pub(crate) fn te_cuda_stream_id(stream: *mut CCudaStream, out: *mut i64) -> CError;
    pub(crate) fn te_cuda_stream_guard_new(
        stream: *mut CCudaStream,
        out: *mut *mut CCudaStreamGuard,
    ) -> CError;
    pub(crate) fn te_cuda_stream_guard_free(guard: *mut CCudaStreamGuard);
}

/// Takes ownership of a shim error: `None` on success, otherwise its message (freed here).
pub(crate) fn take_error(error: CError) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a non-null error is a NUL-terminated string from `strdup` in csrc/common.h, and
    // nobody else frees it.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { te_free_error(error) };
    Some(message)
}

/// `Ok` on success, otherwise [`Error::Torch`] for `op`.
pub(crate) fn torch(op: &'static str, error: CError) -> Result<()> {
    match take_error(error) {
        None => Ok(()),
        Some(message) => Err(Error::Torch { op, message }),
    }
}

/// `Ok` on success, otherwise [`Error::Distributed`] for `op`.
#[cfg(feature = "dist")]
pub(crate) fn dist(op: &'static str, error: CError) -> Result<()> {
    match take_error(error) {
        None => Ok(()),
        Some(message) => Err(Error::Distributed { op, message }),
    }
}

/// The raw handles of a list of tensors, for the shim's `const te_tensor*` parameters.
///
/// The shim only reads the handles (it copies each `at::Tensor`, which shares the storage), so
/// handles from `&Tensor` are fine even where the op then writes into the tensors' data.
pub(crate) fn handles(tensors: &[Tensor]) -> Vec<*mut C_tensor> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

/// The raw handle of a tensor for a shim parameter.
pub(crate) fn handle(tensor: &Tensor) -> *mut C_tensor {
    tensor.as_ptr() as *mut C_tensor
}

/// Wraps a handle the shim returned.
///
/// # Safety
/// `ptr` must be a new, non-null handle made by the shim (`te_new_handle`), owned by no one.
pub(crate) unsafe fn from_handle(ptr: *mut C_tensor) -> Tensor {
    debug_assert!(!ptr.is_null());
    // SAFETY: the caller's contract.
    unsafe { Tensor::from_ptr(ptr) }
}

/// A 0-element CPU tensor of `kind`: how a dtype crosses the boundary (see the crate docs).
pub(crate) fn dtype_carrier(kind: Kind) -> Tensor {
    Tensor::empty([0], (kind, Device::Cpu))
}

/// The shim's device type code of `device` (the index, if any, is not part of it).
pub(crate) fn device_type(device: Device) -> c_int {
    match device {
        Device::Cpu => DEVICE_CPU,
        Device::Cuda(_) => DEVICE_CUDA,
        Device::Mps => DEVICE_MPS,
        Device::Vulkan => DEVICE_VULKAN,
    }
}
