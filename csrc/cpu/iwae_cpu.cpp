// CPU kernels of log_density(_backward) (vae_fast/iwae.py): a * log N(z; 0, 1) + b * log N(z; mu,
// e^logvar) over z (R, C), mu and logvar (B, C) broadcast over the R / B samples of each row.
//
// Forward: rows in parallel, each row in chunks of kBlock elements converted to the compute type T
// (float, or double for double); a row's sum adds its chunk sums in double, the SUM adds the rows
// in row order: results do not depend on the number of threads.
// Backward: batch rows b in parallel; for each chunk of b's columns the K samples r = k*B + b in
// order, writing grad_z and summing grad_mu / grad_logvar in T (one pass over z).
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "csrc/iwae_args.h"
#include "kernels/vae_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define IWAE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define IWAE_CLONES
#endif

namespace vae_fast {
namespace {

constexpr int64_t kBlock = 1024;  // elements per chunk: the buffers stay in L1
constexpr int64_t kGrain = 65536;  // elements per parallel task, at least: small ones stay serial

template <class T>
IWAE_CLONES void density_loop(const T* z, const T* mu, const T* lv, T a, T b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::log_density(z[i], mu[i], lv[i], a, b);
}

template <class T> IWAE_CLONES void prior_loop(const T* z, T a, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vae::log_density(z[i], T(0), T(0), a, T(0));
}

template <class T> IWAE_CLONES T chunk_sum(const T* v, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return s;
}

// __restrict__: no output aliases an input (the callers' buffers), so the loop vectorises (GCC
// gives up on the runtime alias checks of 7 arrays: 7x slower than the forward without)
template <class T>
IWAE_CLONES void density_grad_loop(const T* __restrict__ g, const T* __restrict__ z,
                                   const T* __restrict__ mu, const T* __restrict__ lv, T a, T b,
                                   T* __restrict__ gz, T* __restrict__ gmu, T* __restrict__ glv,
                                   int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T dz, dmu, dlv;
    vae::log_density_grad(g[i], z[i], mu[i], lv[i], a, b, &dz, &dmu, &dlv);
    gz[i] = dz;
    gmu[i] += dmu;
    glv[i] += dlv;
  }
}

// p[0..n) in T: p itself when it already is, else converted into buf
template <class T, class S> const T* load(const S* p, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, S>) {
    return p;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(p[i]);
    return buf;
  }
}

template <class T, class S> void store(const T* v, T scale, int64_t n, S* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<S>(scale * v[i]);
}

#define IWAE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor log_density(const at::Tensor& z, const std::optional<at::Tensor>& mu,
                       const std::optional<at::Tensor>& logvar, double prior_coef, double q_coef,
                       int64_t reduction, double scale) {
  const LogDensityArgs a = log_density_args(z, mu, logvar, reduction, Backend::kCpu);
  at::Tensor out = forward_out(a.z, reduction);
  const int64_t R = a.R, C = a.C, B = a.B;
  std::vector<double> rows(reduction == kSum ? R : 0);
  IWAE_DISPATCH(a.z.scalar_type(), "vae_fast.log_density", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pz = a.z.data_ptr<scalar_t>();
    const scalar_t* pm = a.has_q() ? a.mu.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pl = a.has_q() ? a.logvar.data_ptr<scalar_t>() : nullptr;
    scalar_t* po = out.data_ptr<scalar_t>();
    const T ta = static_cast<T>(prior_coef), tb = static_cast<T>(q_coef);
    at::parallel_for(0, R, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
      alignas(64) T bz[kBlock], bm[kBlock], bl[kBlock], v[kBlock];
      // the value of n elements of z from flat offset e, with mu, logvar from offset q
      auto values = [&](int64_t e, int64_t q, int64_t n) {
        const T* zz = load(pz + e, n, bz);
        if (pm) {
          density_loop(zz, load(pm + q, n, bm), load(pl + q, n, bl), ta, tb, v, n);
        } else {
          prior_loop(zz, ta, v, n);
        }
        if (reduction == kNone) store(v, static_cast<T>(scale), n, po + e);
      };
      auto put_row = [&](int64_t r, double row) {
        if (reduction == kRows) po[r] = static_cast<scalar_t>(scale * row);
        if (reduction == kSum) rows[r] = row;
      };
      if (C > kBlock) {  // long rows: each in chunks
        for (int64_t r = r0; r < r1; ++r) {
          double row = 0;
          for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
            const int64_t n = std::min(kBlock, C - c0);
            values(r * C + c0, (r % B) * C + c0, n);
            if (reduction != kNone) row += static_cast<double>(chunk_sum(v, n));
          }
          put_row(r, row);
        }
        return;
      }
      // short rows: blocks of whole rows whose mu rows are consecutive (no wrap past row B - 1)
      for (int64_t r = r0; r < r1;) {
        const int64_t nr = std::min({r1 - r, std::max<int64_t>(1, kBlock / std::max<int64_t>(C, 1)),
                                     pm ? B - r % B : r1 - r});
        values(r * C, (r % B) * C, nr * C);
        if (reduction != kNone) {
          for (int64_t j = 0; j < nr; ++j) put_row(r + j, static_cast<double>(chunk_sum(v + j * C, C)));
        }
        r += nr;
      }
    });
    if (reduction == kSum) {
      double total = 0;
      for (double r : rows) total += r;
      po[0] = static_cast<scalar_t>(scale * total);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_density_backward(
    const at::Tensor& grad, const at::Tensor& z, const std::optional<at::Tensor>& mu,
    const std::optional<at::Tensor>& logvar, double prior_coef, double q_coef, int64_t reduction,
    double scale, bool params_grad) {
  const LogDensityArgs a = log_density_args(z, mu, logvar, reduction, Backend::kCpu, &grad);
  const LogDensityGrads out = log_density_grads(a, params_grad);
  const bool params = out.params;
  const at::Tensor &gz = out.z, &gmu = out.mu, &glv = out.logvar;
  // K = 0 samples (z has no rows) still writes grad_mu, grad_logvar: zeros
  const int64_t C = a.C, B = a.B, K = a.R / a.B;
  IWAE_DISPATCH(a.z.scalar_type(), "vae_fast.log_density_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pg = a.grad.data_ptr<scalar_t>();
    const scalar_t* pz = a.z.data_ptr<scalar_t>();
    const scalar_t* pm = a.has_q() ? a.mu.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pl = a.has_q() ? a.logvar.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgz = gz.data_ptr<scalar_t>();
    scalar_t* pgm = params ? gmu.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgl = params ? glv.data_ptr<scalar_t>() : nullptr;
    // without mu, logvar there is no q term: q_coef is ignored
    const T ta = static_cast<T>(prior_coef), tb = pm ? static_cast<T>(q_coef) : T(0);
    const T ts = static_cast<T>(scale);
    // flat elements i of mu (sample k's are z[k*N + i], contiguous): blocks of up to kBlock, each
    // walking the K samples in order, so the sums over k do not depend on the threads
    const int64_t N = B * C;
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(K, 1)), [&](int64_t i_begin, int64_t i_end) {
      alignas(64) T bz[kBlock], bm[kBlock], bl[kBlock], bg[kBlock], oz[kBlock], am[kBlock], al[kBlock];
      for (int64_t i0 = i_begin; i0 < i_end; i0 += kBlock) {
        const int64_t n = std::min(kBlock, i_end - i0);
        const T *m = bm, *l = bl;
        if (pm) {
          m = load(pm + i0, n, bm);
          l = load(pl + i0, n, bl);
        } else {
          std::fill(bm, bm + n, T(0));
          std::fill(bl, bl + n, T(0));
        }
        std::fill(am, am + n, T(0));
        std::fill(al, al + n, T(0));
        for (int64_t k = 0; k < K; ++k) {
          const int64_t e0 = k * N + i0;
          if (reduction == kNone) {
            for (int64_t i = 0; i < n; ++i) bg[i] = ts * static_cast<T>(pg[e0 + i]);
          } else if (reduction == kSum) {
            std::fill(bg, bg + n, ts * static_cast<T>(pg[0]));
          } else {  // ROWS: row k*B + (i0 + i) / C of z, one value per run of <= C elements
            int64_t row = k * B + i0 / C, c = i0 % C;
            for (int64_t i = 0; i < n; c = 0, ++row) {
              const int64_t run = std::min(n - i, C - c);
              std::fill(bg + i, bg + i + run, ts * static_cast<T>(pg[row]));
              i += run;
            }
          }
          density_grad_loop(bg, load(pz + e0, n, bz), m, l, ta, tb, oz, am, al, n);
          for (int64_t i = 0; i < n; ++i) pgz[e0 + i] = static_cast<scalar_t>(oz[i]);
        }
        if (params) {
          for (int64_t i = 0; i < n; ++i) {
            pgm[i0 + i] = static_cast<scalar_t>(am[i]);
            pgl[i0 + i] = static_cast<scalar_t>(al[i]);
          }
        }
      }
    });
  });
  return {gz, gmu, glv};
}

}  // namespace
}  // namespace vae_fast

TORCH_LIBRARY_IMPL(vae_fast, CPU, m) {
  m.impl("log_density", &vae_fast::log_density);
  m.impl("log_density_backward", &vae_fast::log_density_backward);
}
