// Shared by every translation unit of the torch-ext shim: the declarations of torch_ext.h, the
// error convention and the conversion of tch's raw tensor handles.
//
// Every `extern "C"` entry point returns a `char*`: null on success, otherwise a message
// allocated with `malloc` that the Rust side frees with `te_free_error`. No C++ exception ever
// crosses into Rust: each body runs inside TE_TRY / TE_CATCH.
#pragma once

#include "torch_ext.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

// Returned when even the copy of a message cannot be allocated; `te_free_error` skips it.
inline char* te_out_of_memory_error() {
  static char message[] = "out of memory (while reporting a C++ exception)";
  return message;
}

inline char* te_make_error(const char* message) {
  // strdup uses malloc: the Rust side frees it with `te_free_error` (free).
  char* copy = strdup(message == nullptr ? "unknown error" : message);
  return copy != nullptr ? copy : te_out_of_memory_error();
}

// A non-null message: an exception whose message is empty still reports failure.
inline char* te_make_error(const std::string& message) {
  return te_make_error(message.empty() ? "C++ exception without a message" : message.c_str());
}

#define TE_TRY try {
#define TE_CATCH                                                   \
  }                                                                \
  catch (const c10::Error& e) {                                    \
    return te_make_error(std::string(e.what_without_backtrace())); \
  }                                                                \
  catch (const std::exception& e) {                                \
    return te_make_error(std::string(e.what()));                   \
  }                                                                \
  catch (...) {                                                    \
    return te_make_error(std::string("unknown C++ exception"));    \
  }                                                                \
  return nullptr;

// Copies of the handles' tensors (reference-counted: in-place ops reach the caller's storage).
inline std::vector<at::Tensor> te_tensor_list(const te_tensor* tensors, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(tensors[i] != nullptr, "tensor ", i, " of the list is a null handle");
    list.push_back(*tensors[i]);
  }
  return list;
}

// A new tch handle that owns a reference to `tensor` (tch frees it with `at_free`).
inline te_tensor te_new_handle(at::Tensor tensor) {
  return new at::Tensor(std::move(tensor));
}
