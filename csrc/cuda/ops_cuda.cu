// CUDA kernels of every vae_fast op (docs/ops.md), one launch per op direction (plus the memset of
// the fp32/fp64 accumulator of reductions).
//
// Each thread handles groups of 4 consecutive elements (one 4-wide load per input when the
// pointers allow it), in grid-stride loops with int64 indices; a warp iterates together so that
// warp reductions stay legal. Reductions: SUM sums per block and adds one atomic per block; ROWS
// sums per warp when the warp's elements share a row, else per run of a row, with atomics into the
// accumulator; the last block to finish writes the scaled sums in the output dtype.
// The RNG state is read from the device `philox` tensor: no host synchronisation.
//
// Lean includes only (no <torch/extension.h>, no ATen/cuda/CUDAContext.h): see
// shared/notes/build-notes.md.
#include <array>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "csrc/args.h"
#include "kernels/philox.h"
#include "kernels/reduce.cuh"
#include "kernels/vae_math.h"

namespace vae_fast {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// loads and stores of 4 consecutive elements

template <class S> struct alignas(4 * sizeof(S)) Vec4 { S v[4]; };

// x[i .. i+3] as T (zeros past n or for a null pointer); one vector load when vec
template <class T, class S>
__device__ __forceinline__ void load4(const S* p, int64_t i, int64_t n, bool vec, T out[4]) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = T(0);
  } else if (vec && i + 4 <= n) {
    const Vec4<S> v = *reinterpret_cast<const Vec4<S>*>(p + i);
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = static_cast<T>(v.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = i + k < n ? static_cast<T>(p[i + k]) : T(0);
  }
}

template <class T, class S>
__device__ __forceinline__ void store4(S* p, int64_t i, int64_t n, bool vec, const T in[4]) {
  if (p == nullptr) return;
  if (vec && i + 4 <= n) {
    Vec4<S> v;
#pragma unroll
    for (int k = 0; k < 4; ++k) v.v[k] = static_cast<S>(in[k]);
    *reinterpret_cast<Vec4<S>*>(p + i) = v;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (i + k < n) p[i + k] = static_cast<S>(in[k]);
  }
}

template <class S> bool aligned4(const S* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(S)) == 0;
}

// ---------------------------------------------------------------------------------------------
// reductions

// accumulators of a reduction: R sums (fp32, fp64 for double) then a block counter, zeroed
template <class T> struct Acc {
  T* sums;
  unsigned* done;
};

template <class T> std::pair<at::Tensor, Acc<T>> make_acc(int64_t R, const at::Tensor& like) {
  const int64_t bytes = R * static_cast<int64_t>(sizeof(T)) + static_cast<int64_t>(sizeof(T));
  at::Tensor buf = at::zeros({bytes}, like.options().dtype(at::kByte));
  T* sums = reinterpret_cast<T*>(buf.data_ptr<uint8_t>());
  return {buf, Acc<T>{sums, reinterpret_cast<unsigned*>(sums + R)}};
}

// adds v[0..3] (elements i0.. of rows of C) into acc.sums[row]: one atomic per warp when every
// element of the warp is in one row, else one per run of a row. All lanes of the warp call it.
template <class T>
__device__ __forceinline__ void add_rows(T* sums, int64_t i0, bool valid, int64_t n, int64_t C,
                                         const T v[4]) {
  const int lane = threadIdx.x % vae::kWarp;
  const int64_t last = i0 + 3 < n ? i0 + 3 : n - 1;
  int64_t r0 = valid ? i0 / C : 0, r3 = valid ? last / C : 0;
  const int64_t lead = __shfl_sync(0xffffffffu, r0, 0);  // lane 0 is valid when any lane is
  if (!valid) r0 = r3 = lead;
  if (__all_sync(0xffffffffu, r0 == r3 && r0 == lead)) {
    const T s = vae::warp_sum(v[0] + v[1] + v[2] + v[3]);
    if (lane == 0) atomicAdd(sums + lead, s);
    return;
  }
  if (!valid) return;
  T run = 0;
  int64_t row = r0;
  for (int k = 0; k < 4 && i0 + k < n; ++k) {
    const int64_t r = (i0 + k) / C;
    if (r != row) {
      atomicAdd(sums + row, run);
      run = 0;
      row = r;
    }
    run += v[k];
  }
  atomicAdd(sums + row, run);
}

// The last block to arrive writes out[r] = scale * sums[r] in the output dtype.
template <class T, class S>
__device__ void finish_sums(Acc<T> acc, int64_t R, T scale, S* out) {
  __shared__ bool last;
  __threadfence();  // this block's atomics are visible before it counts itself done
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(acc.done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
    out[r] = static_cast<S>(scale * static_cast<volatile T*>(acc.sums)[r]);
}

// ---------------------------------------------------------------------------------------------
// element functors (the math is kernels/vae_math.h)

struct BceFwd {
  template <class T> __device__ T operator()(const T* x) const { return vae::bce(x[0], x[1]); }
};
struct GnllFwd {
  template <class T> __device__ T operator()(const T* x) const {
    return vae::gauss_nll(x[0], x[1], x[2]);
  }
};
struct KlFwd {
  bool prior;
  template <class T> __device__ T operator()(const T* x) const {
    return prior ? vae::kl(x[0], x[1], x[2], x[3]) : vae::kl_std(x[0], x[1]);
  }
};
struct BceBwd {
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    o[0] = vae::bce_grad_logits(g, x[0], x[1]);
    o[1] = vae::bce_grad_target(g, x[0]);
  }
};
struct GnllBwd {
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    vae::gauss_nll_grad(g, x[0], x[1], x[2], &o[0], &o[1]);
  }
};
struct KlBwd {
  bool prior;
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    if (prior) {
      vae::kl_grad(g, x[0], x[1], x[2], x[3], &o[0], &o[1], &o[2]);
    } else {
      vae::kl_std_grad(g, x[0], x[1], &o[0], &o[1]);
      o[2] = T(0);
    }
  }
};

template <class S> struct Ptrs {
  const S* p[4];
};
template <class S> struct OutPtrs {
  S* p[3];
};

// grid-stride over groups of 4 with whole warps: calls body(i0, valid) for i0 = 4 * group
template <class Body> __device__ __forceinline__ void for_groups(int64_t n, const Body& body) {
  const int64_t groups = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t warp_first = first - threadIdx.x % vae::kWarp;
  for (int64_t w = warp_first; w < groups; w += stride) {
    const int64_t t = w + threadIdx.x % vae::kWarp;
    body(4 * t, t < groups);
  }
}

template <int NIN, class S, class F>
__global__ void loss_forward_kernel(Ptrs<S> in, int64_t n, int64_t C, int64_t reduction,
                                    at::opmath_type<S> scale, S* out, Acc<at::opmath_type<S>> acc,
                                    int64_t R, bool vec, F f) {
  using T = at::opmath_type<S>;
  T block_part = 0;
  for_groups(n, [&](int64_t i0, bool valid) {
    T x[NIN][4], v[4];
#pragma unroll
    for (int a = 0; a < NIN; ++a) load4(in.p[a], i0, n, vec, x[a]);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      T e[NIN];
#pragma unroll
      for (int a = 0; a < NIN; ++a) e[a] = x[a][k];
      v[k] = valid && i0 + k < n ? f(e) : T(0);
    }
    if (reduction == kNone) {
      if (valid) store4(out, i0, n, vec, v);
    } else if (reduction == kSum) {
      block_part += v[0] + v[1] + v[2] + v[3];
    } else {
      add_rows(acc.sums, i0, valid, n, C, v);
    }
  });
  if (reduction == kNone) return;
  if (reduction == kSum) {
    block_part = vae::block_sum(block_part);
    if (threadIdx.x == 0) atomicAdd(acc.sums, block_part);
  }
  finish_sums(acc, R, scale, out);
}

template <int NIN, int NOUT, class S, class F>
__global__ void loss_backward_kernel(const S* grad, int64_t reduction, at::opmath_type<S> scale,
                                     Ptrs<S> in, OutPtrs<S> out, int64_t n, int64_t C, bool vec,
                                     F f) {
  using T = at::opmath_type<S>;
  for_groups(n, [&](int64_t i0, bool valid) {
    if (!valid) return;
    T x[NIN][4], g[4], o[NOUT][4];
#pragma unroll
    for (int a = 0; a < NIN; ++a) load4(in.p[a], i0, n, vec, x[a]);
    if (reduction == kNone) {
      load4(grad, i0, n, vec, g);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        g[k] = i0 + k < n ? scale * static_cast<T>(grad[reduction == kSum ? 0 : (i0 + k) / C]) : T(0);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      T e[NIN], r[NOUT];
#pragma unroll
      for (int a = 0; a < NIN; ++a) e[a] = x[a][k];
      f(g[k], e, r);
#pragma unroll
      for (int b = 0; b < NOUT; ++b) o[b][k] = r[b];
    }
#pragma unroll
    for (int b = 0; b < NOUT; ++b) store4(out.p[b], i0, n, vec, o[b]);
  });
}

// reparameterize / sample_and_kl forward: z for every sample and (KL) the KL row sums
template <bool KL, class S>
__global__ void sample_forward_kernel(const S* mu, const S* lv, const int64_t* philox,
                                      int64_t samples, int64_t N, int64_t C, S* z,
                                      Acc<at::opmath_type<S>> acc, int64_t R, S* kl, bool vec) {
  using T = at::opmath_type<S>;
  const uint64_t seed = static_cast<uint64_t>(philox[0]), offset = static_cast<uint64_t>(philox[1]);
  for_groups(N, [&](int64_t j0, bool valid) {
    T m[4], l[4], sd[4];
    load4(valid ? mu : nullptr, j0, N, vec, m);
    load4(valid ? lv : nullptr, j0, N, vec, l);
#pragma unroll
    for (int k = 0; k < 4; ++k) sd[k] = vae::std_of(l[k]);
    if constexpr (KL) {
      T v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = valid && j0 + k < N ? vae::kl_std(m[k], l[k]) : T(0);
      add_rows(acc.sums, j0, valid, N, C, v);
    }
    if (!valid) return;
    for (int64_t s = 0; s < samples; ++s) {
      float e[4];
      vae::eps4(seed, offset, static_cast<uint64_t>(s * N + j0), e);
      T out[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) out[k] = vae::sample(m[k], sd[k], static_cast<T>(e[k]));
      store4(z + s * N, j0, N, vec, out);
    }
  });
  if constexpr (KL) finish_sums(acc, R, at::opmath_type<S>(1), kl);
}

// reparameterize_backward / sample_and_kl_backward, replaying eps
template <bool KL, class S>
__global__ void sample_backward_kernel(const S* gz, const S* gkl, const S* mu, const S* lv,
                                       const int64_t* philox, int64_t samples, int64_t N,
                                       int64_t C, S* gmu, S* glv, bool vec) {
  using T = at::opmath_type<S>;
  const uint64_t seed = static_cast<uint64_t>(philox[0]), offset = static_cast<uint64_t>(philox[1]);
  for_groups(N, [&](int64_t j0, bool valid) {
    if (!valid) return;
    T l[4], sd[4], gm[4], gl[4];
    load4(lv, j0, N, vec, l);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      sd[k] = vae::std_of(l[k]);
      gm[k] = gl[k] = T(0);
    }
    if constexpr (KL) {  // start from grad_kl[row] * d kl / d (mu, logvar)
      T m[4];
      load4(mu, j0, N, vec, m);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const T gk = j0 + k < N ? static_cast<T>(gkl[(j0 + k) / C]) : T(0);
        vae::kl_std_grad(gk, m[k], l[k], &gm[k], &gl[k]);
      }
    }
    for (int64_t s = 0; s < samples; ++s) {
      float e[4];
      vae::eps4(seed, offset, static_cast<uint64_t>(s * N + j0), e);
      T g[4];
      load4(gz + s * N, j0, N, vec, g);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        gl[k] += vae::sample_grad_logvar(g[k], sd[k], static_cast<T>(e[k]));
        gm[k] += g[k];
      }
    }
    store4(glv, j0, N, vec, gl);
    if (KL) store4(gmu, j0, N, vec, gm);
  });
}

// ---------------------------------------------------------------------------------------------
// launchers

int num_sms(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) return 80;
  if (cache[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = n;
  }
  return cache[device];
}

// blocks for n elements in groups of 4: enough to fill the GPU, at least 1
int blocks_for(int64_t n, const at::Tensor& like) {
  const int64_t want = ((n + 3) / 4 + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(num_sms(like.get_device())) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
}

#define VAE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <class S>
const S* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<S>() : nullptr;
}

// forward of an elementwise loss over inputs[0..NIN) (undefined tensors read as zeros)
template <int NIN, class F>
at::Tensor loss_forward(const std::array<at::Tensor, 4>& inputs, int64_t reduction, double scale,
                        F f) {
  const at::Tensor& x = inputs[0];
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel(), R = reduction == kRows ? rows_of(x) : 1;
  at::Tensor out = forward_out(x, reduction);
  if (reduction != kNone && n == 0) return out.zero_();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(x.scalar_type(), "vae_fast.loss_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    Ptrs<scalar_t> in{};
    bool vec = aligned4(out.data_ptr<scalar_t>());
    for (int a = 0; a < NIN; ++a) {
      in.p[a] = ptr_or_null<scalar_t>(inputs[a]);
      vec = vec && aligned4(in.p[a]);
    }
    at::Tensor buf;
    Acc<T> acc{nullptr, nullptr};
    if (reduction != kNone) std::tie(buf, acc) = make_acc<T>(R, x);
    loss_forward_kernel<NIN, scalar_t><<<blocks_for(n, x), kThreads, 0, stream>>>(
        in, n, R ? n / R : 0, reduction, static_cast<T>(scale), out.data_ptr<scalar_t>(), acc, R,
        vec, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// backward of an elementwise loss: outputs[b] receives the b-th gradient (undefined: skipped)
template <int NIN, int NOUT, class F>
void loss_backward(const at::Tensor& grad, const std::array<at::Tensor, 4>& inputs,
                   const std::array<at::Tensor, 3>& outputs, int64_t reduction, double scale, F f) {
  const at::Tensor& x = inputs[0];
  const int64_t n = x.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t R = rows_of(x), C = reduction == kRows ? n / R : n;
  auto stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(x.scalar_type(), "vae_fast.loss_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    Ptrs<scalar_t> in{};
    OutPtrs<scalar_t> out{};
    bool vec = aligned4(grad.data_ptr<scalar_t>()) || reduction != kNone;
    for (int a = 0; a < NIN; ++a) {
      in.p[a] = ptr_or_null<scalar_t>(inputs[a]);
      vec = vec && aligned4(in.p[a]);
    }
    for (int b = 0; b < NOUT; ++b) {
      out.p[b] = outputs[b].defined() ? outputs[b].data_ptr<scalar_t>() : nullptr;
      vec = vec && aligned4(out.p[b]);
    }
    loss_backward_kernel<NIN, NOUT, scalar_t><<<blocks_for(n, x), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), reduction, static_cast<T>(scale), in, out, n, C, vec, f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// z and (with kl) the KL row sums
void sample(const SampleArgs& a, const at::Tensor& philox, int64_t num_samples) {
  const c10::cuda::CUDAGuard guard(a.mu.device());
  const int64_t N = a.N, R = a.R;
  const bool with_kl = a.kl.defined();
  if (N == 0) {
    if (with_kl) a.kl.zero_();
    return;
  }
  const at::Tensor ph = philox.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(a.mu.scalar_type(), "vae_fast.sample", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pm = a.mu.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    scalar_t* pz = a.z.data_ptr<scalar_t>();
    const bool vec = N % 4 == 0 && aligned4(pm) && aligned4(pl) && aligned4(pz);
    const int blocks = blocks_for(N, a.mu);
    if (with_kl) {
      auto [buf, acc] = make_acc<T>(R, a.mu);
      sample_forward_kernel<true, scalar_t><<<blocks, kThreads, 0, stream>>>(
          pm, pl, ph.data_ptr<int64_t>(), num_samples, N, N / R, pz, acc, R,
          a.kl.data_ptr<scalar_t>(), vec);
    } else {
      sample_forward_kernel<false, scalar_t><<<blocks, kThreads, 0, stream>>>(
          pm, pl, ph.data_ptr<int64_t>(), num_samples, N, N, pz, Acc<T>{nullptr, nullptr}, 1,
          nullptr, vec);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// grad_logvar (and with grad_kl, grad_mu), replaying eps
void sample_backward(const SampleGradArgs& a, const at::Tensor& philox, int64_t num_samples) {
  const c10::cuda::CUDAGuard guard(a.logvar.device());
  const int64_t N = a.N, R = a.R;
  if (N == 0) return;
  const at::Tensor ph = philox.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(a.logvar.scalar_type(), "vae_fast.sample_backward", [&] {
    const scalar_t* pgz = a.grad_z.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    scalar_t* pgl = a.grad_logvar.data_ptr<scalar_t>();
    bool vec = N % 4 == 0 && aligned4(pgz) && aligned4(pl) && aligned4(pgl);
    if (a.mu.defined()) {
      const scalar_t* pm = a.mu.data_ptr<scalar_t>();
      scalar_t* pgm = a.grad_mu.data_ptr<scalar_t>();
      vec = vec && aligned4(pm) && aligned4(pgm);
      sample_backward_kernel<true, scalar_t><<<blocks_for(N, a.logvar), kThreads, 0, stream>>>(
          pgz, a.grad_kl.data_ptr<scalar_t>(), pm, pl, ph.data_ptr<int64_t>(), num_samples, N,
          N / R, pgm, pgl, vec);
    } else {
      sample_backward_kernel<false, scalar_t><<<blocks_for(N, a.logvar), kThreads, 0, stream>>>(
          pgz, nullptr, nullptr, pl, ph.data_ptr<int64_t>(), num_samples, N, N, nullptr, pgl, vec);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

using Sampling = SamplingOps<Backend::kCuda, sample, sample_backward>;

at::Tensor gaussian_kl(const at::Tensor& mu, const at::Tensor& logvar,
                       const std::optional<at::Tensor>& prior_mu,
                       const std::optional<at::Tensor>& prior_logvar, int64_t reduction,
                       double scale) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCuda);
  return loss_forward<4>({a.mu, a.logvar, a.prior_mu, a.prior_logvar}, reduction, scale,
                         KlFwd{a.has_prior()});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    int64_t reduction, double scale) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCuda, &grad);
  const bool has_plv = a.prior_logvar.defined();
  at::Tensor gmu = grad_out(a.mu), glv = grad_out(a.mu), gplv = grad_out(a.mu, has_plv);
  loss_backward<4, 3>(a.grad, {a.mu, a.logvar, a.prior_mu, a.prior_logvar},
                      {gmu, glv, has_plv ? gplv : at::Tensor()}, reduction, scale,
                      KlBwd{a.has_prior()});
  return {gmu, glv, gplv};
}

at::Tensor bernoulli_nll(const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                         double scale) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCuda);
  return loss_forward<2>({a.logits, a.target, at::Tensor(), at::Tensor()}, reduction, scale,
                         BceFwd{});
}

std::tuple<at::Tensor, at::Tensor> bernoulli_nll_backward(const at::Tensor& grad,
                                                          const at::Tensor& logits,
                                                          const at::Tensor& target,
                                                          int64_t reduction, double scale,
                                                          bool target_grad) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCuda, &grad);
  at::Tensor gx = grad_out(a.logits), gt = grad_out(a.logits, target_grad);
  loss_backward<2, 2>(a.grad, {a.logits, a.target, at::Tensor(), at::Tensor()},
                      {gx, target_grad ? gt : at::Tensor(), at::Tensor()}, reduction, scale,
                      BceBwd{});
  return {gx, gt};
}

at::Tensor gaussian_nll(const at::Tensor& mean, const at::Tensor& logvar, const at::Tensor& target,
                        int64_t reduction, double scale) {
  const GnllArgs a = gnll_args(mean, logvar, target, reduction, Backend::kCuda);
  return loss_forward<3>({a.mean, a.logvar, a.target, at::Tensor()}, reduction, scale, GnllFwd{});
}

std::tuple<at::Tensor, at::Tensor> gaussian_nll_backward(const at::Tensor& grad,
                                                         const at::Tensor& mean,
                                                         const at::Tensor& logvar,
                                                         const at::Tensor& target,
                                                         int64_t reduction, double scale) {
  const GnllArgs a = gnll_args(mean, logvar, target, reduction, Backend::kCuda, &grad);
  at::Tensor gm = grad_out(a.mean), gl = grad_out(a.mean);
  loss_backward<3, 2>(a.grad, {a.mean, a.logvar, a.target, at::Tensor()}, {gm, gl, at::Tensor()},
                      reduction, scale, GnllBwd{});
  return {gm, gl};
}

}  // namespace
}  // namespace vae_fast

TORCH_LIBRARY_IMPL(vae_fast, CUDA, m) {
  using namespace vae_fast;
  VAE_FAST_IMPL_OPS(m);
}
