"""The static structure of a MixedEdge as the fused paths see it: each op classified (zero, skip, max / avg pool
with its BN, or a conv program of ReLU + Conv2d / BatchNorm2d / ReLU layers or a FactorizedReduce), cached per edge.
An edge with an op outside these kinds is not fusable (``supports`` is False) and runs on the reference backend.

Conv programs read their parameters at call time (``ConvProgram.tensors``), so ``torch.func.functional_call``
(second-order DARTS) swaps them.
"""

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..mixed_edge import MixedEdge
from ..ops.darts import FactorizedReduce, Identity, Zero


@dataclass(frozen=True)
class ConvProgram:
    """A conv op as ``ReLU`` followed by ``layers`` (Conv2d / BatchNorm2d / ReLU), or a FactorizedReduce.

    ``params`` lists (module, attribute) pairs read at call time, so ``torch.func.functional_call`` works.
    """

    layers: tuple
    reduce: FactorizedReduce | None
    params: tuple

    def tensors(self):
        return [getattr(m, a) for m, a in self.params]

    def run(self, r, params, update_stats):
        """r (Tensor[N, C, H, W]) = ReLU(x) -> op(x); ``update_stats``: update BN running stats (forward only)."""
        it = iter(params)
        if self.reduce is not None:
            m = self.reduce
            shifted = r[:, :, 1:, 1:]
            H, W = r.shape[-2:]
            if H % 2 or W % 2:  # the odd-size padding of ops.darts.FactorizedReduce
                shifted = F.pad(shifted, (0, W % 2, 0, H % 2))
            h = torch.cat([_conv(r, m.conv_1, it), _conv(shifted, m.conv_2, it)], dim=1)
            return _batch_norm(h, m.bn, it, update_stats)
        h = r
        for m in self.layers:
            if isinstance(m, nn.Conv2d):
                h = _conv(h, m, it)
            elif isinstance(m, nn.BatchNorm2d):
                h = _batch_norm(h, m, it, update_stats)
            else:
                h = F.relu(h)
        return h


def _conv(h, m: nn.Conv2d, it):
    weight = next(it)
    bias = next(it) if m.bias is not None else None
    return F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation, m.groups)


def _batch_norm(h, bn: nn.BatchNorm2d, it, update_stats):
    """nn.BatchNorm2d.forward with the affine parameters from ``it``; running stats touched only if asked."""
    weight, bias = (next(it), next(it)) if bn.affine else (None, None)
    if not uses_batch_stats(bn):
        return F.batch_norm(h, bn.running_mean, bn.running_var, weight, bias, False, 0.0, bn.eps)
    if update_stats and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(h, bn.running_mean, bn.running_var, weight, bias, True, momentum, bn.eps)
    return F.batch_norm(h, None, None, weight, bias, True, 0.0, bn.eps)


def uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _conv_param_names(m: nn.Module):
    if isinstance(m, nn.Conv2d):
        return ["weight"] + (["bias"] if m.bias is not None else [])
    if isinstance(m, nn.BatchNorm2d):
        return ["weight", "bias"] if m.affine else []
    return []


def _conv_program(op: nn.Module) -> ConvProgram | None:
    """The program of a known conv op, or None (the op is not fusable)."""
    if isinstance(op, FactorizedReduce):
        convs_ok = all(c.bias is None and c.kernel_size == (1, 1) and c.groups == 1 for c in (op.conv_1, op.conv_2))
        if not convs_ok or type(op.bn) is not nn.BatchNorm2d:
            return None
        mods = [op.conv_1, op.conv_2, op.bn]
        return ConvProgram((), op, tuple((m, a) for m in mods for a in _conv_param_names(m)))
    seq = getattr(op, "op", None)
    if type(seq) is not nn.Sequential or len(seq) < 2 or type(seq[0]) is not nn.ReLU:
        return None
    layers = tuple(seq)[1:]
    if not all(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU) for m in layers):
        return None
    if any(isinstance(m, nn.Conv2d) and m.padding_mode != "zeros" for m in layers):
        return None
    return ConvProgram(layers, None, tuple((m, a) for m in layers for a in _conv_param_names(m)))


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    bn: nn.BatchNorm2d | None


def _pool(op: nn.Module) -> Pool | None:
    bn = None
    if type(op) is nn.Sequential and len(op) == 2 and type(op[1]) is nn.BatchNorm2d and not op[1].affine:
        op, bn = op[0], op[1]
    pad_ok = op.__dict__.get("padding") in (1, (1, 1)) and op.__dict__.get("kernel_size") in (3, (3, 3))
    if type(op) is nn.MaxPool2d and pad_ok and op.dilation in (1, (1, 1)) and not op.ceil_mode:
        return Pool("max", bn)
    if type(op) is nn.AvgPool2d and pad_ok and not op.ceil_mode and not op.count_include_pad:
        return Pool("avg", bn) if op.divisor_override is None else None
    return None


@dataclass(frozen=True)
class EdgeSpec:
    """Per-op kind of one edge: ``zero``, ``skip`` (identity), ``max`` / ``avg`` (pool), ``conv``."""

    kinds: tuple
    pools: dict  # op index -> _Pool
    programs: dict  # op index -> ConvProgram
    aux: object  # None, "skip" or a ConvProgram


def _classify(op: nn.Module, C_in: int, C_out: int):
    if type(op) is Zero:
        return "zero", None
    if type(op) is Identity:
        return ("skip", None) if C_in == C_out else (None, None)
    pool = _pool(op)
    if pool is not None:
        return pool.kind, pool
    program = _conv_program(op)
    return ("conv", program) if program is not None else (None, None)


_SPECS: "weakref.WeakKeyDictionary[MixedEdge, tuple]" = weakref.WeakKeyDictionary()


def edge_spec(edge: MixedEdge) -> EdgeSpec | None:
    """The fusable structure of ``edge`` (cached per edge and op modules), None if some op is unknown."""
    key = (tuple(map(id, edge._ops)), id(edge.aux))
    cached = _SPECS.get(edge)
    if cached is not None and cached[0] == key:
        return cached[1]
    pc = edge.partial_channels
    C_in, C_out = edge.C // pc, edge.C_out // pc
    kinds, pools, programs, spec = [], {}, {}, None
    for k, op in enumerate(edge._ops):
        kind, extra = _classify(op, C_in, C_out)
        kinds.append(kind)
        if kind in ("max", "avg"):
            pools[k] = extra
        elif kind == "conv":
            programs[k] = extra
    aux_kind, aux = _classify(edge.aux, edge.C, edge.C_out) if edge.aux is not None else ("none", None)
    one_each = all(kinds.count(kind) <= 1 for kind in ("max", "avg", "skip"))  # the primitives take one of each
    if None not in kinds and one_each and aux_kind in ("none", "skip", "conv"):
        spec = EdgeSpec(tuple(kinds), pools, programs, {"none": None, "skip": "skip", "conv": aux}[aux_kind])
    _SPECS[edge] = (key, spec)
    return spec


def supports(edge) -> bool:
    return isinstance(edge, MixedEdge) and edge_spec(edge) is not None
