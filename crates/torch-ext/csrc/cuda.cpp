// torch-ext CUDA (feature `cuda`): CUDA graphs (`at::cuda::CUDAGraph`) and the stream helpers a
// capture needs (a side stream from the pool, a stream guard, stream-to-stream waits).
//
// Only out-of-line functions of libtorch_cuda / libc10_cuda are called, and streams are held as
// device-generic `c10::Stream`s driven through c10's guard interface (`c10::StreamGuard`,
// `c10::Event`): the CUDA headers' inline helpers (CUDAStreamGuard, CUDAEvent) call the CUDA
// runtime directly, which would make every executable link libcudart itself.
#include "common.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>

struct te_cuda_graph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
};

struct te_cuda_stream {
  c10::Stream stream;
};

struct te_cuda_stream_guard {
  c10::StreamGuard guard;
};

extern "C" {

te_error te_cuda_graph_new(int keep_graph, te_cuda_graph** out) {
  TE_TRY
  *out = new te_cuda_graph{std::make_unique<at::cuda::CUDAGraph>(keep_graph != 0)};
  TE_CATCH
}

void te_cuda_graph_free(te_cuda_graph* graph) {
  try {
    delete graph;
  } catch (...) {
  }
}

// Captures the current stream's work from here (it must not be the default stream), in a
// private memory pool, with cudaStreamCaptureModeGlobal (PyTorch's default).
te_error te_cuda_graph_capture_begin(te_cuda_graph* graph) {
  TE_TRY
  graph->graph->capture_begin();
  TE_CATCH
}

te_error te_cuda_graph_capture_end(te_cuda_graph* graph) {
  TE_TRY
  graph->graph->capture_end();
  TE_CATCH
}

// Registers a (non-default) CUDA generator with the graph, so that random ops drawn from it
// during the capture read their seed and offset at each replay (libtorch registers the default
// generator itself). Call it before `capture_begin`.
te_error te_cuda_graph_register_generator(te_cuda_graph* graph, at::Generator* generator) {
  TE_TRY
  TORCH_CHECK(generator != nullptr, "null generator");
  graph->graph->register_generator_state(*generator);
  TE_CATCH
}

te_error te_cuda_graph_replay(te_cuda_graph* graph) {
  TE_TRY
  graph->graph->replay();
  TE_CATCH
}

te_error te_cuda_graph_reset(te_cuda_graph* graph) {
  TE_TRY
  graph->graph->reset();
  TE_CATCH
}

te_error te_cuda_stream_from_pool(int64_t device_index, int high_priority, te_cuda_stream** out) {
  TE_TRY
  *out = new te_cuda_stream{
      c10::cuda::getStreamFromPool(high_priority != 0, static_cast<c10::DeviceIndex>(device_index)).unwrap()};
  TE_CATCH
}

te_error te_cuda_stream_current(int64_t device_index, te_cuda_stream** out) {
  TE_TRY
  *out = new te_cuda_stream{c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_index)).unwrap()};
  TE_CATCH
}

void te_cuda_stream_free(te_cuda_stream* stream) { delete stream; }

te_error te_cuda_stream_synchronize(te_cuda_stream* stream) {
  TE_TRY
  stream->stream.synchronize();
  TE_CATCH
}

// Makes `stream` wait for the work queued on `other` so far (torch.cuda.Stream.wait_stream).
te_error te_cuda_stream_wait_stream(te_cuda_stream* stream, te_cuda_stream* other) {
  TE_TRY
  c10::Event event(c10::DeviceType::CUDA);
  event.record(other->stream);
  event.block(stream->stream);
  TE_CATCH
}

te_error te_cuda_stream_id(te_cuda_stream* stream, int64_t* out) {
  TE_TRY
  *out = static_cast<int64_t>(stream->stream.id());
  TE_CATCH
}

// Makes `stream` (and its device) current until the guard is freed.
te_error te_cuda_stream_guard_new(te_cuda_stream* stream, te_cuda_stream_guard** out) {
  TE_TRY
  *out = new te_cuda_stream_guard{c10::StreamGuard(stream->stream)};
  TE_CATCH
}

void te_cuda_stream_guard_free(te_cuda_stream_guard* guard) { delete guard; }

// The caching allocator's byte counts for `device` (torch.cuda.memory_allocated,
// max_memory_allocated, memory_reserved, max_memory_reserved): out[0..4].
te_error te_cuda_memory_stats(int64_t device_index, int64_t* out) {
  TE_TRY
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device_index));
  const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  out[0] = stats.allocated_bytes[all].current;
  out[1] = stats.allocated_bytes[all].peak;
  out[2] = stats.reserved_bytes[all].current;
  out[3] = stats.reserved_bytes[all].peak;
  TE_CATCH
}

te_error te_cuda_reset_peak_memory_stats(int64_t device_index) {
  TE_TRY
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device_index));
  TE_CATCH
}

}  // extern "C"
