// CPU kernels of the pool_combine ops (schemas in ../pool_combine.cpp, contract in
// dnas_fast/kernels/pool_combine_ref.py): float32 and float64, at::parallel_for over the N*C planes.
// The host wrappers make x and g NCHW-contiguous (a copy for channels_last or strided views) and return
// NCHW-contiguous maps. Per-channel sums are accumulated per plane in double and then added over n in a fixed
// order, so they do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "pool_combine.h"

namespace dnas_fast {
namespace {

void check_cpu_dtype(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": expected x of dtype float32 or float64 on CPU, got ", x.scalar_type());
}

// Planes per task, so that each task reads about GRAIN_SIZE window elements (9 per output).
int64_t planes_per_task(int64_t Ho, int64_t Wo) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, 9 * Ho * Wo));
}

// partial [N * C, K] per-plane sums -> [K, C] per-channel sums in `dtype`.
at::Tensor sum_over_batch(const std::vector<double>& partial, int64_t N, int64_t C, int64_t K, at::ScalarType dtype) {
  at::Tensor out = at::zeros({K, C}, at::kDouble);
  auto acc = out.accessor<double, 2>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) acc[k][c] += partial[(n * C + c) * K + k];
  return out.to(dtype);
}

// Whether b replaces the running maximum a: larger, or NaN (a NaN wins, as in max_pool2d). Bitwise '|' and
// b != b (NaN test) keep it branch-free.
template <typename T>
inline bool replaces(T a, T b) {
  return (b > a) | (b != b);
}

template <typename T>
inline T nan_max(T a, T b) {
  return replaces(a, b) ? b : a;
}

// maxpool3x3 and avgpool3x3 (padding 1, count_include_pad=False) of one plane, computed separably: a 1x3 pass along
// each row into [H, Wo] buffers, then a 3x1 pass down the columns. Same values as Window (a max does not depend on
// the order) with fewer loads and loops that the compiler vectorizes. With kArgmax it also keeps the plane offset of
// each window's maximum: the first one in row-major order, as Window's, since the row pass keeps the first maximum
// of each row and the column pass the first row that holds the window's maximum. One instance per task, reused
// over its planes. Much faster than a Window per output (bench/results/notes.md, "C++ kernel choices").
template <typename scalar_t, bool kArgmax = false>
class PlanePools {
 public:
  // Plane offsets as wide as scalar_t, so the column pass's selects vectorize (the caller checks H * W fits).
  using index_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;

  PlanePools(int64_t H, int64_t W, int64_t stride)
      : H_(H), W_(W), Ho_(pooled_size(H, stride)), Wo_(pooled_size(W, stride)), stride_(stride), hmax_(H * Wo_),
        hsum_(H * Wo_), cols_(Wo_), max_(Ho_ * Wo_), mean_(Ho_ * Wo_), hidx_(kArgmax ? H * Wo_ : 0),
        argmax_(kArgmax ? Ho_ * Wo_ : 0) {
    for (int64_t ow = 0; ow < Wo_; ++ow) cols_[ow] = static_cast<scalar_t>(span(ow, W_).second - span(ow, W_).first);
    if constexpr (kArgmax) {
      cover_lo_.assign(W_, Wo_);
      cover_hi_.assign(W_, 0);
      for (int64_t ow = 0; ow < Wo_; ++ow)
        for (int64_t w = span(ow, W_).first; w < span(ow, W_).second; ++w) {
          cover_lo_[w] = std::min(cover_lo_[w], ow);
          cover_hi_[w] = std::max(cover_hi_[w], ow + 1);
        }
    }
  }

  // Fills max(), mean() (and argmax()), each [Ho, Wo] row-major.
  void compute(const scalar_t* plane) {
    for (int64_t h = 0; h < H_; ++h) row_pass(plane + h * W_, h);
    for (int64_t oh = 0; oh < Ho_; ++oh) {
      const auto [lo, hi] = span(oh, H_);
      scalar_t* m = max_.data() + oh * Wo_;
      scalar_t* t = mean_.data() + oh * Wo_;
      std::copy_n(hmax_.data() + lo * Wo_, Wo_, m);
      std::copy_n(hsum_.data() + lo * Wo_, Wo_, t);
      index_t* am = kArgmax ? argmax_.data() + oh * Wo_ : nullptr;
      if constexpr (kArgmax) std::copy_n(hidx_.data() + lo * Wo_, Wo_, am);
      for (int64_t r = lo + 1; r < hi; ++r) {
        const scalar_t* hm = hmax_.data() + r * Wo_;
        const scalar_t* hs = hsum_.data() + r * Wo_;
        const index_t* hi_r = kArgmax ? hidx_.data() + r * Wo_ : nullptr;
        for (int64_t ow = 0; ow < Wo_; ++ow) {
          if constexpr (kArgmax) {
            // A mask, not '?:': gcc turns the select into a branch, and which row wins is data-dependent
            // (mispredicted branches made this pass slower: bench/results/notes.md, "C++ kernel choices").
            const index_t mask = -static_cast<index_t>(replaces(m[ow], hm[ow]));
            am[ow] ^= (am[ow] ^ hi_r[ow]) & mask;
          }
          m[ow] = nan_max(m[ow], hm[ow]);
          t[ow] += hs[ow];
        }
      }
      const auto rows = static_cast<scalar_t>(hi - lo);
      for (int64_t ow = 0; ow < Wo_; ++ow) t[ow] /= rows * cols_[ow];
    }
  }

  const scalar_t* max() const { return max_.data(); }
  const scalar_t* mean() const { return mean_.data(); }
  const index_t* argmax() const { return argmax_.data(); }

  // Number of in-plane elements of window (oh, ow): the avg pool's divisor.
  scalar_t count(int64_t oh, int64_t ow) const {
    return static_cast<scalar_t>(span(oh, H_).second - span(oh, H_).first) * cols_[ow];
  }

  // d [H, W] += avgpool_bwd(ga [Ho, Wo]), the transpose of the separable sum: columns first, then rows. Overwrites
  // the sum buffer, so call it after reading mean().
  void add_window_sums_transposed(const scalar_t* ga, scalar_t* d) {
    scalar_t* v = hsum_.data();  // [H, Wo]: v[h] = sum of ga rows whose window holds row h
    std::fill(hsum_.begin(), hsum_.end(), scalar_t(0));
    for (int64_t oh = 0; oh < Ho_; ++oh) {
      const auto [lo, hi] = span(oh, H_);
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t ow = 0; ow < Wo_; ++ow) v[r * Wo_ + ow] += ga[oh * Wo_ + ow];
    }
    // Along rows as a gather (each w sums the outputs covering it): a scatter's overlapping writes stall on
    // store forwarding (a slower backward: bench/results/notes.md, "C++ kernel choices").
    for (int64_t h = 0; h < H_; ++h) {
      const scalar_t* vr = v + h * Wo_;
      scalar_t* dr = d + h * W_;
      for (int64_t w = 0; w < W_; ++w) {
        scalar_t sum = 0;
        for (int64_t ow = cover_lo_[w]; ow < cover_hi_[w]; ++ow) sum += vr[ow];
        dr[w] += sum;
      }
    }
  }

 private:
  // In-plane input range [lo, hi) of output index o along an axis of length n.
  std::pair<int64_t, int64_t> span(int64_t o, int64_t n) const {
    return {std::max<int64_t>(o * stride_ - 1, 0), std::min<int64_t>(o * stride_ + 2, n)};
  }

  void row_pass(const scalar_t* row, int64_t h) {
    scalar_t* hm = hmax_.data() + h * Wo_;
    scalar_t* hs = hsum_.data() + h * Wo_;
    auto clipped = [&](int64_t ow) {
      const auto [lo, hi] = span(ow, W_);
      scalar_t m = row[lo], t = row[lo];
      int64_t idx = lo;
      for (int64_t w = lo + 1; w < hi; ++w) {
        if (replaces(m, row[w])) {
          m = row[w];
          idx = w;
        }
        t += row[w];
      }
      hm[ow] = m;
      hs[ow] = t;
      if constexpr (kArgmax) hidx_[h * Wo_ + ow] = static_cast<index_t>(h * W_ + idx);
    };
    // Outputs 1 .. interior_end - 1 see the full window [ow * stride - 1, ow * stride + 1].
    const int64_t interior_end = W_ >= 2 ? (W_ - 2) / stride_ + 1 : 1;
    clipped(0);
    for (int64_t ow = 1; ow < interior_end; ++ow) {
      const scalar_t* c = row + ow * stride_;
      hm[ow] = nan_max(nan_max(c[-1], c[0]), c[1]);
      hs[ow] = c[-1] + c[0] + c[1];
      if constexpr (kArgmax) {
        // Offset 0, 1 or 2 of the first maximum among c[-1], c[0], c[1], branch-free as above.
        const index_t take0 = replaces(c[-1], c[0]), take1 = replaces(nan_max(c[-1], c[0]), c[1]);
        hidx_[h * Wo_ + ow] = static_cast<index_t>(h * W_ + ow * stride_ - 1) + 2 * take1 + (1 - take1) * take0;
      }
    }
    for (int64_t ow = std::max<int64_t>(interior_end, 1); ow < Wo_; ++ow) clipped(ow);
  }

  int64_t H_, W_, Ho_, Wo_, stride_;
  std::vector<scalar_t> hmax_, hsum_, cols_, max_, mean_;
  std::vector<index_t> hidx_, argmax_;  // plane offsets of the row maxima [H, Wo] and window maxima [Ho, Wo]
  std::vector<int64_t> cover_lo_, cover_hi_;  // outputs [cover_lo_[w], cover_hi_[w]) have column w in their window
};

at::Tensor pool_stats_cpu(const at::Tensor& x, int64_t stride) {
  check_x("pool_stats", x, stride);
  check_cpu_dtype("pool_stats", x);
  const at::Tensor xc = x.contiguous();
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  std::vector<double> partial(N * C * 4);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool_stats_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, planes_per_task(Ho, Wo), [&](int64_t begin, int64_t end) {
      PlanePools<scalar_t> pools(H, W, stride);
      for (int64_t p = begin; p < end; ++p) {
        pools.compute(xp + p * H * W);
        double s[4] = {0, 0, 0, 0};
        for (int64_t i = 0; i < Ho * Wo; ++i) {
          const double m = pools.max()[i], a = pools.mean()[i];
          s[0] += m;
          s[1] += m * m;
          s[2] += a;
          s[3] += a * a;
        }
        std::copy(s, s + 4, partial.begin() + p * 4);
      }
    });
  });
  return sum_over_batch(partial, N, C, 4, stats_dtype(x));
}

at::Tensor pool_combine_cpu(const at::Tensor& x, int64_t stride, const at::Tensor& coef,
                            const c10::optional<at::Tensor>& w_skip) {
  check_x("pool_combine", x, stride);
  check_cpu_dtype("pool_combine", x);
  check_coef("pool_combine", x, coef, 3);
  check_w_skip("pool_combine", x, w_skip, stride);
  const at::Tensor xc = x.contiguous();
  const at::Tensor cc = coef.to(x.scalar_type()).contiguous();
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  at::Tensor out = at::empty({N, C, Ho, Wo}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool_combine_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* cp = cc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool has_skip = w_skip.has_value();  // then stride is 1, and x and out share the (oh, ow) index
    const scalar_t skip = has_skip ? w_skip->item<scalar_t>() : scalar_t(0);
    at::parallel_for(0, N * C, planes_per_task(Ho, Wo), [&](int64_t begin, int64_t end) {
      PlanePools<scalar_t> pools(H, W, stride);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        const scalar_t s_max = cp[c], s_avg = cp[C + c], bias = cp[2 * C + c];
        const scalar_t* plane = xp + p * H * W;
        const scalar_t *m = pools.max(), *a = pools.mean();
        scalar_t* o = op + p * Ho * Wo;
        pools.compute(plane);
        for (int64_t i = 0; i < Ho * Wo; ++i) o[i] = s_max * m[i] + s_avg * a[i] + bias;
        if (has_skip)
          for (int64_t i = 0; i < Ho * Wo; ++i) o[i] += skip * plane[i];
      }
    });
  });
  return out;
}

at::Tensor pool_grad_stats_cpu(const at::Tensor& x, const at::Tensor& g, int64_t stride) {
  check_x("pool_grad_stats", x, stride);
  check_cpu_dtype("pool_grad_stats", x);
  check_g("pool_grad_stats", x, g, stride);
  const at::Tensor xc = x.contiguous(), gc = g.contiguous();
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  std::vector<double> partial(N * C * 3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool_grad_stats_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, planes_per_task(Ho, Wo), [&](int64_t begin, int64_t end) {
      PlanePools<scalar_t> pools(H, W, stride);
      for (int64_t p = begin; p < end; ++p) {
        pools.compute(xp + p * H * W);
        const scalar_t* gplane = gp + p * Ho * Wo;
        double s[3] = {0, 0, 0};
        for (int64_t i = 0; i < Ho * Wo; ++i) {
          const double gv = gplane[i];
          s[0] += gv;
          s[1] += gv * pools.max()[i];
          s[2] += gv * pools.mean()[i];
        }
        std::copy(s, s + 3, partial.begin() + p * 3);
      }
    });
  });
  return sum_over_batch(partial, N, C, 3, stats_dtype(x));
}

at::Tensor pool_combine_backward_cpu(const at::Tensor& x, const at::Tensor& g, int64_t stride, const at::Tensor& coef,
                                     const c10::optional<at::Tensor>& w_skip) {
  check_x("pool_combine_backward", x, stride);
  check_cpu_dtype("pool_combine_backward", x);
  check_g("pool_combine_backward", x, g, stride);
  check_coef("pool_combine_backward", x, coef, 6);
  check_w_skip("pool_combine_backward", x, w_skip, stride);
  TORCH_CHECK(x.size(2) * x.size(3) <= INT32_MAX, "pool_combine_backward: expected H * W < 2^31, got ", x.sizes());
  const at::Tensor xc = x.contiguous(), gc = g.contiguous();
  const at::Tensor cc = coef.to(x.scalar_type()).contiguous();
  const auto [N, C, H, W, Ho, Wo] = plane_shape(x, stride);
  at::Tensor dx = at::empty({N, C, H, W}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pool_combine_backward_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* cp = cc.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
    const bool has_skip = w_skip.has_value();  // then stride is 1, and g and dx share the index
    const scalar_t skip = has_skip ? w_skip->item<scalar_t>() : scalar_t(0);
    at::parallel_for(0, N * C, planes_per_task(Ho, Wo), [&](int64_t begin, int64_t end) {
      PlanePools<scalar_t, /*kArgmax=*/true> pools(H, W, stride);
      std::vector<scalar_t> g_avg(Ho * Wo);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        const scalar_t a_max = cp[c], b_max = cp[C + c], c_max = cp[2 * C + c];
        const scalar_t a_avg = cp[3 * C + c], b_avg = cp[4 * C + c], c_avg = cp[5 * C + c];
        const scalar_t* gplane = gp + p * Ho * Wo;
        scalar_t* d = dp + p * H * W;
        pools.compute(xp + p * H * W);
        // The skip term first, then the two upstream gradients of each window (reference docstring): all of g_max
        // to the window's argmax, g_avg / count to each of its in-plane elements.
        for (int64_t i = 0; i < H * W; ++i) d[i] = has_skip ? skip * gplane[i] : scalar_t(0);
        for (int64_t oh = 0; oh < Ho; ++oh)
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const int64_t i = oh * Wo + ow;
            d[pools.argmax()[i]] += a_max * gplane[i] + b_max + c_max * pools.max()[i];
            g_avg[i] = (a_avg * gplane[i] + b_avg + c_avg * pools.mean()[i]) / pools.count(oh, ow);
          }
        pools.add_window_sums_transposed(g_avg.data(), d);
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(dnas_fast, CPU, m) {
  m.impl("pool_stats", &pool_stats_cpu);
  m.impl("pool_combine", &pool_combine_cpu);
  m.impl("pool_grad_stats", &pool_grad_stats_cpu);
  m.impl("pool_combine_backward", &pool_combine_backward_cpu);
}

}  // namespace dnas_fast
