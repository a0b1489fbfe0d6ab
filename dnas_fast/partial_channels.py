"""PC-DARTS partial channels (Xu et al., ICLR 2020), the one place every path reads and writes them.

An edge with ``K`` groups runs its ops on the first ``C/K`` channels of ``x``; the other ``C - C/K`` bypass the ops
(2x2 max-pooled on stride 2) and the result ``cat([ops, bypass])`` is channel-shuffled with ``K`` groups: cat
channel ``i * C/K + j`` lands at output channel ``j * K + i``. Seen as ``[*lead, C/K, K, H, W]`` the output holds
the op result in slot 0 and the bypass in slots ``1 .. K-1``, so the fused paths write both straight into their
shuffled places (one copy each, no cat + shuffle) and read the gradient back the same way. ``lead`` is ``(N,)``
for one edge and ``(N, E)`` for a block of ``E`` edges that share one input (and so one bypass).

Example::

    out = torch.empty(2, 16, 8, 8)
    scatter_partial(out, acc=torch.randn(2, 4, 8, 8), bypass=bypass_of(x, 4, 1), K=4)
"""

import torch
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle of x (Tensor[N, C, H, W]): ``view(N, g, C/g, H, W).transpose(1, 2)``."""
    N, C, H, W = x.shape
    return x.view(N, groups, C // groups, H, W).transpose(1, 2).reshape(N, C, H, W)


def bypass_of(x: torch.Tensor, K: int, stride: int) -> torch.Tensor:
    """The channels that pass around the ops of x (Tensor[N, C, H, W]), 2x2 max-pooled on stride 2:
    Tensor[N, C - C/K, H', W']."""
    bypass = x[:, x.shape[1] // K :]
    return F.max_pool2d(bypass, 2, 2, ceil_mode=True) if stride == 2 else bypass


def _slots(out: torch.Tensor, K: int) -> torch.Tensor:
    *lead, C, H, W = out.shape
    return out.view(*lead, C // K, K, H, W)


def op_slot(out: torch.Tensor, K: int) -> torch.Tensor:
    """View of the op channels inside shuffled outputs out (Tensor[*lead, C, H, W]): Tensor[*lead, C/K, H, W]."""
    return _slots(out, K)[..., 0, :, :]


def bypass_slots(out: torch.Tensor, K: int) -> torch.Tensor:
    """View of the bypass channels inside shuffled outputs out (Tensor[*lead, C, H, W]), laid out as
    ``bypass_of``'s channels: Tensor[*lead, K - 1, C/K, H, W]."""
    return _slots(out, K)[..., 1:, :, :].transpose(-4, -3)


def scatter_partial(out: torch.Tensor, acc: torch.Tensor, bypass: torch.Tensor, K: int) -> torch.Tensor:
    """Write ``cat([acc, bypass])`` in shuffled order into out (Tensor[*lead, C, H, W]); acc (Tensor[*lead, C/K,
    H, W]) per edge, bypass (Tensor[N, C - C/K, H, W]) shared by every edge of the block. Returns out."""
    *lead, C, H, W = out.shape
    op_slot(out, K).copy_(acc)
    bypass_slots(out, K).copy_(bypass.reshape(lead[0], *[1] * (len(lead) - 1), K - 1, C // K, H, W))
    return out


def split_partial(g: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scatter_partial`` read backwards: of g (Tensor[*lead, C, H, W]) the op slot (a view, Tensor[*lead, C/K,
    H, W]) and dL/d(bypass) (Tensor[N, C - C/K, H, W], summed over the block's edges: they share the bypass)."""
    *lead, C, H, W = g.shape
    g_bypass = _slots(g, K)[..., 1:, :, :]
    if len(lead) > 1:
        g_bypass = g_bypass.sum(1)
    return op_slot(g, K), g_bypass.transpose(1, 2).reshape(lead[0], C - C // K, H, W)


def bypass_backward(x: torch.Tensor, g_bypass: torch.Tensor, K: int, stride: int) -> torch.Tensor:
    """dL/dx of the bypassed channels (Tensor[N, C - C/K, H, W]) from dL/d(bypass_of(x)): through the 2x2 max
    pool on stride 2 (recomputed from x), the gradient itself on stride 1."""
    if stride == 1:
        return g_bypass
    with torch.enable_grad():
        xb = x[:, x.shape[1] // K :].detach().requires_grad_()
        (dxb,) = torch.autograd.grad(F.max_pool2d(xb, 2, 2, ceil_mode=True), xb, g_bypass)
    return dxb


class ScaledBypass(torch.autograd.Function):
    """``out`` (a fused edge output whose op and aux terms are already scaled) with ``(scale - 1) * bypass``
    added in place on its bypass channels, so the whole edge output is scaled. Saves nothing new: the bypass is
    recomputed from ``x`` (which the fused edge keeps anyway) in backward."""

    @staticmethod
    def forward(ctx, out, x, scale, K, stride):
        bypass = bypass_of(x, K, stride)
        slots = bypass_slots(out, K)
        slots += (scale - 1).to(out.dtype) * bypass.reshape(slots.shape)
        ctx.mark_dirty(out)
        ctx.save_for_backward(x, scale)
        ctx.K, ctx.stride = K, stride
        return out

    @staticmethod
    def backward(ctx, g):
        x, scale = ctx.saved_tensors
        K, stride = ctx.K, ctx.stride
        with torch.enable_grad():
            xb = x.detach().requires_grad_()
            bypass = bypass_of(xb, K, stride)
            g_bypass = bypass_slots(g, K).reshape(bypass.shape)
            d_scale = (g_bypass * bypass.detach()).sum().to(scale.dtype)
            (dx,) = torch.autograd.grad(bypass, xb, g_bypass * (scale - 1).to(g.dtype))
        return g, dx, d_scale, None, None
