// Autograd of the native ops (namespace vae_fast, schemas in csrc/ops.cpp), in C++: a Python
// autograd kernel (torch.library.register_autograd) costs ~4 us per call even when nothing needs a
// gradient and ~10 us to record a node; this one ~0.05 us and ~1.5 us (4x4 CPU tensors). The backward formulas are those the Triton namespace keeps in
// Python (vae_fast/_ops.py): each calls the op's fused `*_backward` op.
//
// Per call: forward-mode AD is rejected (the ops have no jvp; silent zero tangents otherwise);
// without a gradient to track, the op runs below autograd directly; otherwise a
// torch::autograd::Function records the node. The gradients it returns under create_graph=True
// raise when differentiated (double backward is not implemented; silently wrong otherwise).
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include "csrc/args.h"

namespace vae_fast {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// the backend a user picked to run on these tensors, for messages
const char* backend_of(const Tensor& x) { return x.is_cuda() ? "cuda" : "cpu"; }

bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }

void check_no_forward_ad(const char* op, std::initializer_list<const Tensor*> inputs) {
  for (const Tensor* t : inputs) {
    TORCH_CHECK(!has_tangent(*t), "vae_fast::", op,
                ": forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not supported by "
                "backend '", backend_of(*t), "'; use backend='reference'");
  }
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// torch.func transforms (grad, vjp, jacrev, vmap of a gradient) cannot run a C++ Function
void check_no_functorch(const char* op, const Tensor& x) {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return;
  try {
    tls->checkSupportsCppAutogradFunction();
  } catch (const c10::Error&) {
    TORCH_CHECK(false, "vae_fast::", op, ": torch.func transforms (grad, vjp, jacrev, ...) are not "
                "supported by backend '", backend_of(x), "'; use backend='reference' or "
                "torch.autograd.grad");
  }
}

// autograd nodes are held by c10::intrusive_ptr in recent torch, std::shared_ptr before
using NodePtr = decltype(torch::autograd::Edge::function);
template <class P, class N, class... A> P make_node(A&&... args) {
  if constexpr (std::is_same_v<P, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<N>(std::forward<A>(args)...);
  } else {
    return c10::make_intrusive<N>(std::forward<A>(args)...);
  }
}

// create_graph=True: the gradients come from fused kernels that have no derivative. They are
// returned with a node that raises when they are differentiated, whose edges lead to what they
// depend on (the output gradients and the saved inputs): so torch.autograd.grad(g, inputs) reaches
// it, not only .backward() (Python's @once_differentiable attaches fake leaves, which
// autograd.grad(..., inputs) prunes: silently wrong).
variable_list guard_double_backward(variable_list grads, const variable_list& output_grads,
                                    const variable_list& saved, const char* op, const Tensor& x) {
  if (!at::GradMode::is_enabled()) return grads;
  variable_list depends_on(output_grads);
  depends_on.insert(depends_on.end(), saved.begin(), saved.end());
  std::vector<Tensor> data;
  data.reserve(grads.size());
  for (const Tensor& g : grads) data.push_back(g.defined() ? g.tensor_data() : Tensor());
  const std::string msg = std::string("vae_fast::") + op +
                          ": double backward (create_graph=True) is not supported by backend '" +
                          backend_of(x) + "'; use backend='reference'";
  return torch::autograd::wrap_outputs(depends_on, std::move(data),
                                       [&](torch::autograd::edge_list&& e) {
                                         return make_node<NodePtr, torch::autograd::Error>(
                                             msg, std::move(e));
                                       });
}

template <class Sig> c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using TT = std::tuple<Tensor, Tensor>;
using TTT = std::tuple<Tensor, Tensor, Tensor>;
using OptT = std::optional<Tensor>;
using OptST = std::optional<at::ScalarType>;

OptT opt(const Tensor& t) { return t.defined() ? OptT(t) : OptT(); }

// the gradient of an output of out_dtype (autocast: float32) in the inputs' dtype, which the
// backward ops take (no copy when they agree)
Tensor in_dtype(const Tensor& grad, const Tensor& x) {
  return grad.scalar_type() == x.scalar_type() ? grad : grad.to(x.scalar_type());
}

using OptF = std::optional<double>;  // logvar_min, logvar_max of the sampling and KL ops

// the logvar bounds, kept for backward
void save_bounds(AutogradContext* ctx, OptF lo, OptF hi) {
  ctx->saved_data["logvar_min"] = lo;
  ctx->saved_data["logvar_max"] = hi;
}
OptF bound(AutogradContext* ctx, const char* name) { return ctx->saved_data[name].toOptional<double>(); }

// ---- the ops, called through the dispatcher (the backward ops keep their own kernels and fakes)
#define VAE_FAST_OP(fn, name, Sig)                   \
  const c10::TypedOperatorHandle<Sig>& fn() {        \
    static const auto h = op_handle<Sig>(name);      \
    return h;                                        \
  }
VAE_FAST_OP(reparameterize_op, "vae_fast::reparameterize",
            Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, OptF, OptF))
VAE_FAST_OP(reparameterize_backward_op, "vae_fast::reparameterize_backward",
            Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, OptF, OptF))
VAE_FAST_OP(sample_and_kl_op, "vae_fast::sample_and_kl",
            TT(const Tensor&, const Tensor&, const Tensor&, int64_t, OptF, OptF))
VAE_FAST_OP(sample_and_kl_backward_op, "vae_fast::sample_and_kl_backward",
            TT(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
               OptF, OptF))
VAE_FAST_OP(gaussian_kl_op, "vae_fast::gaussian_kl",
            Tensor(const Tensor&, const Tensor&, const OptT&, const OptT&, int64_t, double, OptST, OptF,
                   OptF))
VAE_FAST_OP(gaussian_kl_backward_op, "vae_fast::gaussian_kl_backward",
            TTT(const Tensor&, const Tensor&, const Tensor&, const OptT&, const OptT&, int64_t,
                double, OptF, OptF))
VAE_FAST_OP(bernoulli_nll_op, "vae_fast::bernoulli_nll",
            Tensor(const Tensor&, const Tensor&, int64_t, double, const OptT&, const OptT&, OptST))
VAE_FAST_OP(bernoulli_nll_backward_op, "vae_fast::bernoulli_nll_backward",
            TT(const Tensor&, const Tensor&, const Tensor&, int64_t, double, bool, const OptT&,
               const OptT&))
VAE_FAST_OP(gaussian_nll_op, "vae_fast::gaussian_nll",
            Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, double, OptST))
VAE_FAST_OP(gaussian_nll_backward_op, "vae_fast::gaussian_nll_backward",
            TT(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, double))
#undef VAE_FAST_OP

// Inside a Function's forward (and on the no-grad path): run the op's CPU/CUDA kernel (or, when
// tracing, its fake), not this autograd kernel again
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// ---- reparameterize: grads (mu, logvar, philox, num_samples, logvar_min, logvar_max)
struct Reparameterize : torch::autograd::Function<Reparameterize> {
  static Tensor forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                        const Tensor& philox, int64_t num_samples, OptF lo, OptF hi) {
    BelowAutograd guard;
    // the backward replays eps in mu's memory order but gets no mu: logvar goes in mu's layout
    // (a copy only when the two differ)
    ctx->save_for_backward({logvar.contiguous(walk_format(mu)), philox});
    ctx->saved_data["num_samples"] = num_samples;
    save_bounds(ctx, lo, hi);
    return reparameterize_op().call(mu, logvar, philox, num_samples, lo, hi);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &logvar = saved[0], &philox = saved[1];
    const int64_t S = ctx->saved_data["num_samples"].toInt();
    const Tensor& grad_z = grads[0];
    Tensor gmu, glv;
    {
      at::AutoGradMode no_grad(false);
      if (ctx->needs_input_grad(0)) gmu = S == 1 ? grad_z.select(0, 0) : sum_samples(grad_z, logvar);
      if (ctx->needs_input_grad(1))
        glv = reparameterize_backward_op().call(grad_z, logvar, philox, S,
                                                bound(ctx, "logvar_min"), bound(ctx, "logvar_max"));
    }
    return guard_double_backward({gmu, glv, Tensor(), Tensor(), Tensor(), Tensor()}, grads, saved,
                                 "reparameterize", logvar);
  }
};

// ---- sample_and_kl: outputs (z, kl); a missing output gradient is zeros (one fused backward)
struct SampleAndKl : torch::autograd::Function<SampleAndKl> {
  static variable_list forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                               const Tensor& philox, int64_t num_samples, OptF lo, OptF hi) {
    BelowAutograd guard;
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({mu, logvar, philox});
    ctx->saved_data["num_samples"] = num_samples;
    save_bounds(ctx, lo, hi);
    auto [z, kl] = sample_and_kl_op().call(mu, logvar, philox, num_samples, lo, hi);
    return {z, kl};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &mu = saved[0], &logvar = saved[1], &philox = saved[2];
    const int64_t S = ctx->saved_data["num_samples"].toInt();
    Tensor grad_z = grads[0], grad_kl = grads[1];
    Tensor gmu, glv;
    {
      at::AutoGradMode no_grad(false);
      if (!grad_z.defined()) {
        std::vector<int64_t> shape{S};
        shape.insert(shape.end(), mu.sizes().begin(), mu.sizes().end());
        grad_z = at::zeros(shape, mu.options());
      }
      if (!grad_kl.defined()) grad_kl = at::zeros({mu.size(0)}, mu.options());
      std::tie(gmu, glv) = sample_and_kl_backward_op().call(
          grad_z, grad_kl, mu, logvar, philox, S, bound(ctx, "logvar_min"), bound(ctx, "logvar_max"));
    }
    return guard_double_backward({gmu, glv, Tensor(), Tensor(), Tensor(), Tensor()}, grads, saved,
                                 "sample_and_kl", mu);
  }
};

// ---- gaussian_kl: grads (mu, logvar, prior_mu, prior_logvar, reduction, scale); d/d prior_mu is
// -d/d mu. An absent prior is no autograd input, so prior_logvar's input index depends on prior_mu.
struct GaussianKl : torch::autograd::Function<GaussianKl> {
  static Tensor forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                        const OptT& prior_mu, const OptT& prior_logvar, int64_t reduction,
                        double scale, OptST out_dtype, OptF lo, OptF hi) {
    BelowAutograd guard;
    ctx->save_for_backward({mu, logvar, prior_mu.value_or(Tensor()),
                            prior_logvar.value_or(Tensor())});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["scale"] = scale;
    save_bounds(ctx, lo, hi);
    return gaussian_kl_op().call(mu, logvar, prior_mu, prior_logvar, reduction, scale, out_dtype, lo,
                                 hi);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &mu = saved[0], &logvar = saved[1], &pmu = saved[2], &plv = saved[3];
    Tensor gmu, glv, gplv, gpmu;
    {
      at::AutoGradMode no_grad(false);
      std::tie(gmu, glv, gplv) = gaussian_kl_backward_op().call(
          in_dtype(grads[0], mu), mu, logvar, pmu.defined() ? OptT(pmu) : OptT(),
          plv.defined() ? OptT(plv) : OptT(), ctx->saved_data["reduction"].toInt(),
          ctx->saved_data["scale"].toDouble(), bound(ctx, "logvar_min"), bound(ctx, "logvar_max"));
      if (pmu.defined() && ctx->needs_input_grad(2)) gpmu = -gmu;
      if (!plv.defined()) gplv = Tensor();
    }
    return guard_double_backward(
        {gmu, glv, gpmu, gplv, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()}, grads, saved,
        "gaussian_kl", mu);
  }
};

// ---- bernoulli_nll: grads (logits, target, reduction, scale, weight, pos_weight, out_dtype); the
// target's only when needed; weight and pos_weight have none (as in torch: refused when asked)
struct BernoulliNll : torch::autograd::Function<BernoulliNll> {
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target,
                        int64_t reduction, double scale, const OptT& weight,
                        const OptT& pos_weight, OptST out_dtype) {
    BelowAutograd guard;
    ctx->save_for_backward({logits, target, weight.value_or(Tensor()),
                            pos_weight.value_or(Tensor())});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["scale"] = scale;
    return bernoulli_nll_op().call(logits, target, reduction, scale, weight, pos_weight, out_dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool target_grad = ctx->needs_input_grad(1);
    Tensor gl, gt;
    {
      at::AutoGradMode no_grad(false);
      std::tie(gl, gt) = bernoulli_nll_backward_op().call(
          in_dtype(grads[0], saved[0]), saved[0], saved[1], ctx->saved_data["reduction"].toInt(),
          ctx->saved_data["scale"].toDouble(), target_grad, opt(saved[2]), opt(saved[3]));
    }
    if (!target_grad) gt = Tensor();
    return guard_double_backward({gl, gt, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()}, grads,
                                 saved, "bernoulli_nll", saved[0]);
  }
};

// ---- gaussian_nll: grads (mean, logvar, target, reduction, scale); d/d target is -d/d mean
struct GaussianNll : torch::autograd::Function<GaussianNll> {
  static Tensor forward(AutogradContext* ctx, const Tensor& mean, const Tensor& logvar,
                        const Tensor& target, int64_t reduction, double scale, OptST out_dtype) {
    BelowAutograd guard;
    ctx->save_for_backward({mean, logvar, target});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["scale"] = scale;
    return gaussian_nll_op().call(mean, logvar, target, reduction, scale, out_dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    Tensor gm, glv, gt;
    {
      at::AutoGradMode no_grad(false);
      std::tie(gm, glv) = gaussian_nll_backward_op().call(
          in_dtype(grads[0], saved[0]), saved[0], saved[1], saved[2], ctx->saved_data["reduction"].toInt(),
          ctx->saved_data["scale"].toDouble());
      if (ctx->needs_input_grad(2)) gt = -gm;
    }
    return guard_double_backward({gm, glv, gt, Tensor(), Tensor(), Tensor()}, grads, saved,
                                 "gaussian_nll",
                                 saved[0]);
  }
};

// ---- the Autograd kernels
Tensor reparameterize(const Tensor& mu, const Tensor& logvar, const Tensor& philox,
                      int64_t num_samples, OptF lo, OptF hi) {
  check_no_forward_ad("reparameterize", {&mu, &logvar});
  if (!needs_grad({&mu, &logvar})) {
    BelowAutograd guard;
    return reparameterize_op().call(mu, logvar, philox, num_samples, lo, hi);
  }
  check_no_functorch("reparameterize", mu);
  return Reparameterize::apply(mu, logvar, philox, num_samples, lo, hi);
}

TT sample_and_kl(const Tensor& mu, const Tensor& logvar, const Tensor& philox,
                 int64_t num_samples, OptF lo, OptF hi) {
  check_no_forward_ad("sample_and_kl", {&mu, &logvar});
  if (!needs_grad({&mu, &logvar})) {
    BelowAutograd guard;
    return sample_and_kl_op().call(mu, logvar, philox, num_samples, lo, hi);
  }
  check_no_functorch("sample_and_kl", mu);
  auto out = SampleAndKl::apply(mu, logvar, philox, num_samples, lo, hi);
  return {out[0], out[1]};
}

Tensor gaussian_kl(const Tensor& mu, const Tensor& logvar, const OptT& prior_mu,
                   const OptT& prior_logvar, int64_t reduction, double scale, OptST out_dtype,
                   OptF lo, OptF hi) {
  const Tensor pmu = prior_mu.value_or(Tensor()), plv = prior_logvar.value_or(Tensor());
  check_no_forward_ad("gaussian_kl", {&mu, &logvar, &pmu, &plv});
  if (!needs_grad({&mu, &logvar, &pmu, &plv})) {
    BelowAutograd guard;
    return gaussian_kl_op().call(mu, logvar, prior_mu, prior_logvar, reduction, scale, out_dtype, lo,
                                 hi);
  }
  check_no_functorch("gaussian_kl", mu);
  return GaussianKl::apply(mu, logvar, prior_mu, prior_logvar, reduction, scale, out_dtype, lo, hi);
}

Tensor bernoulli_nll(const Tensor& logits, const Tensor& target, int64_t reduction, double scale,
                     const OptT& weight, const OptT& pos_weight, OptST out_dtype) {
  const Tensor w = weight.value_or(Tensor()), pw = pos_weight.value_or(Tensor());
  check_no_forward_ad("bernoulli_nll", {&logits, &target});
  if (!needs_grad({&logits, &target, &w, &pw})) {
    BelowAutograd guard;
    return bernoulli_nll_op().call(logits, target, reduction, scale, weight, pos_weight, out_dtype);
  }
  TORCH_CHECK(!(w.defined() && w.requires_grad()) && !(pw.defined() && pw.requires_grad()),
              "vae_fast::bernoulli_nll: not differentiable with respect to 'weight' / 'pos_weight' "
              "(as in torch's binary_cross_entropy_with_logits); they must not require grad");
  check_no_functorch("bernoulli_nll", logits);
  return BernoulliNll::apply(logits, target, reduction, scale, weight, pos_weight, out_dtype);
}

Tensor gaussian_nll(const Tensor& mean, const Tensor& logvar, const Tensor& target,
                    int64_t reduction, double scale, OptST out_dtype) {
  check_no_forward_ad("gaussian_nll", {&mean, &logvar, &target});
  if (!needs_grad({&mean, &logvar, &target})) {
    BelowAutograd guard;
    return gaussian_nll_op().call(mean, logvar, target, reduction, scale, out_dtype);
  }
  check_no_functorch("gaussian_nll", mean);
  return GaussianNll::apply(mean, logvar, target, reduction, scale, out_dtype);
}

}  // namespace
}  // namespace vae_fast

// The forward ops only: the *_backward ops have no derivative (see guard_double_backward).
TORCH_LIBRARY_IMPL(vae_fast, Autograd, m) {
  m.impl("reparameterize", &vae_fast::reparameterize);
  m.impl("sample_and_kl", &vae_fast::sample_and_kl);
  m.impl("gaussian_kl", &vae_fast::gaussian_kl);
  m.impl("bernoulli_nll", &vae_fast::bernoulli_nll);
  m.impl("gaussian_nll", &vae_fast::gaussian_nll);
}
