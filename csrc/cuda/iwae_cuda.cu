// CUDA kernels of log_density(_backward) (vae_fast/iwae.py; the math is kernels/vae_math.h, the CPU
// twin csrc/cpu/iwae_cpu.cpp): z (R, C), mu and logvar (B, C) broadcast over the R / B samples of
// each batch row (row r uses row r % B), never copied K times.
//
// Forward: one warp per row (grid-stride over rows), lanes strided over the columns, a fixed warp
// tree: elementwise, the row sums (ROWS), or the rows in float64 then one block that adds them in a
// fixed order (SUM): deterministic, independent of the grid. Backward: one thread per element of mu,
// looping over the K samples in order: grad_z written, grad_mu / grad_logvar summed in registers
// (one pass over z; consecutive threads read consecutive columns).
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "csrc/iwae_args.h"
#include "kernels/reduce.cuh"
#include "kernels/vae_math.h"

namespace vae_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / vae::kWarp;
constexpr int64_t kMaxBlocks = 65535;

template <class S>
__global__ void __launch_bounds__(kThreads)
    log_density_forward_kernel(const S* __restrict__ z, const S* __restrict__ mu,
                               const S* __restrict__ lv, S* __restrict__ out,
                               double* __restrict__ rows_out, int64_t R, int64_t C, int64_t B,
                               at::opmath_type<S> a, at::opmath_type<S> b, at::opmath_type<S> scale,
                               int64_t reduction) {
  using T = at::opmath_type<S>;
  const int lane = threadIdx.x % vae::kWarp;
  const int64_t warp = blockIdx.x * int64_t(kRowsPerBlock) + threadIdx.x / vae::kWarp;
  const int64_t warps = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t r = warp; r < R; r += warps) {
    const S* zr = z + r * C;
    const int64_t q = (r % B) * C;
    T acc = 0;
    for (int64_t c = lane; c < C; c += vae::kWarp) {
      const T m = mu ? static_cast<T>(mu[q + c]) : T(0), l = mu ? static_cast<T>(lv[q + c]) : T(0);
      const T v = vae::log_density(static_cast<T>(zr[c]), m, l, a, mu ? b : T(0));
      if (reduction == kNone) {
        out[r * C + c] = static_cast<S>(scale * v);
      } else {
        acc += v;
      }
    }
    if (reduction != kNone) {
      acc = vae::warp_sum(acc);
      if (lane == 0) {
        if (reduction == kRows) out[r] = static_cast<S>(scale * acc);
        else rows_out[r] = static_cast<double>(acc);
      }
    }
  }
}

// out[0] = scale * the sum of rows[0..R), in a fixed order (one block)
template <class S>
__global__ void __launch_bounds__(kThreads)
    sum_rows_kernel(const double* __restrict__ rows, int64_t R, double scale, S* __restrict__ out) {
  double acc = 0;
  for (int64_t r = threadIdx.x; r < R; r += kThreads) acc += rows[r];
  acc = vae::block_sum(acc);
  if (threadIdx.x == 0) out[0] = static_cast<S>(scale * acc);
}

template <class S>
__global__ void __launch_bounds__(kThreads)
    log_density_backward_kernel(const S* __restrict__ grad, const S* __restrict__ z,
                                const S* __restrict__ mu, const S* __restrict__ lv,
                                S* __restrict__ gz, S* __restrict__ gmu, S* __restrict__ glv,
                                int64_t N, int64_t C, int64_t K, at::opmath_type<S> a,
                                at::opmath_type<S> b, at::opmath_type<S> scale, int64_t reduction) {
  using T = at::opmath_type<S>;
  const int64_t B = N / C;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < N;
       i += int64_t(gridDim.x) * kThreads) {
    const T m = mu ? static_cast<T>(mu[i]) : T(0), l = mu ? static_cast<T>(lv[i]) : T(0);
    const int64_t row = i / C;
    T am = 0, al = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = k * N + i;
      const T g = scale * static_cast<T>(reduction == kNone ? grad[e]
                                         : grad[reduction == kRows ? k * B + row : 0]);
      T dz, dmu, dlv;
      vae::log_density_grad(g, static_cast<T>(z[e]), m, l, a, mu ? b : T(0), &dz, &dmu, &dlv);
      gz[e] = static_cast<S>(dz);
      am += dmu;
      al += dlv;
    }
    if (gmu) {
      gmu[i] = static_cast<S>(am);
      glv[i] = static_cast<S>(al);
    }
  }
}

#define IWAE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor log_density(const at::Tensor& z, const std::optional<at::Tensor>& mu,
                       const std::optional<at::Tensor>& logvar, double prior_coef, double q_coef,
                       int64_t reduction, double scale) {
  const LogDensityArgs a = log_density_args(z, mu, logvar, reduction, Backend::kCuda);
  at::Tensor out = forward_out(a.z, reduction);
  at::Tensor rows;
  if (reduction == kSum) rows = at::empty({a.R}, a.z.options().dtype(at::kDouble));
  const c10::cuda::CUDAGuard guard(a.z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  IWAE_DISPATCH(a.z.scalar_type(), "vae_fast.log_density", [&] {
    using T = at::opmath_type<scalar_t>;
    if (a.R > 0) {
      const int64_t blocks = std::min<int64_t>((a.R + kRowsPerBlock - 1) / kRowsPerBlock, kMaxBlocks);
      log_density_forward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          a.z.data_ptr<scalar_t>(), a.has_q() ? a.mu.data_ptr<scalar_t>() : nullptr,
          a.has_q() ? a.logvar.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
          rows.defined() ? rows.data_ptr<double>() : nullptr, a.R, a.C, a.B,
          static_cast<T>(prior_coef), static_cast<T>(q_coef), static_cast<T>(scale), reduction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (reduction == kSum) {
      sum_rows_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
          a.R ? rows.data_ptr<double>() : nullptr, a.R, scale, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> log_density_backward(
    const at::Tensor& grad, const at::Tensor& z, const std::optional<at::Tensor>& mu,
    const std::optional<at::Tensor>& logvar, double prior_coef, double q_coef, int64_t reduction,
    double scale, bool params_grad) {
  const LogDensityArgs a = log_density_args(z, mu, logvar, reduction, Backend::kCuda, &grad);
  const LogDensityGrads out = log_density_grads(a, params_grad);
  const bool params = out.params;
  const at::Tensor &gz = out.z, &gmu = out.mu, &glv = out.logvar;
  const int64_t B = a.has_q() ? a.B : a.R, N = B * a.C, K = B ? a.R / B : 0;
  const c10::cuda::CUDAGuard guard(a.z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (N > 0) {
    IWAE_DISPATCH(a.z.scalar_type(), "vae_fast.log_density_backward", [&] {
      using T = at::opmath_type<scalar_t>;
      const int64_t blocks = std::min<int64_t>((N + kThreads - 1) / kThreads, kMaxBlocks);
      log_density_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          a.grad.data_ptr<scalar_t>(), a.z.data_ptr<scalar_t>(),
          a.has_q() ? a.mu.data_ptr<scalar_t>() : nullptr,
          a.has_q() ? a.logvar.data_ptr<scalar_t>() : nullptr, gz.data_ptr<scalar_t>(),
          params ? gmu.data_ptr<scalar_t>() : nullptr, params ? glv.data_ptr<scalar_t>() : nullptr,
          N, a.C, K, static_cast<T>(prior_coef), static_cast<T>(q_coef), static_cast<T>(scale),
          reduction);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {gz, gmu, glv};
}

}  // namespace
}  // namespace vae_fast

TORCH_LIBRARY_IMPL(vae_fast, CUDA, m) {
  m.impl("log_density", &vae_fast::log_density);
  m.impl("log_density_backward", &vae_fast::log_density_backward);
}
