// Host-side argument preparation of every op, shared by the CPU and CUDA kernels (docs/ops.md): the
// checks of csrc/common.h in one order per op, the inputs made contiguous, the outputs allocated.
// The backend files keep only their loops / launches.
//
// `backend` adds the device check of an op's first tensor (on CUDA: a CUDA tensor; the other tensors
// must share its device). A CUDA launcher sets its device guard after this preparation: ATen guards
// .contiguous() and at::empty itself, on the device's current stream, the one the kernels use.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "csrc/common.h"

namespace vae_fast {

enum class Backend { kCpu, kCuda };

// dtype of an op's first tensor and, on the CUDA backend, its device
inline void check_first(const at::Tensor& x, const char* name, Backend backend) {
  check_float(x, name);
  TORCH_CHECK(backend != Backend::kCuda || x.is_cuda(), name, ": expected a CUDA tensor, got device ",
              x.device());
}

// The layout the loss kernels walk (they see flat memory): a channels-last first input in its own
// memory order, so that channels-last inputs give channels-last outputs and gradients without a
// copy (the batch dim stays outermost: ROWS rows are still blocks of memory); anything else
// row-major. The other tensors of the op are brought to this layout (a copy only if they differ).
// The fakes follow the same rule (vae_fast/_shapes.py memory_format).
inline at::MemoryFormat walk_format(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

// The z of the sampling ops, (S, *x.shape), each sample in x's walk_format (x: mu, or logvar in
// backward, already in that layout), so that a channels-last mu gives a channels-last z without a
// copy; the kernels see sample s at flat offset s * numel(x), as for a row-major x
inline at::Tensor sample_out(const at::Tensor& x, int64_t S) {
  const at::MemoryFormat f = walk_format(x);
  if (f == at::MemoryFormat::Contiguous) return at::empty(sample_shape(x, S), x.options());
  std::vector<int64_t> stacked = x.sizes().vec();
  stacked[0] *= S;  // S * batch samples in x's layout: dim 0 splits into (S, batch) as a view
  return at::empty(stacked, x.options().memory_format(f)).view(sample_shape(x, S));
}
// grad_z of a sampling backward op in sample_out's layout (a copy only if it is not)
inline at::Tensor in_sample_layout(const at::Tensor& t, const at::Tensor& x, int64_t S) {
  const at::MemoryFormat f = walk_format(x);
  if (f == at::MemoryFormat::Contiguous) return t.contiguous();
  if ((S == 1 || t.stride(0) == x.numel()) && t.select(0, 0).is_contiguous(f)) return t;
  return sample_out(x, S).copy_(t);
}

// grad_mu of reparameterize with S > 1 samples, sum over dim 0 of grad_z, in x's walk_format (a
// channels-last mu gets a channels-last gradient, as from the kernels; torch's sum(0) would not):
// summed in memory order, then viewed back
inline at::Tensor sum_samples(const at::Tensor& grad_z, const at::Tensor& x) {
  if (walk_format(x) == at::MemoryFormat::Contiguous) return grad_z.sum(0);
  const int64_t d = x.dim();  // grad_z: (S, batch, channels, *spatial), d + 1 dims
  std::vector<int64_t> to_last{0, 1}, back{0, d - 1};
  for (int64_t i = 3; i <= d; ++i) to_last.push_back(i);
  to_last.push_back(2);
  for (int64_t i = 1; i < d - 1; ++i) back.push_back(i);
  return grad_z.permute(to_last).sum(0).permute(back);
}

// optional prior argument: in mu's walk_format, or undefined when absent
inline at::Tensor prior_arg(const std::optional<at::Tensor>& p, const char* name,
                            const at::Tensor& mu, const char* mu_name = "mu") {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  check_like(*p, name, mu, mu_name);
  return p->contiguous(walk_format(mu));
}

// `grad` of a loss backward op (null in a forward op: undefined), checked against the forward
// output's shape, contiguous
inline at::Tensor loss_grad_arg(const at::Tensor* grad, const at::Tensor& x, const char* x_name,
                                int64_t reduction) {
  if (grad == nullptr) return at::Tensor();
  check_grad(*grad, "grad", x, x_name, reduced_shape(x, reduction));
  return reduction == kNone ? grad->contiguous(walk_format(x)) : grad->contiguous();
}

// the output of a loss forward op, shaped by the reduction, of x's dtype or `out_dtype`: float32
// for 16-bit x under autocast (vae_fast/_autocast.py); the kernels write it from their float32 math
inline at::Tensor forward_out(const at::Tensor& x, int64_t reduction,
                              std::optional<at::ScalarType> out_dtype = std::nullopt) {
  const at::ScalarType t = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(t == x.scalar_type() || (t == at::kFloat && x.element_size() == 2), "out_dtype: expected ",
              x.scalar_type(), " (of the input) or float32 for a 16-bit input, got ", t);
  if (reduction == kNone) return at::empty_like(x, x.options().dtype(t));  // x's (walk) layout
  return at::empty(reduced_shape(x, reduction), x.options().dtype(t));
}

// a gradient output shaped like x, or an empty tensor when it is not wanted (docs/ops.md)
inline at::Tensor grad_out(const at::Tensor& x, bool wanted = true) {
  return wanted ? at::empty_like(x) : at::empty({0}, x.options());  // x's (walk) layout
}

// ---- the logvar bounds of the sampling and KL ops (logvar_min, logvar_max; None: no bound) ----
struct LogvarClamp {
  bool on = false;  // any bound given
  double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();
};
inline LogvarClamp clamp_arg(std::optional<double> lo, std::optional<double> hi) {
  LogvarClamp c;
  c.on = lo.has_value() || hi.has_value();
  if (lo) c.lo = *lo;
  if (hi) c.hi = *hi;
  TORCH_CHECK(c.lo <= c.hi, "logvar_min: expected a number <= logvar_max (", c.hi, "), got ", c.lo);
  return c;
}
// ---- reparameterize / sample_and_kl ----
struct SampleArgs {
  at::Tensor mu, logvar;  // in mu's walk_format
  at::Tensor z, kl;       // outputs: (num_samples, *mu.shape) (sample_out), and the KL row sums (undefined without)
  int64_t N, R;           // elements of mu; rows of the KL (1 without)
  LogvarClamp clamp;      // applied inside the kernels (kernels/vae_math.h clamp_logvar)
};
inline SampleArgs sample_args(const at::Tensor& mu, const at::Tensor& logvar,
                              const at::Tensor& philox, int64_t num_samples, bool with_kl,
                              Backend backend, std::optional<double> lo, std::optional<double> hi) {
  check_first(mu, "mu", backend);
  check_like(logvar, "logvar", mu, "mu");
  check_philox(philox, mu);
  check_samples(num_samples);
  SampleArgs a;
  a.clamp = clamp_arg(lo, hi);
  a.mu = mu.contiguous(walk_format(mu));
  a.logvar = logvar.contiguous(walk_format(mu));
  a.N = a.mu.numel();
  a.R = with_kl ? rows_of(a.mu) : 1;
  a.z = sample_out(a.mu, num_samples);
  if (with_kl) a.kl = at::empty({a.R}, a.mu.options());
  return a;
}

// ---- reparameterize_backward (mu, grad_kl null) / sample_and_kl_backward ----
struct SampleGradArgs {
  at::Tensor grad_z, logvar, mu, grad_kl;  // in the forward's layout: mu's walk_format, or logvar's
                                           // without mu (grad_z: sample_out's, grad_kl: contiguous);
                                           // mu, grad_kl undefined without the KL
  at::Tensor grad_mu, grad_logvar;         // outputs; grad_mu undefined without the KL
  int64_t N, R;                            // elements of logvar; rows of grad_kl (1 without)
  LogvarClamp clamp;                       // applied inside the kernels, with clamp_grad
};
inline SampleGradArgs sample_grad_args(const at::Tensor& grad_z, const at::Tensor* grad_kl,
                                       const at::Tensor* mu, const at::Tensor& logvar,
                                       const at::Tensor& philox, int64_t num_samples,
                                       Backend backend, std::optional<double> lo,
                                       std::optional<double> hi) {
  if (mu) check_float(*mu, "mu");
  check_first(logvar, "logvar", backend);
  check_samples(num_samples);
  check_philox(philox, logvar);
  check_grad(grad_z, "grad_z", logvar, "logvar", sample_shape(logvar, num_samples));
  SampleGradArgs a;
  a.R = 1;
  // eps is replayed in the forward's order, mu's memory order (docs/rng.md): reparameterize_backward
  // has no mu, and its autograd passes logvar already in mu's layout
  const at::MemoryFormat fmt = walk_format(mu ? *mu : logvar);
  if (mu) {
    check_like(*mu, "mu", logvar, "logvar");
    a.R = rows_of(*mu);
    check_grad(*grad_kl, "grad_kl", logvar, "logvar", {a.R});
    a.mu = mu->contiguous(fmt);
    a.grad_kl = grad_kl->contiguous();
  }
  a.logvar = logvar.contiguous(fmt);
  a.grad_z = in_sample_layout(grad_z, a.logvar, num_samples);
  a.clamp = clamp_arg(lo, hi);
  a.N = a.logvar.numel();
  a.grad_logvar = grad_out(a.logvar);
  if (mu) a.grad_mu = grad_out(a.logvar);
  return a;
}

// The four sampling ops of a backend from its two sampling functions, which fill the outputs:
//   Sample(const SampleArgs&, philox, num_samples): z (and kl when defined)
//   SampleGrad(const SampleGradArgs&, philox, num_samples): grad_logvar (and grad_mu when defined)
using OptF = std::optional<double>;
template <Backend B, auto Sample, auto SampleGrad> struct SamplingOps {
  static at::Tensor reparameterize(const at::Tensor& mu, const at::Tensor& logvar,
                                   const at::Tensor& philox, int64_t num_samples, OptF lo,
                                   OptF hi) {
    const SampleArgs a = sample_args(mu, logvar, philox, num_samples, false, B, lo, hi);
    Sample(a, philox, num_samples);
    return a.z;
  }
  static std::tuple<at::Tensor, at::Tensor> sample_and_kl(const at::Tensor& mu,
                                                          const at::Tensor& logvar,
                                                          const at::Tensor& philox,
                                                          int64_t num_samples, OptF lo, OptF hi) {
    const SampleArgs a = sample_args(mu, logvar, philox, num_samples, true, B, lo, hi);
    Sample(a, philox, num_samples);
    return {a.z, a.kl};
  }
  static at::Tensor reparameterize_backward(const at::Tensor& grad_z, const at::Tensor& logvar,
                                            const at::Tensor& philox, int64_t num_samples,
                                            OptF lo, OptF hi) {
    const SampleGradArgs a =
        sample_grad_args(grad_z, nullptr, nullptr, logvar, philox, num_samples, B, lo, hi);
    SampleGrad(a, philox, num_samples);
    return a.grad_logvar;
  }
  static std::tuple<at::Tensor, at::Tensor> sample_and_kl_backward(
      const at::Tensor& grad_z, const at::Tensor& grad_kl, const at::Tensor& mu,
      const at::Tensor& logvar, const at::Tensor& philox, int64_t num_samples, OptF lo,
      OptF hi) {
    const SampleGradArgs a =
        sample_grad_args(grad_z, &grad_kl, &mu, logvar, philox, num_samples, B, lo, hi);
    SampleGrad(a, philox, num_samples);
    return {a.grad_mu, a.grad_logvar};
  }
};

// ---- gaussian_kl(_backward) ----
struct KlArgs {
  at::Tensor mu, logvar, prior_mu, prior_logvar;  // contiguous; an absent prior is undefined
  at::Tensor grad;                                // backward ops
  LogvarClamp clamp;  // of logvar (not of prior_logvar), applied inside the kernels
  bool has_prior() const { return prior_mu.defined() || prior_logvar.defined(); }
};
inline KlArgs kl_args(const at::Tensor& mu, const at::Tensor& logvar,
                      const std::optional<at::Tensor>& prior_mu,
                      const std::optional<at::Tensor>& prior_logvar, int64_t reduction,
                      Backend backend, std::optional<double> lo, std::optional<double> hi,
                      const at::Tensor* grad = nullptr) {
  check_first(mu, "mu", backend);
  check_like(logvar, "logvar", mu, "mu");
  check_reduction(reduction, mu, "mu");
  KlArgs a;
  a.grad = loss_grad_arg(grad, mu, "mu", reduction);
  a.prior_mu = prior_arg(prior_mu, "prior_mu", mu);
  a.prior_logvar = prior_arg(prior_logvar, "prior_logvar", mu);
  a.mu = mu.contiguous(walk_format(mu));
  a.logvar = logvar.contiguous(walk_format(mu));
  a.clamp = clamp_arg(lo, hi);
  return a;
}

// ---- bernoulli_nll(_backward) ----
struct BceArgs {
  at::Tensor logits, target, grad;  // contiguous; grad: backward ops
  // contiguous, full size (an expanded view is copied: the kernels read every element at its flat
  // index); undefined when absent
  at::Tensor weight, pos_weight;
  bool weighted() const { return weight.defined() || pos_weight.defined(); }
};
inline BceArgs bce_args(const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                        Backend backend, const at::Tensor* grad = nullptr,
                        const std::optional<at::Tensor>& weight = std::nullopt,
                        const std::optional<at::Tensor>& pos_weight = std::nullopt) {
  check_first(logits, "logits", backend);
  check_like(target, "target", logits, "logits");
  check_reduction(reduction, logits, "logits");
  at::Tensor g = loss_grad_arg(grad, logits, "logits", reduction);
  const at::MemoryFormat f = walk_format(logits);
  return {logits.contiguous(f), target.contiguous(f), g, prior_arg(weight, "weight", logits, "logits"),
          prior_arg(pos_weight, "pos_weight", logits, "logits")};
}

// ---- gaussian_nll(_backward) ----
struct GnllArgs {
  at::Tensor mean, logvar, target, grad;  // contiguous; grad: backward ops
};
inline GnllArgs gnll_args(const at::Tensor& mean, const at::Tensor& logvar,
                          const at::Tensor& target, int64_t reduction, Backend backend,
                          const at::Tensor* grad = nullptr) {
  check_first(mean, "mean", backend);
  check_like(logvar, "logvar", mean, "mean");
  check_like(target, "target", mean, "mean");
  check_reduction(reduction, mean, "mean");
  at::Tensor g = loss_grad_arg(grad, mean, "mean", reduction);
  const at::MemoryFormat f = walk_format(mean);
  return {mean.contiguous(f), logvar.contiguous(f), target.contiguous(f), g};
}

}  // namespace vae_fast

// The body of a backend's TORCH_LIBRARY_IMPL(vae_fast, <key>, m): its op functions (of these names,
// with `Sampling` its SamplingOps) for the schemas of csrc/ops.cpp.
#define VAE_FAST_IMPL_OPS(m)                                                  \
  m.impl("reparameterize", &Sampling::reparameterize);                        \
  m.impl("reparameterize_backward", &Sampling::reparameterize_backward);      \
  m.impl("sample_and_kl", &Sampling::sample_and_kl);                          \
  m.impl("sample_and_kl_backward", &Sampling::sample_and_kl_backward);        \
  m.impl("gaussian_kl", &gaussian_kl);                                        \
  m.impl("gaussian_kl_backward", &gaussian_kl_backward);                      \
  m.impl("bernoulli_nll", &bernoulli_nll);                                    \
  m.impl("bernoulli_nll_backward", &bernoulli_nll_backward);                  \
  m.impl("gaussian_nll", &gaussian_nll);                                      \
  m.impl("gaussian_nll_backward", &gaussian_nll_backward)
