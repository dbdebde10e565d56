// Element math of every op (docs/ops.md), forward and backward, written once for the CPU and CUDA
// backends. T is the compute type: float for half/bfloat16/float inputs, double for double.
#pragma once

#include <cmath>

#include "fastmath.h"
#include "hd.h"

namespace vae {

// exp / log1p: CUDA's expf and log1p_unit on the GPU, vectorisable fastmath for host float, libm /
// CUDA for double
VAE_HD float vexp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return fm::exp(x);
#endif
}
VAE_HD double vexp(double x) { return ::exp(x); }

#if defined(__CUDA_ARCH__)
// log(1 + x) for x in [0, 1], branch-free (log1pf branches on special cases): 2 atanh(s) with
// s = x / (2 + x) in [0, 1/3] (the approximate reciprocal and one Newton step), by the series of
// atanh to s^15 (the next term is below 2^-28 relative); about 3 ulp
__device__ __forceinline__ float log1p_unit(float x) {
  const float d = 2.0f + x;
  const float rcp = __fdividef(1.0f, d);
  float s = x * rcp;
  s = fmaf(fmaf(-s, d, x), rcp, s);
  const float w = s * s;
  float q = 1.0f / 15.0f;
  q = fmaf(q, w, 1.0f / 13.0f);
  q = fmaf(q, w, 1.0f / 11.0f);
  q = fmaf(q, w, 1.0f / 9.0f);
  q = fmaf(q, w, 1.0f / 7.0f);
  q = fmaf(q, w, 1.0f / 5.0f);
  q = fmaf(q, w, 1.0f / 3.0f);
  const float t = s + s;
  return fmaf(t, w * q, t);
}
#endif

VAE_HD float vlog1p(float x) {  // callers pass x in [0, 1]
#if defined(__CUDA_ARCH__)
  return log1p_unit(x);
#else
  return fm::log1p(x);
#endif
}
VAE_HD double vlog1p(double x) { return ::log1p(x); }

// a / b for b in [1, 2] (sigmoid): on the GPU the approximate division (2 ulp; the IEEE one has a
// slow-path call), else exact
VAE_HD float vdiv12(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
VAE_HD double vdiv12(double a, double b) { return a / b; }

constexpr double kLog2Pi = 1.8378770664093454835606594728112;  // log(2*pi)

// ---- logvar clamped to [lo, hi] (diffusers' [-30, 20]; the sampling and KL ops) ----
// NaN stays NaN; -inf / +inf bounds clamp nothing
template <class T> VAE_HD T clamp_logvar(T lv, T lo, T hi) { return lv < lo ? lo : (lv > hi ? hi : lv); }
// g times d clamp_logvar / d lv: zero outside (lo, hi) and on the bounds themselves (the
// minimum-norm subgradient, as torch.clamp's since torch 2.14; before, it passed g on the bounds)
template <class T> VAE_HD T clamp_grad(T g, T lv, T lo, T hi) {
  return (lv <= lo || lv >= hi) ? T(0) : g;
}

// ---- reparameterization: z = mu + exp(0.5*logvar) * eps ----
template <class T> VAE_HD T std_of(T logvar) { return vexp(T(0.5) * logvar); }
template <class T> VAE_HD T sample(T mu, T std, T eps) { return mu + std * eps; }
// d z / d logvar, times the incoming gradient
template <class T> VAE_HD T sample_grad_logvar(T grad_z, T std, T eps) {
  return T(0.5) * grad_z * std * eps;
}

// ---- KL(N(mu, e^logvar) || N(0, 1)); var is e^logvar (the sampling kernels pass std * std) ----
template <class T> VAE_HD T kl_std_var(T mu, T logvar, T var) {
  return T(0.5) * (mu * mu + var - T(1) - logvar);
}
template <class T> VAE_HD T kl_std(T mu, T logvar) { return kl_std_var(mu, logvar, vexp(logvar)); }
template <class T> VAE_HD void kl_std_grad_var(T g, T mu, T var, T* grad_mu, T* grad_logvar) {
  *grad_mu = g * mu;
  *grad_logvar = g * T(0.5) * (var - T(1));
}
template <class T> VAE_HD void kl_std_grad(T g, T mu, T logvar, T* grad_mu, T* grad_logvar) {
  kl_std_grad_var(g, mu, vexp(logvar), grad_mu, grad_logvar);
}

// ---- the stable forms of docs/ops.md "Numerics" ----
// d * e for e = exp(-v/2) (so that (d * e)^2 = d^2 * exp(-v)): an exact 0 when d == 0, for any v,
// where d * e would be 0 * inf = NaN once exp(-v/2) overflows (the true d^2 * exp(-v) is 0)
template <class T> VAE_HD T scaled(T d, T e) { return d == T(0) ? T(0) : d * e; }
template <class T> VAE_HD T exp_neg_half(T v) { return vexp(T(-0.5) * v); }

// ---- KL(N(mu, e^lv) || N(pmu, e^plv)) = 0.5*(plv - lv + e^(lv - plv) + (mu - pmu)^2 e^-plv - 1) ----
// e^(lv - plv), not e^lv * e^-plv (inf * 0 = NaN at lv = 100, plv = 1e4); q = (mu - pmu) e^(-plv/2)
template <class T> VAE_HD T kl(T mu, T lv, T pmu, T plv) {
  const T q = scaled(mu - pmu, exp_neg_half(plv));
  return T(0.5) * (plv - lv + vexp(lv - plv) + q * q - T(1));
}
template <class T>
VAE_HD void kl_grad(T g, T mu, T lv, T pmu, T plv, T* grad_mu, T* grad_lv, T* grad_plv) {
  const T e = exp_neg_half(plv), q = scaled(mu - pmu, e), ratio = vexp(lv - plv);
  *grad_mu = g * scaled(q, e);  // (mu - pmu) e^-plv
  *grad_lv = g * T(0.5) * (ratio - T(1));
  *grad_plv = g * T(0.5) * (T(1) - ratio - q * q);
}

// ---- Bernoulli NLL with logits: max(x, 0) - x*t + log1p(exp(-|x|)) ----
template <class T> VAE_HD T bce(T x, T t) {
  const T ax = x < T(0) ? -x : x;
  return (x > T(0) ? x : T(0)) - x * t + vlog1p(vexp(-ax));
}
template <class T> VAE_HD T sigmoid(T x) {
  const T e = vexp(x < T(0) ? x : -x);  // exp(-|x|) never overflows
  const T inv = vdiv12(T(1), T(1) + e);
  return x >= T(0) ? inv : e * inv;
}
template <class T> VAE_HD T bce_grad_logits(T g, T x, T t) { return g * (sigmoid(x) - t); }
template <class T> VAE_HD T bce_grad_target(T g, T x) { return -g * x; }

// ---- weighted: F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw) ----
// w * ((1 - t) x + (1 + (pw - 1) t) softplus(-x)) = w * (bce(x, t) + (pw - 1) t softplus(-x));
// a separate formula so that the unweighted kernels stay as they are. softplus(-x) is
// max(-x, 0) + log1p(exp(-|x|)).
template <class T> VAE_HD T softplus_neg(T x) {
  const T ax = x < T(0) ? -x : x;
  return (x < T(0) ? -x : T(0)) + vlog1p(vexp(-ax));
}
template <class T> VAE_HD T bce_w(T x, T t, T w, T pw) {
  return w * (bce(x, t) + (pw - T(1)) * t * softplus_neg(x));
}
// d/dx: w * ((sigmoid(x) - t) + (pw - 1) t (sigmoid(x) - 1)); d/dt: w * ((pw - 1) softplus(-x) - x);
// both from one exp(-|x|) (sigmoid and softplus written out to share it)
template <class T>
VAE_HD void bce_w_grad(T g, T x, T t, T w, T pw, T* grad_logits, T* grad_target) {
  const bool neg = x < T(0);
  const T ax = neg ? -x : x;
  const T e = vexp(-ax);
  const T inv = vdiv12(T(1), T(1) + e);
  const T s = neg ? e * inv : inv;
  const T sp = (neg ? ax : T(0)) + vlog1p(e);
  const T gw = g * w, pm1 = pw - T(1);
  *grad_logits = gw * ((s - t) + pm1 * t * (s - T(1)));
  *grad_target = gw * (pm1 * sp - x);
}

// ---- Gaussian NLL: 0.5*(log(2*pi) + lv + q^2), q = (t - m) * exp(-lv/2) (finite at t == m for
// any lv: (t - m)^2 * exp(-lv) is 0 * inf = NaN once exp(-lv) overflows) ----
template <class T> VAE_HD T gauss_nll(T m, T lv, T t) {
  const T q = scaled(t - m, exp_neg_half(lv));
  return T(0.5) * (T(kLog2Pi) + lv + q * q);
}
template <class T> VAE_HD void gauss_nll_grad(T g, T m, T lv, T t, T* grad_m, T* grad_lv) {
  const T e = exp_neg_half(lv), q = scaled(t - m, e);
  *grad_m = -g * scaled(q, e);  // -(t - m) e^-lv
  *grad_lv = T(0.5) * g * (T(1) - q * q);
}

// ---- latent log-densities (vae_fast/iwae.py): a * log N(z; 0, 1) + b * log N(z; mu, e^lv) ----
// a = 1, b = -1 is log p(z) - log q(z|x) of the importance weights; b = 0 needs no mu, lv (pass 0)
// (z - mu)^2 e^-lv as q^2, q = (z - mu) e^(-lv/2): finite at z == mu for any lv (docs/ops.md "Numerics")
template <class T> VAE_HD T log_density(T z, T mu, T lv, T a, T b) {
  const T q = scaled(z - mu, exp_neg_half(lv));
  return T(-0.5) * (a * (z * z + T(kLog2Pi)) + b * (T(kLog2Pi) + lv + q * q));
}
// g times its derivatives in z, mu, lv
template <class T>
VAE_HD void log_density_grad(T g, T z, T mu, T lv, T a, T b, T* grad_z, T* grad_mu, T* grad_lv) {
  const T e = exp_neg_half(lv), q = scaled(z - mu, e), r = scaled(q, e);  // r = (z - mu) / var
  *grad_z = -g * (a * z + b * r);
  *grad_mu = g * b * r;
  *grad_lv = T(-0.5) * g * b * (T(1) - q * q);
}

}  // namespace vae
