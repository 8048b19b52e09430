// torch-ext c10d: the TCP store, Gloo (and, with USE_C10D_NCCL, NCCL) process groups, the
// collectives on tensor lists, flat-bucket gradient all-reduce, `broadcast_coalesced`, and
// DDP's `c10d::Reducer`. Gloo is linked statically inside libtorch_cpu; this file only needs
// its headers (Debian's libgloo-dev, fetched by `cargo xtask setup`). That these need not be
// the exact Gloo libtorch was built with rests on ProcessGroupGloo and its Options holding Gloo
// types only behind smart pointers (their layout, which this file allocates, does not depend
// on Gloo's), and on this file calling no inline Gloo code.
#include "common.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <memory>
#include <string>
#include <vector>

using std::chrono::milliseconds;

struct te_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct te_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  // The ProcessGroup wrapper that `broadcast_coalesced` and the Reducer dispatch through.
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  bool is_gloo = false;
  milliseconds timeout{0};
  bool shut_down = false;
};

struct te_reducer {
  std::shared_ptr<c10d::Reducer> reducer;
};

// Reduce operations, mirrored in src/dist.rs.
enum te_reduce_op { TE_REDUCE_SUM = 0, TE_REDUCE_AVG = 1 };

static void te_check_group(const te_group* group) {
  TORCH_CHECK(!group->shut_down, "the process group was shut down");
}

// Gloo's AVG is a SUM and a division, which integer tensors cannot take: refuse before any
// collective starts (every rank refuses alike, so none is left waiting).
static void te_check_avg(const te_group* group, const std::vector<at::Tensor>& tensors, int op) {
  if (op != TE_REDUCE_AVG || !group->is_gloo) return;
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(at::isFloatingType(tensors[i].scalar_type()) || at::isComplexType(tensors[i].scalar_type()),
                "ReduceOp::Avg needs floating-point tensors, tensor ", i, " is ", tensors[i].scalar_type());
  }
}

// Waits for `work`, bounded by the group's timeout for Gloo: Gloo enforces the same timeout on
// its sockets, and the extra second lets its more precise error win the race. NCCL's `wait()`
// only makes the current CUDA stream wait (no host sync); its watchdog enforces the timeout.
static void te_wait(const te_group* group, const c10::intrusive_ptr<c10d::Work>& work) {
  if (group->is_gloo) {
    work->wait(group->timeout + milliseconds(1000));
  } else {
    work->wait();
  }
}

// One collective per tensor (a list given to a c10d backend means one tensor per device), all
// in flight at once, then waited for in order.
static void te_allreduce(const te_group* group, std::vector<at::Tensor>& tensors, int op) {
  TORCH_CHECK(op == TE_REDUCE_SUM || op == TE_REDUCE_AVG, "unknown reduce op code ", op);
  te_check_avg(group, tensors, op);
  c10d::AllreduceOptions options;
  // Gloo has no AVG: sum, then divide by the world size.
  bool divide = op == TE_REDUCE_AVG && group->is_gloo;
  options.reduceOp = (op == TE_REDUCE_AVG && !divide) ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
  options.timeout = group->timeout;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  works.reserve(tensors.size());
  for (auto& tensor : tensors) {
    std::vector<at::Tensor> one{tensor};
    works.push_back(group->backend->allreduce(one, options));
  }
  for (auto& work : works) te_wait(group, work);
  if (divide) {
    for (auto& tensor : tensors) {
      tensor.div_(group->backend->getSize());
    }
  }
}

static c10::intrusive_ptr<c10d::ProcessGroup> te_wrap(const c10::intrusive_ptr<c10d::Store>& store,
                                                      const c10::intrusive_ptr<c10d::Backend>& backend,
                                                      c10::DeviceType device_type,
                                                      c10d::ProcessGroup::BackendType backend_type) {
  auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, backend->getRank(), backend->getSize());
  pg->setBackend(device_type, backend_type, backend);
  pg->setDefaultBackend(backend_type);
  return pg;
}

extern "C" {

void te_free_bytes(uint8_t* bytes) { free(bytes); }

// ---------------------------------------------------------------------------------------------
// TCP store
// ---------------------------------------------------------------------------------------------

// `world_size` < 0: unknown (a client, or a server that does not wait for the workers).
te_error te_tcp_store_new(const char* host, uint16_t port, int64_t world_size, int is_server, int64_t timeout_ms,
                          te_store** out) {
  TE_TRY
  c10d::TCPStoreOptions options;
  options.port = port;
  options.isServer = is_server != 0;
  if (world_size >= 0) {
    options.numWorkers = static_cast<size_t>(world_size);
  }
  // With a world size every rank counts itself in (the server then waits for all of them).
  options.waitWorkers = world_size >= 0;
  options.timeout = milliseconds(timeout_ms);
  auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
  *out = new te_store{store};
  TE_CATCH
}

void te_store_free(te_store* store) { delete store; }

te_error te_store_set(te_store* store, const char* key, const uint8_t* value, size_t len) {
  TE_TRY
  store->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
  TE_CATCH
}

// `*value` is malloc'ed (free it with te_free_bytes).
te_error te_store_get(te_store* store, const char* key, uint8_t** value, size_t* len) {
  TE_TRY
  std::vector<uint8_t> bytes = store->store->get(std::string(key));
  *len = bytes.size();
  *value = static_cast<uint8_t*>(malloc(bytes.empty() ? 1 : bytes.size()));
  TORCH_CHECK(*value != nullptr, "out of memory");
  if (!bytes.empty()) memcpy(*value, bytes.data(), bytes.size());
  TE_CATCH
}

te_error te_store_add(te_store* store, const char* key, int64_t delta, int64_t* out) {
  TE_TRY
  *out = store->store->add(std::string(key), delta);
  TE_CATCH
}

// ---------------------------------------------------------------------------------------------
// Process groups
// ---------------------------------------------------------------------------------------------

// device_kind: 0 = the address of `device_arg` (a hostname or IP), 1 = the network interface
// `device_arg`, 2 = Gloo's default (this machine's hostname, else loopback).
te_error te_group_gloo(te_store* store, int rank, int world_size, int64_t timeout_ms, int device_kind,
                       const char* device_arg, int threads, te_group** out) {
  TE_TRY
  auto options = c10d::ProcessGroupGloo::Options::create(milliseconds(timeout_ms));
  switch (device_kind) {
    case 0:
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(device_arg));
      break;
    case 1:
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(device_arg));
      break;
    case 2:
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      break;
    default:
      TORCH_CHECK(false, "unknown Gloo device kind ", device_kind);
  }
  if (threads > 0) options->threads = threads;
  // The store's own timeout bounds the rendezvous inside the constructor.
  store->store->setTimeout(milliseconds(timeout_ms));
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store->store, rank, world_size, options);
  auto group = std::make_unique<te_group>();
  group->backend = backend;
  group->pg = te_wrap(store->store, backend, c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO);
  group->is_gloo = true;
  group->timeout = milliseconds(timeout_ms);
  *out = group.release();
  TE_CATCH
}

#ifdef USE_C10D_NCCL
// Sets the current CUDA device to `device_index` first: one process per GPU.
te_error te_group_nccl(te_store* store, int rank, int world_size, int64_t timeout_ms, int64_t device_index,
                       te_group** out) {
  TE_TRY
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = milliseconds(timeout_ms);
  store->store->setTimeout(milliseconds(timeout_ms));
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store->store, rank, world_size, options);
  auto group = std::make_unique<te_group>();
  group->backend = backend;
  group->pg = te_wrap(store->store, backend, c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL);
  group->is_gloo = false;
  group->timeout = milliseconds(timeout_ms);
  *out = group.release();
  TE_CATCH
}
#endif

te_error te_group_allreduce(te_group* group, const te_tensor* tensors, size_t n, int op) {
  TE_TRY
  // Parameters are leaves that require grad: writing into them is not part of any graph.
  at::NoGradGuard no_grad;
  te_check_group(group);
  if (n == 0) return nullptr;
  auto list = te_tensor_list(tensors, n);
  te_allreduce(group, list, op);
  TE_CATCH
}

te_error te_group_broadcast(te_group* group, const te_tensor* tensors, size_t n, int root) {
  TE_TRY
  // Parameters are leaves that require grad: writing into them is not part of any graph.
  at::NoGradGuard no_grad;
  te_check_group(group);
  if (n == 0) return nullptr;
  auto list = te_tensor_list(tensors, n);
  c10d::BroadcastOptions options;
  options.rootRank = root;
  options.rootTensor = 0;
  options.timeout = group->timeout;
  // Gloo's broadcast takes one tensor per call on CPU (several are for several devices).
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (auto& tensor : list) {
    std::vector<at::Tensor> one{tensor};
    works.push_back(group->backend->broadcast(one, options));
  }
  for (auto& work : works) te_wait(group, work);
  TE_CATCH
}

te_error te_group_barrier(te_group* group) {
  TE_TRY
  te_check_group(group);
  c10d::BarrierOptions options;
  options.timeout = group->timeout;
  te_wait(group, group->backend->barrier(options));
  TE_CATCH
}

// c10d's sequence number of the backend: Gloo and NCCL count every collective they start
// (all-reduces, broadcasts and barriers alike, those of DDP's Reducer included).
te_error te_group_sequence_number(te_group* group, uint64_t* out) {
  TE_TRY
  te_check_group(group);
  *out = group->backend->getSequenceNumberForGroup();
  TE_CATCH
}

// All-reduces `tensors` through flat buckets of at most `bucket_bytes` (a tensor larger than
// that gets a bucket of its own): each bucket is one contiguous buffer and one collective, all
// buckets are in flight at once, then the results are copied back. Tensors are grouped by
// dtype and device first, in list order.
te_error te_group_allreduce_bucketed(te_group* group, const te_tensor* tensors, size_t n, int op,
                                     int64_t bucket_bytes) {
  TE_TRY
  // Parameters are leaves that require grad: writing into them is not part of any graph.
  at::NoGradGuard no_grad;
  te_check_group(group);
  TORCH_CHECK(op == TE_REDUCE_SUM || op == TE_REDUCE_AVG, "unknown reduce op code ", op);
  TORCH_CHECK(bucket_bytes > 0, "bucket size must be positive, got ", bucket_bytes);
  auto list = te_tensor_list(tensors, n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(list[i].defined(), "tensor ", i, " is undefined (a parameter without a gradient?)");
    TORCH_CHECK(list[i].layout() == at::kStrided, "tensor ", i, " is not dense");
  }
  te_check_avg(group, list, op);
  // Assign buckets.
  struct Bucket {
    std::vector<size_t> members;
    int64_t bytes = 0;
  };
  std::vector<Bucket> buckets;
  std::vector<size_t> open;  // index into buckets of the open bucket per (dtype, device) class
  std::vector<std::pair<at::ScalarType, at::Device>> classes;
  for (size_t i = 0; i < n; ++i) {
    auto key = std::make_pair(list[i].scalar_type(), list[i].device());
    size_t c = 0;
    while (c < classes.size() && classes[c] != key) ++c;
    int64_t bytes = list[i].numel() * static_cast<int64_t>(list[i].element_size());
    if (c == classes.size()) {
      classes.push_back(key);
      open.push_back(buckets.size());
      buckets.emplace_back();
    } else if (buckets[open[c]].bytes > 0 && buckets[open[c]].bytes + bytes > bucket_bytes) {
      open[c] = buckets.size();
      buckets.emplace_back();
    }
    buckets[open[c]].members.push_back(i);
    buckets[open[c]].bytes += bytes;
  }
  // Flatten, launch every bucket, then wait and copy back.
  std::vector<at::Tensor> flats;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  bool divide = op == TE_REDUCE_AVG && group->is_gloo;
  c10d::AllreduceOptions options;
  options.reduceOp = (op == TE_REDUCE_AVG && !divide) ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
  options.timeout = group->timeout;
  for (const auto& bucket : buckets) {
    std::vector<at::Tensor> parts;
    parts.reserve(bucket.members.size());
    for (size_t i : bucket.members) parts.push_back(list[i].reshape({-1}));
    at::Tensor flat = at::cat(parts);
    std::vector<at::Tensor> one{flat};
    works.push_back(group->backend->allreduce(one, options));
    flats.push_back(flat);
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    te_wait(group, works[b]);
    if (divide) flats[b].div_(group->backend->getSize());
    int64_t offset = 0;
    for (size_t i : buckets[b].members) {
      int64_t numel = list[i].numel();
      list[i].copy_(flats[b].narrow(0, offset, numel).view(list[i].sizes()));
      offset += numel;
    }
  }
  TE_CATCH
}

// `c10d::broadcast_coalesced`: copies rank `root`'s tensors to every rank in buffers of at most
// `buffer_bytes`, as DDP does with the parameters and buffers when it starts.
te_error te_group_broadcast_coalesced(te_group* group, const te_tensor* tensors, size_t n, int64_t buffer_bytes,
                                      int root) {
  TE_TRY
  // Parameters are leaves that require grad: writing into them is not part of any graph.
  at::NoGradGuard no_grad;
  te_check_group(group);
  TORCH_CHECK(buffer_bytes > 0, "buffer size must be positive, got ", buffer_bytes);
  if (n == 0) return nullptr;
  auto list = te_tensor_list(tensors, n);
  c10d::broadcast_coalesced(group->pg, list, static_cast<size_t>(buffer_bytes), root);
  TE_CATCH
}

te_error te_group_shutdown(te_group* group) {
  TE_TRY
  if (!group->shut_down) {
    group->shut_down = true;
    group->backend->shutdown();
  }
  TE_CATCH
}

void te_group_free(te_group* group) {
  try {
    if (!group->shut_down) {
      group->shut_down = true;
      group->backend->shutdown();
    }
  } catch (...) {
    // A failing shutdown in a destructor has nobody to report to; the group is freed anyway.
  }
  try {
    delete group;
  } catch (...) {
  }
}

// ---------------------------------------------------------------------------------------------
// DDP's Reducer: gradient buckets all-reduced during backward
// ---------------------------------------------------------------------------------------------

te_error te_reducer_new(te_group* group, const te_tensor* params, size_t n, int64_t bucket_bytes,
                        int64_t first_bucket_bytes, int find_unused_parameters, int gradient_as_bucket_view,
                        te_reducer** out) {
  TE_TRY
  te_check_group(group);
  TORCH_CHECK(n > 0, "the Reducer needs at least one parameter");
  auto list = te_tensor_list(params, n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(list[i].requires_grad(), "parameter ", i, " does not require grad");
  }
  // As torch.nn.parallel.DistributedDataParallel does: assign buckets in parameter order with
  // a small first bucket, then hand them to the Reducer reversed (backward produces gradients
  // roughly in reverse order of the parameters).
  std::vector<size_t> caps{static_cast<size_t>(first_bucket_bytes), static_cast<size_t>(bucket_bytes)};
  auto [indices, limits] = c10d::compute_bucket_assignment_by_size(list, caps, std::vector<bool>(n, false));
  std::reverse(indices.begin(), indices.end());
  std::vector<int64_t> limits_reversed(limits.rbegin(), limits.rend());
  std::unordered_map<size_t, std::string> names;
  auto reducer = std::make_shared<c10d::Reducer>(
      list, std::move(indices), group->pg, std::vector<bool>(n, false), bucket_bytes, find_unused_parameters != 0,
      gradient_as_bucket_view != 0, std::move(names), first_bucket_bytes,
      /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, std::move(limits_reversed));
  *out = new te_reducer{reducer};
  TE_CATCH
}

// Before each forward pass: DDP's `_pre_forward` (prepare, then rebuild the buckets in the order
// gradients became ready during the first backward; rebuilding is a collective, once).
te_error te_reducer_prepare_for_forward(te_reducer* reducer, int* rebuilt) {
  TE_TRY
  reducer->reducer->prepare_for_forward();
  *rebuilt = reducer->reducer->rebuild_buckets() ? 1 : 0;
  TE_CATCH
}

// Before each `backward()`: the outputs the loss comes from (used to find unused parameters).
te_error te_reducer_prepare_for_backward(te_reducer* reducer, const te_tensor* outputs, size_t n) {
  TE_TRY
  reducer->reducer->prepare_for_backward(te_tensor_list(outputs, n));
  TE_CATCH
}

void te_reducer_free(te_reducer* reducer) {
  try {
    delete reducer;
  } catch (...) {
    // ~Reducer is noexcept(false); nothing to report to from a destructor.
  }
}

}  // extern "C"
