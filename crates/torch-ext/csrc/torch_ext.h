// torch_ext.h: every `extern "C"` function of the torch-ext shim, in one place.
//
// Both sides compile against this file. The C++ translation units include it (through
// common.h) before they define the functions: a definition whose parameter or return types
// differ from the declaration here is a "conflicting declaration of C function" error, and one
// that is missing here fails `-Werror=missing-declarations`. The Rust declarations in
// src/ffi.rs are checked against it by tests/ffi_header.rs, which parses this file (one
// declaration per statement, the types below only), maps each C type to its Rust spelling and
// names every function whose Rust declaration differs or is missing on either side.
//
// Conventions: a function returning `te_error` returns null on success, otherwise a message
// allocated with `malloc` that the caller frees with `te_free_error`. Tensor handles are tch's
// (`te_tensor`, an `at::Tensor*`). Objects the shim creates come out through an out-pointer and
// are freed by the matching `*_free`.
//
// The declarations are grouped by the translation unit that defines them: core.cpp and
// checkpoint.cpp (always), dist.cpp (feature `dist`; `te_group_nccl` with `nccl` only) and cuda.cpp (feature `cuda`).
#ifndef TORCH_EXT_H
#define TORCH_EXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
// tch's `C_tensor` is a heap-allocated `at::Tensor` (torch-sys' `typedef torch::Tensor *tensor`).
typedef at::Tensor* te_tensor;
typedef at::Generator te_generator;
#else
typedef struct te_tensor_s* te_tensor;
typedef struct te_generator te_generator;
#endif

// null on success, otherwise a malloc'ed message (see above).
typedef char* te_error;

// Objects defined by the translation units; opaque everywhere else.
typedef struct te_named_tensors te_named_tensors;
typedef struct te_store te_store;
typedef struct te_group te_group;
typedef struct te_reducer te_reducer;
typedef struct te_cuda_graph te_cuda_graph;
typedef struct te_cuda_stream te_cuda_stream;
typedef struct te_cuda_stream_guard te_cuda_stream_guard;

// A checkpointed block (checkpoint.cpp), a Rust closure behind `closure`: runs on `n` input
// handles and writes one new output handle, which the shim takes over, to `out`; returns 0, or
// non-zero with a NUL-terminated message of at most `capacity` bytes in `message`.
typedef int (*te_checkpoint_run)(void* closure, const te_tensor* inputs, size_t n, te_tensor* out, char* message,
                                 size_t capacity);
// Frees the closure; called once, when the last owner (the autograd node) goes.
typedef void (*te_checkpoint_drop)(void* closure);

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// core.cpp
// ---------------------------------------------------------------------------------------------

void te_free_error(char* error);

// libtorch's log threshold (c10's `caffe2_log_level`: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL), or
// the one `TORCH_CPP_LOG_LEVEL` names when it is set.
te_error te_set_cpp_log_level(int level);

// Generators.
te_error te_generator_cpu(uint64_t seed, te_generator** out);
te_error te_generator_cuda(uint64_t seed, int64_t device_index, te_generator** out);
void te_generator_free(te_generator* gen);
te_error te_generator_seed(te_generator* gen, uint64_t* out);
te_error te_generator_set_seed(te_generator* gen, uint64_t seed);
te_error te_generator_get_state(te_generator* gen, te_tensor* out);
te_error te_generator_set_state(te_generator* gen, te_tensor state);
te_error te_generator_default(int device_type, int64_t device_index, te_generator** out);
te_error te_normal_(te_tensor self, double mean, double std, te_generator* gen);
te_error te_uniform_(te_tensor self, double from, double to, te_generator* gen);
te_error te_bernoulli_(te_tensor self, double p, te_generator* gen);
te_error te_random_(te_tensor self, int64_t from, int64_t to, te_generator* gen);
te_error te_randperm_out(te_tensor out, int64_t n, te_generator* gen);

// Multi-tensor ops.
te_error te_foreach_lerp_scalar_(const te_tensor* self, size_t n, const te_tensor* ends, size_t n_ends,
                                 double weight);
te_error te_foreach_lerp_tensor_(const te_tensor* self, size_t n, const te_tensor* ends, size_t n_ends,
                                 te_tensor weight);
te_error te_foreach_norm(const te_tensor* self, size_t n, double ord, te_tensor* out);
te_error te_foreach_mul_scalar_(const te_tensor* self, size_t n, double scalar);
te_error te_foreach_mul_tensor_(const te_tensor* self, size_t n, te_tensor scalar);
te_error te_foreach_add_scalar_(const te_tensor* self, size_t n, double scalar);
te_error te_foreach_add_list_(const te_tensor* self, size_t n, const te_tensor* other, size_t n_other,
                              double alpha);
te_error te_foreach_zero_(const te_tensor* self, size_t n);
// GradScaler's unscale: grads[i] *= inv_scale, found_inf = 1 when any value is NaN or infinite.
te_error te_amp_foreach_non_finite_check_and_unscale_(const te_tensor* grads, size_t n, te_tensor found_inf,
                                                      te_tensor inv_scale);
te_error te_fused_adam_(int adamw, const te_tensor* params, const te_tensor* grads, const te_tensor* exp_avgs,
                        const te_tensor* exp_avg_sqs, const te_tensor* max_exp_avg_sqs, size_t n_max,
                        const te_tensor* state_steps, size_t n, double lr, te_tensor lr_tensor, double beta1,
                        double beta2, double weight_decay, double eps, int amsgrad, int maximize,
                        te_tensor grad_scale, te_tensor found_inf);

// Autocast.
te_error te_set_autocast_dtype(int device_type, te_tensor dtype_carrier);
// Autocast on or off for a device type on this thread (`previous` receives the old setting).
te_error te_set_autocast_enabled(int device_type, int enabled, int* previous);
te_error te_set_autocast_cache_enabled(int enabled);
te_error te_is_autocast_cache_enabled(int* out);
te_error te_get_autocast_dtype(int device_type, te_tensor* out_carrier);

// Pickle.
te_error te_load_state_dict(const char* data, size_t len, te_named_tensors** out);
te_error te_load_state_dict_file(const char* path, te_named_tensors** out);
size_t te_named_tensors_len(const te_named_tensors* named);
te_error te_named_tensors_get(const te_named_tensors* named, size_t index, const char** name, size_t* name_len,
                              te_tensor* tensor);
void te_named_tensors_free(te_named_tensors* named);

// ---------------------------------------------------------------------------------------------
// checkpoint.cpp
// ---------------------------------------------------------------------------------------------

te_error te_checkpoint(te_checkpoint_run run, te_checkpoint_drop drop, void* closure, const te_tensor* inputs,
                       size_t n_inputs, const te_tensor* params, size_t n_params, te_tensor* out);

// ---------------------------------------------------------------------------------------------
// dist.cpp (feature `dist`)
// ---------------------------------------------------------------------------------------------

void te_free_bytes(uint8_t* bytes);

// The TCP store.
te_error te_tcp_store_new(const char* host, uint16_t port, int64_t world_size, int is_server, int64_t timeout_ms,
                          te_store** out);
void te_store_free(te_store* store);
te_error te_store_set(te_store* store, const char* key, const uint8_t* value, size_t len);
te_error te_store_get(te_store* store, const char* key, uint8_t** value, size_t* len);
te_error te_store_add(te_store* store, const char* key, int64_t delta, int64_t* out);

// Process groups and their collectives.
te_error te_group_gloo(te_store* store, int rank, int world_size, int64_t timeout_ms, int device_kind,
                       const char* device_arg, int threads, te_group** out);
// Defined only with USE_C10D_NCCL (feature `nccl`).
te_error te_group_nccl(te_store* store, int rank, int world_size, int64_t timeout_ms, int64_t device_index,
                       te_group** out);
te_error te_group_allreduce(te_group* group, const te_tensor* tensors, size_t n, int op);
te_error te_group_broadcast(te_group* group, const te_tensor* tensors, size_t n, int root);
te_error te_group_barrier(te_group* group);
// The number of collectives this rank has started in the group (the backend's sequence number).
te_error te_group_sequence_number(te_group* group, uint64_t* out);
te_error te_group_allreduce_bucketed(te_group* group, const te_tensor* tensors, size_t n, int op,
                                     int64_t bucket_bytes);
te_error te_group_broadcast_coalesced(te_group* group, const te_tensor* tensors, size_t n, int64_t buffer_bytes,
                                      int root);
te_error te_group_shutdown(te_group* group);
void te_group_free(te_group* group);

// DDP's Reducer.
te_error te_reducer_new(te_group* group, const te_tensor* params, size_t n, int64_t bucket_bytes,
                        int64_t first_bucket_bytes, int find_unused_parameters, int gradient_as_bucket_view,
                        te_reducer** out);
te_error te_reducer_prepare_for_forward(te_reducer* reducer, int* rebuilt);
te_error te_reducer_prepare_for_backward(te_reducer* reducer, const te_tensor* outputs, size_t n);
void te_reducer_free(te_reducer* reducer);

// ---------------------------------------------------------------------------------------------
// cuda.cpp (feature `cuda`)
// ---------------------------------------------------------------------------------------------

te_error te_cuda_graph_new(int keep_graph, te_cuda_graph** out);
void te_cuda_graph_free(te_cuda_graph* graph);
te_error te_cuda_graph_capture_begin(te_cuda_graph* graph);
te_error te_cuda_graph_capture_end(te_cuda_graph* graph);
te_error te_cuda_graph_register_generator(te_cuda_graph* graph, te_generator* generator);
te_error te_cuda_graph_replay(te_cuda_graph* graph);
te_error te_cuda_graph_reset(te_cuda_graph* graph);
te_error te_cuda_stream_from_pool(int64_t device_index, int high_priority, te_cuda_stream** out);
te_error te_cuda_stream_current(int64_t device_index, te_cuda_stream** out);
void te_cuda_stream_free(te_cuda_stream* stream);
te_error te_cuda_stream_synchronize(te_cuda_stream* stream);
te_error te_cuda_stream_wait_stream(te_cuda_stream* stream, te_cuda_stream* other);
te_error te_cuda_stream_id(te_cuda_stream* stream, int64_t* out);
te_error te_cuda_stream_guard_new(te_cuda_stream* stream, te_cuda_stream_guard** out);
void te_cuda_stream_guard_free(te_cuda_stream_guard* guard);
te_error te_cuda_memory_stats(int64_t device_index, int64_t* out);
te_error te_cuda_reset_peak_memory_stats(int64_t device_index);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // TORCH_EXT_H
