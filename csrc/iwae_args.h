// Host-side arguments of log_density(_backward) (vae_fast/iwae.py), shared by the CPU and CUDA
// kernels: z (R, C); mu and logvar (B, C), both or neither, with R a multiple of B (row r of z uses
// row r % B: the K samples of a batch share mu and logvar, never copied K times).
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

#include "csrc/args.h"

namespace vae_fast {

struct LogDensityArgs {
  at::Tensor z, mu, logvar;  // contiguous; mu, logvar undefined when absent
  at::Tensor grad;           // backward: contiguous, shaped like the forward output
  int64_t R = 0, C = 0, B = 1;
  bool has_q() const { return mu.defined(); }
};

inline LogDensityArgs log_density_args(const at::Tensor& z, const std::optional<at::Tensor>& mu,
                                       const std::optional<at::Tensor>& logvar, int64_t reduction,
                                       Backend backend, const at::Tensor* grad = nullptr) {
  check_first(z, "z", backend);
  TORCH_CHECK(z.dim() == 2, "z: expected a 2-d tensor (rows, cols), got ", z.dim(), " dims");
  check_reduction(reduction, z, "z");
  const bool has_mu = mu.has_value() && mu->defined(), has_lv = logvar.has_value() && logvar->defined();
  TORCH_CHECK(has_mu == has_lv, "mu, logvar: expected both or neither, got ",
              has_mu ? "mu without logvar" : "logvar without mu");
  LogDensityArgs a;
  a.z = z.contiguous();
  a.R = z.size(0);
  a.C = z.size(1);
  if (has_mu) {
    check_like(*mu, "mu", z, "z", /*shape=*/false);
    check_like(*logvar, "logvar", *mu, "mu");
    TORCH_CHECK(mu->dim() == 2 && mu->size(1) == a.C && mu->size(0) > 0 && a.R % mu->size(0) == 0,
                "mu: expected shape (B, ", a.C, ") with B dividing the ", a.R, " rows of z, got ",
                mu->sizes());
    a.mu = mu->contiguous();
    a.logvar = logvar->contiguous();
    a.B = mu->size(0);
  }
  a.grad = loss_grad_arg(grad, z, "z", reduction);
  return a;
}

// The outputs of log_density_backward: grad_z, and grad_mu, grad_logvar when params_grad and q is
// given (else empty tensors, docs/ops.md)
struct LogDensityGrads {
  bool params;  // grad_mu and grad_logvar are computed
  at::Tensor z, mu, logvar;
};
inline LogDensityGrads log_density_grads(const LogDensityArgs& a, bool params_grad) {
  const bool params = params_grad && a.has_q();
  auto param_grad = [&] { return params ? grad_out(a.mu) : at::empty({0}, a.z.options()); };
  return {params, grad_out(a.z), param_grad(), param_grad()};  // two tensors: outputs never alias
}

}  // namespace vae_fast
