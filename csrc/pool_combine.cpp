// Schemas of the fused parameter-free DARTS edge primitives, declared once; the kernels register per dispatch key
// in cpu/pool_combine_cpu.cpp and cuda/pool_combine_cuda.cu. Contract and reference:
// dnas_fast/kernels/pool_combine_ref.py. Fake (shape) implementations for torch.compile / torch.export live in
// dnas_fast/kernels/_ext.py (set_python_module: a missing fake impl makes torch name that module to import).
#include <torch/library.h>

TORCH_LIBRARY(dnas_fast, m) {
  m.set_python_module("dnas_fast.kernels._ext");
  // x [N, C, H, W] -> [4, C]: sum and sum of squares of maxpool3x3(x), then of avgpool3x3(x).
  m.def("pool_stats(Tensor x, int stride) -> Tensor");
  // coef [3, C] = (s_max, s_avg, bias), w_skip [] or None (stride 1 only) -> [N, C, H', W'].
  m.def("pool_combine(Tensor x, int stride, Tensor coef, Tensor? w_skip) -> Tensor");
  // g [N, C, H', W'] -> [3, C]: sum(g), sum(g * maxpool(x)), sum(g * avgpool(x)).
  m.def("pool_grad_stats(Tensor x, Tensor g, int stride) -> Tensor");
  // coef [6, C] = (a_max, b_max, c_max, a_avg, b_avg, c_avg) -> dx [N, C, H, W].
  m.def("pool_combine_backward(Tensor x, Tensor g, int stride, Tensor coef, Tensor? w_skip) -> Tensor");
}
