// Element math of every op (docs/ops.md), forward and backward, written once for the CPU and CUDA
// backends. T is the compute type: float for half/bfloat16/float inputs, double for double.
#pragma once

#include <cmath>

#include "hd.h"
#if !defined(__CUDA_ARCH__)
#include "fastmath.h"
#endif

namespace vae {

// exp / log1p: libdevice on the GPU, libm for double, vectorisable fastmath for host float
VAE_HD float vexp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return fm::exp(x);
#endif
}
VAE_HD double vexp(double x) { return ::exp(x); }

VAE_HD float vlog1p(float x) {
#if defined(__CUDA_ARCH__)
  return log1pf(x);
#else
  return fm::log1p(x);  // callers pass x in [0, 1]
#endif
}
VAE_HD double vlog1p(double x) { return ::log1p(x); }

constexpr double kLog2Pi = 1.8378770664093454835606594728112;  // log(2*pi)

// ---- reparameterization: z = mu + exp(0.5*logvar) * eps ----
template <class T> VAE_HD T std_of(T logvar) { return vexp(T(0.5) * logvar); }
template <class T> VAE_HD T sample(T mu, T std, T eps) { return mu + std * eps; }
// d z / d logvar, times the incoming gradient
template <class T> VAE_HD T sample_grad_logvar(T grad_z, T std, T eps) {
  return T(0.5) * grad_z * std * eps;
}

// ---- KL(N(mu, e^logvar) || N(0, 1)) ----
template <class T> VAE_HD T kl_std(T mu, T logvar) {
  return T(0.5) * (mu * mu + vexp(logvar) - T(1) - logvar);
}
template <class T> VAE_HD void kl_std_grad(T g, T mu, T logvar, T* grad_mu, T* grad_logvar) {
  *grad_mu = g * mu;
  *grad_logvar = g * T(0.5) * (vexp(logvar) - T(1));
}

// ---- KL(N(mu, e^lv) || N(pmu, e^plv)) ----
template <class T> VAE_HD T kl(T mu, T lv, T pmu, T plv) {
  const T d = mu - pmu;
  return T(0.5) * (plv - lv + (vexp(lv) + d * d) * vexp(-plv) - T(1));
}
template <class T>
VAE_HD void kl_grad(T g, T mu, T lv, T pmu, T plv, T* grad_mu, T* grad_lv, T* grad_plv) {
  const T d = mu - pmu, inv_pvar = vexp(-plv), var = vexp(lv);
  *grad_mu = g * d * inv_pvar;
  *grad_lv = g * T(0.5) * (var * inv_pvar - T(1));
  *grad_plv = g * T(0.5) * (T(1) - (var + d * d) * inv_pvar);
}

// ---- Bernoulli NLL with logits: max(x, 0) - x*t + log1p(exp(-|x|)) ----
template <class T> VAE_HD T bce(T x, T t) {
  const T ax = x < T(0) ? -x : x;
  return (x > T(0) ? x : T(0)) - x * t + vlog1p(vexp(-ax));
}
template <class T> VAE_HD T sigmoid(T x) {
  const T e = vexp(x < T(0) ? x : -x);  // exp(-|x|) never overflows
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}
template <class T> VAE_HD T bce_grad_logits(T g, T x, T t) { return g * (sigmoid(x) - t); }
template <class T> VAE_HD T bce_grad_target(T g, T x) { return -g * x; }

// ---- Gaussian NLL: 0.5*(log(2*pi) + lv + (t - m)^2 * exp(-lv)) ----
template <class T> VAE_HD T gauss_nll(T m, T lv, T t) {
  const T d = t - m;
  return T(0.5) * (T(kLog2Pi) + lv + d * d * vexp(-lv));
}
template <class T> VAE_HD void gauss_nll_grad(T g, T m, T lv, T t, T* grad_m, T* grad_lv) {
  const T d = t - m, inv_var = vexp(-lv);
  *grad_m = -g * d * inv_var;
  *grad_lv = T(0.5) * g * (T(1) - d * d * inv_var);
}

}  // namespace vae
