//! Activation checkpointing of the networks' blocks (`gradient_checkpointing` in either
//! configuration): each residual and attention block of the paper's U-Net, and each block of
//! SimpleUnet, keeps only its inputs in the forward pass and recomputes its activations in
//! backward, through [`torch_ext::checkpoint`].
//!
//! The recomputation must compute what the first pass computed. Dropout replays its masks from a
//! snapshot of the run's generator taken before the block ([`torch_ext::Generator::snapshot`], as
//! PyTorch's `preserve_rng_state` saves and restores the global generator), and the run's
//! generator ends where the first pass left it, so the masks of later blocks and steps are those
//! of a run without checkpointing. BatchNorm recomputes with its batch statistics but leaves its
//! running statistics alone ([`Pass::Replay`]); autocast is restored by the shim.

use std::sync::{Arc, Mutex};

use tch::Tensor;
use torch_ext::Generator;

/// Which pass of a checkpointed block is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The forward pass (checkpointed or not): BatchNorm updates its running statistics.
    First,
    /// The recomputation in backward: the same function, no state updated a second time.
    Replay,
}

/// A block shared between its network and the checkpoints of its forward passes, whose
/// closures the autograd graph owns (possibly on libtorch's device threads) until it is freed.
#[derive(Debug)]
pub(crate) struct Shared<T>(Arc<T>);

// SAFETY: a block holds tch tensor handles (reference-counted `at::Tensor`s, thread-safe in
// libtorch for concurrent reads) and plain configuration values, and is only read through `&`:
// its forward reads the weights and writes activations it allocates (BatchNorm's running
// statistics, written by the first pass only, are written from the thread that runs the
// forward pass, exactly as without checkpointing). A recomputation runs while the thread that
// called backward waits for it, so no two threads use a block's tensors at the same time in a
// well-formed program, the same contract as `tch::Tensor: Send`.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above; `&Shared<T>` only gives out `&T`.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn new(block: T) -> Self {
        Self(Arc::new(block))
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Runs `block(inputs, rng, pass)` with activation checkpointing: the output of the first pass,
/// recomputed in backward by a second call with [`Pass::Replay`]. `rng`, when given, is the
/// generator the block draws its dropout masks from: both passes draw from copies of its state
/// before the block, and it is left where the first pass left it.
///
/// # Panics
/// When the block panics in the first pass, or a generator's state cannot be copied (a device
/// without one): programming errors, as a panic of an ordinary forward pass would be.
pub(crate) fn checkpointed<F>(
    inputs: &[&Tensor],
    params: &[&Tensor],
    rng: Option<&mut Generator>,
    block: F,
) -> Tensor
where
    F: Fn(&[Tensor], Option<&mut Generator>, Pass) -> Tensor + Send + 'static,
{
    let copy = |gen: &Generator| {
        gen.snapshot()
            .expect("a generator of the block's device can be copied")
    };
    let start = rng.as_deref().map(copy);
    // The generator's state after the first pass, for the run's generator to continue from.
    let after_first: Arc<Mutex<Option<Tensor>>> = Arc::default();
    let slot = Arc::clone(&after_first);
    let calls = Mutex::new(0usize);
    let closure = move |xs: &[Tensor]| {
        let pass = {
            let mut calls = calls.lock().expect("no panic holds it");
            *calls += 1;
            if *calls == 1 {
                Pass::First
            } else {
                Pass::Replay
            }
        };
        let mut gen = start.as_ref().map(copy);
        let out = block(xs, gen.as_mut(), pass);
        if let (Pass::First, Some(gen)) = (pass, gen) {
            *slot.lock().expect("no panic holds it") = Some(gen.get_state());
        }
        out
    };
    let out = torch_ext::checkpoint(inputs, params, closure)
        .unwrap_or_else(|err| panic!("a checkpointed block failed: {err}"));
    if let Some(rng) = rng {
        let state = after_first
            .lock()
            .expect("no panic holds it")
            .take()
            .expect("the first pass ran and recorded its generator");
        rng.set_state(&state)
            .expect("a state of the same generator type");
    }
    out
}
