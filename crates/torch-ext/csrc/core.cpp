// torch-ext core: random generators, multi-tensor (`_foreach_*`, `_fused_adam_`) ops, the
// autocast dtype, and loading `torch.save`d state dicts. c10d lives in dist.cpp and CUDA graphs
// in cuda.cpp, so that each feature adds one translation unit.
#include "common.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Logging.h>
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

// GradScaler's fused unscale (what `torch.amp.GradScaler.unscale_` calls): one pass over the
// gradients that multiplies them by `inv_scale` and sets `found_inf` on a NaN or infinity,
// without a host read.
te_error te_amp_foreach_non_finite_check_and_unscale_(const te_tensor* grads, size_t n, te_tensor found_inf,
                                                      te_tensor inv_scale) {
  TE_TRY
  std::vector<at::Tensor> list = te_tensor_list(grads, n);
  at::_amp_foreach_non_finite_check_and_unscale_(list, *found_inf, *inv_scale);
  TE_CATCH
}

// ---------------------------------------------------------------------------------------------
// Autocast dtype (thread-local settings of libtorch_cpu)
// ---------------------------------------------------------------------------------------------

te_error te_set_autocast_enabled(int device_type, int enabled, int* previous) {
  TE_TRY
  c10::DeviceType type = te_device_type_from(device_type);
  *previous = at::autocast::is_autocast_enabled(type) ? 1 : 0;
  at::autocast::set_autocast_enabled(type, enabled != 0);
  TE_CATCH
}

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

}  // extern "C"

namespace {

// The opcode walk of te_rewrite_pickle (see there): an abstract stack of what each value is and
// where the opcodes that made it begin in the output, the memo's kinds, and the output.
class PickleRewriter {
 public:
  explicit PickleRewriter(const std::string& pickle) : pickle_(pickle), n_(pickle.size()) {
    out_.reserve(n_ + 64);
  }

  // The rewritten pickle, up to and including its STOP.
  std::string run() {
    while (i_ < n_) {
      const unsigned char op = static_cast<unsigned char>(pickle_[i_]);
      if (op == '.') {  // STOP
        out_.push_back('.');
        return out_;
      }
      const size_t at = i_ + 1;
      const size_t here = out_.size();
      next_ = at;
      copy_ = true;
      if (!rewritable(op, at, here) && !value(op, at, here) && !transform(op, here)) {
        fail("unknown opcode");
      }
      if (copy_) out_.append(pickle_, i_, next_ - i_);
      i_ = next_;
    }
    fail("no STOP");
    return out_;
  }

 private:
  enum Kind { MARK, VALUE, OD_CLASS, OD_DICT };
  struct Entry {
    Kind kind;
    size_t start;  // offset in `out_` where the opcodes that made this value begin
  };

  [[noreturn]] void fail(const char* what) const {
    TORCH_CHECK(false, "cannot read the pickle: ", what, " (opcode at byte ", i_, ")");
    std::abort();  // not reached: TORCH_CHECK(false, …) throws
  }
  void need(size_t bytes) const {
    if (i_ + bytes > n_) fail("truncated");
  }
  uint64_t le(size_t at, size_t bytes) const {
    uint64_t v = 0;
    for (size_t k = 0; k < bytes; ++k) {
      v |= static_cast<uint64_t>(static_cast<unsigned char>(pickle_[at + k])) << (8 * k);
    }
    return v;
  }
  size_t line_end(size_t from) const {
    size_t e = pickle_.find('\n', from);
    if (e == std::string::npos) fail("unterminated line");
    return e + 1;
  }
  Entry pop() {
    if (stack_.empty()) fail("stack underflow");
    Entry e = stack_.back();
    stack_.pop_back();
    if (e.kind == OD_CLASS) fail("unsupported use of collections.OrderedDict");
    return e;
  }
  // Pops up to and including the topmost MARK; returns the MARK's start.
  size_t pop_mark() {
    while (!stack_.empty() && stack_.back().kind != MARK) pop();
    if (stack_.empty()) fail("no MARK on the stack");
    size_t start = stack_.back().start;
    stack_.pop_back();
    return start;
  }
  void memo_put(uint64_t index) {
    if (stack_.empty()) fail("memo put on an empty stack");
    if (memo_.size() <= index) memo_.resize(index + 1, VALUE);
    memo_[index] = stack_.back().kind;
    memo_count_ = std::max<size_t>(memo_count_, index + 1);
  }
  Kind memo_get(uint64_t index) const { return index < memo_.size() ? memo_[index] : VALUE; }
  // Pushes a value that a memo get brought back: the OrderedDict class is tracked (and not
  // copied); anything else is a shared reference, no longer rewritten.
  void push_got(Kind kind, size_t here) {
    if (kind == OD_CLASS) {
      stack_.push_back({OD_CLASS, here});
      copy_ = false;
    } else {
      stack_.push_back({VALUE, here});
    }
  }

  // The opcodes of the rewrite: framing, MARK, GLOBAL, the memo, `OrderedDict () REDUCE` and
  // BUILD. False for any other opcode.
  bool rewritable(unsigned char op, size_t at, size_t here) {
    switch (op) {
      case 0x80:  // PROTO
        need(2);
        next_ = at + 1;
        return true;
      case 0x95:  // FRAME
        need(9);
        next_ = at + 8;
        return true;
      case '(':  // MARK
        stack_.push_back({MARK, here});
        return true;
      case 'c':  // GLOBAL module\nname\n
        next_ = line_end(line_end(at));
        push_got(pickle_.compare(at, next_ - at, "collections\nOrderedDict\n") == 0 ? OD_CLASS : VALUE,
                 here);
        return true;
      case 'h': case 'j': {  // BINGET, LONG_BINGET
        size_t width = op == 'h' ? 1 : 4;
        need(1 + width);
        next_ = at + width;
        push_got(memo_get(le(at, width)), here);
        return true;
      }
      case 'g':  // GET index\n
        next_ = line_end(at);
        push_got(memo_get(std::stoull(pickle_.substr(at, next_ - at - 1))), here);
        return true;
      case 'q': case 'r': {  // BINPUT, LONG_BINPUT
        size_t width = op == 'q' ? 1 : 4;
        need(1 + width);
        next_ = at + width;
        memo_put(le(at, width));
        copy_ = stack_.back().kind != OD_CLASS;
        return true;
      }
      case 'p':  // PUT index\n
        next_ = line_end(at);
        memo_put(std::stoull(pickle_.substr(at, next_ - at - 1)));
        copy_ = stack_.back().kind != OD_CLASS;
        return true;
      case 0x94:  // MEMOIZE
        if (!stack_.empty() && stack_.back().kind == OD_CLASS) fail("unsupported use of collections.OrderedDict");
        memo_put(memo_count_);
        return true;
      case ')':  // EMPTY_TUPLE, maybe `OrderedDict () REDUCE`
        empty_tuple(at, here);
        return true;
      case 'b':  // BUILD
        build();
        return true;
      default:
        return false;
    }
  }

  // EMPTY_TUPLE: after the OrderedDict class it must be `() REDUCE`, which becomes EMPTY_DICT.
  void empty_tuple(size_t at, size_t here) {
    if (stack_.empty() || stack_.back().kind != OD_CLASS) {
      stack_.push_back({VALUE, here});
      return;
    }
    if (at >= n_ || pickle_[at] != 'R') fail("unsupported use of collections.OrderedDict");
    stack_.back() = {OD_DICT, here};
    out_.push_back('}');
    copy_ = false;
    next_ = at + 1;
  }

  // BUILD: on a rewritten OrderedDict, SETITEM of the state under te_build_state_key (the key
  // goes where the state's opcodes begin); on anything else, copied.
  void build() {
    Entry state = pop();
    if (stack_.empty()) fail("BUILD without an object");
    if (stack_.back().kind != OD_DICT) return;
    std::string key;
    key.push_back('X');  // BINUNICODE
    uint32_t len = static_cast<uint32_t>(te_build_state_key.size());
    for (int k = 0; k < 4; ++k) key.push_back(static_cast<char>((len >> (8 * k)) & 0xff));
    key += te_build_state_key;
    out_.insert(state.start, key);
    out_.push_back('s');  // SETITEM
    copy_ = false;
  }

  // Opcodes that push one value, with a text argument, a binary argument or none. False for
  // any other opcode.
  bool value(unsigned char op, size_t at, size_t here) {
    switch (op) {
      case 'I': case 'L': case 'F': case 'S': case 'V': case 'P':
        next_ = line_end(at);
        break;
      case 'i': {  // INST module\nname\n: pops to MARK, pushes the instance
        next_ = line_end(line_end(at));
        stack_.push_back({VALUE, pop_mark()});
        return true;
      }
      case 'K': case 0x82:  // BININT1, EXT1
        need(2);
        next_ = at + 1;
        break;
      case 'M': case 0x83:  // BININT2, EXT2
        need(3);
        next_ = at + 2;
        break;
      case 'J': case 0x84:  // BININT, EXT4
        need(5);
        next_ = at + 4;
        break;
      case 'G':  // BINFLOAT
        need(9);
        next_ = at + 8;
        break;
      case 'U': case 'C': case 0x8c: case 0x8a:  // SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE, LONG1
        need(2);
        next_ = at + 1 + le(at, 1);
        need(next_ - i_);
        break;
      case 'T': case 'X': case 'B': case 0x8b:  // BINSTRING, BINUNICODE, BINBYTES, LONG4
        need(5);
        next_ = at + 4 + le(at, 4);
        need(next_ - i_);
        break;
      case 0x8d: case 0x8e: case 0x96:  // BINUNICODE8, BINBYTES8, BYTEARRAY8
        need(9);
        next_ = at + 8 + le(at, 8);
        need(next_ - i_);
        break;
      case 'N': case 0x88: case 0x89: case '}': case ']': case 0x8f: case 0x97:
        break;
      default:
        return false;
    }
    stack_.push_back({VALUE, here});
    return true;
  }

  // Opcodes that combine or drop values already on the stack. False for any other opcode.
  bool transform(unsigned char op, size_t here) {
    switch (op) {
      case 'Q':  // BINPERSID: id -> object
        stack_.push_back({VALUE, pop().start});
        return true;
      case 'R': case 0x81: case 0x93:  // REDUCE, NEWOBJ, STACK_GLOBAL: 2 -> 1
        return combine(2);
      case 0x92:  // NEWOBJ_EX: 3 -> 1
        return combine(3);
      case 0x85: case 0x86: case 0x87:  // TUPLE1..3
        return combine(op - 0x84);
      case 't': case 'l': case 'd': case 0x91: case 'o':  // TUPLE, LIST, DICT, FROZENSET, OBJ
        stack_.push_back({VALUE, pop_mark()});
        return true;
      case 'a': case '0':  // APPEND, POP
        pop();
        return true;
      case 's':  // SETITEM
        pop();
        pop();
        return true;
      case 'e': case 'u': case 0x90: case '1':  // APPENDS, SETITEMS, ADDITEMS, POP_MARK
        pop_mark();
        return true;
      case '2':  // DUP
        if (stack_.empty()) fail("DUP on an empty stack");
        stack_.push_back({VALUE, here});
        return true;
      case 0x98:  // READONLY_BUFFER
        return true;
      default:
        return false;
    }
  }

  // Replaces the top `count` values by one that starts where the lowest of them did.
  bool combine(size_t count) {
    size_t start = 0;
    for (size_t k = 0; k < count; ++k) start = pop().start;
    stack_.push_back({VALUE, start});
    return true;
  }

  const std::string& pickle_;
  const size_t n_;
  std::string out_;
  std::vector<Entry> stack_;
  std::vector<Kind> memo_;  // memo index -> kind of the value stored there
  size_t memo_count_ = 0;
  size_t i_ = 0;      // the current opcode
  size_t next_ = 0;   // the opcode after it
  bool copy_ = true;  // whether the current opcode is copied to the output
};

}  // namespace

extern "C" {

// libtorch's C++ unpickler (`torch::jit::Unpickler`) was written for TorchScript's own pickles,
// and two things that every `torch.save(module.state_dict())` contains trip it:
//
// 1. it reads `collections.OrderedDict()` as None (it only expects the empty OrderedDict of a
//    tensor's backward hooks), so the state dict itself, an OrderedDict, comes out as None;
// 2. it reads BUILD (`obj.__setstate__(state)`) as TorchScript's list-building opcode, and
//    `state_dict()` sets one attribute on its OrderedDict (`_metadata`) through BUILD.
//
// This walks the pickle's opcodes (PickleRewriter), tracking an abstract stack, and rewrites
// both: each `OrderedDict` call (the class, pushed by GLOBAL or a memo get, then
// `EMPTY_TUPLE REDUCE`) becomes `EMPTY_DICT`, and each BUILD on such a dict becomes SETITEM
// under `te_build_state_key` (the key is inserted where the state's opcodes begin). The
// unpickler has no POP, hence a rewrite into a new string. Anything else passes through
// unchanged, for the unpickler to accept or reject.
static std::string te_rewrite_pickle(const std::string& pickle) {
  return PickleRewriter(pickle).run();
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

// c10's `LOG(...)` and c10d's `C10D_ERROR`/`C10D_WARNING` print below this level. Python calls
// `c10::initLogging()` at import (which reads TORCH_CPP_LOG_LEVEL); a libtorch program does not,
// so the environment variable is honoured here.
te_error te_set_cpp_log_level(int level) {
  TE_TRY
  if (std::getenv("TORCH_CPP_LOG_LEVEL") != nullptr) {
    c10::initLogging();
  } else {
    FLAGS_caffe2_log_level = level;
  }
  TE_CATCH
}
