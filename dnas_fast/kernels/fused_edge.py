"""Memory-lean fused MixedEdge: ``out = sum_k w_k * op_k(x)`` without keeping any per-op output for backward.

Forward (under no_grad, one op at a time, each freed before the next):
    * parameter-free ops (max/avg pool 3x3 with their affine-free batch-stat BN, identity skip): BN is folded
      into per-channel scales, ``pool_stats`` gives the BN batch statistics and ``pool_combine`` writes
      ``s_max * maxpool(x) + s_avg * avgpool(x) + bias + w_skip * x`` in one pass over x;
    * conv ops (sep/dil conv, ReLUConvBN, FactorizedReduce): run functionally on one shared ``ReLU(x)`` and
      accumulated with ``acc += w_k * op_k`` (BN running statistics updated here, exactly once);
    * PC-DARTS partial channels: the op output and the (2x2 max-pooled) bypass are written straight into the
      shuffled channel positions of the one output tensor (``out[:, j * K] = op part``), no cat + shuffle copy;
    * straight-through (GDAS): the inactive weights are added as a constant; DARTS- aux skip: ``+ beta * aux(x)``.
Saved for backward: x, the weights, the pool-BN statistics (Tensor[2, 2, C]) and references to the op parameters.
Backward: pools via ``pool_grad_stats`` (dL/dw as per-channel reductions) and ``pool_combine_backward`` (dx);
conv ops recomputed one at a time with grad enabled on the shared ReLU(x) leaf, BN with batch statistics and no
running-stat update (training) or the running statistics (eval); ``dL/dw_k = <g, op_k(x)>``; zero op: exactly 0.

Structure of an edge: ``edge_structure.py``; primitives (``Prims``) and their plain-PyTorch reference:
``pool_combine_ref.py``; which backend runs them where: ``backends.py``.

Example::

    edge = MixedEdge(16, 1, DARTS_OPS, pool_bn=True)
    y = fused_edge_forward(edge, torch.randn(2, 16, 8, 8), torch.softmax(torch.zeros(8), 0))
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..mixed_edge import MixedEdge, active_ops
from ..partial_channels import bypass_backward, bypass_of, scatter_partial, split_partial
from ..precision import autocast_state, recomputing_backward
from ..shapes import memory_format_of, strided_shape
from . import pool_combine_ref
from .edge_structure import ConvProgram, EdgeSpec, edge_spec, uses_batch_stats
from .pool_combine_ref import Prims

REF_PRIMS = Prims.of(pool_combine_ref)


@dataclass
class _Plan:
    """Host-side decisions of one call (the mask is a CPU tensor by contract: no device sync)."""

    spec: EdgeSpec
    prims: Prims
    stride: int
    pc: int  # partial-channel K
    C_ops: int  # channels through the ops
    C_ops_out: int
    inactive: list
    straight_through: bool
    pool_idx: dict  # "max" / "avg" -> op index, active pools only
    skip_idx: int | None  # active identity op
    convs: list  # active conv op indices
    slices: list  # per active conv op (then the aux op): its slice of the flat parameter list
    aux: object  # None, "skip" or the aux ConvProgram (only when an aux weight is given)


def make_plan(edge: MixedEdge, mask, straight_through: bool, aux_weight, prims) -> tuple[_Plan, list]:
    """The plan of one call and the flat list of op parameters it reads (at call time: functional_call works)."""
    spec = edge_spec(edge)
    if spec is None:
        raise ValueError(f"the fused path does not know every op of this edge: {edge.op_names}")
    active = active_ops(edge, mask)
    kinds = spec.kinds
    pool_idx = {kinds[k]: k for k in active if kinds[k] in ("max", "avg")}
    skips = [k for k in active if kinds[k] == "skip"]
    convs = [k for k in active if kinds[k] == "conv"]
    programs = [spec.programs[k] for k in convs]
    aux = spec.aux if aux_weight is not None else None
    if isinstance(aux, ConvProgram):
        programs.append(aux)
    params, slices = [], []
    for program in programs:
        tensors = program.tensors()
        slices.append(slice(len(params), len(params) + len(tensors)))
        params += tensors
    pc = edge.partial_channels
    plan = _Plan(
        spec, prims, edge.stride, pc, edge.C // pc, edge.C_out // pc,
        [k for k in range(len(kinds)) if k not in active], straight_through, pool_idx,
        skips[0] if skips else None, convs, slices, aux,
    )  # fmt: skip
    return plan, params


def _inner(a, b):
    """<a, b> over all elements, without a temporary when both share a dense layout."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    cl = torch.channels_last
    if a.is_contiguous(memory_format=cl) and b.is_contiguous(memory_format=cl):
        return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return (a * b).sum()


def _dense(t):
    cl = torch.channels_last
    return t if t.is_contiguous() or t.is_contiguous(memory_format=cl) else t.contiguous()


def _relu_backward(grad, x):
    return torch.ops.aten.threshold_backward(grad, x, 0)


_POOLS = ("max", "avg")


def _batch_stat_rows(plan) -> list:
    """Pool rows (0 max, 1 avg) whose BN normalises with batch statistics (their backward has BN terms)."""
    rows = []
    for row, kind in enumerate(_POOLS):
        bn = plan.spec.pools[plan.pool_idx[kind]].bn if kind in plan.pool_idx else None
        if bn is not None and uses_batch_stats(bn):
            rows.append(row)
    return rows


def _pool_bn_stats(plan, x_ops):
    """Tensor[2, 2, C]: (mean, invstd) that normalise (maxpool, avgpool); (0, 1) without BN. In training the
    BN running statistics are updated here, once per forward, like nn.BatchNorm2d (unbiased variance)."""
    C = x_ops.shape[1]
    stat_dtype = torch.float64 if x_ops.dtype == torch.float64 else torch.float32
    out = torch.zeros(2, 2, C, dtype=stat_dtype, device=x_ops.device)
    out[:, 1] = 1.0
    batch_rows = _batch_stat_rows(plan)
    if batch_rows:
        sums = plan.prims.pool_stats(x_ops, plan.stride).to(stat_dtype)  # [4, C]: sum, sum sq of mp, then ap
        N, _, Ho, Wo = strided_shape(x_ops, plan.stride, C)
        M = N * Ho * Wo
    for row, kind in enumerate(_POOLS):
        bn = plan.spec.pools[plan.pool_idx[kind]].bn if kind in plan.pool_idx else None
        if bn is None:
            continue
        if row not in batch_rows:
            out[row, 0] = bn.running_mean
            out[row, 1] = (bn.running_var + bn.eps).rsqrt()
            continue
        mean = sums[2 * row] / M
        var = (sums[2 * row + 1] / M - mean * mean).clamp_min(0)
        out[row, 0], out[row, 1] = mean, (var + bn.eps).rsqrt()
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
            unbiased = var * (M / max(M - 1, 1))
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    return out


def _pool_weights(plan, weights, dtype):
    """Tensor[2, 1]: weights of (max, avg) pool, 0 where absent or masked."""
    w = torch.zeros(2, 1, dtype=dtype, device=weights.device)
    for row, kind in enumerate(_POOLS):
        if kind in plan.pool_idx:
            w[row] = weights[plan.pool_idx[kind]]
    return w


def _param_free_forward(plan, x_ops, weights, bn_stats):
    """sum of the active pool (+BN) and identity terms, or None when none is active."""
    w_skip = weights[plan.skip_idx] if plan.skip_idx is not None else None
    if plan.pool_idx:
        scale = _pool_weights(plan, weights, bn_stats.dtype) * bn_stats[:, 1]  # [2, C]
        coef = torch.cat([scale, -(scale * bn_stats[:, 0]).sum(0, keepdim=True)])  # (s_max, s_avg, bias)
        return plan.prims.pool_combine(x_ops, plan.stride, coef, w_skip).to(x_ops.dtype)
    return x_ops * w_skip if w_skip is not None else None


def fused_forward(plan: _Plan, x, weights, aux_weight, params):
    """The edge output (Tensor[N, C_out, H', W']) and the pool-BN statistics, keeping nothing else."""
    x_ops = x[:, : plan.C_ops] if plan.pc > 1 else x
    bn_stats = _pool_bn_stats(plan, x_ops)
    acc = _param_free_forward(plan, x_ops, weights, bn_stats)
    if plan.convs:
        r = F.relu(x_ops)  # every conv op starts with ReLU: compute it once
        for k, sl in zip(plan.convs, plan.slices):
            y = plan.spec.programs[k].run(r, params[sl], update_stats=True)
            acc = y.mul_(weights[k]) if acc is None else acc.addcmul_(y, weights[k])
            del y  # free op k before op k + 1 runs
    if acc is None:  # every op masked (or zero)
        acc = x_ops.new_zeros(strided_shape(x_ops, plan.stride, plan.C_ops_out))
    if plan.straight_through and plan.inactive:
        acc.add_(weights[plan.inactive].sum())
    out = _scatter_partial(plan, x, acc) if plan.pc > 1 else acc
    if plan.aux == "skip":
        out.addcmul_(x, aux_weight)
    elif plan.aux is not None:
        out.addcmul_(plan.aux.run(F.relu(x), params[plan.slices[-1]], update_stats=True), aux_weight)
    return out, bn_stats


def _scatter_partial(plan, x, acc):
    """cat([acc, bypass]) written in channel-shuffled order straight into the output (PC-DARTS, groups K)."""
    N, C = x.shape[:2]
    out = torch.empty((N, C, *acc.shape[-2:]), dtype=acc.dtype, device=acc.device, memory_format=memory_format_of(x))
    return scatter_partial(out, acc, bypass_of(x, plan.pc, plan.stride), plan.pc)


def _split_partial(plan, x, g):
    """dL/d(op output) (Tensor[N, C/K, H', W']) and dL/dx of the bypassed channels."""
    g_ops, g_bypass = split_partial(g, plan.pc)
    return g_ops.contiguous(memory_format=memory_format_of(g)), bypass_backward(x, g_bypass, plan.pc, plan.stride)


def _param_free_backward(plan, x_ops, g_ops, weights, bn_stats, dw):
    """dx of the pool / identity terms (or None); fills their dL/dw in ``dw``; returns sum(g) if it was cheap."""
    w_skip = weights[plan.skip_idx] if plan.skip_idx is not None else None
    sum_g = None
    dx = None
    if plan.pool_idx:
        st = plan.prims.pool_grad_stats(x_ops, g_ops, plan.stride).to(bn_stats.dtype)  # [3, C]
        mean, invstd = bn_stats[:, 0], bn_stats[:, 1]  # [2, C]
        gy = (st[1:] - mean * st[0]) * invstd  # per channel sum(g * BN(pool))
        for row, kind in enumerate(_POOLS):
            if kind in plan.pool_idx:
                dw[plan.pool_idx[kind]] = gy[row].sum()  # dL/dw_pool = <g, BN(pool(x))>
        a = _pool_weights(plan, weights, st.dtype) * invstd  # d out / d pool = w * invstd
        b, c = torch.zeros_like(a), torch.zeros_like(a)
        rows = _batch_stat_rows(plan)
        if rows:  # batch-stat BN: dL/dp = a (g - mean(g) - y mean(g y)), y = (p - mean) invstd
            M = g_ops.numel() // g_ops.shape[1]
            mgy = gy[rows] / M
            b[rows] = a[rows] * (invstd[rows] * mean[rows] * mgy - st[0] / M)
            c[rows] = -a[rows] * invstd[rows] * mgy
        coef = torch.stack([a[0], b[0], c[0], a[1], b[1], c[1]])
        dx = plan.prims.pool_combine_backward(x_ops, g_ops, plan.stride, coef, w_skip).to(x_ops.dtype)
        sum_g = st[0].sum()
    elif w_skip is not None:
        dx = g_ops * w_skip
    if w_skip is not None:
        dw[plan.skip_idx] = _inner(g_ops, x_ops)
    return dx, sum_g


def _recompute_backward(program, x, g, weight, params, needs):
    """Recompute one conv op on a ReLU(x) leaf with grad enabled; return (d ReLU(x) scaled by ``weight``,
    <g, op(x)>, param grads scaled by ``weight`` or None). BN uses batch stats, running stats untouched."""
    with torch.enable_grad():
        r = F.relu(x).requires_grad_()
        leaves = [p.detach().requires_grad_(n) for p, n in zip(params, needs)]
        y = program.run(r, leaves, update_stats=False)
        dw = _inner(g, y.detach())
        grads = torch.autograd.grad(y, [r, *[p for p in leaves if p.requires_grad]], g)
    it = iter(grads[1:])
    dparams = [next(it) * weight if n else None for n in needs]
    return grads[0], dw, dparams


def fused_backward(plan: _Plan, g, x, weights, aux_weight, bn_stats, params, needs):
    """dL/dx, dL/dweights (Tensor[K]), dL/daux_weight, dL/dparams (each None where not needed)."""
    g = _dense(g)
    dw = [None] * len(plan.spec.kinds)
    if plan.pc > 1:
        x_ops = x[:, : plan.C_ops]
        g_ops, dx_bypass = _split_partial(plan, x, g)
    else:
        x_ops, g_ops = x, g
    dx_ops, sum_g = _param_free_backward(plan, x_ops, g_ops, weights, bn_stats, dw)
    dparams = [None] * len(params)
    if plan.convs:
        dr = None
        for k, sl in zip(plan.convs, plan.slices):
            # op k is rebuilt from x and freed before op k + 1: only one op's intermediates are alive
            dr_k, dw[k], dparams[sl] = _recompute_backward(plan.spec.programs[k], x_ops, g_ops, weights[k],
                                                           params[sl], needs[sl])  # fmt: skip
            dr = dr_k.mul_(weights[k]) if dr is None else dr.addcmul_(dr_k, weights[k])
        dx_conv = _relu_backward(dr, x_ops)  # shared ReLU: one backward for all conv ops
        dx_ops = dx_conv if dx_ops is None else dx_ops.add_(dx_conv)
    if plan.straight_through and plan.inactive:
        total = g_ops.sum() if sum_g is None else sum_g
        for k in plan.inactive:
            dw[k] = total  # d(out + sum w_inactive)/dw_k = sum(g) over the op output
    if dx_ops is None:
        dx_ops = torch.zeros_like(x_ops)
    if plan.pc > 1:
        dx = torch.empty_like(x, memory_format=memory_format_of(x))
        dx[:, : plan.C_ops] = dx_ops
        dx[:, plan.C_ops :] = dx_bypass
    else:
        dx = dx_ops
    daux = None
    if plan.aux == "skip":
        dx = dx.addcmul_(g, aux_weight)
        daux = _inner(g, x)
    elif plan.aux is not None:
        sl = plan.slices[-1]
        dr, daux, dparams[sl] = _recompute_backward(plan.aux, x, g, aux_weight, params[sl], needs[sl])
        dx = dx.add_(_relu_backward(dr.mul_(aux_weight), x))
    zero = weights.new_zeros(())
    dweights = torch.stack([zero if d is None else d.to(weights.dtype) for d in dw])
    return dx, dweights, daux, dparams


class FusedEdgeFunction(torch.autograd.Function):
    """Thin autograd wrapper: ``apply(plan, x, weights, aux_weight, *params)``; parameters are inputs so their
    gradients flow to whatever tensors the module holds at call time (``torch.func.functional_call``)."""

    @staticmethod
    def forward(ctx, plan, x, weights, aux_weight, *params):
        out, bn_stats = fused_forward(plan, x, weights, aux_weight, params)
        ctx.plan, ctx.autocast = plan, autocast_state(x.device.type)  # what torch.amp.custom_fwd does, any device
        ctx.save_for_backward(x, weights, aux_weight, bn_stats, *params)
        return out

    @staticmethod
    @recomputing_backward("fused MixedEdge")
    def backward(ctx, g):
        x, weights, aux_weight, bn_stats, *params = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[4:])
        dx, dw, daux, dparams = fused_backward(ctx.plan, g, x, weights, aux_weight, bn_stats, params, needs)
        return None, dx, dw, daux, *dparams


def fused_edge_forward(edge, x, weights, mask=None, aux_weight=None, straight_through=False, *, prims=REF_PRIMS):
    """Same signature and numbers as ``mixed_edge.reference_forward``, memory-lean; ``prims`` supplies the four
    parameter-free primitives (``REF_PRIMS``, the compiled extension or Triton)."""
    plan, params = make_plan(edge, mask, straight_through, aux_weight, prims)
    return FusedEdgeFunction.apply(plan, x, weights, aux_weight, *params)
