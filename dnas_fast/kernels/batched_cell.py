"""Cell-level batched execution: every edge that reads one state runs each op family once for all of them.

A cell's edges are grouped into *blocks* by the state they read (DARTS: s0 and s1 feed 4 edges each, node 2 feeds 3,
node 3 feeds 2, node 4 one; NB-201: 3, 2, 1). For a block of ``E`` edges and one op family ``k`` active on ``n`` of
them:
    * conv ops (sep / dil conv, ReLU-conv-BN, FactorizedReduce) share one ``ReLU(x)``; the ``n`` edges' weights
      are concatenated at call time (so ``torch.func.functional_call`` works) into one grouped convolution per layer:
      a dense first conv reads ``ReLU(x)`` with ``n * C_out`` filters, a depthwise first conv reads ``ReLU(x)``
      repeated ``n`` times with ``groups = n * C``, every later conv has ``groups * n``; the output is edge-major,
      ``[N, n * C, H, W] = [N, n, C, H, W]``. One batch-norm call normalises the stacked channels (per-channel batch
      statistics are exactly the per-edge ones); running statistics go to each edge's own BN buffers (the BN
      kernel's batch statistics + ``_foreach_lerp_``), so state_dict keys and checkpoints are unchanged;
    * pools and skip are computed once per block (same input, same stride; their affine-free batch-stat BN gives the
      same numbers for every edge) and weighted per edge by one broadcast ``addcmul``;
    * the block returns ``[N, E, C_out, H', W']``, edge ``e`` feeding the block's ``e``-th target node; the cell
      adds blocks into one running node accumulator (one add per block).
Masks (a CPU tensor) decide on the host which edges each family runs for; PC-DARTS partial channels, the DARTS- aux
skip and straight-through are kept.

Memory: ``BlockFunction`` stores x, the block's weights and the concatenated op parameters; the backward recomputes
one family at a time (its intermediates freed before the next), like the fused per-edge path. The backward is not
differentiable (second-order DARTS uses finite differences through ``functional_call``, which works). A block whose
input has fewer than ``RECOMPUTE_MIN_NUMEL`` elements runs its forward under autograd instead and keeps the
intermediates: that small, recomputing costs more time than it saves memory.

Used by the cell forwards of the DARTS and NB-201 spaces when every edge of the cell resolves to the ``batched``
backend and the cell is in training mode; a lone ``MixedEdge`` (``compat.MixedOp``) on ``batched`` runs the fused
per-edge path.
"""

import contextlib
import math
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..precision import autocast_state, restore_autocast
from ..shapes import empty_spatial_inner, memory_format_of, strided_shape
from .backends import BATCHED
from .edge_structure import ConvProgram, edge_spec

# ---- static structure of a block ---------------------------------------------------------------------------------


def _bns(program: ConvProgram):
    return [
        m for m in (program.layers if program.reduce is None else (program.reduce.bn,)) if isinstance(m, nn.BatchNorm2d)
    ]


def _program_batchable(program: ConvProgram) -> bool:
    if program.reduce is None and not isinstance(program.layers[0], nn.Conv2d):
        return False
    return all(bn.momentum is not None and bn.track_running_stats for bn in _bns(program))


def _block_batchable(edges) -> bool:
    first = edges[0]
    same = ("op_names", "C", "C_out", "stride", "partial_channels")
    if any(getattr(e, a) != getattr(first, a) for e in edges for a in same):
        return False
    if any((e.aux is None) != (first.aux is None) for e in edges):
        return False
    specs = [edge_spec(e) for e in edges]
    if any(s is None for s in specs):
        return False
    programs = [p for s in specs for p in [*s.programs.values(), *([s.aux] if isinstance(s.aux, ConvProgram) else [])]]
    bns = [p.bn for s in specs for p in s.pools.values() if p.bn is not None] + [b for p in programs for b in _bns(p)]
    one_momentum = len({bn.momentum for bn in bns}) <= 1  # one _foreach_lerp_ writes them all
    return all(map(_program_batchable, programs)) and one_momentum and all(bn.momentum is not None for bn in bns)


@dataclass
class _Cell:
    """A cell's blocks and the block plans built so far (one per source, mask and option set)."""

    key: tuple
    blocks: tuple | None  # ((source state, edge indices in target order), ...), None: not batchable
    plans: dict = field(default_factory=dict)


_CELLS: "weakref.WeakKeyDictionary[nn.Module, _Cell]" = weakref.WeakKeyDictionary()
_MAX_PLANS = 256  # per cell: masks that change every step (sampling strategies) would grow the cache forever


def _cell(edges, sources) -> _Cell:
    key = (tuple(sources), tuple(map(id, edges)))
    cell = _CELLS.get(edges)
    if cell is None or cell.key != key:
        blocks = tuple((s, tuple(e for e, src in enumerate(sources) if src == s)) for s in sorted(set(sources)))
        if not all(_block_batchable([edges[e] for e in idx]) for _, idx in blocks):
            blocks = None
        cell = _CELLS[edges] = _Cell(key, blocks)
    return cell


def _cached_plan(cell, edges, source, idx, arch, arch_key):
    """The plan of block ``source`` under ``arch`` (``arch_key``: its mask and options, made once per cell call),
    built once."""
    key = (source, *arch_key)
    plan = cell.plans.get(key)
    if plan is None:
        if len(cell.plans) >= _MAX_PLANS:
            cell.plans.clear()
        mask = None if arch.mask is None else arch.mask[list(idx)]
        block = [edges[e] for e in idx]
        plan = cell.plans[key] = make_block_plan(block, idx, mask, arch.straight_through, arch.aux is not None)
    return plan


# ---- one family of one block -------------------------------------------------------------------------------------


class _RunningStats:
    """The batch statistics of every BN a block call normalises, written to the BNs' own buffers at the end of the
    forward by three ``_foreach`` ops (all BNs of a block share one momentum, checked by ``_block_batchable``)."""

    def __init__(self):
        self.bns, self.means, self.vars = [], [], []

    def batch_norm(self, h, weight, bias, bns, shared):
        """Training-mode BN of ``h`` (Tensor[N, n * C, H, W], its channel blocks belonging to ``bns``, or the one
        input of ``shared`` BNs), keeping its batch statistics: the BN kernel writes them into fresh buffers with
        momentum 1 (unbiased variance, like nn.BatchNorm2d), so no second pass over ``h`` computes them."""
        stats = torch.zeros(2, h.shape[1], dtype=bns[0].running_mean.dtype, device=h.device)  # fp32 under autocast
        mean, var = stats
        out = F.batch_norm(h, mean, var, weight, bias, True, 1.0, bns[0].eps)
        n = len(bns)
        self.bns += bns
        self.means += [mean] * n if shared else list(mean.chunk(n))
        self.vars += [var] * n if shared else list(var.chunk(n))
        return out

    def write(self):
        if self.bns:
            momentum = self.bns[0].momentum
            torch._foreach_lerp_([bn.running_mean for bn in self.bns], self.means, momentum)
            torch._foreach_lerp_([bn.running_var for bn in self.bns], self.vars, momentum)
            torch._foreach_add_([bn.num_batches_tracked for bn in self.bns], 1)


def _stacked_bn(h, bns, it, stats):
    weight, bias = (next(it), next(it)) if bns[0].affine else (None, None)
    if stats is not None:
        return stats.batch_norm(h, weight, bias, bns, shared=False)
    return F.batch_norm(h, None, None, weight, bias, True, 0.0, bns[0].eps)


def _nhwc(t):
    return t.permute(0, 2, 3, 1)  # a channels_last tensor's dense view


def _nchw(t):
    return t.permute(0, 3, 1, 2)


def _repeat_channels(t, n, cl):
    """``t.repeat(1, n, 1, 1)`` in ``t``'s layout (``repeat`` itself returns NCHW); one op either way."""
    return _nchw(_nhwc(t).repeat(1, 1, 1, n)) if cl else t.repeat(1, n, 1, 1)


def _in_layout(t, cl):
    """``t`` laid out as ``empty_spatial_inner`` makes it (a copy only when it is not)."""
    if not cl:
        return t.contiguous()
    if t.permute(0, -2, -1, *range(1, t.dim() - 2)).is_contiguous():  # memory order N, H, W, *middle already
        return t
    return empty_spatial_inner(t, t.shape, True).copy_(t)


def _channels_last(t) -> bool:
    return memory_format_of(t) == torch.channels_last


def _run_stacked(programs, r, r_rep, stacked, stats):
    """``n`` edges' copies of one conv op on ``r = ReLU(x)`` -> Tensor[N, n, C_out, H', W']; ``stacked`` holds the
    concatenated parameters in program order; ``r_rep()`` is ``r`` repeated ``n`` times along channels."""
    n = len(programs)
    it = iter(stacked)
    p0 = programs[0]
    if p0.reduce is not None:
        m = p0.reduce
        shifted = r[:, :, 1:, 1:]
        H, W = r.shape[-2:]
        if H % 2 or W % 2:
            shifted = F.pad(shifted, (0, W % 2, 0, H % 2))
        a = F.conv2d(r, next(it), None, m.conv_1.stride)
        b = F.conv2d(shifted, next(it), None, m.conv_2.stride)
        if _channels_last(a):  # the same interleave in the dense NHWC view: the output stays channels_last
            h = _nchw(torch.stack([_nhwc(a).unflatten(3, (n, -1)), _nhwc(b).unflatten(3, (n, -1))], 4).flatten(3))
        else:
            h = torch.stack([a.unflatten(1, (n, -1)), b.unflatten(1, (n, -1))], 2).flatten(1, 3)
        h = _stacked_bn(h, [p.reduce.bn for p in programs], it, stats)
        return h.unflatten(1, (n, -1))
    h = None
    for i, m in enumerate(p0.layers):
        if isinstance(m, nn.Conv2d):
            weight = next(it)
            bias = next(it) if m.bias is not None else None
            if h is None and m.groups == 1:  # dense first conv: all edges' filters over the one ReLU(x)
                h = F.conv2d(r, weight, bias, m.stride, m.padding, m.dilation, 1)
            else:
                h = F.conv2d(r_rep() if h is None else h, weight, bias, m.stride, m.padding, m.dilation, m.groups * n)
        elif isinstance(m, nn.BatchNorm2d):
            h = _stacked_bn(h, [p.layers[i] for p in programs], it, stats)
        else:
            h = F.relu(h)
    return h.unflatten(1, (n, -1))


def _pool_normalised(pool, x, stride, stats, bns):
    """The pool and its affine-free batch-stat BN, once for every edge of the block (same input, same numbers)."""
    p = F.max_pool2d(x, 3, stride, 1) if pool.kind == "max" else F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    if pool.bn is None:
        return p
    if stats is not None:
        return stats.batch_norm(p, None, None, bns, shared=True)
    return F.batch_norm(p, None, None, None, None, True, 0.0, pool.bn.eps)


# ---- the block plan and its autograd Function --------------------------------------------------------------------


@dataclass
class _Family:
    k: int  # op index
    kind: str  # "max", "avg", "skip", "conv", "aux"
    rows: list  # block rows (edges) it runs for
    slots: int  # parameters per edge (conv)
    programs: list  # per row (conv / aux conv)
    bns: list  # pool BNs of its rows
    index: torch.Tensor | None  # rows as a CPU index; None: every row


@dataclass
class _BlockPlan:
    edges: list
    cell_rows: torch.Tensor  # the block's edges' indices in the cell, CPU
    stride: int
    pc: int
    C_ops: int
    families: list
    inactive: torch.Tensor | None  # [E, K] bool (straight-through), CPU
    aux: object  # None, "skip" or "conv"
    copies: dict = field(default_factory=dict)  # (id of a CPU tensor above, device, dtype) -> its copy there

    def on(self, t, device, dtype=None):
        """A CPU tensor of the plan on ``device``, copied once: a replayed CUDA graph reads no host memory."""
        if t is None or (device.type == "cpu" and dtype in (None, t.dtype)):
            return t
        key = (id(t), device, dtype)
        if key not in self.copies:
            self.copies[key] = t.to(device, dtype)
        return self.copies[key]

    def params(self):
        """The parameters a block call reads, read now (``functional_call`` swaps them between calls)."""
        params = []
        for f in self.families:
            tensors = [p.tensors() for p in f.programs]
            for slot in range(f.slots):
                params += [t[slot] for t in tensors]
        return params


def make_block_plan(edges, cell_rows, mask, straight_through, has_aux):
    """Host-side plan of one block call; ``cell_rows``: the edges' indices in their cell."""
    e0 = edges[0]
    spec0 = edge_spec(e0)
    E, K = len(edges), len(e0.op_names)
    active = [[True] * K] * E if mask is None else mask.tolist()
    families = []
    for k, kind in enumerate(spec0.kinds):
        rows = [r for r in range(E) if active[r][k]]
        if kind == "zero" or not rows:
            continue
        if kind == "conv":
            programs = [edge_spec(edges[r]).programs[k] for r in rows]
        else:
            programs = []
        bns = [edge_spec(edges[r]).pools[k].bn for r in rows] if kind in ("max", "avg") else []
        index = None if len(rows) == E else torch.tensor(rows)
        families.append(_Family(k, kind, rows, len(programs[0].params) if programs else 0, programs, bns, index))
    aux = None
    if has_aux:
        if spec0.aux == "skip":
            aux = "skip"
        else:
            aux = "conv"
            programs = [edge_spec(e).aux for e in edges]
            families.append(_Family(-1, "aux", list(range(E)), len(programs[0].params), programs, [], None))
    inactive = ~mask if straight_through and mask is not None else None
    pc = e0.partial_channels
    return _BlockPlan(list(edges), torch.tensor(cell_rows), e0.stride, pc, e0.C // pc, families, inactive, aux)


def _stacked(plan, params):
    """Per family, per parameter slot: the rows' copies of that parameter concatenated along dim 0 (a slot's
    tensors are consecutive in ``params`` and have one shape). Without autograd: views of one concatenation of all
    of them (one cat). Under autograd (a block that keeps its intermediates): one cat per slot, whose backward is a
    split; each view of the one cat would send back a zero-filled gradient the size of all the parameters."""
    if torch.is_grad_enabled():
        out, i = [], 0
        for f in plan.families:
            n = len(f.rows)
            out.append([torch.cat(params[i + s * n : i + (s + 1) * n]) for s in range(f.slots)])
            i += f.slots * n
        return out
    flat = torch.cat([p.reshape(-1) for p in params]) if params else None
    shapes = [p.shape for p in params]
    out, i, start = [], 0, 0
    for f in plan.families:
        n = len(f.rows)
        slots = []
        for s in range(f.slots):
            shape = shapes[i + s * n]
            numel = n * math.prod(shape)
            slots.append(flat[start : start + numel].view(n * shape[0], *shape[1:]))
            start += numel
        out.append(slots)
        i += f.slots * n
    return out


def _dense_first(f) -> bool:
    """The family's first conv reads ReLU(x) itself (dense); otherwise ReLU(x) repeated once per row."""
    p0 = f.programs[0]
    return p0.reduce is not None or p0.layers[0].groups == 1


def _family_output(plan, f, x_ops, x, r, reps, stacked, stats):
    """The family's output: Tensor[N, C, H', W'] shared by its rows (pools, skip) or [N, n, C, H', W'].
    ``reps[n]``: ReLU(x) repeated n times (made once per block and row count)."""
    if f.kind in ("max", "avg"):
        pool = edge_spec(plan.edges[f.rows[0]]).pools[f.k]
        return _pool_normalised(pool, x_ops, plan.stride, stats, f.bns)
    if f.kind == "skip":
        return x_ops
    inp = r if f.kind == "conv" else F.relu(x)
    n = len(f.rows)

    def r_rep():
        if f.kind == "aux":
            return _repeat_channels(inp, n, _channels_last(inp))
        if n not in reps:
            reps[n] = _repeat_channels(inp, n, _channels_last(inp))
        return reps[n]

    return _run_stacked(f.programs, inp, r_rep, stacked, stats)


def _weights_of(plan, f, columns, aux_weight):
    """The family's weight per row; ``columns``: ``weights.unbind(1)`` (one op, and one backward, per block)."""
    if f.kind == "aux":
        return aux_weight.expand(len(f.rows))
    w = columns[f.k]
    return w if f.index is None else w.index_select(0, plan.on(f.index, w.device))


def block_forward(plan, x, weights, aux_weight, stacked):
    """Tensor[N, E, C_out, H', W'] of the block's edges (keeping nothing for backward unless run under autograd)."""
    E = len(plan.edges)
    x_ops = x[:, : plan.C_ops] if plan.pc > 1 else x
    N, C_o, Ho, Wo = strided_shape(x_ops, plan.stride, plan.edges[0].C_out // plan.pc)
    cl = _channels_last(x)  # --channels-last: every conv, BN and pool below runs channels_last too
    acc = empty_spatial_inner(x, (N, E, C_o, Ho, Wo), cl, zeros=True)
    r = F.relu(x_ops) if any(f.kind == "conv" for f in plan.families) else None
    reps, stats, aux_out = {}, _RunningStats(), None
    columns = weights.unbind(1)
    for f, st in zip(plan.families, stacked):
        y = _family_output(plan, f, x_ops, x, r, reps, st, stats)
        w = _weights_of(plan, f, columns, aux_weight).view(1, -1, 1, 1, 1)
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
    out = _scatter_partial(plan, x, acc, cl) if plan.pc > 1 else acc
    if plan.aux == "skip":
        out.add_(x.unsqueeze(1) * aux_weight)
    elif aux_out is not None:
        out.add_(aux_out)
    return out


def _bypass(plan, x):
    b = x[:, plan.C_ops :]
    return F.max_pool2d(b, 2, 2, ceil_mode=True) if plan.stride == 2 else b


def _scatter_partial(plan, x, acc, cl):
    """Per edge cat([acc_e, bypass]) in PC-DARTS channel-shuffled order (the bypass is shared by the block)."""
    N, E, Co, Ho, Wo = acc.shape
    K = plan.pc
    out = empty_spatial_inner(acc, (N, E, Co * K, Ho, Wo), cl)
    out6 = out.view(N, E, Co, K, Ho, Wo)
    out6[:, :, :, 0] = acc
    out6[:, :, :, 1:] = _bypass(plan, x).reshape(N, K - 1, Co, Ho, Wo).transpose(1, 2).unsqueeze(1)
    return out


def _per_edge_dot(g, y, cl):
    """Per edge ``e``: ``sum(g[:, e] * y[:, e])`` (both [N, E, C, H, W], ``y`` may broadcast over E). channels_last
    sums C, then N H W: one reduction around the kept E dim, in the middle of memory order N H W E C, took 2x as
    long on CPU (N=64: 3.4 ms against 1.8 ms)."""
    prod = g * y
    if cl:
        return prod.permute(0, 3, 4, 1, 2).reshape(-1, *prod.shape[1:3]).sum(-1).sum(0)
    return prod.sum((0, 2, 3, 4))


def block_backward(plan, g, x, weights, aux_weight, stacked, needs):
    """dL/dx, dL/dweights [E, K], dL/daux, dL/d(stacked) (per family, per slot; None where not needed)."""
    E = len(plan.edges)
    cl = _channels_last(x)
    g = _in_layout(g, cl)
    dW = torch.zeros_like(weights)
    daux = None
    dx = None
    if plan.aux == "skip":
        gs = g.sum(1)
        daux = torch.dot(gs.flatten(), x.flatten())
        dx = gs * aux_weight
    if plan.pc > 1:
        N, _, C, Ho, Wo = g.shape
        K, Co = plan.pc, plan.C_ops
        g6 = g.view(N, E, Co, K, Ho, Wo)
        g_ops = _in_layout(g6[:, :, :, 0], cl)
        g_byp = g6[:, :, :, 1:].sum(1).transpose(1, 2).reshape(N, C - Co, Ho, Wo)
        g_byp = g_byp.contiguous(memory_format=memory_format_of(x))
        if plan.stride == 2:
            with torch.enable_grad():
                xb = x[:, Co:].detach().requires_grad_()
                (g_byp,) = torch.autograd.grad(F.max_pool2d(xb, 2, 2, ceil_mode=True), xb, g_byp)
        x_ops = x[:, :Co]
    else:
        g_ops, x_ops = g, x
    if plan.inactive is not None:
        dW += g_ops.sum((0, 2, 3, 4)).view(E, 1) * plan.on(plan.inactive, weights.device, weights.dtype)
    dx_ops = None
    d_r, d_reps = None, {}
    has_conv = any(f.kind == "conv" for f in plan.families)
    r = F.relu(x_ops).requires_grad_() if has_conv else None
    reps = {}  # leaves: the gradient of each repeated ReLU(x) is summed back once, at the end
    x_leaf = x_ops.detach().requires_grad_()
    dstacked = []
    columns = weights.unbind(1)
    for f, st in zip(plan.families, stacked):
        # family k is rebuilt from x and freed before family k + 1: only one family's intermediates are alive
        idx = plan.on(f.index, x.device)
        n = len(f.rows)
        if f.kind == "aux":
            inp_leaf = x.detach().requires_grad_()
        elif f.kind != "conv":
            inp_leaf = x_leaf
        elif _dense_first(f):
            inp_leaf = r
        else:
            if n not in reps:
                reps[n] = _repeat_channels(r.detach(), n, cl).requires_grad_()
            inp_leaf = reps[n]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip(st, needs[len(dstacked)])]
            y = _family_output(plan, f, x_leaf, inp_leaf, r, reps, leaves, None)
        gf = g if f.kind == "aux" else g_ops
        if idx is not None:
            gf = _in_layout(gf.index_select(1, idx), cl)
        w = _weights_of(plan, f, columns, aux_weight)
        shared = y.dim() == 4
        yd = y.detach()
        dw_f = _per_edge_dot(gf, yd.unsqueeze(1) if shared else yd, cl)
        if f.kind == "aux":
            daux = dw_f.sum()
        elif idx is None:
            dW[:, f.k].add_(dw_f)
        else:
            dW[:, f.k].index_add_(0, idx, dw_f)
        dy = gf * w.view(1, -1, 1, 1, 1)
        if shared:
            dy = dy.sum(1)
        targets = [inp_leaf] + [t for t in leaves if t.requires_grad]
        grads = (dy,) if y is inp_leaf else torch.autograd.grad(y, targets, dy)  # skip: y is its input
        it = iter(grads[1:])
        dstacked.append([next(it) if t.requires_grad else None for t in leaves])
        d_in = grads[0]
        if f.kind == "aux":
            dx = d_in if dx is None else dx + d_in
        elif f.kind == "conv" and inp_leaf is not r:
            d_reps[n] = d_in if n not in d_reps else d_reps[n].add_(d_in)
        elif f.kind == "conv":
            d_r = d_in if d_r is None else d_r.add_(d_in)
        else:
            dx_ops = d_in if dx_ops is None else dx_ops.add_(d_in)
        del y, yd
    for n, d in d_reps.items():
        d = d.unflatten(1, (n, -1)).sum(1)
        d_r = d if d_r is None else d_r.add_(d)
    if d_r is not None:
        d_conv = torch.ops.aten.threshold_backward(d_r, x_ops, 0)
        dx_ops = d_conv if dx_ops is None else dx_ops.add_(d_conv)
    if dx_ops is None:
        dx_ops = torch.zeros_like(x_ops)
    if plan.pc > 1:
        dx_full = torch.cat([dx_ops, g_byp], 1)
    else:
        dx_full = dx_ops
    dx = dx_full if dx is None else dx + dx_full
    return dx, dW, daux, dstacked


class BlockFunction(torch.autograd.Function):
    """``apply(plan, x, weights [E, K], aux_weight, *params)`` -> Tensor[N, E, C_out, H', W']; parameters are
    inputs so their gradients flow to whatever tensors the modules hold at call time (``functional_call``)."""

    @staticmethod
    def forward(ctx, plan, x, weights, aux_weight, *params):
        out = block_forward(plan, x, weights, aux_weight, _stacked(plan, params))
        ctx.plan, ctx.autocast = plan, autocast_state(x.device.type)  # what torch.amp.custom_fwd does, any device
        ctx.save_for_backward(x, weights, aux_weight, *params)  # references: the concatenation is redone
        return out

    @staticmethod
    def backward(ctx, g):
        with restore_autocast(ctx.autocast):  # the recomputed convs run in the forward's dtypes
            return BlockFunction._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g):
        if torch.is_grad_enabled():
            raise RuntimeError("the batched cell backward is not differentiable (create_graph=True); use "
                               "backend='reference' for higher-order gradients")  # fmt: skip
        x, weights, aux_weight, *params = ctx.saved_tensors
        plan = ctx.plan
        stacked = _stacked(plan, params)
        needs, j = [], 4
        for f in plan.families:
            n = len(f.rows)
            needs.append([any(ctx.needs_input_grad[j + s * n : j + (s + 1) * n]) for s in range(f.slots)])
            j += f.slots * n
        dx, dW, daux, dstacked = block_backward(plan, g, x, weights, aux_weight, stacked, needs)
        dparams = []
        for f, ds in zip(plan.families, dstacked):
            n = len(f.rows)
            for d in ds:
                dparams += [None] * n if d is None else list(d.chunk(n))
        return None, dx, dW, daux, *dparams


# A block whose input has fewer elements keeps autograd's intermediates instead of recomputing them in the backward:
# that small, the recompute's extra calls cost more time than the memory they save. Measured on CPU (DARTS network
# forward + backward, 2 threads, by the first block's input size), time kept / recomputed: 0.63x at 512 elements,
# 0.76x at 8k, 0.83x at 32k, 0.94x at 64k, 1.64x at 256k; saved bytes 15-17x (docs/design.md).
RECOMPUTE_MIN_NUMEL = 32768


@contextlib.contextmanager
def recompute_min_numel(n: int):
    """Inside, blocks keep their intermediates below ``n`` input elements instead (benchmarks compare the paths:
    0 recomputes every block, as at search sizes; a huge ``n`` keeps every one)."""
    global RECOMPUTE_MIN_NUMEL
    saved, RECOMPUTE_MIN_NUMEL = RECOMPUTE_MIN_NUMEL, n
    try:
        yield
    finally:
        RECOMPUTE_MIN_NUMEL = saved


def run_block(plan, x, weights, aux_weight, params):
    """The block's output [N, E, C_out, H', W']: recomputed in the backward (``BlockFunction``) unless ``x`` is
    small, then under autograd like any module."""
    if x.numel() < RECOMPUTE_MIN_NUMEL:
        return block_forward(plan, x, weights, aux_weight, _stacked(plan, params))
    return BlockFunction.apply(plan, x, weights, aux_weight, *params)


# ---- the cell ------------------------------------------------------------------------------------------------------


def cell_forward(edges: nn.ModuleList, states: list, arch, sources, training: bool, path_scales=None) -> list | None:
    """Run a cell's edges block by block, or return None when the cell does not run batched (some edge not on the
    ``batched`` backend, eval mode, an op or option the blocks do not know).

    ``sources[e]``: the state edge ``e`` reads; edges are in target order and each block's targets are the cell's
    last nodes (DARTS, NB-201). ``path_scales`` (Tensor[edges, N], optional): drop-path factors of each edge's
    output per example. Appends the nodes to ``states`` and returns it.
    """
    x0 = states[0]
    if arch.edge_scale is not None:  # PC-DARTS edge scales run per edge (the blocks do not scale their outputs)
        return None
    if not training or not all(_backend.resolve_backend(e.backend, x0.device, e).name == BATCHED for e in edges):
        return None
    cell = _cell(edges, sources)
    if cell.blocks is None:
        return None
    n_init = len(states)
    acc = None
    mask_bytes = None if arch.mask is None else arch.mask.cpu().numpy().tobytes()
    arch_key = (mask_bytes, arch.straight_through, arch.aux is not None)
    for s, idx in cell.blocks:
        plan = _cached_plan(cell, edges, s, idx, arch, arch_key)
        rows = plan.on(plan.cell_rows, x0.device)
        out = run_block(plan, states[s], arch.weights.index_select(0, rows), arch.aux, plan.params())
        if path_scales is not None:  # out is [N, E, C, H, W]: one factor per example and edge
            scales = path_scales.index_select(0, rows).t()
            out = out * scales.reshape(out.shape[0], len(idx), 1, 1, 1).to(out.dtype)
        acc = out if acc is None else acc[:, acc.shape[1] - out.shape[1] :] + out
        if s + 1 >= n_init:
            # a copy: a view would keep the whole accumulator alive
            states.append(acc[:, 0].contiguous(memory_format=memory_format_of(states[s])))
    return states
