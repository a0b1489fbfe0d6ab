"""Memory layout inside a block: every tensor stays in the network's layout (``--channels-last``), and a block's
``[N, E, C, H, W]`` tensors are laid out N, H, W, E, C (``shapes.empty_spatial_inner``) so each edge's slice is
channels_last too."""

import torch

from ...shapes import empty_spatial_inner, memory_format_of


def nhwc(t):
    return t.permute(0, 2, 3, 1)  # a channels_last tensor's dense view


def nchw(t):
    return t.permute(0, 3, 1, 2)


def channels_last(t) -> bool:
    return memory_format_of(t) == torch.channels_last


def repeat_channels(t, n, cl):
    """``t.repeat(1, n, 1, 1)`` in ``t``'s layout (``repeat`` itself returns NCHW); one op either way."""
    return nchw(nhwc(t).repeat(1, 1, 1, n)) if cl else t.repeat(1, n, 1, 1)


def in_layout(t, cl):
    """``t`` laid out as ``empty_spatial_inner`` makes it (a copy only when it is not)."""
    if not cl:
        return t.contiguous()
    if t.permute(0, -2, -1, *range(1, t.dim() - 2)).is_contiguous():  # memory order N, H, W, *middle already
        return t
    return empty_spatial_inner(t, t.shape, True).copy_(t)


def per_edge_dot(g, y, cl):
    """Per edge ``e``: ``sum(g[:, e] * y[:, e])`` (both [N, E, C, H, W], ``y`` may broadcast over E). channels_last
    sums C, then N H W: one reduction around the kept E dim, in the middle of memory order N H W E C, took twice
    as long on CPU (bench/results/notes.md, third pass)."""
    prod = g * y
    if cl:
        return prod.permute(0, 3, 4, 1, 2).reshape(-1, *prod.shape[1:3]).sum(-1).sum(0)
    return prod.sum((0, 2, 3, 4))
