// CPU kernels of every vae_fast op (docs/ops.md).
//
// Layout of the work: the flat element range is cut into blocks of at most kBlock elements that
// never straddle a row of the ROWS reduction (a block holds whole rows, or one piece of a row), and
// at::parallel_for hands out runs of blocks. Each block converts its inputs to the compute type
// (float, or double for double), runs the element math of kernels/ over plain arrays, then stores
// or sums. Sums: per block in the compute type, across blocks in double, always in the same order,
// so results do not depend on the number of threads.
//
// The array loops are compiled three times (AVX-512, AVX2+FMA, baseline x86-64; GCC picks one at
// load time) and call the branch-free float math of kernels/fastmath.h so that they vectorise.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "csrc/args.h"
#include "kernels/philox.h"
#include "kernels/philox_x86.h"
#include "kernels/vae_math.h"

// x86-64-v3 (AVX2 + FMA; GCC >= 12 dispatches it by CPU features) makes fm::fma an FMA, so the
// RNG's log is the GPU's bit for bit (docs/rng.md); GCC 11 gets AVX2 without FMA.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 12
#define VAE_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define VAE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define VAE_CLONES
#endif

namespace vae_fast {
namespace {

constexpr int64_t kBlock = 1024;      // elements per block: the block buffers stay in L1
constexpr int64_t kTaskBlocks = 16;   // at least this many blocks per parallel task

// ---------------------------------------------------------------------------------------------
// Array loops over the compute type T (float or double). Each is one formula of kernels/ applied
// elementwise; n <= kBlock.

// 2: AVX-512, 1: AVX2, 0: scalar Philox. VAE_FAST_CPU_ISA=avx2|scalar picks a lower one (tests).
int philox_isa() {
#if defined(VAE_HAVE_PHILOX_X86)
  static const int isa = [] {
    const int best = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    const char* force = std::getenv("VAE_FAST_CPU_ISA");
    if (force && std::strcmp(force, "avx2") == 0) return std::min(best, 1);
    if (force && std::strcmp(force, "scalar") == 0) return 0;
    return best;
  }();
  return isa;
#else
  return 0;
#endif
}

// Philox words of counters first .. first+n-1 into w[0..3][0..n)
void philox_words(uint64_t seed, uint64_t first, int64_t n, uint32_t* const w[4]) {
#if defined(VAE_HAVE_PHILOX_X86)
  const int isa = philox_isa();
  if (isa == 2) return vae::x86::philox_words_avx512(seed, first, n, w);
  if (isa == 1) return vae::x86::philox_words_avx2(seed, first, n, w);
#endif
  for (int64_t g = 0; g < n; ++g) {
    const vae::Philox4 p = vae::philox_words(seed, first, static_cast<uint64_t>(g));
    for (int k = 0; k < 4; ++k) w[k][g] = p.x[k];
  }
}

// tl.randn4x of n groups from their words, interleaved: out[4g + k] is normal k of group g
VAE_CLONES void normals_of_words(const uint32_t* w0, const uint32_t* w1, const uint32_t* w2,
                                 const uint32_t* w3, int64_t n, float* out) {
  for (int64_t g = 0; g < n; ++g) {
    vae::box_muller(vae::uint_to_uniform(w0[g]), vae::uint_to_uniform(w1[g]), &out[4 * g],
                    &out[4 * g + 1]);
    vae::box_muller(vae::uint_to_uniform(w2[g]), vae::uint_to_uniform(w3[g]), &out[4 * g + 2],
                    &out[4 * g + 3]);
  }
}

// eps of flat elements [i0, i0 + n) of the RNG contract (docs/rng.md); n <= kBlock
void fill_eps(float* out, uint64_t seed, uint64_t offset, int64_t i0, int64_t n) {
  constexpr int64_t kGroups = kBlock / 4 + 2;
  alignas(64) uint32_t words[4][kGroups];
  alignas(64) float normals[4 * kGroups];
  uint32_t* const w[4] = {words[0], words[1], words[2], words[3]};
  const int64_t g0 = i0 >> 2;
  const int64_t ng = ((i0 + n + 3) >> 2) - g0;
  philox_words(seed, offset + static_cast<uint64_t>(g0), ng, w);
  normals_of_words(w[0], w[1], w[2], w[3], ng, normals);
  std::memcpy(out, normals + (i0 - 4 * g0), n * sizeof(float));
}

template <class T> VAE_CLONES T sum(const T* v, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return s;
}

// __restrict__ on the element loops: their outputs never alias their inputs (the callers' blocks and
// buffers; clamp_loop, which may run in place, has none). Without it GCC's runtime alias checks give
// up past ~10 array pairs and the backward loops stayed scalar (8-20x slower than their forwards).
template <class T> VAE_CLONES void std_loop(const T* __restrict__ lv, T* __restrict__ sd,
                                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) sd[i] = vae::std_of(lv[i]);
}

template <class T>
VAE_CLONES void sample_loop(const T* __restrict__ mu, const T* __restrict__ sd,
                            const float* __restrict__ eps, T* __restrict__ z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = vae::sample(mu[i], sd[i], static_cast<T>(eps[i]));
}

// grad_logvar += d z / d logvar * grad_z (one sample's share)
template <class T>
VAE_CLONES void sample_grad_loop(const T* __restrict__ gz, const T* __restrict__ sd,
                                 const float* __restrict__ eps, T* __restrict__ glv, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    glv[i] += vae::sample_grad_logvar(gz[i], sd[i], static_cast<T>(eps[i]));
}

template <class T> VAE_CLONES void add_loop(const T* __restrict__ a, T* __restrict__ acc,
                                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += a[i];
}

// logvar clamped to [lo, hi] (out may be lv), and a gradient zeroed where lv was outside
template <class T> VAE_CLONES void clamp_loop(const T* lv, T* out, int64_t n, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::clamp_logvar(lv[i], lo, hi);
}
template <class T> VAE_CLONES void clamp_grad_loop(T* g, const T* lv, int64_t n, T lo, T hi) {
  for (int64_t i = 0; i < n; ++i) g[i] = vae::clamp_grad(g[i], lv[i], lo, hi);
}

template <class T> VAE_CLONES void kl_std_loop(const T* __restrict__ mu, const T* __restrict__ lv,
                                               T* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::kl_std(mu[i], lv[i]);
}

template <class T>
VAE_CLONES void kl_std_grad_loop(const T* __restrict__ g, const T* __restrict__ mu,
                                 const T* __restrict__ lv, T* __restrict__ gmu, T* __restrict__ glv,
                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) vae::kl_std_grad(g[i], mu[i], lv[i], &gmu[i], &glv[i]);
}

template <class T>
VAE_CLONES void kl_loop(const T* __restrict__ mu, const T* __restrict__ lv,
                        const T* __restrict__ pmu, const T* __restrict__ plv, T* __restrict__ out,
                        int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::kl(mu[i], lv[i], pmu[i], plv[i]);
}

template <class T>
VAE_CLONES void kl_grad_loop(const T* __restrict__ g, const T* __restrict__ mu,
                             const T* __restrict__ lv, const T* __restrict__ pmu,
                             const T* __restrict__ plv,
                             T* __restrict__ gmu, T* __restrict__ glv, T* __restrict__ gplv,
                             int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    vae::kl_grad(g[i], mu[i], lv[i], pmu[i], plv[i], &gmu[i], &glv[i], &gplv[i]);
}

template <class T> VAE_CLONES void bce_loop(const T* __restrict__ x, const T* __restrict__ t,
                                            T* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::bce(x[i], t[i]);
}

template <class T>
VAE_CLONES void bce_grad_loop(const T* __restrict__ g, const T* __restrict__ x,
                              const T* __restrict__ t, T* __restrict__ gx, T* __restrict__ gt,
                              int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = vae::bce_grad_logits(g[i], x[i], t[i]);
  if (gt)
    for (int64_t i = 0; i < n; ++i) gt[i] = vae::bce_grad_target(g[i], x[i]);
}

// weighted (weight / pos_weight: ones when absent)
template <class T>
VAE_CLONES void bce_w_loop(const T* __restrict__ x, const T* __restrict__ t,
                           const T* __restrict__ w,
                           const T* __restrict__ pw, T* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::bce_w(x[i], t[i], w[i], pw[i]);
}

template <class T>
VAE_CLONES void bce_w_grad_loop(const T* __restrict__ g, const T* __restrict__ x,
                                const T* __restrict__ t, const T* __restrict__ w,
                                const T* __restrict__ pw, T* __restrict__ gx,
                                T* __restrict__ gt, int64_t n) {
  if (gt) {
    for (int64_t i = 0; i < n; ++i) vae::bce_w_grad(g[i], x[i], t[i], w[i], pw[i], &gx[i], &gt[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      T unused;  // the target's gradient, not wanted: a dead store the compiler drops
      vae::bce_w_grad(g[i], x[i], t[i], w[i], pw[i], &gx[i], &unused);
    }
  }
}

template <class T>
VAE_CLONES void gnll_loop(const T* __restrict__ m, const T* __restrict__ lv,
                          const T* __restrict__ t,
                          T* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::gauss_nll(m[i], lv[i], t[i]);
}

template <class T>
VAE_CLONES void gnll_grad_loop(const T* __restrict__ g, const T* __restrict__ m,
                               const T* __restrict__ lv, const T* __restrict__ t,
                               T* __restrict__ gm,
                               T* __restrict__ glv,
                               int64_t n) {
  for (int64_t i = 0; i < n; ++i) vae::gauss_nll_grad(g[i], m[i], lv[i], t[i], &gm[i], &glv[i]);
}

// ---------------------------------------------------------------------------------------------
// Block plumbing: conversion between the storage type S and the compute type T.

// inputs [p, p + n) as T: the pointer itself when S is T, else converted into buf
template <class T, class S> const T* load(const S* p, int64_t n, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    return p;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(p[i]);
    return buf;
  }
}
// where to compute an output block: in place when S is T, else in buf (then call flush)
template <class T, class S> T* out_ptr(S* p, T* buf) {
  if constexpr (std::is_same_v<S, T>) return p; else return buf;
}
template <class T, class S> void flush(S* p, const T* v, int64_t n) {
  if constexpr (!std::is_same_v<S, T>)
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<S>(v[i]);
}

// Runs block(begin, n, vals) over the elements [0, R*C) of R rows of C, in blocks that never
// straddle a row. With sums, block must write its n element terms into vals (kBlock of T), and
// sums[r] receives the sum over row r; without, vals is a null pointer.
template <class T, class Block>
void for_blocks(int64_t R, int64_t C, double* sums, const Block& block) {
  if (R == 0) return;
  if (C == 0) {
    if (sums) std::fill(sums, sums + R, 0.0);
    return;
  }
  if (C <= kBlock) {  // blocks of whole rows
    const int64_t G = kBlock / C, nblocks = (R + G - 1) / G;
    at::parallel_for(0, nblocks, kTaskBlocks, [&](int64_t b0, int64_t b1) {
      alignas(64) T vals[kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * G, r1 = std::min(R, r0 + G);
        block(r0 * C, (r1 - r0) * C, sums ? vals : nullptr);
        if (sums)
          for (int64_t r = r0; r < r1; ++r) sums[r] = sum(vals + (r - r0) * C, C);
      }
    });
    return;
  }
  const int64_t P = (C + kBlock - 1) / kBlock;  // pieces of a row
  std::vector<double> part(sums ? R * P : 0);
  at::parallel_for(0, R * P, kTaskBlocks, [&](int64_t q0, int64_t q1) {
    alignas(64) T vals[kBlock];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r = q / P, p = q % P, n = std::min(kBlock, C - p * kBlock);
      block(r * C + p * kBlock, n, sums ? vals : nullptr);
      if (sums) part[q] = sum(vals, n);
    }
  });
  if (sums)
    for (int64_t r = 0; r < R; ++r) {
      double s = 0;
      for (int64_t p = 0; p < P; ++p) s += part[r * P + p];
      sums[r] = s;
    }
}

// per-row values v[r] broadcast to the elements [begin, begin + n) of rows of C
template <class T, class S>
void broadcast_rows(const S* v, double scale, int64_t C, int64_t begin, int64_t n, T* out) {
  for (int64_t k = 0; k < n;) {
    const int64_t r = (begin + k) / C, end = std::min(n, (r + 1) * C - begin);
    const T val = static_cast<T>(static_cast<T>(v[r]) * scale);
    std::fill(out + k, out + end, val);
    k = end;
  }
}

// g of the backward formulas for elements [begin, begin + n): grad[i] (NONE), scale*grad (SUM),
// scale*grad[row] (ROWS)
template <class T, class S>
const T* grad_block(const S* grad, int64_t reduction, double scale, int64_t C, int64_t begin,
                    int64_t n, T* buf) {
  if (reduction == kNone) return load(grad + begin, n, buf);
  if (reduction == kSum) {
    std::fill(buf, buf + n, static_cast<T>(static_cast<T>(grad[0]) * scale));
    return buf;
  }
  broadcast_rows(grad, scale, C, begin, n, buf);
  return buf;
}

// The forward of an elementwise loss into `out` of storage type O (the input's S, or float for a
// 16-bit S: out_dtype): terms(begin, n, out) writes the terms of elements [begin, begin + n) as T.
template <class S, class O, class Terms>
void reduce_into(const at::Tensor& out, const at::Tensor& x, int64_t reduction, double scale,
                 const Terms& terms) {
  using T = at::opmath_type<S>;
  const int64_t n = x.numel();
  O* o = out.data_ptr<O>();
  if (reduction == kNone) {
    for_blocks<T>(1, n, nullptr, [&](int64_t b, int64_t len, T*) {
      alignas(64) T buf[kBlock];
      T* v = out_ptr(o + b, buf);
      terms(b, len, v);
      flush(o + b, v, len);
    });
    return;
  }
  const int64_t R = reduction == kRows ? rows_of(x) : 1;
  std::vector<double> sums(R, 0.0);
  for_blocks<T>(R, R ? n / R : 0, sums.data(),
                [&](int64_t b, int64_t len, T* vals) { terms(b, len, vals); });
  for (int64_t r = 0; r < R; ++r) o[r] = static_cast<O>(static_cast<T>(sums[r] * scale));
}

// ... shaped by the reduction (docs/ops.md), of x's dtype or out_dtype
template <class S, class Terms>
at::Tensor reduce_forward(const at::Tensor& x, int64_t reduction, double scale, const Terms& terms,
                          std::optional<at::ScalarType> out_dtype = std::nullopt) {
  at::Tensor out = forward_out(x, reduction, out_dtype);
  if constexpr (sizeof(S) == 2) {
    if (out.scalar_type() == at::kFloat) {
      reduce_into<S, float>(out, x, reduction, scale, terms);
      return out;
    }
  }
  reduce_into<S, S>(out, x, reduction, scale, terms);
  return out;
}

// C of the rows a backward op's g follows (any value for NONE / SUM)
int64_t row_len(const at::Tensor& x, int64_t reduction) {
  const int64_t R = rows_of(x);
  return reduction == kRows && R > 0 ? x.numel() / R : std::max<int64_t>(x.numel(), 1);
}

struct PhiloxState {
  uint64_t seed, offset;
};
PhiloxState read_philox(const at::Tensor& philox) {
  const at::Tensor p = philox.contiguous();
  const int64_t* d = p.data_ptr<int64_t>();
  return {static_cast<uint64_t>(d[0]), static_cast<uint64_t>(d[1])};
}

#define VAE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// ---------------------------------------------------------------------------------------------
// Ops

// z and (with kl) the KL row sums; one pass over mu/logvar, num_samples passes over z
void sample(const SampleArgs& a, const at::Tensor& philox, int64_t num_samples) {
  const PhiloxState st = read_philox(philox);
  const int64_t N = a.N, R = a.R;
  const bool with_kl = a.kl.defined();
  VAE_DISPATCH(a.mu.scalar_type(), "vae_fast.sample", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pm = a.mu.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    scalar_t* pz = a.z.data_ptr<scalar_t>();
    const bool clamp = a.clamp.on;
    const T lo = static_cast<T>(a.clamp.lo), hi = static_cast<T>(a.clamp.hi);
    std::vector<double> sums(with_kl ? R : 0, 0.0);
    for_blocks<T>(R, R ? N / R : 0, with_kl ? sums.data() : nullptr,
                  [&](int64_t b, int64_t n, T* vals) {
      alignas(64) T bm[kBlock], bl[kBlock], sd[kBlock], bz[kBlock];
      alignas(64) float eps[kBlock];
      const T* m = load(pm + b, n, bm);
      const T* l = load(pl + b, n, bl);
      if (clamp) l = (clamp_loop(l, bl, n, lo, hi), bl);
      std_loop(l, sd, n);
      if (vals) kl_std_loop(m, l, vals, n);
      for (int64_t s = 0; s < num_samples; ++s) {
        fill_eps(eps, st.seed, st.offset, s * N + b, n);
        T* out = out_ptr(pz + s * N + b, bz);
        sample_loop(m, sd, eps, out, n);
        flush(pz + s * N + b, out, n);
      }
    });
    if (with_kl) {
      scalar_t* pk = a.kl.data_ptr<scalar_t>();
      for (int64_t r = 0; r < R; ++r) pk[r] = static_cast<scalar_t>(static_cast<T>(sums[r]));
    }
  });
}

// grad_logvar (and with grad_kl, grad_mu) of the sampling ops, replaying eps from philox
void sample_backward(const SampleGradArgs& a, const at::Tensor& philox, int64_t num_samples) {
  const PhiloxState st = read_philox(philox);
  const int64_t N = a.N, R = a.R;
  const bool with_kl = a.mu.defined();
  VAE_DISPATCH(a.logvar.scalar_type(), "vae_fast.sample_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pgz = a.grad_z.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    const scalar_t* pm = with_kl ? a.mu.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pgk = with_kl ? a.grad_kl.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgl = a.grad_logvar.data_ptr<scalar_t>();
    scalar_t* pgm = with_kl ? a.grad_mu.data_ptr<scalar_t>() : nullptr;
    const int64_t C = R ? N / R : 0;
    const bool clamp = a.clamp.on;
    const T lo = static_cast<T>(a.clamp.lo), hi = static_cast<T>(a.clamp.hi);
    for_blocks<T>(R, C, nullptr, [&](int64_t b, int64_t n, T*) {
      alignas(64) T bl[kBlock], bm[kBlock], bg[kBlock], sd[kBlock], gm[kBlock], gl[kBlock];
      alignas(64) T bc[kBlock];
      alignas(64) float eps[kBlock];
      const T* raw = load(pl + b, n, bl);
      const T* l = clamp ? (clamp_loop(raw, bc, n, lo, hi), bc) : raw;
      std_loop(l, sd, n);
      T* glv = out_ptr(pgl + b, gl);
      T* gmu = pm ? out_ptr(pgm + b, gm) : nullptr;
      if (pm) {  // start from the KL terms: grad_kl[row] * d kl / d (mu, logvar)
        broadcast_rows(pgk, 1.0, C, b, n, bg);
        kl_std_grad_loop(static_cast<const T*>(bg), load(pm + b, n, bm), l, gmu, glv, n);
      } else {
        std::fill(glv, glv + n, T(0));
      }
      for (int64_t s = 0; s < num_samples; ++s) {
        fill_eps(eps, st.seed, st.offset, s * N + b, n);
        const T* gz = load(pgz + s * N + b, n, bg);
        sample_grad_loop(gz, sd, eps, glv, n);
        if (pm) add_loop(gz, gmu, n);  // grad_mu = sum_s grad_z + ...
      }
      if (clamp) clamp_grad_loop(glv, raw, n, lo, hi);
      flush(pgl + b, glv, n);
      if (pm) flush(pgm + b, gmu, n);
    });
  });
}

using Sampling = SamplingOps<Backend::kCpu, sample, sample_backward>;

at::Tensor gaussian_kl(const at::Tensor& mu, const at::Tensor& logvar,
                       const std::optional<at::Tensor>& prior_mu,
                       const std::optional<at::Tensor>& prior_logvar, int64_t reduction,
                       double scale, std::optional<at::ScalarType> out_dtype,
                       std::optional<double> logvar_min, std::optional<double> logvar_max) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCpu,
                           logvar_min, logvar_max);
  at::Tensor out;
  VAE_DISPATCH(a.mu.scalar_type(), "vae_fast.gaussian_kl", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pm = a.mu.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    const scalar_t* ppm = a.prior_mu.defined() ? a.prior_mu.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ppl = a.prior_logvar.defined() ? a.prior_logvar.data_ptr<scalar_t>() : nullptr;
    const bool clamp = a.clamp.on;
    const T lo = static_cast<T>(a.clamp.lo), hi = static_cast<T>(a.clamp.hi);
    out = reduce_forward<scalar_t>(a.mu, reduction, scale, [&](int64_t b, int64_t n, T* v) {
      alignas(64) T bm[kBlock], bl[kBlock], bpm[kBlock], bpl[kBlock];
      const T* m = load(pm + b, n, bm);
      const T* l = load(pl + b, n, bl);
      if (clamp) l = (clamp_loop(l, bl, n, lo, hi), bl);
      if (!ppm && !ppl) return kl_std_loop(m, l, v, n);
      const T* pmv = ppm ? load(ppm + b, n, bpm) : (std::fill(bpm, bpm + n, T(0)), bpm);
      const T* plvv = ppl ? load(ppl + b, n, bpl) : (std::fill(bpl, bpl + n, T(0)), bpl);
      kl_loop(m, l, pmv, plvv, v, n);
    }, out_dtype);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    int64_t reduction, double scale, std::optional<double> logvar_min,
    std::optional<double> logvar_max) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCpu,
                           logvar_min, logvar_max, &grad);
  at::Tensor gmu = grad_out(a.mu), glv = grad_out(a.mu);
  at::Tensor gplv = grad_out(a.mu, a.prior_logvar.defined());
  const int64_t C = row_len(a.mu, reduction);
  VAE_DISPATCH(a.mu.scalar_type(), "vae_fast.gaussian_kl_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = a.grad.data_ptr<scalar_t>();
    const scalar_t* pm = a.mu.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    const scalar_t* ppm = a.prior_mu.defined() ? a.prior_mu.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ppl = a.prior_logvar.defined() ? a.prior_logvar.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgm = gmu.data_ptr<scalar_t>();
    scalar_t* pgl = glv.data_ptr<scalar_t>();
    scalar_t* pgp = ppl ? gplv.data_ptr<scalar_t>() : nullptr;
    const int64_t numel = a.mu.numel();
    const bool clamp = a.clamp.on;
    const T lo = static_cast<T>(a.clamp.lo), hi = static_cast<T>(a.clamp.hi);
    for_blocks<T>(numel ? numel / C : 0, C, nullptr, [&](int64_t b, int64_t n, T*) {
      alignas(64) T bg[kBlock], bm[kBlock], bl[kBlock], bpm[kBlock], bpl[kBlock];
      alignas(64) T om[kBlock], ol[kBlock], op[kBlock], bc[kBlock];
      const T* g = grad_block(pg, reduction, scale, C, b, n, bg);
      const T* m = load(pm + b, n, bm);
      const T* raw = load(pl + b, n, bl);
      const T* l = clamp ? (clamp_loop(raw, bc, n, lo, hi), bc) : raw;
      T* gm = out_ptr(pgm + b, om);
      T* gl = out_ptr(pgl + b, ol);
      if (!ppm && !ppl) {
        kl_std_grad_loop(g, m, l, gm, gl, n);
      } else {
        const T* pmv = ppm ? load(ppm + b, n, bpm) : (std::fill(bpm, bpm + n, T(0)), bpm);
        const T* plvv = ppl ? load(ppl + b, n, bpl) : (std::fill(bpl, bpl + n, T(0)), bpl);
        T* gp = pgp ? out_ptr(pgp + b, op) : op;  // scratch when prior_logvar is absent
        kl_grad_loop(g, m, l, pmv, plvv, gm, gl, gp, n);
        if (pgp) flush(pgp + b, gp, n);
      }
      if (clamp) clamp_grad_loop(gl, raw, n, lo, hi);
      flush(pgm + b, gm, n);
      flush(pgl + b, gl, n);
    });
  });
  return {gmu, glv, gplv};
}

// a weight block: the values, or ones when absent
template <class T, class S> const T* weight_block(const S* p, int64_t b, int64_t n, T* buf) {
  if (p) return load(p + b, n, buf);
  std::fill(buf, buf + n, T(1));
  return buf;
}

at::Tensor bernoulli_nll(const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                         double scale, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& pos_weight,
                         std::optional<at::ScalarType> out_dtype) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCpu, nullptr, weight, pos_weight);
  at::Tensor out;
  VAE_DISPATCH(a.logits.scalar_type(), "vae_fast.bernoulli_nll", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* px = a.logits.data_ptr<scalar_t>();
    const scalar_t* pt = a.target.data_ptr<scalar_t>();
    if (!a.weighted()) {
      out = reduce_forward<scalar_t>(a.logits, reduction, scale, [&](int64_t b, int64_t n, T* v) {
        alignas(64) T bx[kBlock], bt[kBlock];
        bce_loop(load(px + b, n, bx), load(pt + b, n, bt), v, n);
      }, out_dtype);
      return;
    }
    const scalar_t* pw = a.weight.defined() ? a.weight.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ppw = a.pos_weight.defined() ? a.pos_weight.data_ptr<scalar_t>() : nullptr;
    out = reduce_forward<scalar_t>(a.logits, reduction, scale, [&](int64_t b, int64_t n, T* v) {
      alignas(64) T bx[kBlock], bt[kBlock], bw[kBlock], bpw[kBlock];
      bce_w_loop(load(px + b, n, bx), load(pt + b, n, bt), weight_block(pw, b, n, bw),
                 weight_block(ppw, b, n, bpw), v, n);
    }, out_dtype);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bernoulli_nll_backward(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
    double scale, bool target_grad, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCpu, &grad, weight, pos_weight);
  at::Tensor gx = grad_out(a.logits), gt = grad_out(a.logits, target_grad);
  const int64_t C = row_len(a.logits, reduction);
  VAE_DISPATCH(a.logits.scalar_type(), "vae_fast.bernoulli_nll_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = a.grad.data_ptr<scalar_t>();
    const scalar_t* px = a.logits.data_ptr<scalar_t>();
    const scalar_t* pt = a.target.data_ptr<scalar_t>();
    const scalar_t* pw = a.weight.defined() ? a.weight.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ppw = a.pos_weight.defined() ? a.pos_weight.data_ptr<scalar_t>() : nullptr;
    const bool weighted = a.weighted();
    scalar_t* pgx = gx.data_ptr<scalar_t>();
    scalar_t* pgt = target_grad ? gt.data_ptr<scalar_t>() : nullptr;
    const int64_t numel = a.logits.numel();
    for_blocks<T>(numel ? numel / C : 0, C, nullptr, [&](int64_t b, int64_t n, T*) {
      alignas(64) T bg[kBlock], bx[kBlock], bt[kBlock], ox[kBlock], ot[kBlock];
      const T* g = grad_block(pg, reduction, scale, C, b, n, bg);
      T* ogx = out_ptr(pgx + b, ox);
      T* ogt = pgt ? out_ptr(pgt + b, ot) : nullptr;
      if (weighted) {
        alignas(64) T bw[kBlock], bpw[kBlock];
        bce_w_grad_loop(g, load(px + b, n, bx), load(pt + b, n, bt), weight_block(pw, b, n, bw),
                        weight_block(ppw, b, n, bpw), ogx, ogt, n);
      } else {
        bce_grad_loop(g, load(px + b, n, bx), load(pt + b, n, bt), ogx, ogt, n);
      }
      flush(pgx + b, ogx, n);
      if (pgt) flush(pgt + b, ogt, n);
    });
  });
  return {gx, gt};
}

at::Tensor gaussian_nll(const at::Tensor& mean, const at::Tensor& logvar, const at::Tensor& target,
                        int64_t reduction, double scale, std::optional<at::ScalarType> out_dtype) {
  const GnllArgs a = gnll_args(mean, logvar, target, reduction, Backend::kCpu);
  at::Tensor out;
  VAE_DISPATCH(a.mean.scalar_type(), "vae_fast.gaussian_nll", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pm = a.mean.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    const scalar_t* pt = a.target.data_ptr<scalar_t>();
    out = reduce_forward<scalar_t>(a.mean, reduction, scale, [&](int64_t b, int64_t n, T* v) {
      alignas(64) T bm[kBlock], bl[kBlock], bt[kBlock];
      gnll_loop(load(pm + b, n, bm), load(pl + b, n, bl), load(pt + b, n, bt), v, n);
    }, out_dtype);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward(const at::Tensor& grad,
                                                         const at::Tensor& mean,
                                                         const at::Tensor& logvar,
                                                         const at::Tensor& target,
                                                         int64_t reduction, double scale) {
  const GnllArgs a = gnll_args(mean, logvar, target, reduction, Backend::kCpu, &grad);
  at::Tensor gm = grad_out(a.mean), gl = grad_out(a.mean);
  const int64_t C = row_len(a.mean, reduction);
  VAE_DISPATCH(a.mean.scalar_type(), "vae_fast.gaussian_nll_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = a.grad.data_ptr<scalar_t>();
    const scalar_t* pm = a.mean.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    const scalar_t* pt = a.target.data_ptr<scalar_t>();
    scalar_t* pgm = gm.data_ptr<scalar_t>();
    scalar_t* pgl = gl.data_ptr<scalar_t>();
    const int64_t numel = a.mean.numel();
    for_blocks<T>(numel ? numel / C : 0, C, nullptr, [&](int64_t b, int64_t n, T*) {
      alignas(64) T bg[kBlock], bm[kBlock], bl[kBlock], bt[kBlock], om[kBlock], ol[kBlock];
      const T* g = grad_block(pg, reduction, scale, C, b, n, bg);
      T* ogm = out_ptr(pgm + b, om);
      T* ogl = out_ptr(pgl + b, ol);
      gnll_grad_loop(g, load(pm + b, n, bm), load(pl + b, n, bl), load(pt + b, n, bt), ogm, ogl,
                     n);
      flush(pgm + b, ogm, n);
      flush(pgl + b, ogl, n);
    });
  });
  return {gm, gl};
}

// test helper: raw Philox words and uniforms of groups [0, num_groups)
std::tuple<at::Tensor, at::Tensor> philox_uniform(const at::Tensor& philox, int64_t num_groups) {
  check_philox(philox, philox);
  TORCH_CHECK(num_groups >= 0, "num_groups: expected >= 0, got ", num_groups);
  const PhiloxState st = read_philox(philox);
  at::Tensor words = at::empty({num_groups, 4}, philox.options());
  at::Tensor unif = at::empty({num_groups, 4}, philox.options().dtype(at::kFloat));
  int64_t* pw = words.data_ptr<int64_t>();
  float* pu = unif.data_ptr<float>();
  std::vector<uint32_t> buf(4 * num_groups);
  uint32_t* const w[4] = {buf.data(), buf.data() + num_groups, buf.data() + 2 * num_groups,
                          buf.data() + 3 * num_groups};
  philox_words(st.seed, st.offset, num_groups, w);  // the path the kernels use
  for (int64_t g = 0; g < num_groups; ++g) {
    for (int k = 0; k < 4; ++k) {
      pw[4 * g + k] = w[k][g];
      pu[4 * g + k] = vae::uint_to_uniform(w[k][g]);
    }
  }
  return {words, unif};
}

}  // namespace
}  // namespace vae_fast

TORCH_LIBRARY_IMPL(vae_fast, CPU, m) {
  using namespace vae_fast;
  VAE_FAST_IMPL_OPS(m);
}

TORCH_LIBRARY_IMPL(vae_fast_testing, CPU, m) { m.impl("philox_uniform", &vae_fast::philox_uniform); }
