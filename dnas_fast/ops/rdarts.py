"""The ``noise`` op of R-DARTS search space S4 (Zela et al., ICLR 2020; automl/RobustDARTS ``NoiseOp(stride,
0., 1.)``): standard normal noise of the (strided) input's shape, independent of the input."""

import torch
from torch import nn

from .registry import register_op


class NoiseOp(nn.Module):
    """``Tensor[N, C, H, W] -> N(mean, std^2)`` noise of shape ``[N, C_out, ceil(H/stride), ceil(W/stride)]``."""

    def __init__(self, stride: int, C_out: int, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.stride, self.C_out, self.mean, self.std = stride, C_out, mean, std

    def forward(self, x):
        N, _, H, W = x.shape
        shape = (N, self.C_out, -(-H // self.stride), -(-W // self.stride))
        return torch.randn(shape, dtype=x.dtype, device=x.device) * self.std + self.mean


register_op("noise", lambda C_in, C_out, stride, affine: NoiseOp(stride, C_out))
