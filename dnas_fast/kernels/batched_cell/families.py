"""One op family of one block: the ``n`` edges' copies of an op run as one call (grouped convolutions over the
stacked weights, one batch norm over the stacked channels), or a pool / skip run once for the whole block."""

import torch
import torch.nn.functional as F
from torch import nn

from ..edge_structure import edge_spec
from .layout import channels_last, nchw, nhwc, repeat_channels


class RunningStats:
    """The batch statistics of every BN a block call normalises, written to the BNs' own buffers at the end of the
    forward by three ``_foreach`` ops (all BNs of a block share one momentum, checked by ``plan._block_batchable``)."""

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


def _stacked_reduce(programs, r, it, stats):
    """``n`` FactorizedReduces on ``r``: both strided 1x1 convs of every edge at once, interleaved per edge."""
    n = len(programs)
    m = programs[0].reduce
    shifted = r[:, :, 1:, 1:]
    H, W = r.shape[-2:]
    if H % 2 or W % 2:
        shifted = F.pad(shifted, (0, W % 2, 0, H % 2))
    a = F.conv2d(r, next(it), None, m.conv_1.stride)
    b = F.conv2d(shifted, next(it), None, m.conv_2.stride)
    if channels_last(a):  # the same interleave in the dense NHWC view: the output stays channels_last
        h = nchw(torch.stack([nhwc(a).unflatten(3, (n, -1)), nhwc(b).unflatten(3, (n, -1))], 4).flatten(3))
    else:
        h = torch.stack([a.unflatten(1, (n, -1)), b.unflatten(1, (n, -1))], 2).flatten(1, 3)
    return _stacked_bn(h, [p.reduce.bn for p in programs], it, stats)


def run_stacked(programs, r, r_rep, stacked, stats):
    """``n`` edges' copies of one conv op on ``r = ReLU(x)`` -> Tensor[N, n, C_out, H', W']; ``stacked`` holds the
    concatenated parameters in program order; ``r_rep()`` is ``r`` repeated ``n`` times along channels."""
    n = len(programs)
    it = iter(stacked)
    p0 = programs[0]
    if p0.reduce is not None:
        return _stacked_reduce(programs, r, it, stats).unflatten(1, (n, -1))
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


def dense_first(f) -> bool:
    """The family's first conv reads ReLU(x) itself (dense); otherwise ReLU(x) repeated once per row."""
    p0 = f.programs[0]
    return p0.reduce is not None or p0.layers[0].groups == 1


def family_output(plan, f, x_ops, x, r, reps, stacked, stats):
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
            return repeat_channels(inp, n, channels_last(inp))
        if n not in reps:
            reps[n] = repeat_channels(inp, n, channels_last(inp))
        return reps[n]

    return run_stacked(f.programs, inp, r_rep, stacked, stats)


def weights_of(plan, f, columns, aux_weight):
    """The family's weight per row; ``columns``: ``weights.unbind(1)`` (one op, and one backward, per block)."""
    if f.kind == "aux":
        return aux_weight.expand(len(f.rows))
    w = columns[f.k]
    return w if f.index is None else w.index_select(0, plan.on(f.index, w.device))
