// Shared by every header in kernels/: VAE_HD marks a function usable from host and device code.
// Under nvcc it is __host__ __device__; under a plain C++ compiler it is just `inline`.
// kernels/ is torch-free: it includes only the standard library.
#pragma once

#if defined(__CUDACC__)
#define VAE_HD __host__ __device__ __forceinline__
#else
#define VAE_HD inline __attribute__((always_inline))
#endif
