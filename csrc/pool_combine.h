// Shared pieces of the pool_combine ops (contract: dnas_fast/kernels/pool_combine_ref.py): input validation for the
// host wrappers, and the 3x3 window math of the CUDA kernels (the CPU kernels compute the same windows separably,
// cpu/pool_combine_cpu.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

namespace dnas_fast {

// Both pools: kernel 3, padding 1, no ceil mode -> out = (in + 2 - 3) / stride + 1.
inline C10_HOST_DEVICE int64_t pooled_size(int64_t in, int64_t stride) {
  return (in - 1) / stride + 1;
}

// The sizes every host wrapper starts from: x is [N, C, H, W], both pools are [N, C, Ho, Wo].
struct PlaneShape {
  int64_t N, C, H, W, Ho, Wo;
};

inline PlaneShape plane_shape(const at::Tensor& x, int64_t stride) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), pooled_size(x.size(2), stride), pooled_size(x.size(3), stride)};
}

// The 3x3 window of output (oh, ow) clipped to the plane. Max pool pads with -inf and avg pool does not count
// padding (count_include_pad=False), so only in-plane elements matter. argmax is the plane offset of the first
// maximum in row-major order (strict '>'), a NaN wins as in PyTorch's max_pool2d: its backward routes the
// gradient there.
template <typename scalar_t, typename acc_t>
struct Window {
  int64_t hs, he, ws, we;  // in-plane rows [hs, he) and columns [ws, we)
  acc_t max;
  acc_t mean;
  int64_t argmax;
  int count;

  C10_HOST_DEVICE Window(const scalar_t* plane, int64_t H, int64_t W, int64_t oh, int64_t ow, int64_t stride) {
    const int64_t h0 = oh * stride - 1, w0 = ow * stride - 1;
    hs = h0 < 0 ? 0 : h0;
    ws = w0 < 0 ? 0 : w0;
    he = h0 + 3 < H ? h0 + 3 : H;
    we = w0 + 3 < W ? w0 + 3 : W;
    argmax = hs * W + ws;
    max = static_cast<acc_t>(plane[argmax]);
    acc_t sum = 0;
    for (int64_t h = hs; h < he; ++h) {
      for (int64_t w = ws; w < we; ++w) {
        const acc_t v = static_cast<acc_t>(plane[h * W + w]);
        if (v > max || at::_isnan(v)) {
          max = v;
          argmax = h * W + w;
        }
        sum += v;
      }
    }
    count = static_cast<int>((he - hs) * (we - ws));
    mean = sum / static_cast<acc_t>(count);
  }
};

// Validation shared by the CPU and CUDA host wrappers: TORCH_CHECK with what was expected and what was got.
inline void check_x(const char* op, const at::Tensor& x, int64_t stride) {
  TORCH_CHECK(x.dim() == 4, op, ": expected x to be a 4-D tensor [N, C, H, W], got a ", x.dim(), "-D tensor of shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected x to have a floating dtype, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, op, ": expected H >= 1 and W >= 1, got x of shape ", x.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": expected stride 1 or 2, got ", stride);
}

inline void check_g(const char* op, const at::Tensor& x, const at::Tensor& g, int64_t stride) {
  const std::vector<int64_t> want = {x.size(0), x.size(1), pooled_size(x.size(2), stride),
                                     pooled_size(x.size(3), stride)};
  TORCH_CHECK(g.sizes() == at::IntArrayRef(want), op, ": expected g of shape ", at::IntArrayRef(want),
              " (the pooled shape of x at stride ", stride, "), got ", g.sizes());
  TORCH_CHECK(g.device() == x.device(), op, ": expected g on x's device ", x.device(), ", got ", g.device());
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), op, ": expected g to have x's dtype ", x.scalar_type(), ", got ",
              g.scalar_type());
}

inline void check_coef(const char* op, const at::Tensor& x, const at::Tensor& coef, int64_t rows) {
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == rows && coef.size(1) == x.size(1), op, ": expected coef of shape [",
              rows, ", C] = [", rows, ", ", x.size(1), "], got ", coef.sizes());
  TORCH_CHECK(coef.device() == x.device(), op, ": expected coef on x's device ", x.device(), ", got ",
              coef.device());
  TORCH_CHECK(at::isFloatingType(coef.scalar_type()), op, ": expected coef to have a floating dtype, got ",
              coef.scalar_type());
}

inline void check_w_skip(const char* op, const at::Tensor& x, const c10::optional<at::Tensor>& w_skip,
                         int64_t stride) {
  if (!w_skip.has_value()) return;
  // At stride 2 the DARTS skip is FactorizedReduce (it has parameters) and x has another shape than the output.
  TORCH_CHECK(stride == 1, op, ": w_skip is only defined at stride 1, got stride ", stride);
  TORCH_CHECK(w_skip->numel() == 1, op, ": expected w_skip to be a one-element tensor, got shape ", w_skip->sizes());
  TORCH_CHECK(w_skip->device() == x.device(), op, ": expected w_skip on x's device ", x.device(), ", got ",
              w_skip->device());
  TORCH_CHECK(at::isFloatingType(w_skip->scalar_type()), op, ": expected w_skip to have a floating dtype, got ",
              w_skip->scalar_type());
}

// Per-channel sums are returned in x's math dtype: float32 for half/bfloat16/float32 inputs, float64 for float64.
inline at::ScalarType stats_dtype(const at::Tensor& x) {
  return at::toOpMathType(x.scalar_type());
}

}  // namespace dnas_fast
