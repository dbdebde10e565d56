// The RNG contract v2 of docs/rng.md (Philox4x32-10 as Triton's tl.randint4x, uint -> uniform,
// a fast Box-Muller), written once for the CPU and CUDA backends.
//
//   eps(seed, offset, i) = normal (i & 3) of the Philox group offset + (i >> 2)
//
// Steps 1-3 (Philox words, uniforms) are exact and bit-identical everywhere. Step 4 is one
// instruction sequence on the GPU (CUDA and Triton give the same bits); the host differs in
// sqrt/sin/cos within a tested tolerance.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastmath.h"
#include "hd.h"

namespace vae {

struct Philox4 {
  uint32_t x[4];
};

// Philox4x32 with 10 rounds on counter (c0, c1, 0, 0) and key (k0, k1), as triton.language.random
VAE_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  const uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  const uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  uint32_t c2 = 0, c3 = 0;
  for (int round = 0; round < 10; ++round) {
#if defined(__CUDA_ARCH__)
    const uint32_t p0 = c0, p2 = c2;
    c0 = __umulhi(kRoundB, p2) ^ c1 ^ k0;
    c2 = __umulhi(kRoundA, p0) ^ c3 ^ k1;
    c1 = kRoundB * p2;
    c3 = kRoundA * p0;
#else
    // one 32x32->64 product gives both halves (vectorises to vpmuludq on x86)
    const uint64_t mb = static_cast<uint64_t>(kRoundB) * c2;
    const uint64_t ma = static_cast<uint64_t>(kRoundA) * c0;
    c0 = static_cast<uint32_t>(mb >> 32) ^ c1 ^ k0;
    c2 = static_cast<uint32_t>(ma >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(mb);
    c3 = static_cast<uint32_t>(ma);
#endif
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// the four raw words for counter `offset + group` (tl.randint4x(seed, offset + group))
VAE_HD Philox4 philox_words(uint64_t seed, uint64_t offset, uint64_t group) {
  const uint64_t c = offset + group;
  return philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// tl.uint_to_uniform_float for 32-bit words: [0, 1), exact (int -> float, one float multiply)
VAE_HD float uint_to_uniform(uint32_t w) {
  int32_t i = static_cast<int32_t>(w);
  i = i < 0 ? ~i : i;
  return static_cast<float>(i) * 4.6566127342e-10f;
}

#if defined(__CUDA_ARCH__)
// the PTX approximations of the contract (no slow paths, no local memory)
__device__ __forceinline__ float sqrt_approx(float x) {
  float r;
  asm("sqrt.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float sin_approx(float x) {
  float r;
  asm("sin.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float cos_approx(float x) {
  float r;
  asm("cos.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
#endif

// Box-Muller of the RNG contract v2 (docs/rng.md) in float32, with its vae_log (fm::log of
// kernels/fastmath.h). On the GPU: the PTX approximations, bit-identical to the Triton backend. On
// the host: std::sqrt and fm::sincos, within the tolerance docs/rng.md states.
VAE_HD void box_muller(float u1, float u2, float* n1, float* n2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
#if defined(__CUDA_ARCH__)
  const float r = sqrt_approx(__fmul_rn(-2.0f, fm::log(u1)));
  const float th = __fmul_rn(6.283185307179586f, u2);
  *n1 = __fmul_rn(r, cos_approx(th));
  *n2 = __fmul_rn(r, sin_approx(th));
#else
  const float r = std::sqrt(-2.0f * fm::log(u1));
  const float th = 6.283185307179586f * u2;
  float s, c;
  fm::sincos(th, &s, &c);
  *n1 = r * c;
  *n2 = r * s;
#endif
}

// the normals of elements 4*group .. 4*group + 3
VAE_HD void randn4(uint64_t seed, uint64_t offset, uint64_t group, float out[4]) {
  const Philox4 w = philox_words(seed, offset, group);
  box_muller(uint_to_uniform(w.x[0]), uint_to_uniform(w.x[1]), &out[0], &out[1]);
  box_muller(uint_to_uniform(w.x[2]), uint_to_uniform(w.x[3]), &out[2], &out[3]);
}

// a[j] for a run-time j in 0..3, with constant indices only: a run-time index would move `a` from
// registers to local memory on the GPU (ptxas reported a 64-byte stack frame)
VAE_HD float pick4(const float a[4], unsigned j) {
  return j == 0 ? a[0] : j == 1 ? a[1] : j == 2 ? a[2] : a[3];
}

// eps of one flat element i (computes its whole group of 4; use randn4 for aligned groups)
VAE_HD float eps(uint64_t seed, uint64_t offset, uint64_t i) {
  float out[4];
  randn4(seed, offset, i >> 2, out);
  return pick4(out, static_cast<unsigned>(i & 3));
}

// eps of the 4 consecutive flat elements i0 .. i0+3 (one group when i0 is a multiple of 4, else
// the two groups they straddle)
VAE_HD void eps4(uint64_t seed, uint64_t offset, uint64_t i0, float out[4]) {
  float a[4];
  randn4(seed, offset, i0 >> 2, a);
  const unsigned shift = static_cast<unsigned>(i0 & 3);
  if (shift == 0) {
    for (int k = 0; k < 4; ++k) out[k] = a[k];
    return;
  }
  float b[4];
  randn4(seed, offset, (i0 >> 2) + 1, b);
  for (unsigned k = 0; k < 4; ++k) out[k] = shift + k < 4 ? pick4(a, shift + k) : pick4(b, shift + k - 4);
}

}  // namespace vae
