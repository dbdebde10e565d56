// Input checks and shape rules shared by the CPU and CUDA launchers (docs/ops.md). The Python layer
// validates first; these TORCH_CHECKs are the second line of defence and name the argument.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace vae_fast {

enum Reduction : int64_t { kNone = 0, kSum = 1, kRows = 2 };

inline void check_float(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.defined(), name, ": expected a tensor, got an undefined one");
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble, name,
              ": expected float16, bfloat16, float32 or float64, got ", t);
}

// `x` must have the dtype and device of `ref` (and its shape unless shape=false)
inline void check_like(const at::Tensor& x, const char* name, const at::Tensor& ref,
                       const char* ref_name, bool shape = true) {
  check_float(x, name);
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(),
              " (of ", ref_name, "), got ", x.scalar_type());
  TORCH_CHECK(x.device() == ref.device(), name, ": expected device ", ref.device(), " (of ",
              ref_name, "), got ", x.device());
  TORCH_CHECK(!shape || x.sizes() == ref.sizes(), name, ": expected shape ", ref.sizes(), " (of ",
              ref_name, "), got ", x.sizes());
}

inline void check_philox(const at::Tensor& philox, const at::Tensor& ref) {
  TORCH_CHECK(philox.defined() && philox.scalar_type() == at::kLong && philox.dim() == 1 &&
                  philox.size(0) == 2,
              "philox: expected an int64 tensor of shape (2,) [seed, offset], got ",
              philox.defined() ? philox.toString() : "undefined", " of shape ",
              philox.defined() ? philox.sizes() : at::IntArrayRef{});
  TORCH_CHECK(philox.device() == ref.device(), "philox: expected device ", ref.device(), ", got ",
              philox.device());
}

inline void check_samples(int64_t num_samples) {
  TORCH_CHECK(num_samples >= 1, "num_samples: expected a positive int, got ", num_samples);
}

inline void check_reduction(int64_t reduction, const at::Tensor& x, const char* name) {
  TORCH_CHECK(reduction == kNone || reduction == kSum || reduction == kRows,
              "reduction: expected 0 (none), 1 (sum) or 2 (rows), got ", reduction, " for ", name);
}

// rows of the ROWS reduction: dim 0 (a 1-d input has rows of one element, a 0-d one is one row)
inline int64_t rows_of(const at::Tensor& x) { return x.dim() == 0 ? 1 : x.size(0); }

// shape of a forward output with this reduction
inline std::vector<int64_t> reduced_shape(const at::Tensor& x, int64_t reduction) {
  if (reduction == kNone) return x.sizes().vec();
  if (reduction == kSum) return {};
  return {rows_of(x)};
}

// `grad` of a backward op: the forward output's shape, the input's dtype and device
inline void check_grad(const at::Tensor& grad, const char* name, const at::Tensor& x,
                       const char* x_name, at::IntArrayRef shape) {
  check_like(grad, name, x, x_name, /*shape=*/false);
  TORCH_CHECK(grad.sizes() == shape, name, ": expected shape ", shape, ", got ", grad.sizes());
}

// shape (num_samples, *mu.shape) of z
inline std::vector<int64_t> sample_shape(const at::Tensor& mu, int64_t num_samples) {
  std::vector<int64_t> s{num_samples};
  for (auto d : mu.sizes()) s.push_back(d);
  return s;
}

}  // namespace vae_fast
