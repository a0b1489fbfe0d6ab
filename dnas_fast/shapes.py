"""The output shape every candidate op of an edge has, and the memory layout of new tensors, in one place for the
edge, its kernels and their fake (shape-only) implementations: a leaf module, so the kernels need not import the
edge."""

import torch


def strided_shape(x: torch.Tensor, stride: int, C: int) -> tuple:
    """``(N, C, ceil(H / stride), ceil(W / stride))``: the output shape of every candidate op on ``x`` (3x3 pools
    with padding 1, convs with 'same' padding, FactorizedReduce)."""
    N, _, H, W = x.shape
    return N, C, -(-H // stride), -(-W // stride)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format that new tensors shaped like ``t`` take: channels_last iff ``t`` is (--channels-last)."""
    cl = torch.channels_last
    return cl if t.is_contiguous(memory_format=cl) and not t.is_contiguous() else torch.contiguous_format


def channels_last_default(device: torch.device) -> bool:
    """``--channels-last`` when not given: on CPU, where oneDNN's depthwise convs run 3-10x faster channels_last
    (bench/results/cpu-layout-probes-20261203.md); not on CUDA, where it has not been measured."""
    return device.type == "cpu"


def empty_spatial_inner(like: torch.Tensor, shape, channels_last: bool, zeros: bool = False) -> torch.Tensor:
    """An empty (or ``zeros``) ``(N, *middle, H, W)`` tensor. With ``channels_last`` its memory order is ``N, H, W,
    *middle``, so every ``[N, C, H, W]`` slice of it is channels_last-strided and merging the middle dims is a
    view."""
    new = like.new_zeros if zeros else like.new_empty
    if not channels_last:
        return new(shape)
    N, *middle, H, W = shape
    return new((N, H, W, *middle)).permute(0, *range(3, len(shape)), 1, 2)
