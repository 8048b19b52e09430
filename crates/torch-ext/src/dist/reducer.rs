//! DDP's gradient `Reducer`: buckets of gradients all-reduced from autograd hooks while
//! backward runs.

use super::{i64_of, ProcessGroup, DEFAULT_BUCKET_BYTES, DEFAULT_FIRST_BUCKET_BYTES};
use crate::ffi::{self, CReducer};
use crate::{Error, Result};
use std::ffi::c_int;
use std::marker::PhantomData;
use std::ptr::NonNull;
use tch::Tensor;

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
    inner: OwnedReducer,
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
        Ok(Self {
            inner: OwnedReducer::new(group, params, options)?,
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
        self.inner.prepare_for_forward()
    }

    /// Call after the forward pass and before `backward()` with the tensors the loss is
    /// computed from (typically the loss itself).
    ///
    /// # Errors
    /// [`Error::Distributed`] when the reducer is in a bad state.
    pub fn prepare_for_backward(&mut self, outputs: &[&Tensor]) -> Result<()> {
        self.inner.prepare_for_backward(outputs)
    }
}

impl std::fmt::Debug for Reducer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer").finish_non_exhaustive()
    }
}

/// The C++ reducer without a borrow of its group, for an owner that holds both: the shim's
/// reducer keeps its own reference to the C++ process group (`te_reducer` holds the
/// `intrusive_ptr` it was built with), so memory stays valid whatever the order of the frees.
/// What the borrow of [`Reducer`] adds is that the group is not shut down under a live reducer;
/// an owner keeps that promise itself by dropping the reducer first (the rank group declares
/// it before its process group).
pub(super) struct OwnedReducer {
    raw: NonNull<CReducer>,
}

// SAFETY: c10d's Reducer is built for threads: autograd runs its hooks on the engine's worker
// threads, and it guards its state with its own mutex. The handle is only used through
// `&mut self` here, so moving it to another thread between calls is what c10d does too.
unsafe impl Send for OwnedReducer {}

impl OwnedReducer {
    /// As [`Reducer::new`].
    pub(super) fn new(
        group: &ProcessGroup,
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
        })
    }

    /// As [`Reducer::prepare_for_forward`].
    pub(super) fn prepare_for_forward(&mut self) -> Result<bool> {
        let mut rebuilt: c_int = 0;
        // SAFETY: a live reducer and a valid out-pointer.
        ffi::dist("Reducer::prepare_for_forward", unsafe {
            ffi::te_reducer_prepare_for_forward(self.raw.as_ptr(), &mut rebuilt)
        })?;
        Ok(rebuilt != 0)
    }

    /// As [`Reducer::prepare_for_backward`].
    pub(super) fn prepare_for_backward(&mut self, outputs: &[&Tensor]) -> Result<()> {
        let handles: Vec<_> = outputs.iter().map(|t| ffi::handle(t)).collect();
        // SAFETY: a live reducer and live handles with their length.
        ffi::dist("Reducer::prepare_for_backward", unsafe {
            ffi::te_reducer_prepare_for_backward(self.raw.as_ptr(), handles.as_ptr(), handles.len())
        })
    }
}

impl Drop for OwnedReducer {
    fn drop(&mut self) {
        // SAFETY: we own the reducer; its destructor removes the autograd hooks.
        unsafe { ffi::te_reducer_free(self.raw.as_ptr()) }
    }
}
