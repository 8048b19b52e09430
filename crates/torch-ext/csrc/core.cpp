// torch-ext core: random generators, multi-tensor (`_foreach_*`, `_fused_adam_`) ops, the
// autocast dtype, and loading `torch.save`d state dicts. c10d lives in dist.cpp and CUDA graphs
// in cuda.cpp, so that each feature adds one translation unit.
#include "common.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <fstream>
#include <mutex>
#include <sstream>
#include <utility>

extern "C" {

void te_free_error(char* error) {
  if (error != te_out_of_memory_error()) free(error);
}

// ---------------------------------------------------------------------------------------------
// Devices and dtypes. tch's `Kind` codes are private to tch, so a dtype crosses the boundary
// as a 0-element tensor of that dtype ("carrier"): the Rust side makes one with
// `Tensor::empty([0], (kind, Device::Cpu))` and reads `.kind()` back from the ones we make.
// Device types cross as the small enum below, mirrored in src/ffi.rs.
// ---------------------------------------------------------------------------------------------

enum te_device_type { TE_DEVICE_CPU = 0, TE_DEVICE_CUDA = 1, TE_DEVICE_MPS = 2, TE_DEVICE_VULKAN = 3 };

static c10::DeviceType te_device_type_from(int device_type) {
  switch (device_type) {
    case TE_DEVICE_CPU:
      return c10::DeviceType::CPU;
    case TE_DEVICE_CUDA:
      return c10::DeviceType::CUDA;
    case TE_DEVICE_MPS:
      return c10::DeviceType::MPS;
    case TE_DEVICE_VULKAN:
      return c10::DeviceType::Vulkan;
    default:
      break;
  }
  TORCH_CHECK(false, "unknown torch-ext device type code ", device_type);
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

te_error te_generator_cpu(uint64_t seed, at::Generator** out) {
  TE_TRY
  *out = new at::Generator(at::make_generator<at::CPUGeneratorImpl>(seed));
  TE_CATCH
}

te_error te_generator_cuda(uint64_t seed, int64_t device_index, at::Generator** out) {
  TE_TRY
  // Through the CUDA hooks that libtorch_cuda registers: no CUDA headers needed, and a clear
  // error (not a crash) on a machine without a GPU or without libtorch_cuda loaded.
  TORCH_CHECK(at::globalContext().hasCUDA(), "CUDA is not available: cannot create a CUDA generator");
  TORCH_CHECK(device_index >= 0 && device_index < at::detail::getCUDAHooks().deviceCount(),
              "CUDA device index ", device_index, " is out of range (",
              static_cast<int>(at::detail::getCUDAHooks().deviceCount()), " devices)");
  at::Generator gen =
      at::detail::getCUDAHooks().getNewGenerator(static_cast<c10::DeviceIndex>(device_index));
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  *out = new at::Generator(std::move(gen));
  TE_CATCH
}

void te_generator_free(at::Generator* gen) { delete gen; }

te_error te_generator_seed(at::Generator* gen, uint64_t* out) {
  TE_TRY
  std::lock_guard<std::mutex> lock(gen->mutex());
  *out = gen->current_seed();
  TE_CATCH
}

te_error te_generator_set_seed(at::Generator* gen, uint64_t seed) {
  TE_TRY
  std::lock_guard<std::mutex> lock(gen->mutex());
  gen->set_current_seed(seed);
  TE_CATCH
}

te_error te_generator_get_state(at::Generator* gen, te_tensor* out) {
  TE_TRY
  std::lock_guard<std::mutex> lock(gen->mutex());
  *out = te_new_handle(gen->get_state());
  TE_CATCH
}

te_error te_generator_set_state(at::Generator* gen, te_tensor state) {
  TE_TRY
  std::lock_guard<std::mutex> lock(gen->mutex());
  gen->set_state(*state);
  TE_CATCH
}

// A handle to libtorch's process-wide default generator of a device (the one `tch::manual_seed`
// seeds): the same GeneratorImpl, not a copy.
te_error te_generator_default(int device_type, int64_t device_index, at::Generator** out) {
  TE_TRY
  c10::Device device(te_device_type_from(device_type), static_cast<c10::DeviceIndex>(device_index));
  *out = new at::Generator(at::globalContext().defaultGenerator(device));
  TE_CATCH
}

// The random ops below are what `at::randn(size, gen, options)` and friends run after
// allocating: `at::empty(size, options).normal_(0, 1, gen)` etc. The Rust side allocates (so
// that tch maps dtype and device), these fill in place. ATen locks the generator itself.

te_error te_normal_(te_tensor self, double mean, double std, at::Generator* gen) {
  TE_TRY
  self->normal_(mean, std, *gen);
  TE_CATCH
}

te_error te_uniform_(te_tensor self, double from, double to, at::Generator* gen) {
  TE_TRY
  self->uniform_(from, to, *gen);
  TE_CATCH
}

te_error te_bernoulli_(te_tensor self, double p, at::Generator* gen) {
  TE_TRY
  self->bernoulli_(p, *gen);
  TE_CATCH
}

te_error te_random_(te_tensor self, int64_t from, int64_t to, at::Generator* gen) {
  TE_TRY
  self->random_(from, to, *gen);
  TE_CATCH
}

te_error te_randperm_out(te_tensor out, int64_t n, at::Generator* gen) {
  TE_TRY
  at::randperm_out(*out, n, *gen);
  TE_CATCH
}

// ---------------------------------------------------------------------------------------------
// Multi-tensor ops
// ---------------------------------------------------------------------------------------------

te_error te_foreach_lerp_scalar_(const te_tensor* self, size_t n, const te_tensor* ends, size_t n_ends,
                                 double weight) {
  TE_TRY
  TORCH_CHECK(n == n_ends, "_foreach_lerp_: ", n, " tensors but ", n_ends, " end tensors");
  at::_foreach_lerp_(te_tensor_list(self, n), te_tensor_list(ends, n_ends), at::Scalar(weight));
  TE_CATCH
}

// `self[i] += weight * (ends[i] - self[i])` with a one-element tensor `weight` that may live on
// the device (ATen's list-of-weights `_foreach_lerp_` takes one weight per tensor, which its CUDA
// fast path only accepts at the tensors' own shapes). On CUDA: three multi-tensor kernels
// (`_foreach_sub`, `_foreach_mul_` by the tensor, `_foreach_add_`) and one temporary list; on
// other devices, which loop over the tensors anyway, one `lerp_` per tensor.
te_error te_foreach_lerp_tensor_(const te_tensor* self, size_t n, const te_tensor* ends, size_t n_ends,
                                 te_tensor weight) {
  TE_TRY
  TORCH_CHECK(n == n_ends, "_foreach_lerp_: ", n, " tensors but ", n_ends, " end tensors");
  TORCH_CHECK(weight != nullptr && weight->numel() == 1, "_foreach_lerp_: the weight must have one element");
  auto xs = te_tensor_list(self, n);
  auto es = te_tensor_list(ends, n_ends);
  if (n > 0 && xs[0].is_cuda()) {
    auto diffs = at::_foreach_sub(es, xs);
    at::_foreach_mul_(diffs, weight->reshape({}));
    at::_foreach_add_(xs, diffs);
  } else {
    at::Tensor w = weight->reshape({});
    for (size_t i = 0; i < n; ++i) {
      xs[i].lerp_(es[i], w);
    }
  }
  TE_CATCH
}

// `out` has room for `n` handles.
te_error te_foreach_norm(const te_tensor* self, size_t n, double ord, te_tensor* out) {
  TE_TRY
  std::vector<at::Tensor> norms = at::_foreach_norm(te_tensor_list(self, n), at::Scalar(ord));
  TORCH_CHECK(norms.size() == n, "_foreach_norm returned ", norms.size(), " norms for ", n, " tensors");
  for (size_t i = 0; i < n; ++i) {
    out[i] = te_new_handle(std::move(norms[i]));
  }
  TE_CATCH
}

te_error te_foreach_mul_scalar_(const te_tensor* self, size_t n, double scalar) {
  TE_TRY
  at::_foreach_mul_(te_tensor_list(self, n), at::Scalar(scalar));
  TE_CATCH
}

te_error te_foreach_mul_tensor_(const te_tensor* self, size_t n, te_tensor scalar) {
  TE_TRY
  at::_foreach_mul_(te_tensor_list(self, n), *scalar);
  TE_CATCH
}

te_error te_foreach_add_scalar_(const te_tensor* self, size_t n, double scalar) {
  TE_TRY
  at::_foreach_add_(te_tensor_list(self, n), at::Scalar(scalar));
  TE_CATCH
}

te_error te_foreach_add_list_(const te_tensor* self, size_t n, const te_tensor* other, size_t n_other,
                              double alpha) {
  TE_TRY
  TORCH_CHECK(n == n_other, "_foreach_add_: ", n, " tensors but ", n_other, " others");
  at::_foreach_add_(te_tensor_list(self, n), te_tensor_list(other, n_other), at::Scalar(alpha));
  TE_CATCH
}

te_error te_foreach_zero_(const te_tensor* self, size_t n) {
  TE_TRY
  at::_foreach_zero_(te_tensor_list(self, n));
  TE_CATCH
}

// `_fused_adam_` (adamw == 0) or `_fused_adamw_` (adamw != 0). `n` is the length of every list
// but `max_exp_avg_sqs`, which is empty unless amsgrad. `grad_scale` and `found_inf` may be null.
// A non-null `lr_tensor` (one element, on the parameters' device or the CPU) replaces `lr`: the
// `tensor_lr` overloads, which read the learning rate on the device.
te_error te_fused_adam_(int adamw, const te_tensor* params, const te_tensor* grads, const te_tensor* exp_avgs,
                        const te_tensor* exp_avg_sqs, const te_tensor* max_exp_avg_sqs, size_t n_max,
                        const te_tensor* state_steps, size_t n, double lr, te_tensor lr_tensor, double beta1,
                        double beta2,
                        double weight_decay, double eps, int amsgrad, int maximize, te_tensor grad_scale,
                        te_tensor found_inf) {
  TE_TRY
  auto ps = te_tensor_list(params, n);
  auto gs = te_tensor_list(grads, n);
  auto ms = te_tensor_list(exp_avgs, n);
  auto vs = te_tensor_list(exp_avg_sqs, n);
  auto maxs = te_tensor_list(max_exp_avg_sqs, n_max);
  auto steps = te_tensor_list(state_steps, n);
  std::optional<at::Tensor> scale;
  if (grad_scale != nullptr) scale = *grad_scale;
  std::optional<at::Tensor> inf;
  if (found_inf != nullptr) inf = *found_inf;
  if (lr_tensor != nullptr) {
    if (adamw != 0) {
      at::_fused_adamw_(ps, gs, ms, vs, maxs, steps, *lr_tensor, beta1, beta2, weight_decay, eps, amsgrad != 0,
                        maximize != 0, scale, inf);
    } else {
      at::_fused_adam_(ps, gs, ms, vs, maxs, steps, *lr_tensor, beta1, beta2, weight_decay, eps, amsgrad != 0,
                       maximize != 0, scale, inf);
    }
  } else if (adamw != 0) {
    at::_fused_adamw_(ps, gs, ms, vs, maxs, steps, lr, beta1, beta2, weight_decay, eps, amsgrad != 0,
                      maximize != 0, scale, inf);
  } else {
    at::_fused_adam_(ps, gs, ms, vs, maxs, steps, lr, beta1, beta2, weight_decay, eps, amsgrad != 0,
                     maximize != 0, scale, inf);
  }
  TE_CATCH
}

// ---------------------------------------------------------------------------------------------
// Autocast dtype (thread-local settings of libtorch_cpu)
// ---------------------------------------------------------------------------------------------

te_error te_set_autocast_dtype(int device_type, te_tensor dtype_carrier) {
  TE_TRY
  at::autocast::set_autocast_dtype(te_device_type_from(device_type), dtype_carrier->scalar_type());
  TE_CATCH
}

// Whether autocast keeps the casts of leaf tensors (weights) for the rest of the outermost
// autocast region (`torch.autocast(cache_enabled=...)`); thread-local, like the dtypes.
te_error te_set_autocast_cache_enabled(int enabled) {
  TE_TRY
  at::autocast::set_autocast_cache_enabled(enabled != 0);
  TE_CATCH
}

te_error te_is_autocast_cache_enabled(int* out) {
  TE_TRY
  *out = at::autocast::is_autocast_cache_enabled() ? 1 : 0;
  TE_CATCH
}

te_error te_get_autocast_dtype(int device_type, te_tensor* out_carrier) {
  TE_TRY
  at::ScalarType dtype = at::autocast::get_autocast_dtype(te_device_type_from(device_type));
  *out_carrier = te_new_handle(at::empty({0}, at::TensorOptions().dtype(dtype)));
  TE_CATCH
}

// ---------------------------------------------------------------------------------------------
// Pickle load: a `torch.save`d dict of str -> tensor (zip format)
// ---------------------------------------------------------------------------------------------

struct te_named_tensors {
  std::vector<std::pair<std::string, at::Tensor>> items;
};

// A key no state dict uses: where te_rewrite_pickle puts the state of an OrderedDict.
static const std::string te_build_state_key = std::string("\x01torch_ext:OrderedDict state");

// libtorch's C++ unpickler (`torch::jit::Unpickler`) was written for TorchScript's own pickles,
// and two things that every `torch.save(module.state_dict())` contains trip it:
//
// 1. it reads `collections.OrderedDict()` as None (it only expects the empty OrderedDict of a
//    tensor's backward hooks), so the state dict itself, an OrderedDict, comes out as None;
// 2. it reads BUILD (`obj.__setstate__(state)`) as TorchScript's list-building opcode, and
//    `state_dict()` sets one attribute on its OrderedDict (`_metadata`) through BUILD.
//
// This walks the pickle's opcodes, tracking an abstract stack, and rewrites both: each
// `OrderedDict` call (the class, pushed by GLOBAL or a memo get, then `EMPTY_TUPLE REDUCE`)
// becomes `EMPTY_DICT`, and each BUILD on such a dict becomes SETITEM under
// `te_build_state_key` (the key is inserted where the state's opcodes begin). The unpickler
// has no POP, hence a rewrite into a new string. Anything else passes through unchanged, for
// the unpickler to accept or reject.
static std::string te_rewrite_pickle(const std::string& pickle) {
  enum Kind { MARK, VALUE, OD_CLASS, OD_DICT };
  struct Entry {
    Kind kind;
    size_t start;  // offset in `out` where the opcodes that made this value begin
  };
  const std::string od_global = "collections\nOrderedDict\n";
  std::string out;
  out.reserve(pickle.size() + 64);
  std::vector<Entry> stack;
  std::vector<Kind> memo;  // memo index -> kind of the value stored there
  size_t memo_count = 0;
  size_t i = 0;
  const size_t n = pickle.size();
  auto fail = [&](const char* what) {
    TORCH_CHECK(false, "cannot read the pickle: ", what, " (opcode at byte ", i, ")");
  };
  auto need = [&](size_t bytes) {
    if (i + bytes > n) fail("truncated");
  };
  auto le = [&](size_t at, size_t bytes) {
    uint64_t v = 0;
    for (size_t k = 0; k < bytes; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(pickle[at + k])) << (8 * k);
    return v;
  };
  auto line_end = [&](size_t from) {
    size_t e = pickle.find('\n', from);
    if (e == std::string::npos) fail("unterminated line");
    return e + 1;
  };
  auto pop = [&]() {
    if (stack.empty()) fail("stack underflow");
    Entry e = stack.back();
    stack.pop_back();
    if (e.kind == OD_CLASS) fail("unsupported use of collections.OrderedDict");
    return e;
  };
  // Pops up to and including the topmost MARK; returns the MARK's start.
  auto pop_mark = [&]() {
    while (!stack.empty() && stack.back().kind != MARK) pop();
    if (stack.empty()) fail("no MARK on the stack");
    size_t start = stack.back().start;
    stack.pop_back();
    return start;
  };
  auto memo_put = [&](uint64_t index) {
    if (stack.empty()) fail("memo put on an empty stack");
    if (memo.size() <= index) memo.resize(index + 1, VALUE);
    memo[index] = stack.back().kind;
    memo_count = std::max<size_t>(memo_count, index + 1);
  };
  auto memo_get = [&](uint64_t index) { return index < memo.size() ? memo[index] : VALUE; };
  while (i < n) {
    const unsigned char op = static_cast<unsigned char>(pickle[i]);
    const size_t at = i + 1;
    const size_t here = out.size();
    size_t next = at;
    bool copy = true;
    switch (op) {
      case '.':  // STOP
        out.push_back('.');
        return out;
      case 0x80:  // PROTO
        need(2);
        next = at + 1;
        break;
      case 0x95:  // FRAME
        need(9);
        next = at + 8;
        break;
      case '(':  // MARK
        stack.push_back({MARK, here});
        break;
      case 'c': {  // GLOBAL module\nname\n
        next = line_end(line_end(at));
        if (pickle.compare(at, next - at, od_global) == 0) {
          stack.push_back({OD_CLASS, here});
          copy = false;
        } else {
          stack.push_back({VALUE, here});
        }
        break;
      }
      case 'h': case 'j': {  // BINGET, LONG_BINGET
        size_t width = op == 'h' ? 1 : 4;
        need(1 + width);
        next = at + width;
        Kind kind = memo_get(le(at, width));
        if (kind == OD_CLASS) {
          stack.push_back({OD_CLASS, here});
          copy = false;
        } else {
          stack.push_back({VALUE, here});  // a shared reference: no longer rewritten
        }
        break;
      }
      case 'q': case 'r': {  // BINPUT, LONG_BINPUT
        size_t width = op == 'q' ? 1 : 4;
        need(1 + width);
        next = at + width;
        memo_put(le(at, width));
        copy = stack.back().kind != OD_CLASS;
        break;
      }
      case 0x94:  // MEMOIZE
        if (!stack.empty() && stack.back().kind == OD_CLASS) fail("unsupported use of collections.OrderedDict");
        memo_put(memo_count);
        break;
      case ')':  // EMPTY_TUPLE, maybe `OrderedDict () REDUCE`
        if (!stack.empty() && stack.back().kind == OD_CLASS) {
          if (at >= n || pickle[at] != 'R') fail("unsupported use of collections.OrderedDict");
          stack.back() = {OD_DICT, here};
          out.push_back('}');
          copy = false;
          next = at + 1;
        } else {
          stack.push_back({VALUE, here});
        }
        break;
      case 'b': {  // BUILD
        Entry state = pop();
        if (stack.empty()) fail("BUILD without an object");
        if (stack.back().kind == OD_DICT) {
          std::string key;
          key.push_back('X');
          uint32_t len = static_cast<uint32_t>(te_build_state_key.size());
          for (int k = 0; k < 4; ++k) key.push_back(static_cast<char>((len >> (8 * k)) & 0xff));
          key += te_build_state_key;
          out.insert(state.start, key);
          out.push_back('s');  // SETITEM
          copy = false;
        }
        break;
      }
      // Values pushed by opcodes with a text argument.
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P':
        next = line_end(at);
        stack.push_back({VALUE, here});
        break;
      case 'g':  // GET index\n
        next = line_end(at);
        stack.push_back({memo_get(std::stoull(pickle.substr(at, next - at - 1))) == OD_CLASS ? OD_CLASS : VALUE, here});
        if (stack.back().kind == OD_CLASS) copy = false;
        break;
      case 'p':  // PUT index\n
        next = line_end(at);
        memo_put(std::stoull(pickle.substr(at, next - at - 1)));
        copy = stack.back().kind != OD_CLASS;
        break;
      case 'i': {  // INST module\nname\n: pops to MARK, pushes the instance
        next = line_end(line_end(at));
        size_t start = pop_mark();
        stack.push_back({VALUE, start});
        break;
      }
      // Values pushed by opcodes with a binary argument.
      case 'K': case 0x82:  // BININT1, EXT1
        need(2);
        next = at + 1;
        stack.push_back({VALUE, here});
        break;
      case 'M': case 0x83:  // BININT2, EXT2
        need(3);
        next = at + 2;
        stack.push_back({VALUE, here});
        break;
      case 'J': case 0x84:  // BININT, EXT4
        need(5);
        next = at + 4;
        stack.push_back({VALUE, here});
        break;
      case 'G':  // BINFLOAT
        need(9);
        next = at + 8;
        stack.push_back({VALUE, here});
        break;
      case 'U': case 'C': case 0x8c: case 0x8a:  // SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE, LONG1
        need(2);
        next = at + 1 + le(at, 1);
        need(next - i);
        stack.push_back({VALUE, here});
        break;
      case 'T': case 'X': case 'B': case 0x8b:  // BINSTRING, BINUNICODE, BINBYTES, LONG4
        need(5);
        next = at + 4 + le(at, 4);
        need(next - i);
        stack.push_back({VALUE, here});
        break;
      case 0x8d: case 0x8e: case 0x96:  // BINUNICODE8, BINBYTES8, BYTEARRAY8
        need(9);
        next = at + 8 + le(at, 8);
        need(next - i);
        stack.push_back({VALUE, here});
        break;
      // Values pushed by opcodes without an argument.
      case 'N': case 0x88: case 0x89: case '}': case ']': case 0x8f: case 0x97:
        stack.push_back({VALUE, here});
        break;
      // Stack transformations.
      case 'Q': {  // BINPERSID: id -> object
        Entry id = pop();
        stack.push_back({VALUE, id.start});
        break;
      }
      case 'R': case 0x81: case 0x93: {  // REDUCE, NEWOBJ, STACK_GLOBAL: 2 -> 1
        pop();
        Entry first = pop();
        stack.push_back({VALUE, first.start});
        break;
      }
      case 0x92: {  // NEWOBJ_EX: 3 -> 1
        pop();
        pop();
        Entry first = pop();
        stack.push_back({VALUE, first.start});
        break;
      }
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        size_t count = op - 0x84;
        size_t start = 0;
        for (size_t k = 0; k < count; ++k) start = pop().start;
        stack.push_back({VALUE, start});
        break;
      }
      case 't': case 'l': case 'd': case 0x91: case 'o': {  // TUPLE, LIST, DICT, FROZENSET, OBJ
        size_t start = pop_mark();
        stack.push_back({VALUE, start});
        break;
      }
      case 'a':  // APPEND
        pop();
        break;
      case 's':  // SETITEM
        pop();
        pop();
        break;
      case 'e': case 'u': case 0x90:  // APPENDS, SETITEMS, ADDITEMS
        pop_mark();
        break;
      case '0':  // POP
        pop();
        break;
      case '1':  // POP_MARK
        pop_mark();
        break;
      case '2':  // DUP
        if (stack.empty()) fail("DUP on an empty stack");
        stack.push_back({VALUE, here});
        break;
      case 0x98:  // READONLY_BUFFER
        break;
      default:
        fail("unknown opcode");
    }
    if (copy) out.append(pickle, i, next - i);
    i = next;
  }
  fail("no STOP");
  return out;
}

// What torch::jit::pickle_load does for a zip archive (readArchiveAndTensors), with the
// OrderedDict rewrite above and every storage mapped to the CPU (`map_location="cpu"`).
static c10::IValue te_unpickle_zip(caffe2::serialize::PyTorchStreamReader& reader) {
  TORCH_CHECK(reader.hasRecord("data.pkl"), "the zip archive has no data.pkl: not a torch.save file");
  auto [pickle_ptr, pickle_size] = reader.getRecord("data.pkl");
  std::string pickle =
      te_rewrite_pickle(std::string(static_cast<const char*>(pickle_ptr.get()), pickle_size));
  size_t pos = 0;
  auto read = [&](char* buffer, size_t n) -> size_t {
    size_t count = std::min(n, pickle.size() - pos);
    memcpy(buffer, pickle.data() + pos, count);
    pos += count;
    return count;
  };
  auto read_record = [&](const std::string& name) { return std::get<0>(reader.getRecord("data/" + name)); };
  torch::jit::Unpickler unpickler(read, nullptr, nullptr, read_record, at::Device(at::kCPU));
  unpickler.set_version(reader.version());
  return unpickler.parse_ivalue();
}

static std::string te_describe(const c10::IValue& value) {
  if (value.isTensor()) return "a tensor";
  if (value.isGenericDict()) return "a dict";
  if (value.isList()) return "a list";
  if (value.isTuple()) return "a tuple";
  if (value.isString()) return "a string";
  if (value.isInt()) return "an int";
  if (value.isDouble()) return "a float";
  if (value.isBool()) return "a bool";
  if (value.isNone()) return "None";
  if (value.isObject()) return "an object of class " + value.toObjectRef().name();
  return "a value of type " + value.tagKind();
}

static void te_check_zip_magic(const char* data, size_t len) {
  TORCH_CHECK(len >= 4 && data[0] == 'P' && data[1] == 'K' && data[2] == 3 && data[3] == 4,
              "not a zip archive (torch.save's default format since torch 1.6); files written with "
              "`_use_new_zipfile_serialization=False` or by another program are not supported");
}

static te_error te_state_dict_from(caffe2::serialize::PyTorchStreamReader& reader, te_named_tensors** out);

te_error te_load_state_dict(const char* data, size_t len, te_named_tensors** out) {
  TE_TRY
  te_check_zip_magic(data, len);
  caffe2::serialize::PyTorchStreamReader reader(
      std::make_unique<caffe2::serialize::MemoryReadAdapter>(data, static_cast<off_t>(len)));
  return te_state_dict_from(reader, out);
  TE_CATCH
}

// Reads records straight from the file: only the tensors' storages are held in memory.
te_error te_load_state_dict_file(const char* path, te_named_tensors** out) {
  TE_TRY
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream file(path, std::ios::binary);
    TORCH_CHECK(file.good(), "cannot open the file");
    file.read(magic, 4);
    te_check_zip_magic(magic, static_cast<size_t>(file.gcount()));
  }
  caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
  return te_state_dict_from(reader, out);
  TE_CATCH
}

static te_error te_state_dict_from(caffe2::serialize::PyTorchStreamReader& reader, te_named_tensors** out) {
  TE_TRY
  c10::IValue value = te_unpickle_zip(reader);
  TORCH_CHECK(value.isGenericDict(), "expected a dict of str -> tensor (a state dict), found ",
              te_describe(value));
  auto result = std::make_unique<te_named_tensors>();
  // c10::Dict keeps insertion order, which is the order torch.save wrote (an OrderedDict's).
  for (const auto& entry : value.toGenericDict()) {
    const c10::IValue& key = entry.key();
    // An OrderedDict's attributes (state_dict()'s `_metadata`), see te_rewrite_pickle.
    if (key.isString() && key.toStringRef() == te_build_state_key) continue;
    TORCH_CHECK(key.isString(), "expected a dict of str -> tensor, found a key that is ", te_describe(key));
    const c10::IValue& tensor = entry.value();
    TORCH_CHECK(tensor.isTensor(), "expected a dict of str -> tensor, found ", te_describe(tensor),
                " at key '", key.toStringRef(), "'");
    result->items.emplace_back(key.toStringRef(), tensor.toTensor());
  }
  *out = result.release();
  TE_CATCH
}

size_t te_named_tensors_len(const te_named_tensors* named) { return named->items.size(); }

// `name` points into `named` (valid until it is freed); `tensor` is a new handle.
te_error te_named_tensors_get(const te_named_tensors* named, size_t index, const char** name, size_t* name_len,
                              te_tensor* tensor) {
  TE_TRY
  TORCH_CHECK(index < named->items.size(), "index ", index, " out of range");
  const auto& item = named->items[index];
  *name = item.first.data();
  *name_len = item.first.size();
  *tensor = te_new_handle(item.second);
  TE_CATCH
}

void te_named_tensors_free(te_named_tensors* named) { delete named; }

}  // extern "C"
