"""One block call: the host launchers ``block_forward`` / ``block_backward`` (testable without autograd) and the
thin ``BlockFunction``. The forward keeps nothing per family; the backward rebuilds one family at a time from x
(its intermediates freed before the next family runs), like the fused per-edge path.

For a block output ``out[:, e] = sum_k w[e, k] y_k[:, e]`` and ``g = dL/dout``:
``dL/dw[e, k] = <g[:, e], y_k[:, e]>`` (``layout.per_edge_dot``); family ``k`` gets ``dy_k = g * w[:, k]``
(summed over the rows for a pool or skip, whose output the rows share) and ``autograd.grad`` of its recomputed
output gives its input's and its stacked parameters' gradients. The conv families' ReLU backward runs once for
their sum; a repeated ``ReLU(x)`` gives back ``n`` gradients summed over its copies."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...partial_channels import bypass_backward, bypass_of, scatter_partial, split_partial
from ...precision import autocast_state, recomputing_backward
from ...shapes import empty_spatial_inner, memory_format_of, strided_shape
from .families import RunningStats, dense_first, family_output, weights_of
from .layout import channels_last, in_layout, per_edge_dot, repeat_channels
from .plan import stacked_params
from .policy import keeps_intermediates


def block_forward(plan, x, weights, aux_weight, stacked):
    """Tensor[N, E, C_out, H', W'] of the block's edges (keeping nothing for backward unless run under autograd).

    x (Tensor[N, C, H, W]): the state the block reads; weights (Tensor[E, K]); aux_weight (Tensor[] or None);
    stacked: ``plan.stacked_params``."""
    E = len(plan.edges)
    x_ops = x[:, : plan.C_ops] if plan.pc > 1 else x
    N, C_o, Ho, Wo = strided_shape(x_ops, plan.stride, plan.edges[0].C_out // plan.pc)
    cl = channels_last(x)  # --channels-last: every conv, BN and pool below runs channels_last too
    acc = empty_spatial_inner(x, (N, E, C_o, Ho, Wo), cl, zeros=True)
    r = F.relu(x_ops) if any(f.kind == "conv" for f in plan.families) else None
    reps, stats, aux_out = {}, RunningStats(), None
    columns = weights.unbind(1)
    for f, st in zip(plan.families, stacked):
        y = family_output(plan, f, x_ops, x, r, reps, st, stats)
        w = weights_of(plan, f, columns, aux_weight).view(1, -1, 1, 1, 1)
        if f.kind == "aux":
            aux_out = y.mul_(w)
            continue
        y = y.unsqueeze(1) if y.dim() == 4 else y
        idx = plan.on(f.index, x.device)
        if idx is None:
            acc.addcmul_(y, w)
        else:
            acc.index_add_(1, idx, y * w)
        del y  # free family k before family k + 1 runs
    stats.write()
    if plan.inactive is not None:
        acc.add_((weights * plan.on(plan.inactive, weights.device, weights.dtype)).sum(1).view(1, E, 1, 1, 1))
    if plan.pc > 1:
        out = empty_spatial_inner(acc, (N, E, C_o * plan.pc, Ho, Wo), cl)
        out = scatter_partial(out, acc, bypass_of(x, plan.pc, plan.stride), plan.pc)
    else:
        out = acc
    if plan.aux == "skip":
        out.add_(x.unsqueeze(1) * aux_weight)
    elif aux_out is not None:
        out.add_(aux_out)
    return out


class _Inputs:
    """The leaves the families are recomputed on: x's op channels, one shared ReLU(x) and its repeats."""

    def __init__(self, plan, x, x_ops, cl):
        has_conv = any(f.kind == "conv" for f in plan.families)
        self.r = F.relu(x_ops).requires_grad_() if has_conv else None
        self.reps = {}  # leaves: the gradient of each repeated ReLU(x) is summed back once, at the end
        self.x_leaf = x_ops.detach().requires_grad_()
        self.x, self.cl = x, cl

    def of(self, f):
        if f.kind == "aux":
            return self.x.detach().requires_grad_()
        if f.kind != "conv":
            return self.x_leaf
        if dense_first(f):
            return self.r
        n = len(f.rows)
        if n not in self.reps:
            self.reps[n] = repeat_channels(self.r.detach(), n, self.cl).requires_grad_()
        return self.reps[n]


@dataclass
class _Grads:
    """What the families' backwards add up: dL/dweights [E, K], dL/daux and the gradients of their inputs."""

    dW: torch.Tensor
    daux: torch.Tensor | None = None
    dx_aux: torch.Tensor | None = None  # the aux path's dL/dx (all of x)
    dx_ops: torch.Tensor | None = None  # pools and skip: dL/dx of the op channels
    d_r: torch.Tensor | None = None  # dL/dReLU(x), dense first convs
    d_reps: dict = field(default_factory=dict)  # n -> dL/d(ReLU(x) repeated n times)

    def add_weight_grad(self, f, dw_f, idx):
        if f.kind == "aux":
            self.daux = dw_f.sum()
        elif idx is None:
            self.dW[:, f.k].add_(dw_f)
        else:
            self.dW[:, f.k].index_add_(0, idx, dw_f)

    def add_input_grad(self, f, dense, d):
        if f.kind == "aux":
            self.dx_aux = d if self.dx_aux is None else self.dx_aux + d
        elif f.kind == "conv" and not dense:
            n = len(f.rows)
            self.d_reps[n] = d if n not in self.d_reps else self.d_reps[n].add_(d)
        elif f.kind == "conv":
            self.d_r = d if self.d_r is None else self.d_r.add_(d)
        else:
            self.dx_ops = d if self.dx_ops is None else self.dx_ops.add_(d)


def _family_backward(plan, f, st, need, g, g_ops, columns, aux_weight, ins, grads):
    """Family ``f`` rebuilt on its input leaf and freed: adds its dL/dw (or dL/daux) and its input's gradient to
    ``grads``; returns dL/d(its stacked parameters), None where not needed."""
    idx = plan.on(f.index, ins.x.device)
    inp_leaf = ins.of(f)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(n) for t, n in zip(st, need)]
        y = family_output(plan, f, ins.x_leaf, inp_leaf, ins.r, ins.reps, leaves, None)
    gf = g if f.kind == "aux" else g_ops
    if idx is not None:
        gf = in_layout(gf.index_select(1, idx), ins.cl)
    w = weights_of(plan, f, columns, aux_weight)
    shared = y.dim() == 4
    yd = y.detach()
    grads.add_weight_grad(f, per_edge_dot(gf, yd.unsqueeze(1) if shared else yd, ins.cl), idx)
    dy = gf * w.view(1, -1, 1, 1, 1)
    if shared:
        dy = dy.sum(1)
    targets = [inp_leaf] + [t for t in leaves if t.requires_grad]
    d = (dy,) if y is inp_leaf else torch.autograd.grad(y, targets, dy)  # skip: y is its input
    grads.add_input_grad(f, inp_leaf is ins.r, d[0])
    it = iter(d[1:])
    return [next(it) if t.requires_grad else None for t in leaves]


def _input_grad(plan, grads, x_ops, dx_bypass):
    """dL/dx from the families' input gradients (one ReLU backward for all conv families) and the bypass."""
    d_r = grads.d_r
    for n, d in grads.d_reps.items():
        d = d.unflatten(1, (n, -1)).sum(1)
        d_r = d if d_r is None else d_r.add_(d)
    dx_ops = grads.dx_ops
    if d_r is not None:
        d_conv = torch.ops.aten.threshold_backward(d_r, x_ops, 0)
        dx_ops = d_conv if dx_ops is None else dx_ops.add_(d_conv)
    if dx_ops is None:
        dx_ops = torch.zeros_like(x_ops)
    dx = torch.cat([dx_ops, dx_bypass], 1) if plan.pc > 1 else dx_ops
    return dx if grads.dx_aux is None else grads.dx_aux + dx


def block_backward(plan, g, x, weights, aux_weight, stacked, needs):
    """dL/dx, dL/dweights [E, K], dL/daux, dL/d(stacked) (per family, per slot; None where not needed)."""
    cl = channels_last(x)
    g = in_layout(g, cl)
    grads = _Grads(torch.zeros_like(weights))
    if plan.aux == "skip":
        gs = g.sum(1)
        grads.daux = torch.dot(gs.flatten(), x.flatten())
        grads.dx_aux = gs * aux_weight
    g_ops, x_ops, dx_bypass = g, x, None
    if plan.pc > 1:
        g_ops, g_bypass = split_partial(g, plan.pc)
        g_ops, x_ops = in_layout(g_ops, cl), x[:, : plan.C_ops]
        g_bypass = g_bypass.contiguous(memory_format=memory_format_of(x))
        dx_bypass = bypass_backward(x, g_bypass, plan.pc, plan.stride)
    if plan.inactive is not None:
        inactive = plan.on(plan.inactive, weights.device, weights.dtype)
        grads.dW += g_ops.sum((0, 2, 3, 4)).view(len(plan.edges), 1) * inactive
    ins, columns = _Inputs(plan, x, x_ops, cl), weights.unbind(1)
    dstacked = [
        _family_backward(plan, f, st, need, g, g_ops, columns, aux_weight, ins, grads)
        for f, st, need in zip(plan.families, stacked, needs)
    ]
    return _input_grad(plan, grads, x_ops, dx_bypass), grads.dW, grads.daux, dstacked


class BlockFunction(torch.autograd.Function):
    """``apply(plan, x, weights [E, K], aux_weight, *params)`` -> Tensor[N, E, C_out, H', W']; parameters are
    inputs so their gradients flow to whatever tensors the modules hold at call time (``functional_call``)."""

    @staticmethod
    def forward(ctx, plan, x, weights, aux_weight, *params):
        out = block_forward(plan, x, weights, aux_weight, stacked_params(plan, params))
        ctx.plan, ctx.autocast = plan, autocast_state(x.device.type)  # what torch.amp.custom_fwd does, any device
        ctx.save_for_backward(x, weights, aux_weight, *params)  # references: the concatenation is redone
        return out

    @staticmethod
    @recomputing_backward("batched cell")
    def backward(ctx, g):
        x, weights, aux_weight, *params = ctx.saved_tensors
        plan = ctx.plan
        needs, j = [], 4
        for f in plan.families:
            n = len(f.rows)
            needs.append([any(ctx.needs_input_grad[j + s * n : j + (s + 1) * n]) for s in range(f.slots)])
            j += f.slots * n
        dx, dW, daux, dstacked = block_backward(plan, g, x, weights, aux_weight, stacked_params(plan, params), needs)
        dparams = []
        for f, ds in zip(plan.families, dstacked):
            n = len(f.rows)
            for d in ds:
                dparams += [None] * n if d is None else list(d.chunk(n))
        return None, dx, dW, daux, *dparams


def run_block(plan, x, weights, aux_weight, params):
    """The block's output [N, E, C_out, H', W']: recomputed in the backward (``BlockFunction``) unless ``x`` is
    small (``policy``), then under autograd like any module."""
    if keeps_intermediates(x):
        return block_forward(plan, x, weights, aux_weight, stacked_params(plan, params))
    return BlockFunction.apply(plan, x, weights, aux_weight, *params)
