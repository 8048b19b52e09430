//! Activation checkpointing: a block's forward pass that keeps only its inputs and recomputes
//! its activations during backward (PyTorch's `torch.utils.checkpoint`, which libtorch's C++ does
//! not have).
//!
//! [`checkpoint`] runs the block, a Rust closure, under no-grad inside the shim
//! (`csrc/checkpoint.cpp`) and attaches an autograd node to its output. In backward the node
//! calls the closure again with grad enabled on detached copies of the inputs, under the
//! autocast state (CPU and CUDA, dtype included) of the first run, and differentiates that
//! recomputation with respect to the inputs and the parameters. The parameters are inputs of the
//! node, so their gradients accumulate through the outer backward pass once per parameter, as
//! without checkpointing: hooks on their gradient accumulators (DDP's `Reducer`) fire once.
//!
//! The closure must compute the same function both times: randomness inside it (dropout) must
//! be replayed by the closure itself, from a [`crate::Generator::snapshot`] taken before the
//! first run, as PyTorch's `preserve_rng_state` does with the global generator.
//!
//! The closure outlives the call: the autograd graph owns it until the graph is freed (after
//! backward, or when the output is dropped), possibly on another thread (CUDA's backward runs on
//! the device's worker thread), hence `Send + 'static`. A panic inside it is caught at the
//! boundary: during the first run [`checkpoint`] returns it as [`Error::Torch`]; during backward
//! it becomes libtorch's error of the backward call.

use crate::ffi;
#[allow(unused_imports)] // `Error` is named in the docs.
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::Tensor;
use torch_sys::C_tensor;

/// The boxed closure the shim holds.
type Block = Box<dyn Fn(&[Tensor]) -> Tensor + Send + 'static>;

/// Runs `block` on `inputs` with activation checkpointing and returns its output.
///
/// `params` are the tensors the block reads that are not inputs (its weights): they receive
/// their gradients through the returned tensor's backward. With grad mode off, or when neither
/// the inputs nor the parameters require grad, the block simply runs once and nothing is kept.
///
/// # Shapes
/// `block` gets the inputs in order (the same tensors, or in backward detached copies of them
/// that require grad where the originals did) and returns one tensor.
///
/// # Errors
/// [`Error::Torch`] when the block panics or libtorch throws during the first run. In backward,
/// an input modified in place after the forward pass, a second backward through a freed graph
/// or a panic of the recomputation is an error of the backward call.
pub fn checkpoint<F>(inputs: &[&Tensor], params: &[&Tensor], block: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Tensor + Send + 'static,
{
    let closure: *mut Block = Box::into_raw(Box::new(Box::new(block) as Block));
    let input_handles: Vec<*mut C_tensor> = inputs.iter().map(|t| ffi::handle(t)).collect();
    let param_handles: Vec<*mut C_tensor> = params.iter().map(|t| ffi::handle(t)).collect();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live tensor handles; `closure` is a leaked box that the shim owns from here on and
    // frees through `drop_block` exactly once; `run_block` and `drop_block` match the shim's
    // function pointer types.
    ffi::torch("checkpoint", unsafe {
        ffi::te_checkpoint(
            run_block,
            drop_block,
            closure.cast::<c_void>(),
            input_handles.as_ptr(),
            input_handles.len(),
            param_handles.as_ptr(),
            param_handles.len(),
            &mut out,
        )
    })?;
    // SAFETY: on success the shim wrote a new handle that nobody owns.
    Ok(unsafe { ffi::from_handle(out) })
}

/// The shim's `te_checkpoint_run`: calls the closure on borrowed input handles and hands the
/// output handle over; a panic becomes status 1 and its message.
unsafe extern "C" fn run_block(
    closure: *mut c_void,
    inputs: *const *mut C_tensor,
    n: usize,
    out: *mut *mut C_tensor,
    message: *mut c_char,
    capacity: usize,
) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the shim passes the closure it got from `checkpoint`, alive until `drop_block`.
        let block = unsafe { &*closure.cast::<Block>() };
        // SAFETY: `n` live handles owned by the shim for the duration of the call. Each is
        // copied into a tensor of ours (a new reference to the same storage).
        let handles = unsafe { std::slice::from_raw_parts(inputs, n) };
        let tensors: Vec<Tensor> = handles
            .iter()
            // SAFETY: a live `at::Tensor*`; `clone_from_ptr` makes a new handle of our own.
            .map(|&h| unsafe { Tensor::clone_from_ptr(h) })
            .collect();
        block(&tensors)
    }));
    match result {
        Ok(mut output) => {
            // The shim takes the handle over (and deletes it); tch must not free it too.
            let raw = output.as_mut_ptr();
            std::mem::forget(output);
            // SAFETY: `out` is the shim's valid out-pointer.
            unsafe { *out = raw };
            0
        }
        Err(payload) => {
            let text = panic_message(payload.as_ref());
            // SAFETY: `message` points at `capacity` writable bytes of the shim's.
            unsafe { write_message(&text, message, capacity) };
            1
        }
    }
}

/// The shim's `te_checkpoint_drop`: frees the closure.
unsafe extern "C" fn drop_block(closure: *mut c_void) {
    // A panic in a destructor must not unwind into C++.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the box leaked by `checkpoint`, freed once (the shim calls this once).
        drop(unsafe { Box::from_raw(closure.cast::<Block>()) });
    }));
}

/// A panic's message, as `std` prints it.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panicked: {text}")
}

/// Copies `text` into the shim's buffer, cut to fit, NUL-terminated.
///
/// # Safety
/// `buffer` points at `capacity` writable bytes.
unsafe fn write_message(text: &str, buffer: *mut c_char, capacity: usize) {
    if capacity == 0 || buffer.is_null() {
        return;
    }
    let bytes = text.as_bytes();
    let n = bytes.len().min(capacity - 1);
    // SAFETY: the caller's contract; `n + 1 <= capacity`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buffer, n);
        *buffer.add(n) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tch::{Device, Kind};

    fn leaf(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).set_requires_grad(true)
    }

    /// `sin(x · w) · w`, which needs its activations in backward.
    fn block_fn(x: &Tensor, w: &Tensor) -> Tensor {
        (x * w).sin() * w
    }

    #[test]
    fn recomputes_in_backward_and_gives_the_plain_gradients() {
        let (x, w) = (leaf(&[0.3, -1.2, 2.0]), leaf(&[1.5, 0.7, -0.4]));
        block_fn(&(&x * 2.0), &w).sum(Kind::Float).backward();
        let (gx, gw) = (x.grad().copy(), w.grad().copy());
        let _ = (x.grad().zero_(), w.grad().zero_());

        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let weight = w.shallow_clone();
        let x2 = &x * 2.0;
        let out = checkpoint(&[&x2], &[&w], move |xs| {
            counted.fetch_add(1, Ordering::SeqCst);
            block_fn(&xs[0], &weight)
        })
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(out.requires_grad());
        out.sum(Kind::Float).backward();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "backward recomputes once");
        assert!(x.grad().allclose(&gx, 1e-7, 0.0, false));
        assert!(w.grad().allclose(&gw, 1e-7, 0.0, false));
    }

    #[test]
    fn the_closure_is_freed_with_the_graph_and_runs_once_without_one() {
        let token = Arc::new(());
        let held = Arc::clone(&token);
        let w = leaf(&[1.0, 2.0]);
        let weight = w.shallow_clone();
        let out = checkpoint(
            &[&Tensor::ones([2], (Kind::Float, Device::Cpu))],
            &[&w],
            move |xs| {
                let _ = &held;
                &xs[0] * &weight
            },
        )
        .unwrap();
        assert_eq!(Arc::strong_count(&token), 2, "the graph holds the closure");
        drop(out);
        assert_eq!(Arc::strong_count(&token), 1, "freed with the graph");

        let out = tch::no_grad(|| checkpoint(&[&w], &[], |xs| &xs[0] * 3.0).unwrap());
        assert!(!out.requires_grad());
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), [3.0, 6.0]);
    }

    #[test]
    fn panics_in_either_pass_become_errors() {
        let w = leaf(&[1.0]);
        let err = checkpoint(&[&w], &[], |_| panic!("first pass")).unwrap_err();
        assert!(err.to_string().contains("first pass"), "{err}");

        let calls = AtomicUsize::new(0);
        let out = checkpoint(&[&w], &[], move |xs| {
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                panic!("the recomputation");
            }
            &xs[0] * 2.0
        })
        .unwrap();
        let err = out.sum(Kind::Float).f_backward().unwrap_err();
        assert!(err.to_string().contains("the recomputation"), "{err}");
    }

    #[test]
    fn the_recomputation_runs_under_the_autocast_state_of_the_first_pass() {
        // CUDA autocast's flag and dtype are thread-local settings, readable without a GPU.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let w = leaf(&[1.0, 2.0]);
        let out = {
            let _bf16 = crate::AutocastDtypeGuard::new(Device::Cuda(0), Kind::BFloat16).unwrap();
            // `tch::autocast` does nothing without a GPU; the flag itself is set here directly.
            // SAFETY: plain writes and reads of libtorch's thread-local autocast flag.
            unsafe { torch_sys::at_autocast_set_enabled(1) };
            let out = checkpoint(&[&w], &[], move |xs| {
                let enabled = unsafe { torch_sys::at_autocast_is_enabled() } != 0;
                let kind = crate::get_autocast_dtype(Device::Cuda(0)).unwrap();
                record.lock().unwrap().push((enabled, kind));
                &xs[0] * 2.0
            });
            unsafe { torch_sys::at_autocast_set_enabled(0) };
            out.unwrap()
        };
        // Backward runs outside autocast, with the default dtype.
        assert_eq!(
            crate::get_autocast_dtype(Device::Cuda(0)).unwrap(),
            Kind::Half
        );
        out.sum(Kind::Float).backward();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, [(true, Kind::BFloat16), (true, Kind::BFloat16)]);
        // And the shim restored this thread's settings after the recomputation.
        assert_eq!(
            crate::get_autocast_dtype(Device::Cuda(0)).unwrap(),
            Kind::Half
        );
        assert_eq!(unsafe { torch_sys::at_autocast_is_enabled() }, 0);
    }

    #[test]
    fn an_input_modified_in_place_after_the_forward_pass_is_refused() {
        let w = leaf(&[1.0, 2.0]);
        let mut input = &w * 1.0;
        let out = checkpoint(&[&input], &[], |xs| xs[0].sin()).unwrap();
        let _ = tch::no_grad(|| input.g_add_scalar_(1.0));
        let err = out.sum(Kind::Float).f_backward().unwrap_err();
        assert!(err.to_string().contains("modified in place"), "{err}");
    }
}
