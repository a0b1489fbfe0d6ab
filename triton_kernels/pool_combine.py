"""Triton kernels of the parameter-free combine primitives of a DARTS edge.

Equivalent to ``dnas_fast.kernels.pool_combine_ref`` (same signatures and semantics; read its docstring for the
math). 3x3 max pool (pad -inf) and avg pool (``count_include_pad=False``), padding 1, stride 1 or 2. Every kernel
recomputes the pools from ``x`` through 9 masked loads per window; no per-op output is ever written to memory.

Layout: a program owns a ``[PLANES, BLOCK_P]`` block, PLANES consecutive (n, c) planes x BLOCK_P consecutive
pixels of each (output pixels in the forward and statistics kernels, input pixels in the backward), one pixel per
thread. Large planes span several programs; small ones (8x8, 4x4) are packed several to a program. Inputs are
read through their strides (channels_last needs no copy); outputs are contiguous. Arithmetic runs in fp32
(fp64 for fp64 inputs); outputs are stored in x's dtype.

Per-channel statistics use a deterministic two-stage reduction: each program writes its tile's ``tl.sum`` to a
partial buffer ``[k, C, N * tiles]`` that torch sums over its last axis (no float atomics, so the result does
not depend on the scheduling order).

The backward is a gather: each input pixel visits the (up to 9) output windows that contain it, recomputes their
max and mean and the max-pool argmax (first maximum in row-major order, NaN wins, as PyTorch), and sums their
contributions. No atomics, deterministic.

The launchers are custom ops (``torch.library.triton_op``, ``torch.ops.dnas_fast.triton_*``), so torch.compile
sees into them as it sees the compiled extension's ``torch.ops.dnas_fast.*`` (Triton's interpreter cannot be
traced: under ``TRITON_INTERPRET=1`` they run eagerly only).

Example::

    x = torch.randn(2, 16, 9, 9, device="cuda")
    coef = torch.randn(3, 16, device="cuda")
    out = pool_combine(x, 1, coef, torch.tensor(0.3, device="cuda"))  # Tensor[2, 16, 9, 9]
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..shapes import strided_shape

# ---------------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _window(x_plane, oh, ow, valid, H, W, sxh, sxw, STRIDE: tl.constexpr, ACC: tl.constexpr):
    """Max, mean, in-bounds pixel count and argmax (as h * W + w) of the 3x3 windows at output pixels (oh, ow)."""
    h0 = oh * STRIDE - 1
    w0 = ow * STRIDE - 1
    best = tl.full(valid.shape, float("-inf"), ACC)
    # PyTorch starts the argmax at the window's first in-bounds pixel (matters only for an all -inf window).
    best_i = tl.maximum(h0, 0) * W + tl.maximum(w0, 0) + tl.zeros(valid.shape, tl.int32)
    total = tl.zeros(valid.shape, ACC)
    count = tl.zeros(valid.shape, ACC)
    for dh in tl.static_range(3):
        for dw in tl.static_range(3):
            h = h0 + dh
            w = w0 + dw
            m = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x_plane + h * sxh + w * sxw, mask=m, other=0.0).to(ACC)
            # Row-major scan with a strict '>' keeps the first maximum on ties; NaN always wins (PyTorch).
            take = m & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            best_i = tl.where(take, h * W + w, best_i)
            total += tl.where(m, v, 0.0)
            count += m.to(ACC)
    # Zeros outside the output grid, so callers can sum tiles without masking (and never form 0 * -inf).
    return tl.where(valid, best, 0.0), total / tl.maximum(count, 1.0), count, best_i


@triton.jit
def _tile(NC, C, n_px, row_len, PLANES: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's planes and pixels: n, c, plane_ok ([PLANES, 1]); row, col, px_ok ([PLANES or 1, BLOCK_P])."""
    plane = tl.program_id(0).to(tl.int64) * PLANES + tl.arange(0, PLANES)[:, None]
    px = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return plane // C, plane % C, plane < NC, px // row_len, px % row_len, (plane < NC) & (px < n_px)


@triton.jit
def _store_partial(part_ptr, k, n, c, plane_ok, C, n_slots, value):
    """partial[k, c, n * tiles + tile] = sum over this program's pixels of each plane's ``value`` rows."""
    slot = n * tl.num_programs(1) + tl.program_id(1)
    tl.store(part_ptr + (k * C + c) * n_slots + slot, tl.sum(value, 1)[:, None], mask=plane_ok)


@triton.jit
def _pool_stats_kernel(
    x_ptr, part_ptr, NC, C, H, W, Ho, Wo, sxn, sxc, sxh, sxw, n_slots,
    STRIDE: tl.constexpr, ACC: tl.constexpr, PLANES: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c, plane_ok, oh, ow, valid = _tile(NC, C, Ho * Wo, Wo, PLANES, BLOCK_P)
    mp, ap, _, _ = _window(x_ptr + n * sxn + c * sxc, oh, ow, valid, H, W, sxh, sxw, STRIDE, ACC)
    _store_partial(part_ptr, 0, n, c, plane_ok, C, n_slots, mp)
    _store_partial(part_ptr, 1, n, c, plane_ok, C, n_slots, mp * mp)
    _store_partial(part_ptr, 2, n, c, plane_ok, C, n_slots, ap)
    _store_partial(part_ptr, 3, n, c, plane_ok, C, n_slots, ap * ap)


@triton.jit
def _pool_grad_stats_kernel(
    x_ptr, g_ptr, part_ptr, NC, C, H, W, Ho, Wo, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, n_slots,
    STRIDE: tl.constexpr, ACC: tl.constexpr, PLANES: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c, plane_ok, oh, ow, valid = _tile(NC, C, Ho * Wo, Wo, PLANES, BLOCK_P)
    mp, ap, _, _ = _window(x_ptr + n * sxn + c * sxc, oh, ow, valid, H, W, sxh, sxw, STRIDE, ACC)
    g = tl.load(g_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=valid, other=0.0).to(ACC)
    _store_partial(part_ptr, 0, n, c, plane_ok, C, n_slots, g)
    _store_partial(part_ptr, 1, n, c, plane_ok, C, n_slots, g * mp)
    _store_partial(part_ptr, 2, n, c, plane_ok, C, n_slots, g * ap)


@triton.jit
def _pool_combine_kernel(
    x_ptr, coef_ptr, skip_ptr, out_ptr, NC, C, H, W, Ho, Wo, sxn, sxc, sxh, sxw,
    STRIDE: tl.constexpr, HAS_SKIP: tl.constexpr, ACC: tl.constexpr, PLANES: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c, plane_ok, oh, ow, valid = _tile(NC, C, Ho * Wo, Wo, PLANES, BLOCK_P)
    x_plane = x_ptr + n * sxn + c * sxc
    mp, ap, _, _ = _window(x_plane, oh, ow, valid, H, W, sxh, sxw, STRIDE, ACC)
    s_max = tl.load(coef_ptr + c, mask=plane_ok, other=0.0).to(ACC)
    s_avg = tl.load(coef_ptr + C + c, mask=plane_ok, other=0.0).to(ACC)
    bias = tl.load(coef_ptr + 2 * C + c, mask=plane_ok, other=0.0).to(ACC)
    out = s_max * mp + s_avg * ap + bias
    if HAS_SKIP:  # stride 1 only (checked by the launcher), so output pixel == input pixel
        x = tl.load(x_plane + oh * sxh + ow * sxw, mask=valid, other=0.0).to(ACC)
        out += tl.load(skip_ptr).to(ACC) * x
    tl.store(out_ptr + (n * C + c) * Ho * Wo + oh * Wo + ow, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _pool_combine_backward_kernel(
    x_ptr, g_ptr, coef_ptr, skip_ptr, dx_ptr, NC, C, H, W, Ho, Wo, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
    STRIDE: tl.constexpr, HAS_SKIP: tl.constexpr, ACC: tl.constexpr, PLANES: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    n, c, plane_ok, ih, iw, inside = _tile(NC, C, H * W, W, PLANES, BLOCK_P)
    x_plane = x_ptr + n * sxn + c * sxc
    g_plane = g_ptr + n * sgn + c * sgc
    a_max = tl.load(coef_ptr + c, mask=plane_ok, other=0.0).to(ACC)
    b_max = tl.load(coef_ptr + C + c, mask=plane_ok, other=0.0).to(ACC)
    c_max = tl.load(coef_ptr + 2 * C + c, mask=plane_ok, other=0.0).to(ACC)
    a_avg = tl.load(coef_ptr + 3 * C + c, mask=plane_ok, other=0.0).to(ACC)
    b_avg = tl.load(coef_ptr + 4 * C + c, mask=plane_ok, other=0.0).to(ACC)
    c_avg = tl.load(coef_ptr + 5 * C + c, mask=plane_ok, other=0.0).to(ACC)
    here = ih * W + iw
    dx = tl.zeros((PLANES, BLOCK_P), ACC)
    # Input pixel i sits at offset (kh, kw) of the window of output o iff o * STRIDE - 1 + k = i. A runtime loop
    # over the 9 windows: unrolled, all 81 loads go live at once (255 registers + spills on sm_90).
    for k in range(9):
        th = ih + 1 - k // 3
        tw = iw + 1 - k % 3
        valid = inside & (th >= 0) & (tw >= 0) & (th % STRIDE == 0) & (tw % STRIDE == 0)
        oh = tl.where(valid, th // STRIDE, 0)
        ow = tl.where(valid, tw // STRIDE, 0)
        valid = valid & (oh < Ho) & (ow < Wo)
        mp, ap, count, argmax = _window(x_plane, oh, ow, valid, H, W, sxh, sxw, STRIDE, ACC)
        g = tl.load(g_plane + oh * sgh + ow * sgw, mask=valid, other=0.0).to(ACC)
        # dL/dmaxpool and dL/davgpool of the folded BN (see pool_combine_ref), routed to the argmax / 1/count.
        g_max = a_max * g + b_max + c_max * mp
        g_avg = a_avg * g + b_avg + c_avg * ap
        dx += tl.where(valid & (argmax == here), g_max, 0.0)
        dx += tl.where(valid, g_avg / tl.maximum(count, 1.0), 0.0)
    if HAS_SKIP:  # stride 1 only, so g and x share the pixel grid
        dx += tl.load(skip_ptr).to(ACC) * tl.load(g_plane + ih * sgh + iw * sgw, mask=inside, other=0.0).to(ACC)
    tl.store(dx_ptr + (n * C + c) * H * W + here, dx.to(dx_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------------------------------------- launchers

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Pixels per program, one per thread: 16 warps. Measured by compiling for sm_90 (cuobjdump, no GPU timing yet):
# 1 pixel/thread keeps every kernel at <= 63 registers without spills; 8 pixels/thread spilled the backward.
_MAX_TILE = 512


def _check_x(x: torch.Tensor, stride: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must have a floating dtype in {_FLOAT_DTYPES}, got {x.dtype}")
    if 0 in x.shape[2:]:
        raise ValueError(f"x must have non-empty planes, got shape {list(x.shape)}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")


def _check_same(name: str, t: torch.Tensor, x: torch.Tensor, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check_skip(w_skip, x: torch.Tensor, stride: int) -> None:
    if w_skip is None:
        return
    _check_same("w_skip", w_skip, x, ())
    if stride != 1:
        raise ValueError(f"w_skip is only defined at stride 1 (the skip op is an identity), got stride={stride}")


def _acc(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _grid(planes: int, n_px: int):
    """(grid, meta): programs of PLANES planes x BLOCK_P pixels of a plane of n_px pixels; small planes (the
    4x4 outputs of a stride-2 edge on 8x8) are packed several to a program so that no warp idles. An empty
    batch gives an empty grid, which the launchers skip."""
    block_p = min(triton.next_power_of_2(n_px), _MAX_TILE)
    per_program = min(_MAX_TILE // block_p, triton.next_power_of_2(max(planes, 1)))
    grid = (triton.cdiv(planes, per_program), triton.cdiv(n_px, block_p))
    return grid, dict(PLANES=per_program, BLOCK_P=block_p, num_warps=max(1, per_program * block_p // 32))


def _partial_stats(kernel, k: int, x: torch.Tensor, g: torch.Tensor | None, stride: int) -> torch.Tensor:
    """Run a statistics kernel into partial[k, C, N * tiles] and finish the reduction on the host."""
    N, C, H, W = x.shape
    Ho, Wo = strided_shape(x, stride, C)[2:]
    grid, meta = _grid(N * C, Ho * Wo)
    n_slots = N * grid[1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(k, C, n_slots, device=x.device, dtype=acc_dtype)
    if n_slots == 0:
        return part.sum(-1)
    g_args = () if g is None else (g,)
    g_strides = () if g is None else g.stride()
    wrap_triton(kernel)[grid](
        x, *g_args, part, N * C, C, H, W, Ho, Wo, *x.stride(), *g_strides, n_slots,
        STRIDE=stride, ACC=_acc(x), **meta,
    )  # fmt: skip
    return part.sum(-1)


# The launches are custom ops, so torch.compile traces them (their checks run first, in the public functions).


@triton_op("dnas_fast::triton_pool_stats", mutates_args=())
def _pool_stats_op(x: torch.Tensor, stride: int) -> torch.Tensor:
    return _partial_stats(_pool_stats_kernel, 4, x, None, stride)


@triton_op("dnas_fast::triton_pool_grad_stats", mutates_args=())
def _pool_grad_stats_op(x: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    return _partial_stats(_pool_grad_stats_kernel, 3, x, g, stride)


@triton_op("dnas_fast::triton_pool_combine", mutates_args=())
def _pool_combine_op(x: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None) -> torch.Tensor:
    N, C, H, W = x.shape
    Ho, Wo = strided_shape(x, stride, C)[2:]
    out = torch.empty(N, C, Ho, Wo, device=x.device, dtype=x.dtype)
    grid, meta = _grid(N * C, Ho * Wo)
    if out.numel() == 0:
        return out
    coef = coef.contiguous()
    wrap_triton(_pool_combine_kernel)[grid](  # without w_skip, coef stands in for the never-read skip pointer
        x, coef, coef if w_skip is None else w_skip, out, N * C, C, H, W, Ho, Wo, *x.stride(),
        STRIDE=stride, HAS_SKIP=w_skip is not None, ACC=_acc(x), **meta,
    )  # fmt: skip
    return out


@triton_op("dnas_fast::triton_pool_combine_backward", mutates_args=())
def _pool_combine_backward_op(
    x: torch.Tensor, g: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None
) -> torch.Tensor:
    N, C, H, W = x.shape
    Ho, Wo = strided_shape(x, stride, C)[2:]
    dx = torch.empty(N, C, H, W, device=x.device, dtype=x.dtype)
    grid, meta = _grid(N * C, H * W)
    if dx.numel() == 0:
        return dx
    coef = coef.contiguous()
    wrap_triton(_pool_combine_backward_kernel)[grid](
        x, g, coef, coef if w_skip is None else w_skip, dx, N * C, C, H, W, Ho, Wo, *x.stride(), *g.stride(),
        STRIDE=stride, HAS_SKIP=w_skip is not None, ACC=_acc(x), **meta,
    )  # fmt: skip
    return dx


def pool_stats(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Per-channel sum and sum of squares of maxpool(x), then avgpool(x).

    Args:
        x (Tensor[N, C, H, W]): edge input, any strides.
        stride: 1 or 2.
    Returns:
        Tensor[4, C]: (sum mp, sum mp^2, sum ap, sum ap^2), fp32 (fp64 for fp64 x; fp32 also for fp16/bf16 x,
        where the sums would overflow).
    """
    _check_x(x, stride)
    return _pool_stats_op(x, stride)


def pool_grad_stats(x: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    """Per-channel sum(g), sum(g * maxpool(x)), sum(g * avgpool(x)).

    Args:
        x (Tensor[N, C, H, W]): edge input.
        g (Tensor[N, C, H', W']): gradient w.r.t. the pooled outputs, H' = ceil(H / stride).
        stride: 1 or 2.
    Returns:
        Tensor[3, C], fp32 (fp64 for fp64 x).
    """
    _check_x(x, stride)
    _check_same("g", g, x, strided_shape(x, stride, x.shape[1]))
    return _pool_grad_stats_op(x, g, stride)


def pool_combine(x: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None) -> torch.Tensor:
    """out = s_max * maxpool(x) + s_avg * avgpool(x) + bias (+ w_skip * x), per channel.

    Args:
        x (Tensor[N, C, H, W]): edge input.
        stride: 1 or 2.
        coef (Tensor[3, C]): (s_max, s_avg, bias), BN folded into per-channel scales.
        w_skip (Tensor[] or None): weight of the identity op, stride 1 only.
    Returns:
        Tensor[N, C, H', W'] in x's dtype, contiguous.
    """
    _check_x(x, stride)
    _check_same("coef", coef, x, (3, x.shape[1]))
    _check_skip(w_skip, x, stride)
    return _pool_combine_op(x, stride, coef, w_skip)


def pool_combine_backward(
    x: torch.Tensor, g: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None
) -> torch.Tensor:
    """dx = maxpool_bwd(a_max g + b_max + c_max mp) + avgpool_bwd(a_avg g + b_avg + c_avg ap) (+ w_skip g).

    Args:
        x (Tensor[N, C, H, W]): edge input.
        g (Tensor[N, C, H', W']): dL/dout.
        stride: 1 or 2.
        coef (Tensor[6, C]): (a_max, b_max, c_max, a_avg, b_avg, c_avg) from ``pool_grad_stats`` and BN.
        w_skip (Tensor[] or None): weight of the identity op, stride 1 only.
    Returns:
        dx (Tensor[N, C, H, W]) in x's dtype, contiguous.
    """
    _check_x(x, stride)
    _check_same("g", g, x, strided_shape(x, stride, x.shape[1]))
    _check_same("coef", coef, x, (6, x.shape[1]))
    _check_skip(w_skip, x, stride)
    return _pool_combine_backward_op(x, g, stride, coef, w_skip)
