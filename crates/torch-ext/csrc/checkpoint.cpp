// torch-ext checkpoint: activation checkpointing (PyTorch's `torch.utils.checkpoint`, which is
// Python and absent from libtorch's C++) as an autograd node of our own.
//
// `te_checkpoint` runs a block (a Rust closure, called through a function pointer) under
// no-grad and keeps only its inputs; the node it attaches to the output re-runs the block in
// backward with grad enabled on detached copies of the inputs, under the autocast state of the
// first run, and differentiates that recomputation with `torch::autograd::grad` with respect to
// the inputs and the block's parameters. The parameters are edges of the node, so their
// gradients reach their AccumulateGrad nodes (and DDP's Reducer hooks) through the outer
// backward pass, once per parameter, exactly as without checkpointing. The random state of the
// recomputation is the closure's business (the Rust side replays the dropout generator).
#include "common.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <memory>
#include <utility>

namespace {

using torch::autograd::Node;
using torch::autograd::variable_list;

// The Rust closure: called through `run`, freed through `drop` when its last owner goes (the
// node, when the graph is freed; or `te_checkpoint` itself when no graph is built).
struct Closure {
  te_checkpoint_run run;
  te_checkpoint_drop drop;
  void* data;

  Closure(te_checkpoint_run run, te_checkpoint_drop drop, void* data) : run(run), drop(drop), data(data) {}
  Closure(const Closure&) = delete;
  Closure& operator=(const Closure&) = delete;
  ~Closure() {
    if (drop != nullptr) drop(data);
  }

  // The block's output on `inputs`; a Rust panic comes back as a status and a message.
  at::Tensor call(const std::vector<at::Tensor>& inputs) const {
    std::vector<te_tensor> handles;
    handles.reserve(inputs.size());
    for (const auto& input : inputs) handles.push_back(const_cast<at::Tensor*>(&input));
    te_tensor out = nullptr;
    char message[1024] = {0};
    int status = run(data, handles.data(), handles.size(), &out, message, sizeof message);
    message[sizeof message - 1] = '\0';
    TORCH_CHECK(status == 0, "a checkpointed block failed: ", message);
    TORCH_CHECK(out != nullptr, "a checkpointed block returned no tensor");
    at::Tensor result = std::move(*out);
    delete out;  // the handle tch allocated with `new`, handed over by the closure
    return result;
  }
};

// The autocast settings of one thread, for CPU and CUDA.
struct AutocastState {
  bool cpu = false;
  bool cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16;
  at::ScalarType cuda_dtype = at::kHalf;

  static AutocastState current() {
    AutocastState state;
    state.cpu = at::autocast::is_autocast_enabled(at::kCPU);
    state.cuda = at::autocast::is_autocast_enabled(at::kCUDA);
    state.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    state.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    return state;
  }

  void apply() const {
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda);
  }
};

// Puts `target` in place for a scope, with the weight cache off (the recomputation must not
// leave cached casts behind), and restores what was there, also when the block throws.
struct AutocastScope {
  AutocastState saved;
  bool cache;

  explicit AutocastScope(const AutocastState& target)
      : saved(AutocastState::current()), cache(at::autocast::is_autocast_cache_enabled()) {
    target.apply();
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastScope() {
    saved.apply();
    at::autocast::set_autocast_cache_enabled(cache);
  }
};

struct CheckpointBackward : public Node {
  std::shared_ptr<Closure> closure;
  // Detached aliases of the inputs, with what the originals were at the forward pass.
  std::vector<at::Tensor> inputs;
  std::vector<bool> input_requires_grad;
  std::vector<uint32_t> input_versions;
  std::vector<at::Tensor> params;
  AutocastState autocast;

  std::string name() const override { return "CheckpointBackward"; }

  void release_variables() override {
    inputs.clear();
    params.clear();
    closure.reset();
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(closure != nullptr,
                "backward through a checkpointed block a second time: its inputs were freed after the "
                "first (pass retain_graph=true to the first backward)");
    for (size_t i = 0; i < inputs.size(); ++i) {
      TORCH_CHECK(inputs[i]._version() == input_versions[i], "input ", i,
                  " of a checkpointed block was modified in place after the forward pass: the recomputed "
                  "activations would differ");
    }
    std::vector<at::Tensor> detached;
    detached.reserve(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      at::Tensor input = inputs[i].detach();
      if (input_requires_grad[i]) input.requires_grad_(true);
      detached.push_back(std::move(input));
    }
    at::Tensor out;
    {
      at::AutoGradMode grad_mode(true);
      AutocastScope scope(autocast);
      out = closure->call(detached);
    }
    variable_list wrt;
    std::vector<size_t> slots;
    for (size_t i = 0; i < detached.size(); ++i) {
      if (input_requires_grad[i]) {
        wrt.push_back(detached[i]);
        slots.push_back(i);
      }
    }
    for (size_t j = 0; j < params.size(); ++j) {
      if (params[j].requires_grad()) {
        wrt.push_back(params[j]);
        slots.push_back(inputs.size() + j);
      }
    }
    variable_list result(inputs.size() + params.size());
    if (!wrt.empty() && out.requires_grad()) {
      at::Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(out);
      variable_list computed = torch::autograd::grad({out}, wrt, {grad}, /*retain_graph=*/false,
                                                     /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t k = 0; k < computed.size(); ++k) result[slots[k]] = std::move(computed[k]);
    }
    return result;
  }
};

}  // namespace

extern "C" {

te_error te_checkpoint(te_checkpoint_run run, te_checkpoint_drop drop, void* closure, const te_tensor* inputs,
                       size_t n_inputs, const te_tensor* params, size_t n_params, te_tensor* out) {
  // From here on the closure is ours, whatever happens.
  std::shared_ptr<Closure> owned;
  TE_TRY
  owned = std::make_shared<Closure>(run, drop, closure);
  std::vector<at::Tensor> ins = te_tensor_list(inputs, n_inputs);
  std::vector<at::Tensor> ps = te_tensor_list(params, n_params);
  bool needs_graph = at::GradMode::is_enabled();
  if (needs_graph) {
    needs_graph = std::any_of(ins.begin(), ins.end(), [](const at::Tensor& t) { return t.requires_grad(); }) ||
                  std::any_of(ps.begin(), ps.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  }
  if (!needs_graph) {
    *out = te_new_handle(owned->call(ins));
    return nullptr;
  }
  at::Tensor result;
  {
    at::NoGradGuard no_grad;
    result = owned->call(ins);
  }
  // Not a view for autograd (a block may end in a reshape that aliases): the node owns it.
  result = result.detach();
  auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  torch::autograd::edge_list edges;
  for (const auto& t : ins) edges.push_back(torch::autograd::impl::gradient_edge(t));
  for (const auto& t : ps) edges.push_back(torch::autograd::impl::gradient_edge(t));
  node->set_next_edges(std::move(edges));
  for (const auto& t : ins) {
    node->inputs.push_back(t.detach());
    node->input_requires_grad.push_back(t.requires_grad());
    node->input_versions.push_back(t._version());
  }
  node->params = ps;
  node->autocast = AutocastState::current();
  node->closure = std::move(owned);
  torch::autograd::set_history(result, node);
  *out = te_new_handle(std::move(result));
  TE_CATCH
}

}  // extern "C"
