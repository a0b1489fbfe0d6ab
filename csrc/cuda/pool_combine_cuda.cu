// CUDA kernels of the pool_combine ops (schemas in ../pool_combine.cpp, contract in
// dnas_fast/kernels/pool_combine_ref.py): float32/float64/float16/bfloat16 with at::opmath_type accumulation
// (float for the 16-bit types). Kept simple: one thread per output element for the maps, one block per channel
// with a fixed-order tree reduction for the per-channel sums (deterministic). Host wrappers make x and g
// NCHW-contiguous, as on the CPU. Only c10/cuda headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE
// headers that a bare nvcc install lacks.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "pool_combine.h"

namespace dnas_fast {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 30);  // grid-stride loops cover the rest
}

template <typename scalar_t, typename acc_t>
__global__ void pool_combine_kernel(const scalar_t* x, const acc_t* coef, const acc_t* w_skip, scalar_t* out,
                                    int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t stride,
                                    int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{blockDim.x} * gridDim.x) {
    const int64_t ow = i % Wo, oh = (i / Wo) % Ho, p = i / (Ho * Wo), c = p % C;
    const scalar_t* plane = x + p * H * W;
    const Window<scalar_t, acc_t> win(plane, H, W, oh, ow, stride);
    acc_t v = coef[c] * win.max + coef[C + c] * win.mean + coef[2 * C + c];
    if (w_skip != nullptr) v += *w_skip * static_cast<acc_t>(plane[oh * W + ow]);  // stride 1: same index
    out[i] = static_cast<scalar_t>(v);
  }
}

// One thread per element of x: gathers from the (at most 3x3) output windows that contain it, so no atomics.
template <typename scalar_t, typename acc_t>
__global__ void pool_combine_backward_kernel(const scalar_t* x, const scalar_t* g, const acc_t* coef,
                                             const acc_t* w_skip, scalar_t* dx, int64_t C, int64_t H, int64_t W,
                                             int64_t Ho, int64_t Wo, int64_t stride, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{blockDim.x} * gridDim.x) {
    const int64_t w = i % W, h = (i / W) % H, p = i / (H * W), c = p % C;
    const scalar_t* plane = x + p * H * W;
    const scalar_t* gp = g + p * Ho * Wo;
    acc_t acc = w_skip != nullptr ? *w_skip * static_cast<acc_t>(gp[h * Wo + w]) : acc_t(0);
    // Output oh covers rows [oh * stride - 1, oh * stride + 1] -> oh in [ceil((h - 1) / stride), (h + 1) / stride].
    const int64_t oh0 = h == 0 ? 0 : (h + stride - 2) / stride, oh1 = (h + 1) / stride < Ho ? (h + 1) / stride : Ho - 1;
    const int64_t ow0 = w == 0 ? 0 : (w + stride - 2) / stride, ow1 = (w + 1) / stride < Wo ? (w + 1) / stride : Wo - 1;
    for (int64_t oh = oh0; oh <= oh1; ++oh)
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const Window<scalar_t, acc_t> win(plane, H, W, oh, ow, stride);
        const acc_t gv = static_cast<acc_t>(gp[oh * Wo + ow]);
        if (win.argmax == h * W + w) acc += coef[c] * gv + coef[C + c] + coef[2 * C + c] * win.max;
        acc += (coef[3 * C + c] * gv + coef[4 * C + c] + coef[5 * C + c] * win.mean) / static_cast<acc_t>(win.count);
      }
    dx[i] = static_cast<scalar_t>(acc);
  }
}

// Block c sums over the N * Ho * Wo outputs of channel c: K = 4 pool moments, or K = 3 gradient sums when g != null.
template <typename scalar_t, typename acc_t, int K>
__global__ void channel_sums_kernel(const scalar_t* x, const scalar_t* g, acc_t* out, int64_t N, int64_t C, int64_t H,
                                    int64_t W, int64_t Ho, int64_t Wo, int64_t stride) {
  const int64_t c = blockIdx.x;
  acc_t s[K] = {};
  for (int64_t j = threadIdx.x; j < N * Ho * Wo; j += blockDim.x) {
    const int64_t r = j % (Ho * Wo), p = (j / (Ho * Wo)) * C + c;
    const Window<scalar_t, acc_t> win(x + p * H * W, H, W, r / Wo, r % Wo, stride);
    if constexpr (K == 3) {
      const acc_t gv = static_cast<acc_t>(g[p * Ho * Wo + r]);
      s[0] += gv;
      s[1] += gv * win.max;
      s[2] += gv * win.mean;
    } else {
      s[0] += win.max;
      s[1] += win.max * win.max;
      s[2] += win.mean;
      s[3] += win.mean * win.mean;
    }
  }
  __shared__ acc_t buf[K][kThreads];
  for (int k = 0; k < K; ++k) buf[k][threadIdx.x] = s[k];
  __syncthreads();
  for (int span = kThreads / 2; span > 0; span /= 2) {
    if (threadIdx.x < span)
      for (int k = 0; k < K; ++k) buf[k][threadIdx.x] += buf[k][threadIdx.x + span];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int k = 0; k < K; ++k) out[k * C + c] = buf[k][0];
}

// w_skip as a device scalar in the math dtype (read in the kernel: no host sync), or null.
at::Tensor skip_tensor(const at::Tensor& x, const c10::optional<at::Tensor>& w_skip) {
  return w_skip.has_value() ? w_skip->to(stats_dtype(x)).contiguous() : at::Tensor();
}

template <int K>
at::Tensor channel_sums(const at::Tensor& x, const at::Tensor& g, int64_t stride) {
  const at::Tensor xc = x.contiguous(), gc = g.defined() ? g.contiguous() : g;
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  at::Tensor out = at::empty({K, C}, x.options().dtype(stats_dtype(x)));
  if (C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_sums_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    channel_sums_kernel<scalar_t, acc_t, K><<<C, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), gc.defined() ? gc.const_data_ptr<scalar_t>() : nullptr,
        out.mutable_data_ptr<acc_t>(), N, C, H, W, Ho, Wo, stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor pool_stats_cuda(const at::Tensor& x, int64_t stride) {
  check_x("pool_stats", x, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  return channel_sums<4>(x, at::Tensor(), stride);
}

at::Tensor pool_grad_stats_cuda(const at::Tensor& x, const at::Tensor& g, int64_t stride) {
  check_x("pool_grad_stats", x, stride);
  check_g("pool_grad_stats", x, g, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  return channel_sums<3>(x, g, stride);
}

at::Tensor pool_combine_cuda(const at::Tensor& x, int64_t stride, const at::Tensor& coef,
                             const c10::optional<at::Tensor>& w_skip) {
  check_x("pool_combine", x, stride);
  check_coef("pool_combine", x, coef, 3);
  check_w_skip("pool_combine", x, w_skip, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), cc = coef.to(stats_dtype(x)).contiguous(), sk = skip_tensor(x, w_skip);
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  at::Tensor out = at::empty({N, C, Ho, Wo}, xc.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_combine_kernel<scalar_t, acc_t><<<grid_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        xc.const_data_ptr<scalar_t>(), cc.const_data_ptr<acc_t>(), sk.defined() ? sk.const_data_ptr<acc_t>() : nullptr,
        out.mutable_data_ptr<scalar_t>(), C, H, W, Ho, Wo, stride, out.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor pool_combine_backward_cuda(const at::Tensor& x, const at::Tensor& g, int64_t stride, const at::Tensor& coef,
                                      const c10::optional<at::Tensor>& w_skip) {
  check_x("pool_combine_backward", x, stride);
  check_g("pool_combine_backward", x, g, stride);
  check_coef("pool_combine_backward", x, coef, 6);
  check_w_skip("pool_combine_backward", x, w_skip, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = g.contiguous();
  const at::Tensor cc = coef.to(stats_dtype(x)).contiguous(), sk = skip_tensor(x, w_skip);
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  at::Tensor dx = at::empty({N, C, H, W}, xc.options());
  if (dx.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_combine_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_combine_backward_kernel<scalar_t, acc_t>
        <<<grid_for(dx.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            xc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), cc.const_data_ptr<acc_t>(),
            sk.defined() ? sk.const_data_ptr<acc_t>() : nullptr, dx.mutable_data_ptr<scalar_t>(), C, H, W, Ho, Wo,
            stride, dx.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(dnas_fast, CUDA, m) {
  m.impl("pool_stats", &pool_stats_cuda);
  m.impl("pool_combine", &pool_combine_cuda);
  m.impl("pool_grad_stats", &pool_grad_stats_cuda);
  m.impl("pool_combine_backward", &pool_combine_backward_cuda);
}

}  // namespace dnas_fast
