//! CUDA graphs (`at::cuda::CUDAGraph`) and the CUDA stream helpers that capturing one needs
//! (feature `cuda`).
//!
//! A graph records every kernel a step launches once and replays them with a single launch,
//! as `torch.cuda.graphs` does. Its inputs and outputs are static buffers: copy new inputs into
//! the captured input tensors before each [`CudaGraph::replay`], and read the captured output
//! tensors after it. The recipe (from `torch.cuda.graph`):
//!
//! 1. warm up a few iterations on a side stream ([`CudaStream::from_pool`], made current with
//!    [`CudaStream::guard`], after [`CudaStream::wait_stream`] on the current stream), so that
//!    lazy initialisations (cuBLAS handles, autotuning) do not land in the graph;
//! 2. on a side stream: [`CudaGraph::capture_begin`], the step, [`CudaGraph::capture_end`];
//! 3. [`CudaGraph::replay`] each step.

use crate::ffi::{self, CCudaGraph, CCudaStream, CCudaStreamGuard};
use crate::{Error, Result};
use std::ffi::c_int;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A CUDA graph: captured once, replayed many times.
pub struct CudaGraph {
    raw: NonNull<CCudaGraph>,
}

// SAFETY: the handle owns a heap `at::cuda::CUDAGraph` that nothing else references; libtorch's
// graphs are not tied to the thread that made them (PyTorch moves them between threads freely),
// and `&mut self` on capture and reset keeps one user at a time. Capture itself is per stream,
// not per thread.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// An empty graph (`torch.cuda.CUDAGraph()`).
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA is unavailable.
    pub fn new() -> Result<Self> {
        Self::with_keep_graph(false)
    }

    /// An empty graph that keeps the captured `cudaGraph_t` after instantiation
    /// (`keep_graph=True`: needed only to instantiate or inspect it again).
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA is unavailable.
    pub fn with_keep_graph(keep_graph: bool) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        ffi::torch("CudaGraph::new", unsafe {
            ffi::te_cuda_graph_new(c_int::from(keep_graph), &mut raw)
        })?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a graph"),
        })
    }

    /// Starts capturing the work queued on the current stream (not the default stream: make a
    /// side stream current first), with a private memory pool.
    ///
    /// # Errors
    /// [`Error::Torch`] when the current stream is the default stream or a capture is running.
    pub fn capture_begin(&mut self) -> Result<()> {
        // SAFETY: a live graph.
        ffi::torch("CudaGraph::capture_begin", unsafe {
            ffi::te_cuda_graph_capture_begin(self.raw.as_ptr())
        })
    }

    /// Ends the capture and instantiates the graph.
    ///
    /// # Errors
    /// [`Error::Torch`] when the capture was invalidated (e.g. by a synchronising call).
    pub fn capture_end(&mut self) -> Result<()> {
        // SAFETY: a live graph.
        ffi::torch("CudaGraph::capture_end", unsafe {
            ffi::te_cuda_graph_capture_end(self.raw.as_ptr())
        })
    }

    /// Registers `gen`, a CUDA generator, with the graph: random ops that draw from it during
    /// the capture then read its seed and offset at every replay, so that reseeding it between
    /// replays changes their numbers as it would change an eager step's. (libtorch registers the
    /// default CUDA generator itself.) Call it before [`CudaGraph::capture_begin`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a CPU generator; [`Error::Torch`] when libtorch refuses.
    pub fn register_generator(&mut self, gen: &crate::Generator) -> Result<()> {
        if !gen.device().is_cuda() {
            return Err(Error::InvalidArgument(
                "only a CUDA generator can be registered with a CUDA graph".into(),
            ));
        }
        // SAFETY: a live graph and a live generator.
        ffi::torch("CudaGraph::register_generator", unsafe {
            ffi::te_cuda_graph_register_generator(self.raw.as_ptr(), gen.ptr())
        })
    }

    /// Launches the captured work on the current stream.
    ///
    /// # Errors
    /// [`Error::Torch`] when nothing was captured.
    pub fn replay(&self) -> Result<()> {
        // SAFETY: a live graph.
        ffi::torch("CudaGraph::replay", unsafe {
            ffi::te_cuda_graph_replay(self.raw.as_ptr())
        })
    }

    /// Frees the captured graph and its memory pool, so that it can be captured again.
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA reports a failure.
    pub fn reset(&mut self) -> Result<()> {
        // SAFETY: a live graph.
        ffi::torch("CudaGraph::reset", unsafe {
            ffi::te_cuda_graph_reset(self.raw.as_ptr())
        })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: we own the graph.
        unsafe { ffi::te_cuda_graph_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph").finish_non_exhaustive()
    }
}

/// A CUDA stream of libtorch's (`c10::cuda::CUDAStream`).
pub struct CudaStream {
    raw: NonNull<CCudaStream>,
}

// SAFETY: the handle owns a heap copy of a `c10::cuda::CUDAStream`, a plain value (a device index
// and a stream id) that any thread may use.
unsafe impl Send for CudaStream {}

impl CudaStream {
    fn wrap(
        op: &'static str,
        make: impl FnOnce(*mut *mut CCudaStream) -> ffi::CError,
    ) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        ffi::torch(op, make(&mut raw))?;
        Ok(Self {
            raw: NonNull::new(raw).expect("the shim returned a stream"),
        })
    }

    /// A stream from libtorch's pool for device `device_index` (`torch.cuda.Stream()`).
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA is unavailable or the index is out of range.
    pub fn from_pool(device_index: usize, high_priority: bool) -> Result<Self> {
        let index = device_index_i64(device_index)?;
        // SAFETY: a valid out-pointer.
        Self::wrap("CudaStream::from_pool", |out| unsafe {
            ffi::te_cuda_stream_from_pool(index, c_int::from(high_priority), out)
        })
    }

    /// The current stream of device `device_index` (`torch.cuda.current_stream()`).
    ///
    /// # Errors
    /// [`Error::Torch`] when CUDA is unavailable or the index is out of range.
    pub fn current(device_index: usize) -> Result<Self> {
        let index = device_index_i64(device_index)?;
        // SAFETY: a valid out-pointer.
        Self::wrap("CudaStream::current", |out| unsafe {
            ffi::te_cuda_stream_current(index, out)
        })
    }

    /// libtorch's id of the stream (equal ids: the same stream).
    ///
    /// # Errors
    /// [`Error::Torch`] on a CUDA failure.
    pub fn id(&self) -> Result<i64> {
        let mut id = 0;
        // SAFETY: a live stream and a valid out-pointer.
        ffi::torch("CudaStream::id", unsafe {
            ffi::te_cuda_stream_id(self.raw.as_ptr(), &mut id)
        })?;
        Ok(id)
    }

    /// Blocks the host until the stream's queued work is done.
    ///
    /// # Errors
    /// [`Error::Torch`] when a kernel failed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a live stream.
        ffi::torch("CudaStream::synchronize", unsafe {
            ffi::te_cuda_stream_synchronize(self.raw.as_ptr())
        })
    }

    /// Makes this stream wait for the work queued on `other` so far, without blocking the host
    /// (`torch.cuda.Stream.wait_stream`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a CUDA failure.
    pub fn wait_stream(&self, other: &CudaStream) -> Result<()> {
        // SAFETY: two live streams.
        ffi::torch("CudaStream::wait_stream", unsafe {
            ffi::te_cuda_stream_wait_stream(self.raw.as_ptr(), other.raw.as_ptr())
        })
    }

    /// Makes this stream (and its device) current until the guard is dropped
    /// (`with torch.cuda.stream(s):`).
    ///
    /// # Errors
    /// [`Error::Torch`] on a CUDA failure.
    pub fn guard(&self) -> Result<StreamGuard<'_>> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: a live stream and a valid out-pointer.
        ffi::torch("CudaStream::guard", unsafe {
            ffi::te_cuda_stream_guard_new(self.raw.as_ptr(), &mut raw)
        })?;
        Ok(StreamGuard {
            raw: NonNull::new(raw).expect("the shim returned a guard"),
            _stream: PhantomData,
        })
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        // SAFETY: we own this handle (pool streams live as long as the process).
        unsafe { ffi::te_cuda_stream_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for CudaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStream")
            .field("id", &self.id().ok())
            .finish()
    }
}

/// Keeps a stream current (`c10::cuda::CUDAStreamGuard`); restores the previous one on drop.
#[must_use = "the stream is current only while the guard lives"]
pub struct StreamGuard<'s> {
    raw: NonNull<CCudaStreamGuard>,
    _stream: PhantomData<&'s CudaStream>,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the guard.
        unsafe { ffi::te_cuda_stream_guard_free(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for StreamGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard").finish_non_exhaustive()
    }
}

/// The caching allocator's memory counts of one CUDA device, in bytes
/// (`torch.cuda.memory_allocated` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in live tensors now.
    pub allocated: i64,
    /// The most bytes in live tensors since the start or [`reset_peak_memory_stats`].
    pub peak_allocated: i64,
    /// Bytes the allocator holds from the driver now (live tensors and its cache).
    pub reserved: i64,
    /// The most bytes held since the start or the last reset.
    pub peak_reserved: i64,
}

/// The caching allocator's counts for device `device_index`.
///
/// # Errors
/// [`Error::Torch`] when CUDA is unavailable or the index is out of range.
pub fn memory_stats(device_index: usize) -> Result<MemoryStats> {
    let index = device_index_i64(device_index)?;
    let mut out = [0i64; 4];
    // SAFETY: room for the four counts.
    ffi::torch("memory_stats", unsafe {
        ffi::te_cuda_memory_stats(index, out.as_mut_ptr())
    })?;
    Ok(MemoryStats {
        allocated: out[0],
        peak_allocated: out[1],
        reserved: out[2],
        peak_reserved: out[3],
    })
}

/// Restarts the peaks of [`memory_stats`] from the current counts.
///
/// # Errors
/// [`Error::Torch`] when CUDA is unavailable or the index is out of range.
pub fn reset_peak_memory_stats(device_index: usize) -> Result<()> {
    let index = device_index_i64(device_index)?;
    // SAFETY: a plain call.
    ffi::torch("reset_peak_memory_stats", unsafe {
        ffi::te_cuda_reset_peak_memory_stats(index)
    })
}

fn device_index_i64(device_index: usize) -> Result<i64> {
    i64::try_from(device_index).map_err(|_| {
        Error::InvalidArgument(format!("CUDA device index {device_index} is out of range"))
    })
}

#[cfg(all(test, feature = "cuda-tests"))]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn a_captured_graph_replays_on_new_inputs() {
        let device = Device::Cuda(0);
        let input = Tensor::zeros([1024], (Kind::Float, device));
        let side = CudaStream::from_pool(0, false).unwrap();
        let current = CudaStream::current(0).unwrap();
        assert_ne!(side.id().unwrap(), current.id().unwrap());
        side.wait_stream(&current).unwrap();
        let mut graph = CudaGraph::new().unwrap();
        let output = {
            let _guard = side.guard().unwrap();
            // Warm-up, then capture, on the side stream.
            let _ = (&input * 2.0 + 1.0).sin();
            graph.capture_begin().unwrap();
            let output = (&input * 2.0 + 1.0).sin();
            graph.capture_end().unwrap();
            output
        };
        current.wait_stream(&side).unwrap();
        for value in [0.5f64, -1.0, 3.0] {
            let _ = input.shallow_clone().fill_(value);
            graph.replay().unwrap();
            current.synchronize().unwrap();
            let expected = (2.0 * value + 1.0).sin();
            let got = output.double_value(&[7]);
            assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        }
    }

    /// A registered generator's draws inside the graph follow its reseeds between replays, as
    /// eager draws would.
    #[test]
    fn a_registered_generator_is_reseeded_between_replays() {
        let device = Device::Cuda(0);
        let mut gen = crate::Generator::cuda(0, 0).unwrap();
        let eager = |gen: &mut crate::Generator, seed| {
            gen.set_seed(seed);
            gen.randn(&[256], (Kind::Float, device)).unwrap()
        };
        let expected: Vec<Tensor> = [5u64, 6].iter().map(|&s| eager(&mut gen, s)).collect();
        let side = CudaStream::from_pool(0, false).unwrap();
        let current = CudaStream::current(0).unwrap();
        side.wait_stream(&current).unwrap();
        let mut graph = CudaGraph::new().unwrap();
        graph.register_generator(&gen).unwrap();
        let output = {
            let _guard = side.guard().unwrap();
            let _ = gen.randn(&[256], (Kind::Float, device)).unwrap();
            graph.capture_begin().unwrap();
            let output = gen.randn(&[256], (Kind::Float, device)).unwrap();
            graph.capture_end().unwrap();
            output
        };
        current.wait_stream(&side).unwrap();
        for (seed, want) in [5u64, 6].iter().zip(&expected) {
            gen.set_seed(*seed);
            graph.replay().unwrap();
            current.synchronize().unwrap();
            assert!(output.equal(want), "seed {seed}");
        }
        assert!(graph.register_generator(&crate::Generator::cpu(0)).is_err());
    }

    #[test]
    fn memory_stats_count_a_tensor_and_its_peak() {
        reset_peak_memory_stats(0).unwrap();
        let before = memory_stats(0).unwrap();
        let xs = Tensor::zeros([1 << 20], (Kind::Float, Device::Cuda(0)));
        let during = memory_stats(0).unwrap();
        assert!(
            during.allocated >= before.allocated + (4 << 20),
            "{during:?}"
        );
        drop(xs);
        let after = memory_stats(0).unwrap();
        assert!(after.allocated < during.allocated);
        assert!(after.peak_allocated >= during.allocated);
        assert!(after.reserved >= after.allocated);
    }

    #[test]
    fn capturing_on_the_default_stream_is_an_error() {
        let mut graph = CudaGraph::new().unwrap();
        assert!(graph.capture_begin().is_err());
    }
}
