"""Plain-PyTorch reference of the parameter-free combine primitives (the contract that the C++/CUDA and
Triton kernels implement, and what they are tested against).

The parameter-free part of a DARTS edge is
    out = w_max * BN(maxpool3x3(x)) + w_avg * BN(avgpool3x3(x)) + w_skip * x      (w_skip only at stride 1)
with affine-free, batch-statistics BN. Folding BN into per-channel scales gives
    out[n,c] = s_max[c] * maxpool(x)[n,c] + s_avg[c] * avgpool(x)[n,c] + bias[c] + w_skip * x[n,c].
Both pools: kernel 3, padding 1, stride 1 or 2; avg pool with count_include_pad=False; max pool pads -inf.
Its backward for dL/dout = g is, with per-channel constants from ``pool_grad_stats``,
    dx = maxpool_bwd(a_max * g + b_max + c_max * maxpool(x)) + avgpool_bwd(a_avg * g + b_avg + c_avg * avgpool(x))
         + w_skip * g.
Nothing per-op is ever stored: the kernels recompute the pools from x.

Every provider (this module, the compiled extension ``_ext``, ``dnas_fast.triton_kernels``) exports the four
primitives under the same names; ``Prims.of(module)`` bundles them for the fused edge.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Prims(NamedTuple):
    """The four parameter-free primitives of one provider, with this module's signatures."""

    pool_stats: Callable
    pool_combine: Callable
    pool_grad_stats: Callable
    pool_combine_backward: Callable

    @classmethod
    def of(cls, module) -> "Prims":
        return cls(*(getattr(module, name) for name in cls._fields))


def pools(x: torch.Tensor, stride: int):
    return (
        F.max_pool2d(x, 3, stride, 1),
        F.avg_pool2d(x, 3, stride, 1, count_include_pad=False),
    )


def _math(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 maps in float32 for the sums (as the kernels' opmath accumulation); others as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def pool_stats(x: torch.Tensor, stride: int) -> torch.Tensor:
    """x (Tensor[N, C, H, W]) -> Tensor[4, C]: per-channel sum and sum of squares of maxpool(x), then avgpool(x)."""
    mp, ap = (_math(p) for p in pools(x, stride))
    dims = (0, 2, 3)
    return torch.stack([mp.sum(dims), (mp * mp).sum(dims), ap.sum(dims), (ap * ap).sum(dims)])


def pool_combine(x: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None) -> torch.Tensor:
    """coef (Tensor[3, C]) = (s_max, s_avg, bias); w_skip (Tensor[] or None, stride 1 only)."""
    mp, ap = pools(x, stride)
    out = coef[0, None, :, None, None] * mp + coef[1, None, :, None, None] * ap + coef[2, None, :, None, None]
    if w_skip is not None:
        out = out + w_skip * x
    return out


def pool_grad_stats(x: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    """g (Tensor[N, C, H', W']) -> Tensor[3, C]: per-channel sum(g), sum(g * maxpool(x)), sum(g * avgpool(x))."""
    mp, ap = (_math(p) for p in pools(x, stride))
    g, dims = _math(g), (0, 2, 3)
    return torch.stack([g.sum(dims), (g * mp).sum(dims), (g * ap).sum(dims)])


def pool_combine_backward(
    x: torch.Tensor, g: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None
) -> torch.Tensor:
    """coef (Tensor[6, C]) = (a_max, b_max, c_max, a_avg, b_avg, c_avg) -> dx (Tensor[N, C, H, W])."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        mp, ap = pools(xr, stride)
        c = coef[:, None, :, None, None]
        g_mp = (c[0] * g + c[1] + c[2] * mp.detach()).to(mp.dtype)
        g_ap = (c[3] * g + c[4] + c[5] * ap.detach()).to(ap.dtype)
        (dx,) = torch.autograd.grad([mp, ap], xr, [g_mp, g_ap])
    if w_skip is not None:
        dx = dx + w_skip * g
    return dx.to(x.dtype)
