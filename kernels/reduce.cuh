// Warp and block sums for the CUDA kernels (fp32/fp64 accumulators).
#pragma once

#include "hd.h"

namespace vae {

constexpr int kWarp = 32;

template <class T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block; the result is valid in thread 0. Every thread of the block must call
// it (it synchronises). blockDim.x must be a multiple of 32, at most 1024.
template <class T> __device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x / kWarp;
  v = threadIdx.x < nwarps ? partial[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

}  // namespace vae
