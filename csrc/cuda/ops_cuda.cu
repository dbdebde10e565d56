// CUDA kernels of every vae_fast op (docs/ops.md): one launch per op direction, never a memset, no
// host synchronisation.
//
// Work is cut into pieces that depend only on the shape: rows of C elements (the ROWS reduction's
// rows; one row of all elements otherwise), each row cut into pieces of at most kPiece elements.
// One warp handles one piece at a time (grid-stride over pieces); in each 128-element step of a
// piece, lane l takes the 4 consecutive elements 4l .. 4l+3. The whole steps of a piece whose rows
// start aligned to 4 elements take the branch-free path, in pairs: the inputs of both steps are
// loaded (one vector load per input), then computed, with no bounds checks. The rest of a piece
// (its tail, or all of a misaligned piece) takes the guarded path, element by element.
//
// Reductions are deterministic, independent of the grid: a piece's sum is a per-lane sum in element
// order, then a fixed warp tree. A row of one piece is written to the output by its warp; longer
// rows write one partial per piece into a workspace, and the last block to finish (a counter taken
// after __threadfence) sums each row's partials in piece order. The counters are a __device__
// array (zero when the module loads) and atomicInc returns a counter to 0 when the last block takes
// it, so no launch ever needs a zeroed buffer.
//
// The RNG state is read from the device `philox` tensor: no host synchronisation.
//
// Lean includes only (no <torch/extension.h>, no ATen/cuda/CUDAContext.h): see
// shared/notes/build-notes.md.
#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

constexpr int kThreads = 256;                 // threads per block
constexpr int kWarps = kThreads / vae::kWarp;  // warps per block
constexpr int kStep = 4 * vae::kWarp;         // elements of one warp step (4 per lane)
constexpr int64_t kPiece = 4096;              // elements per piece (32 steps)
// register budget, __launch_bounds__(kThreads, kMinBlocks<S>): at most 65536 / (kThreads * 4) = 64
// per thread so that 4 blocks (32 warps) fit on an SM; 128 for double, whose math needs more.
// tests/test_sass.py checks the compiled kernels against it.
template <class S> constexpr int kMinBlocks = sizeof(at::opmath_type<S>) == 8 ? 2 : 4;

// ---------------------------------------------------------------------------------------------
// loads and stores of the 4 consecutive elements of a lane

// The 4 elements as one (double: two) 16-byte or one 8-byte access of a plain vector type.
template <class S> struct Raw4;
template <> struct Raw4<double> { using type = ulonglong2; static constexpr int n = 2; };
template <> struct Raw4<float> { using type = uint4; static constexpr int n = 1; };
template <> struct Raw4<c10::Half> { using type = uint2; static constexpr int n = 1; };
template <> struct Raw4<c10::BFloat16> { using type = uint2; static constexpr int n = 1; };

// x[i .. i+3] as T with one vector load (the branch-free path: in bounds, aligned)
template <class T, class S> __device__ __forceinline__ void load4(const S* p, int64_t i, T out[4]) {
  using R = typename Raw4<S>::type;
  R raw[Raw4<S>::n];
#pragma unroll
  for (int h = 0; h < Raw4<S>::n; ++h) raw[h] = reinterpret_cast<const R*>(p + i)[h];
  S v[4];
  memcpy(v, raw, sizeof(v));
#pragma unroll
  for (int k = 0; k < 4; ++k) out[k] = static_cast<T>(v[k]);
}

// x[i .. i+valid) as T, zeros after (the guarded path)
template <class T, class S>
__device__ __forceinline__ void load4(const S* p, int64_t i, int valid, T out[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) out[k] = k < valid ? static_cast<T>(p[i + k]) : T(0);
}

// an input that may be absent (a prior): zeros for a null pointer
template <class T, class S>
__device__ __forceinline__ void load4_opt(const S* p, int64_t i, int valid, bool full, T out[4]) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = T(0);
  } else if (full) {
    load4(p, i, out);
  } else {
    load4(p, i, valid, out);
  }
}

// p[i .. i+valid) = in; one vector store when full (then valid is 4)
template <class T, class S>
__device__ __forceinline__ void store4(S* p, int64_t i, int valid, bool full, const T in[4]) {
  if (full) {
    S v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = static_cast<S>(in[k]);
    using R = typename Raw4<S>::type;
    R raw[Raw4<S>::n];
    memcpy(raw, v, sizeof(v));
#pragma unroll  // __stwb (the default caching): a plain store was split into scalar stores
    for (int h = 0; h < Raw4<S>::n; ++h) __stwb(reinterpret_cast<R*>(p + i) + h, raw[h]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < valid) p[i + k] = static_cast<S>(in[k]);
  }
}

template <class S> bool aligned4(const S* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(S)) == 0;
}

// the sum of a lane's group, in one order on both paths (zeros past `valid` change nothing)
template <class T> __device__ __forceinline__ T group_sum(const T v[4]) {
  return (v[0] + v[1]) + (v[2] + v[3]);
}

// ---------------------------------------------------------------------------------------------
// the partition into pieces

struct Walk {
  int64_t rows;
  int64_t C;  // elements per row (all elements when there are no rows)
  int64_t P;  // pieces per row, ceil(C / kPiece)
  int64_t Q;  // pieces in all, rows * P
  int vec;    // -1 when every row starts aligned to 4 elements in every tensor of the launch
              // (C % 4 == 0, aligned pointers): whole steps take the vector path; else 0
};

Walk walk_of(int64_t rows, int64_t C, bool aligned) {
  Walk w{rows, C, std::max<int64_t>(1, (C + kPiece - 1) / kPiece), 0,
         aligned && C % 4 == 0 ? -1 : 0};
  w.Q = rows * w.P;
  TORCH_CHECK(w.P == 1 || w.Q <= int64_t(UINT32_MAX), "vae_fast: a tensor of ", rows * C,
              " elements is too large for the CUDA kernels (at most 2^32 pieces of ", kPiece, ")");
  return w;
}

struct Piece {
  int64_t row, begin;  // its row; its first element
  int len;             // its elements, at most kPiece
};

// piece q: one 32-bit division (w.Q < 2^32 when w.P > 1, checked on the host), none for short rows
__device__ __forceinline__ Piece piece_of(const Walk& w, int64_t q) {
  const int64_t row =
      w.P == 1 ? q : static_cast<int64_t>(static_cast<uint32_t>(q) / static_cast<uint32_t>(w.P));
  const int64_t start = (q - row * w.P) * kPiece;
  return {row, row * w.C + start, static_cast<int>(min(w.C - start, kPiece))};
}

// Calls body(q, piece) for this warp's pieces; all lanes of a warp take the same pieces.
template <class Body> __device__ __forceinline__ void for_pieces(const Walk& w, const Body& body) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / vae::kWarp; q < w.Q;
       q += warps)
    body(q, piece_of(w, q));
}

// Walks the lane's groups of a piece: pair(i) for each two whole steps (branch-free path, the
// groups i and i + kStep), then one(i, valid) for the lane's remaining groups (guarded path).
template <class Pair, class One>
__device__ __forceinline__ void for_groups(const Walk& w, const Piece& pc, const Pair& pair,
                                           const One& one) {
  const int lane = threadIdx.x % vae::kWarp;
  const int pairs = (pc.len / (2 * kStep)) & w.vec;  // a mask, not a branch: no predicate to keep
  for (int s = 0; s < pairs; ++s) pair(pc.begin + s * 2 * kStep + 4 * lane);
  for (int off = pairs * 2 * kStep + 4 * lane; off < pc.len; off += kStep)
    one(pc.begin + off, min(4, pc.len - off));
}

// ---------------------------------------------------------------------------------------------
// reductions

// A __device__ variable per device, zeroed when the module loads; each launch that reduces across
// blocks uses one counter and leaves it at 0 (atomicInc wraps).
constexpr unsigned kCounters = 65536;
__device__ unsigned g_counters[kCounters];

// Ends a piece's sum: the warp's total, written to out[row] (a row of one piece) or to its partial.
template <class T, class S>
__device__ __forceinline__ void piece_done(const Walk& w, int64_t q, const Piece& pc, T acc,
                                           T scale, S* out, T* partials) {
  acc = vae::warp_sum(acc);
  if (threadIdx.x % vae::kWarp != 0) return;
  if (w.P == 1)
    out[pc.row] = static_cast<S>(scale * acc);
  else
    partials[q] = acc;
}

// After all pieces (every thread of every block calls it when w.P > 1): the last block to arrive
// writes out[r] = scale * (the sum of row r's partials, in piece order).
template <class T, class S>
__device__ void finish_rows(const Walk& w, const T* partials, T scale, S* out, unsigned slot) {
  __shared__ bool last;
  __threadfence();  // this block's partials are visible before it counts itself done
  __syncthreads();
  if (threadIdx.x == 0) last = atomicInc(&g_counters[slot], gridDim.x - 1) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int64_t rows = w.rows;
  if (rows == 1) {  // the whole block: thread t sums partials t, t + kThreads, ...; a fixed tree
    T s = 0;
    for (int64_t p = threadIdx.x; p < w.P; p += kThreads) s += __ldcg(partials + p);
    s = vae::block_sum(s);
    if (threadIdx.x == 0) out[0] = static_cast<S>(scale * s);
    return;
  }
  const int lane = threadIdx.x % vae::kWarp;
  for (int64_t r = threadIdx.x / vae::kWarp; r < rows; r += kWarps) {  // a warp per row
    T s = 0;
    for (int64_t p = lane; p < w.P; p += vae::kWarp) s += __ldcg(partials + r * w.P + p);
    s = vae::warp_sum(s);
    if (lane == 0) out[r] = static_cast<S>(scale * s);
  }
}

// ---------------------------------------------------------------------------------------------
// element functors (the math is kernels/vae_math.h)

struct BceFwd {
  template <class T> __device__ T operator()(const T* x) const { return vae::bce(x[0], x[1]); }
};
// weighted: inputs (logits, target, [weight if W], [pos_weight if PW]), all present (a null
// pointer check per load would put a branch on the full-tile path); an absent weight is 1
template <bool W, bool PW> struct BceW {
  template <class T> __device__ static T weight(const T* x) { return W ? x[2] : T(1); }
  template <class T> __device__ static T pos_weight(const T* x) { return PW ? x[2 + W] : T(1); }
};
template <bool W, bool PW> struct BceWFwd : BceW<W, PW> {
  template <class T> __device__ T operator()(const T* x) const {
    return vae::bce_w(x[0], x[1], this->weight(x), this->pos_weight(x));
  }
};
struct GnllFwd {
  template <class T> __device__ T operator()(const T* x) const {
    return vae::gauss_nll(x[0], x[1], x[2]);
  }
};
// logvar as the KL and sampling kernels read it: as stored (NoClamp), or clamped to [lo, hi] with
// torch.clamp's gradient (Bounds: the logvar_min/max of the ops, diffusers' [-30, 20]); a type, so
// that the kernels without bounds stay as they were
struct NoClamp {
  template <class T> __device__ T operator()(T lv) const { return lv; }
  template <class T> __device__ T grad(T g, T) const { return g; }
};
struct Bounds {
  // the bounds in the kernels' math type (opmath: float, or double); float copies, because
  // converting the doubles where they are used spilled sample_forward<KL clamp> to local memory
  float lo_f, hi_f;
  double lo_d, hi_d;
  template <class T> __device__ T lo() const { if constexpr (sizeof(T) == 8) return lo_d; else return lo_f; }
  template <class T> __device__ T hi() const { if constexpr (sizeof(T) == 8) return hi_d; else return hi_f; }
  template <class T> __device__ T operator()(T lv) const {
    return vae::clamp_logvar(lv, lo<T>(), hi<T>());
  }
  template <class T> __device__ T grad(T g, T lv) const {
    return vae::clamp_grad(g, lv, lo<T>(), hi<T>());
  }
};
Bounds bounds_of(const LogvarClamp& c) {
  return {static_cast<float>(c.lo), static_cast<float>(c.hi), c.lo, c.hi};
}

template <class C> struct KlStdFwd {
  C c;
  template <class T> __device__ T operator()(const T* x) const { return vae::kl_std(x[0], c(x[1])); }
};
template <class C> struct KlFwd {
  static constexpr int kRequired = 2;  // the priors may be absent (null: zeros)
  C c;
  template <class T> __device__ T operator()(const T* x) const {
    return vae::kl(x[0], c(x[1]), x[2], x[3]);
  }
};
struct BceBwd {
  static constexpr int kRequiredOut = 1;  // the target's gradient may be unwanted (null)
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    o[0] = vae::bce_grad_logits(g, x[0], x[1]);
    o[1] = vae::bce_grad_target(g, x[0]);
  }
};
template <bool W, bool PW> struct BceWBwd : BceW<W, PW> {
  static constexpr int kRequiredOut = 1;
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    vae::bce_w_grad(g, x[0], x[1], this->weight(x), this->pos_weight(x), &o[0], &o[1]);
  }
};
struct GnllBwd {
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    vae::gauss_nll_grad(g, x[0], x[1], x[2], &o[0], &o[1]);
  }
};
template <class C> struct KlStdBwd {
  C c;
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    vae::kl_std_grad(g, x[0], c(x[1]), &o[0], &o[1]);
    o[1] = c.grad(o[1], x[1]);
  }
};
template <class C> struct KlBwd {
  static constexpr int kRequired = 2;
  static constexpr int kRequiredOut = 2;  // the prior logvar's gradient may be unwanted
  C c;
  template <class T> __device__ void operator()(T g, const T* x, T* o) const {
    vae::kl_grad(g, x[0], c(x[1]), x[2], x[3], &o[0], &o[1], &o[2]);
    o[1] = c.grad(o[1], x[1]);
  }
};

// inputs a functor needs: all of them unless it says how many (F::kRequired); the others may be
// null pointers, read as zeros
template <class F, class = void> struct Required { static constexpr int value = 1 << 30; };
template <class F> struct Required<F, std::void_t<decltype(F::kRequired)>> {
  static constexpr int value = F::kRequired;
};
template <class F, class = void> struct RequiredOut { static constexpr int value = 1 << 30; };
template <class F> struct RequiredOut<F, std::void_t<decltype(F::kRequiredOut)>> {
  static constexpr int value = F::kRequiredOut;
};

// input x[a] of a group: a required input is read directly, the others through load4_opt
template <class F, class T, class S>
__device__ __forceinline__ void load_input(int a, const S* p, int64_t i, int valid, bool full,
                                           T out[4]) {
  if (a < Required<F>::value) {
    if (full)
      load4(p, i, out);
    else
      load4(p, i, valid, out);
  } else {
    load4_opt(p, i, valid, full, out);
  }
}

// input / output pointers of a loss kernel; only the KL's priors may be null
template <class S> struct Ptrs {
  const S* p[4];
};
template <class S> struct OutPtrs {
  S* p[3];
};

// ---------------------------------------------------------------------------------------------
// kernels

// An elementwise loss over NIN inputs: its terms (REDUCE false) or scale * their row sums, stored
// as O (S, or float for a 16-bit S: out_dtype)
template <int NIN, bool REDUCE, class S, class F, class O>
__global__ void __launch_bounds__(kThreads, kMinBlocks<S>)
    loss_forward_kernel(Ptrs<S> in, Walk w, at::opmath_type<S> scale, O* out,
                        at::opmath_type<S>* partials, unsigned slot, F f) {
  using T = at::opmath_type<S>;
  for_pieces(w, [&](int64_t q, const Piece& pc) {
    T acc = 0;
    auto group = [&](int64_t i, int valid, bool full, T (&x)[NIN][4]) {
      T v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        T e[NIN];
#pragma unroll
        for (int a = 0; a < NIN; ++a) e[a] = x[a][k];
        v[k] = k < valid ? f(e) : T(0);
      }
      if constexpr (REDUCE)
        acc += group_sum(v);
      else
        store4(out, i, valid, full, v);
    };
    for_groups(
        w, pc,
        [&](int64_t i) {
          T x[NIN][4], y[NIN][4];
#pragma unroll
          for (int a = 0; a < NIN; ++a) {
            load_input<F>(a, in.p[a], i, 4, true, x[a]);
            load_input<F>(a, in.p[a], i + kStep, 4, true, y[a]);
          }
          group(i, 4, true, x);
          group(i + kStep, 4, true, y);
        },
        [&](int64_t i, int valid) {
          T x[NIN][4];
#pragma unroll
          for (int a = 0; a < NIN; ++a) load_input<F>(a, in.p[a], i, valid, false, x[a]);
          group(i, valid, false, x);
        });
    if constexpr (REDUCE) piece_done(w, q, pc, acc, scale, out, partials);
  });
  if constexpr (REDUCE)
    if (w.P > 1) finish_rows(w, partials, scale, out, slot);
}

// The gradients of an elementwise loss. GRAD_EACH: grad has an element per input element (NONE);
// else g = scale * grad[0] (SUM, one row) or scale * grad[row] (ROWS), read once per piece.
template <int NIN, int NOUT, bool GRAD_EACH, class S, class F>
__global__ void __launch_bounds__(kThreads, kMinBlocks<S>)
    loss_backward_kernel(const S* grad, at::opmath_type<S> scale, Ptrs<S> in, OutPtrs<S> out,
                         Walk w, F f) {
  using T = at::opmath_type<S>;
  for_pieces(w, [&](int64_t q, const Piece& pc) {
    const T g_row = GRAD_EACH ? T(0) : scale * static_cast<T>(grad[pc.row]);
    auto group = [&](int64_t i, int valid, bool full, T (&x)[NIN][4], const T (&g)[4]) {
      T o[NOUT][4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        T e[NIN], r[NOUT];
#pragma unroll
        for (int a = 0; a < NIN; ++a) e[a] = x[a][k];
        f(GRAD_EACH ? g[k] : g_row, e, r);
#pragma unroll
        for (int b = 0; b < NOUT; ++b) o[b][k] = r[b];
      }
#pragma unroll
      for (int b = 0; b < NOUT; ++b)
        if (b < RequiredOut<F>::value || out.p[b] != nullptr)
          store4(out.p[b], i, valid, full, o[b]);
    };
    for_groups(
        w, pc,
        [&](int64_t i) {
          T x[NIN][4], y[NIN][4], gx[4] = {}, gy[4] = {};
#pragma unroll
          for (int a = 0; a < NIN; ++a) {
            load_input<F>(a, in.p[a], i, 4, true, x[a]);
            load_input<F>(a, in.p[a], i + kStep, 4, true, y[a]);
          }
          if constexpr (GRAD_EACH) {
            load4(grad, i, gx);
            load4(grad, i + kStep, gy);
          }
          group(i, 4, true, x, gx);
          group(i + kStep, 4, true, y, gy);
        },
        [&](int64_t i, int valid) {
          T x[NIN][4], g[4] = {};
#pragma unroll
          for (int a = 0; a < NIN; ++a) load_input<F>(a, in.p[a], i, valid, false, x[a]);
          if constexpr (GRAD_EACH) load4(grad, i, valid, g);
          group(i, valid, false, x, g);
        });
  });
}

// eps of the 4 elements of flat index j .. j+3 (docs/rng.md); aligned: j % 4 == 0
__device__ __forceinline__ void eps_group(uint64_t seed, uint64_t offset, int64_t j, bool aligned,
                                          float e[4]) {
  if (aligned)
    vae::randn4(seed, offset, static_cast<uint64_t>(j) >> 2, e);
  else
    vae::eps4(seed, offset, static_cast<uint64_t>(j), e);
}

// reparameterize / sample_and_kl forward: z for every sample and (KL) the KL row sums of mu/logvar
template <bool KL, class S, class C>
__global__ void __launch_bounds__(kThreads, kMinBlocks<S>)
    sample_forward_kernel(const S* mu, const S* lv, const int64_t* philox, int64_t samples,
                          int64_t N, Walk w, S* z, at::opmath_type<S>* partials, unsigned slot,
                          S* kl, C c) {
  using T = at::opmath_type<S>;
  const uint64_t seed = static_cast<uint64_t>(__ldg(philox));
  const uint64_t offset = static_cast<uint64_t>(__ldg(philox + 1));
  for_pieces(w, [&](int64_t q, const Piece& pc) {
    T acc = 0;
    auto group = [&](int64_t i, int valid, bool full, const T (&m)[4], const T (&raw)[4]) {
      T sd[4], l[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        l[k] = c(raw[k]);
        sd[k] = vae::std_of(l[k]);
      }
      if constexpr (KL) {  // e^logvar as std * std: one exp per element, not two
        T v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
          v[k] = k < valid ? vae::kl_std_var(m[k], l[k], sd[k] * sd[k]) : T(0);
        acc += group_sum(v);
      }
      int64_t j = i;  // flat index of element i of sample s: s * N + i
      for (int64_t s = 0; s < samples; ++s, j += N) {
        float e[4];
        eps_group(seed, offset, j, full, e);
        T out[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) out[k] = vae::sample(m[k], sd[k], static_cast<T>(e[k]));
        store4(z, j, valid, full, out);
      }
    };
    for_groups(
        w, pc,
        [&](int64_t i) {
          T m[4], l[4], m2[4], l2[4];
          load4(mu, i, m);
          load4(lv, i, l);
          load4(mu, i + kStep, m2);
          load4(lv, i + kStep, l2);
          group(i, 4, true, m, l);
          group(i + kStep, 4, true, m2, l2);
        },
        [&](int64_t i, int valid) {
          T m[4], l[4];
          load4(mu, i, valid, m);
          load4(lv, i, valid, l);
          group(i, valid, false, m, l);
        });
    if constexpr (KL) piece_done(w, q, pc, acc, T(1), kl, partials);
  });
  if constexpr (KL)
    if (w.P > 1) finish_rows(w, partials, at::opmath_type<S>(1), kl, slot);
}

// reparameterize_backward / sample_and_kl_backward, replaying eps: grad_logvar and (KL) grad_mu
template <bool KL, class S, class C>
__global__ void __launch_bounds__(kThreads, kMinBlocks<S>)
    sample_backward_kernel(const S* gz, const S* gkl, const S* mu, const S* lv,
                           const int64_t* philox, int64_t samples, int64_t N, Walk w, S* gmu,
                           S* glv, C c) {
  using T = at::opmath_type<S>;
  const uint64_t seed = static_cast<uint64_t>(__ldg(philox));
  const uint64_t offset = static_cast<uint64_t>(__ldg(philox + 1));
  for_pieces(w, [&](int64_t q, const Piece& pc) {
    const T gk = KL ? static_cast<T>(gkl[pc.row]) : T(0);  // grad_kl of the piece's row
    // g0: grad_z of sample 0, loaded by the caller before any RNG
    auto group = [&](int64_t i, int valid, bool full, const T (&m)[4], const T (&l)[4],
                     const T (&g0)[4]) {
      T gm[4], gl[4], sd[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        sd[k] = vae::std_of(c(l[k]));
        gm[k] = gl[k] = T(0);
        if constexpr (KL) vae::kl_std_grad_var(gk, m[k], sd[k] * sd[k], &gm[k], &gl[k]);
      }
      int64_t j = i;
      for (int64_t s = 0; s < samples; ++s, j += N) {
        T g[4];
        if (s == 0) {
#pragma unroll
          for (int k = 0; k < 4; ++k) g[k] = g0[k];
        } else if (full) {
          load4(gz, j, g);
        } else {
          load4(gz, j, valid, g);
        }
        float e[4];
        eps_group(seed, offset, j, full, e);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          gl[k] += vae::sample_grad_logvar(g[k], sd[k], static_cast<T>(e[k]));
          gm[k] += g[k];
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) gl[k] = c.grad(gl[k], l[k]);  // l: logvar before the clamp
      store4(glv, i, valid, full, gl);
      if constexpr (KL) store4(gmu, i, valid, full, gm);
    };
    for_groups(
        w, pc,
        [&](int64_t i) {
          T m[4] = {}, l[4], g[4], m2[4] = {}, l2[4], g2[4];
          load4(lv, i, l);
          load4(lv, i + kStep, l2);
          if constexpr (KL) {
            load4(mu, i, m);
            load4(mu, i + kStep, m2);
          }
          load4(gz, i, g);
          load4(gz, i + kStep, g2);
          group(i, 4, true, m, l, g);
          group(i + kStep, 4, true, m2, l2, g2);
        },
        [&](int64_t i, int valid) {
          T m[4] = {}, l[4], g[4];
          load4(lv, i, valid, l);
          if constexpr (KL) load4(mu, i, valid, m);
          load4(gz, i, valid, g);
          group(i, valid, false, m, l, g);
        });
  });
}

// ---------------------------------------------------------------------------------------------
// launchers

// Blocks of a launch over w.Q pieces: no more than fit on the device at once (the occupancy API,
// cached per kernel and device), no more than there are pieces for, at least 1.
template <auto Kernel> int grid_for(const Walk& w, int device) {
  static std::array<std::atomic<int>, 64> cache;  // zero-initialised: static storage
  int resident = device >= 0 && device < 64 ? cache[device].load(std::memory_order_relaxed) : 0;
  if (resident == 0) {
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, 0));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    resident = std::max(1, per_sm) * std::max(1, sms);
    if (device >= 0 && device < 64) cache[device].store(resident, std::memory_order_relaxed);
  }
  const int64_t want = (w.Q + kWarps - 1) / kWarps;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, resident)));
}

// The counter of a launch whose blocks combine partials. Launches that may run at the same time
// must not share one: eager launches on one stream run one after the other and share that
// stream's counter; a launch being captured into a CUDA graph gets a counter of its own for good
// (its replays may run beside anything else).
unsigned counter_slot(int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, unsigned> of_stream;
  static std::map<int, unsigned> used;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool eager = capture == cudaStreamCaptureStatusNone;
  std::lock_guard<std::mutex> lock(mutex);
  if (eager) {
    auto it = of_stream.find({device, stream});
    if (it != of_stream.end()) return it->second;
  }
  unsigned& n = used[device];
  TORCH_CHECK(n < kCounters, "vae_fast: all ", kCounters, " reduction counters of device ", device,
              " are taken (one per stream, one per reduction captured into a CUDA graph)");
  const unsigned slot = n++;
  if (eager) of_stream[{device, stream}] = slot;
  return slot;
}

// what a launch that reduces rows needs: partials (when rows have several pieces) and a counter
template <class T> struct Reduction {
  at::Tensor buf;  // keeps the partials alive until the launch is queued
  T* partials = nullptr;
  unsigned slot = 0;
};
template <class T>
Reduction<T> reduction_for(const Walk& w, const at::Tensor& like, cudaStream_t stream) {
  Reduction<T> r;
  if (w.P == 1) return r;  // each warp writes its rows
  r.buf = at::empty({w.Q}, like.options().dtype(c10::CppTypeToScalarType<T>::value));
  r.partials = r.buf.template data_ptr<T>();
  r.slot = counter_slot(like.get_device(), stream);
  return r;
}

#define VAE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

template <class S> const S* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<S>() : nullptr;
}

// forward of an elementwise loss over inputs[0..NIN) (undefined tensors read as zeros), into an
// output of the inputs' dtype or out_dtype (float32 for 16-bit inputs)
template <int NIN, class F>
at::Tensor loss_forward(const std::array<at::Tensor, 4>& inputs, int64_t reduction, double scale,
                        F f, std::optional<at::ScalarType> out_dtype = std::nullopt) {
  const at::Tensor& x = inputs[0];
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  at::Tensor out = forward_out(x, reduction, out_dtype);
  if (n == 0) return reduction != kNone ? out.zero_() : out;
  const int device = x.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(x.scalar_type(), "vae_fast.loss_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    auto launch = [&](auto* o) {
      using O = std::remove_pointer_t<decltype(o)>;
      Ptrs<scalar_t> in{};
      bool aligned = aligned4(o) || reduction != kNone;
      for (int a = 0; a < NIN; ++a) {
        in.p[a] = ptr_or_null<scalar_t>(inputs[a]);
        aligned = aligned && aligned4(in.p[a]);
      }
      const int64_t rows = reduction == kRows ? rows_of(x) : 1;
      const Walk w = walk_of(rows, n / rows, aligned);
      if (reduction == kNone) {
        constexpr auto kernel = loss_forward_kernel<NIN, false, scalar_t, F, O>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(in, w, T(1), o, nullptr, 0,
                                                                      f);
      } else {
        const Reduction<T> r = reduction_for<T>(w, x, stream);
        constexpr auto kernel = loss_forward_kernel<NIN, true, scalar_t, F, O>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
            in, w, static_cast<T>(scale), o, r.partials, r.slot, f);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if constexpr (sizeof(scalar_t) == 2) {
      if (out.scalar_type() == at::kFloat) return launch(out.data_ptr<float>());
    }
    launch(out.data_ptr<scalar_t>());
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
  const int device = x.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(x.scalar_type(), "vae_fast.loss_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    Ptrs<scalar_t> in{};
    OutPtrs<scalar_t> out{};
    bool aligned = reduction != kNone || aligned4(grad.data_ptr<scalar_t>());
    for (int a = 0; a < NIN; ++a) {
      in.p[a] = ptr_or_null<scalar_t>(inputs[a]);
      aligned = aligned && aligned4(in.p[a]);
    }
    for (int b = 0; b < NOUT; ++b) {
      out.p[b] = outputs[b].defined() ? outputs[b].data_ptr<scalar_t>() : nullptr;
      aligned = aligned && aligned4(out.p[b]);
    }
    const int64_t rows = reduction == kRows ? rows_of(x) : 1;
    const Walk w = walk_of(rows, n / rows, aligned);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    if (reduction == kNone) {
      constexpr auto kernel = loss_backward_kernel<NIN, NOUT, true, scalar_t, F>;
      kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(g, T(1), in, out, w, f);
    } else {
      constexpr auto kernel = loss_backward_kernel<NIN, NOUT, false, scalar_t, F>;
      kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
          g, static_cast<T>(scale), in, out, w, f);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// body(NoClamp{}) or body(Bounds{...}): the kernels of the ops with logvar bounds, compiled twice
template <class Body> void with_clamp(const LogvarClamp& c, const Body& body) {
  if (c.on)
    body(bounds_of(c));
  else
    body(NoClamp{});
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
  const int device = a.mu.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(a.mu.scalar_type(), "vae_fast.sample", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* pm = a.mu.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    scalar_t* pz = a.z.data_ptr<scalar_t>();
    const bool aligned = aligned4(pm) && aligned4(pl) && aligned4(pz);
    with_clamp(a.clamp, [&](auto c) {
      using C = decltype(c);
      if (with_kl) {
        const Walk w = walk_of(R, N / R, aligned);
        const Reduction<T> r = reduction_for<T>(w, a.mu, stream);
        constexpr auto kernel = sample_forward_kernel<true, scalar_t, C>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
            pm, pl, ph.data_ptr<int64_t>(), num_samples, N, w, pz, r.partials, r.slot,
            a.kl.data_ptr<scalar_t>(), c);
      } else {
        const Walk w = walk_of(1, N, aligned);
        constexpr auto kernel = sample_forward_kernel<false, scalar_t, C>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
            pm, pl, ph.data_ptr<int64_t>(), num_samples, N, w, pz, nullptr, 0, nullptr, c);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// grad_logvar (and with grad_kl, grad_mu), replaying eps
void sample_backward(const SampleGradArgs& a, const at::Tensor& philox, int64_t num_samples) {
  const c10::cuda::CUDAGuard guard(a.logvar.device());
  const int64_t N = a.N, R = a.R;
  if (N == 0) return;
  const at::Tensor ph = philox.contiguous();
  const int device = a.logvar.get_device();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  VAE_DISPATCH(a.logvar.scalar_type(), "vae_fast.sample_backward", [&] {
    const scalar_t* pgz = a.grad_z.data_ptr<scalar_t>();
    const scalar_t* pl = a.logvar.data_ptr<scalar_t>();
    scalar_t* pgl = a.grad_logvar.data_ptr<scalar_t>();
    const bool aligned = aligned4(pgz) && aligned4(pl) && aligned4(pgl);
    with_clamp(a.clamp, [&](auto c) {
      using C = decltype(c);
      if (a.mu.defined()) {
        const scalar_t* pm = a.mu.data_ptr<scalar_t>();
        scalar_t* pgm = a.grad_mu.data_ptr<scalar_t>();
        const Walk w = walk_of(R, N / R, aligned && aligned4(pm) && aligned4(pgm));
        constexpr auto kernel = sample_backward_kernel<true, scalar_t, C>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
            pgz, a.grad_kl.data_ptr<scalar_t>(), pm, pl, ph.data_ptr<int64_t>(), num_samples, N,
            w, pgm, pgl, c);
      } else {
        const Walk w = walk_of(1, N, aligned);
        constexpr auto kernel = sample_backward_kernel<false, scalar_t, C>;
        kernel<<<grid_for<kernel>(w, device), kThreads, 0, stream>>>(
            pgz, nullptr, nullptr, pl, ph.data_ptr<int64_t>(), num_samples, N, w, nullptr, pgl,
            c);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

using Sampling = SamplingOps<Backend::kCuda, sample, sample_backward>;

at::Tensor gaussian_kl(const at::Tensor& mu, const at::Tensor& logvar,
                       const std::optional<at::Tensor>& prior_mu,
                       const std::optional<at::Tensor>& prior_logvar, int64_t reduction,
                       double scale, std::optional<at::ScalarType> out_dtype,
                       std::optional<double> logvar_min, std::optional<double> logvar_max) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCuda,
                           logvar_min, logvar_max);
  at::Tensor out;
  with_clamp(a.clamp, [&](auto c) {
    using C = decltype(c);
    out = a.has_prior()
              ? loss_forward<4>({a.mu, a.logvar, a.prior_mu, a.prior_logvar}, reduction, scale,
                                KlFwd<C>{c}, out_dtype)
              : loss_forward<2>({a.mu, a.logvar, at::Tensor(), at::Tensor()}, reduction, scale,
                                KlStdFwd<C>{c}, out_dtype);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    int64_t reduction, double scale, std::optional<double> logvar_min,
    std::optional<double> logvar_max) {
  const KlArgs a = kl_args(mu, logvar, prior_mu, prior_logvar, reduction, Backend::kCuda,
                           logvar_min, logvar_max, &grad);
  const bool has_plv = a.prior_logvar.defined();
  at::Tensor gmu = grad_out(a.mu), glv = grad_out(a.mu), gplv = grad_out(a.mu, has_plv);
  with_clamp(a.clamp, [&](auto c) {
    using C = decltype(c);
    if (!a.has_prior())
      loss_backward<2, 2>(a.grad, {a.mu, a.logvar, at::Tensor(), at::Tensor()},
                          {gmu, glv, at::Tensor()}, reduction, scale, KlStdBwd<C>{c});
    else
      loss_backward<4, 3>(a.grad, {a.mu, a.logvar, a.prior_mu, a.prior_logvar},
                          {gmu, glv, has_plv ? gplv : at::Tensor()}, reduction, scale,
                          KlBwd<C>{c});
  });
  return {gmu, glv, gplv};
}

at::Tensor bernoulli_nll(const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
                         double scale, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& pos_weight,
                         std::optional<at::ScalarType> out_dtype) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCuda, nullptr, weight, pos_weight);
  if (!a.weighted())  // the unweighted kernels, unchanged
    return loss_forward<2>({a.logits, a.target, at::Tensor(), at::Tensor()}, reduction, scale,
                           BceFwd{}, out_dtype);
  if (!a.pos_weight.defined())
    return loss_forward<3>({a.logits, a.target, a.weight, at::Tensor()}, reduction, scale,
                           BceWFwd<true, false>{}, out_dtype);
  if (!a.weight.defined())
    return loss_forward<3>({a.logits, a.target, a.pos_weight, at::Tensor()}, reduction, scale,
                           BceWFwd<false, true>{}, out_dtype);
  return loss_forward<4>({a.logits, a.target, a.weight, a.pos_weight}, reduction, scale,
                         BceWFwd<true, true>{}, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> bernoulli_nll_backward(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target, int64_t reduction,
    double scale, bool target_grad, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight) {
  const BceArgs a = bce_args(logits, target, reduction, Backend::kCuda, &grad, weight, pos_weight);
  at::Tensor gx = grad_out(a.logits), gt = grad_out(a.logits, target_grad);
  const std::array<at::Tensor, 3> outs{gx, target_grad ? gt : at::Tensor(), at::Tensor()};
  if (!a.weighted())
    loss_backward<2, 2>(a.grad, {a.logits, a.target, at::Tensor(), at::Tensor()}, outs, reduction,
                        scale, BceBwd{});
  else if (!a.pos_weight.defined())
    loss_backward<3, 2>(a.grad, {a.logits, a.target, a.weight, at::Tensor()}, outs, reduction,
                        scale, BceWBwd<true, false>{});
  else if (!a.weight.defined())
    loss_backward<3, 2>(a.grad, {a.logits, a.target, a.pos_weight, at::Tensor()}, outs, reduction,
                        scale, BceWBwd<false, true>{});
  else
    loss_backward<4, 2>(a.grad, {a.logits, a.target, a.weight, a.pos_weight}, outs, reduction,
                        scale, BceWBwd<true, true>{});
  return {gx, gt};
}

at::Tensor gaussian_nll(const at::Tensor& mean, const at::Tensor& logvar, const at::Tensor& target,
                        int64_t reduction, double scale, std::optional<at::ScalarType> out_dtype) {
  const GnllArgs a = gnll_args(mean, logvar, target, reduction, Backend::kCuda);
  return loss_forward<3>({a.mean, a.logvar, a.target, at::Tensor()}, reduction, scale, GnllFwd{},
                         out_dtype);
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
