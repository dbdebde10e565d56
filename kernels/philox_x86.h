// Philox4x32-10 of kernels/philox.h over 16 (AVX-512) or 8 (AVX2) counters at once, for the CPU
// backend. Compilers emulate the 32x32->64 products of the scalar code with full 64-bit multiplies
// when they vectorise it (3x slower); here each product is one vpmuludq per half of the lanes.
// Same rounds, same words: tests compare it with the scalar code and with Triton bit for bit.
//
// philox_words_<isa>(seed, first, n, w): words of counters first .. first+n-1 into w[0..3][0..n).
// Host only (x86-64 with GCC or Clang); callers check the CPU with __builtin_cpu_supports.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define VAE_HAVE_PHILOX_X86 1

// GCC 12 warns about the deliberately undefined upper lanes inside its own AVX-512 intrinsics
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "philox.h"

namespace vae {
namespace x86 {

constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;

// the scalar code for the tail counters
inline void philox_words_tail(uint64_t seed, uint64_t first, int64_t begin, int64_t n,
                              uint32_t* const w[4]) {
  for (int64_t g = begin; g < n; ++g) {
    const Philox4 p = philox_words(seed, first, static_cast<uint64_t>(g));
    for (int k = 0; k < 4; ++k) w[k][g] = p.x[k];
  }
}

// hi and lo words of K * x per 32-bit lane
__attribute__((target("avx512f"))) inline void mul_hilo(__m512i K, __m512i x, __m512i* hi,
                                                         __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(x, K);                        // lanes 0, 2, ...
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), K);  // lanes 1, 3, ...
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) inline void philox_words_avx512(uint64_t seed, uint64_t first,
                                                                    int64_t n, uint32_t* const w[4]) {
  const __m512i A = _mm512_set1_epi32(static_cast<int>(kRoundA));
  const __m512i B = _mm512_set1_epi32(static_cast<int>(kRoundB));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t g = 0;
  for (; g + 16 <= n; g += 16) {
    const uint64_t base = first + static_cast<uint64_t>(g);
    const __m512i lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    __m512i c0 = _mm512_add_epi32(lo, lane);
    const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lo);  // the low word wrapped
    __m512i c1 = _mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1));
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m512i hA, lA, hB, lB;
      mul_hilo(A, c0, &hA, &lA);
      mul_hilo(B, c2, &hB, &lB);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hB, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hA, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c1 = lB;
      c3 = lA;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    _mm512_storeu_si512(w[0] + g, c0);
    _mm512_storeu_si512(w[1] + g, c1);
    _mm512_storeu_si512(w[2] + g, c2);
    _mm512_storeu_si512(w[3] + g, c3);
  }
  philox_words_tail(seed, first, g, n, w);
}

__attribute__((target("avx2"))) inline void mul_hilo(__m256i K, __m256i x, __m256i* hi,
                                                      __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, K);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), K);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) inline void philox_words_avx2(uint64_t seed, uint64_t first,
                                                               int64_t n, uint32_t* const w[4]) {
  const __m256i A = _mm256_set1_epi32(static_cast<int>(kRoundA));
  const __m256i B = _mm256_set1_epi32(static_cast<int>(kRoundB));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  int64_t g = 0;
  for (; g + 8 <= n; g += 8) {
    const uint64_t base = first + static_cast<uint64_t>(g);
    const __m256i lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    const __m256i hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    __m256i c0 = _mm256_add_epi32(lo, lane);
    // the low word wrapped iff c0 < lo unsigned (a signed compare after flipping the sign bits)
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(hi, wrapped);  // wrapped lanes are -1
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i hA, lA, hB, lB;
      mul_hilo(A, c0, &hA, &lA);
      mul_hilo(B, c2, &hB, &lB);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hB, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hA, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lB;
      c3 = lA;
      k0 += kKeyA;
      k1 += kKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[0] + g), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[1] + g), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[2] + g), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[3] + g), c3);
  }
  philox_words_tail(seed, first, g, n, w);
}

}  // namespace x86
}  // namespace vae

#pragma GCC diagnostic pop
#endif
