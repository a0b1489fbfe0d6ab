"""The output shape every candidate op of an edge has, in one place for the edge, its kernels and their fake
(shape-only) implementations: a leaf module, so the kernels need not import the edge."""

import torch


def strided_shape(x: torch.Tensor, stride: int, C: int) -> tuple:
    """``(N, C, ceil(H / stride), ceil(W / stride))``: the output shape of every candidate op on ``x`` (3x3 pools
    with padding 1, convs with 'same' padding, FactorizedReduce)."""
    N, _, H, W = x.shape
    return N, C, -(-H // stride), -(-W // stride)
