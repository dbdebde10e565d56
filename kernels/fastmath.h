// float32 exp / log / log1p / sincos written branch-free, so that a compiler can vectorise host
// loops that call them (libm's scalar calls stop GCC's vectoriser).
//
// log is VAE_HD: vae_log of the RNG contract (docs/rng.md), one sequence of roundings for every
// backend. On the GPU each step is an __f*_rn intrinsic, which nvcc never contracts or reorders; on
// the host the plain operators, with FMAs where GCC forms them (the FMA builds of
// csrc/cpu/ops_cpu.cpp), within the tolerance docs/rng.md states. The rest is host-only: the GPU
// has its own exp and log1p, and double precision uses libm / CUDA (see vae_math.h).
//
// Cephes-style polynomials; errors are a few ulp at most.
#pragma once

#include <cstdint>
#include <cstring>

#include "hd.h"

namespace vae {
namespace fm {

VAE_HD float as_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, 4);
  return f;
#endif
}
VAE_HD int32_t as_int(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, 4);
  return i;
#endif
}

// One rounding each. fma is a * b + c with one rounding on the GPU, and on the host where the
// compiler contracts it (it does in code built for FMA), else two; never a libm call.
VAE_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
VAE_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
VAE_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
VAE_HD float fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return a * b + c;
#endif
}

// round to nearest integer (ties to even) for |x| < 2^22, without a call to rintf
inline float round_int(float x) {
  const float magic = 12582912.0f;  // 1.5 * 2^23
  return (x + magic) - magic;
}

// 2^n for n in [-126, 127], by building the exponent field
inline float pow2i(int32_t n) { return as_float((n + 127) << 23); }

// e^x. NaN stays NaN, +inf gives inf, -inf gives 0.
inline float exp(float x) {
  x = x > 89.0f ? 89.0f : x;  // written as selects so that NaN passes through
  x = x < -104.0f ? -104.0f : x;
  const float n = round_int(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n*ln2, two-part ln2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);  // in [-150, 129]: scale in two halves
  const int32_t n1 = ni >> 1;
  return y * pow2i(n1) * pow2i(ni - n1);
}

// natural log for positive, normal, finite x (the only inputs this package gives it): vae_log of
// the RNG contract (docs/rng.md), in its order of roundings
VAE_HD float log(float x) {
  const int32_t i = as_int(x);
  int32_t e = ((i >> 23) & 0xff) - 126;
  float m = as_float((i & 0x007fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
  const bool small = m < 0.70710678118654752f;
  e = small ? e - 1 : e;
  m = small ? sub(add(m, m), 1.0f) : sub(m, 1.0f);  // m - 1 now in [-0.293, 0.414], exactly
  const float z = mul(m, m);
  float y = 7.0376836292e-2f;
  y = fma(y, m, -1.1514610310e-1f);
  y = fma(y, m, 1.1676998740e-1f);
  y = fma(y, m, -1.2420140846e-1f);
  y = fma(y, m, 1.4249322787e-1f);
  y = fma(y, m, -1.6668057665e-1f);
  y = fma(y, m, 2.0000714765e-1f);
  y = fma(y, m, -2.4999993993e-1f);
  y = fma(y, m, 3.3333331174e-1f);
  y = mul(y, m);
  y = mul(y, z);
  const float ef = static_cast<float>(e);
  y = fma(ef, -2.12194440e-4f, y);
  y = fma(-0.5f, z, y);
  const float t = add(m, y);
  return fma(ef, 0.693359375f, t);
}

// log(1 + x) for x >= 0 (Goldberg: log(u) * x / (u - 1) cancels the rounding of u = 1 + x)
inline float log1p(float x) {
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  const float r = log(u) * (x / d);  // computed unconditionally: a select, not a branch
  return d == 0.0f ? x : r;
}

// sin and cos of x for |x| up to a few thousand (Box-Muller gives [0, 2*pi))
inline void sincos(float x, float* s, float* c) {
  const float k = round_int(x * 0.636619772367581343f);  // nearest multiple of pi/2
  // x - k*pi/2 with pi/2 in three parts, so the reduced argument stays accurate near zeros
  float r = x - k * 1.5703125f;
  r = r - k * 4.837512969970703125e-4f;
  r = r - k * 7.54978995489188216e-8f;
  const float z = r * r;
  const float sr = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float cr = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) *
                       z * z - 0.5f * z + 1.0f;
  const int32_t q = static_cast<int32_t>(k) & 3;  // quadrant
  const float sv = (q & 1) ? cr : sr;
  const float cv = (q & 1) ? sr : cr;
  *s = (q & 2) ? -sv : sv;
  *c = ((q + 1) & 2) ? -cv : cv;
}

}  // namespace fm
}  // namespace vae
