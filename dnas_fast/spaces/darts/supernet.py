"""The DARTS CNN search network (Liu et al., ICLR 2019), module for module as quark0/darts
``model_search.Network`` (state_dict keys included), with the PC-DARTS ImageNet two-stage stem."""

import torch
from torch import nn

from ...arch import EdgeGroup
from ...mixed_edge import MixedEdge
from ...ops import DARTS_OPS, check_op_names
from ...ops.darts import FactorizedReduce, ReLUConvBN, drop_path_scales, imagenet_stem
from ..base import SearchSpace, register_space, run_cell
from .genotype import darts_genotype, parse_darts_cell


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, edge_kwargs):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList(
            MixedEdge(C, 2 if reduction and j < 2 else 1, **edge_kwargs) for i in range(steps) for j in range(2 + i)
        )
        self._sources = [j for i in range(steps) for j in range(2 + i)]

    def forward(self, s0, s1, arch):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # drop-path on every edge's output, 'none' and skip included (SNAS search Cell.forward)
        drop = arch.drop_path if self.training else 0.0
        scales = drop_path_scales(len(self._ops), s0.shape[0], drop, states[0]) if drop else None
        run_cell(self._ops, states, arch, self._sources, self.training, scales)
        return torch.cat(states[-self._multiplier :], dim=1)


@register_space
class DartsSpace(SearchSpace):
    """DARTS cell network. Groups ``normal`` and ``reduce``, each ``[sum(2+i for i < steps), K]``.

    Args:
        C: initial channels (16 on CIFAR). layers: cells (8). steps: intermediate nodes (4).
        multiplier: nodes concatenated to the output (4). stem_multiplier: 3.
        op_names: candidate ops (the 8 DARTS primitives). allowed: optional per-edge op subsets,
            ``{"normal": [[names] * E], "reduce": ...}`` (R-DARTS S1).
        imagenet: the two-stage stride-2 stem of the PC-DARTS ImageNet search network.
        partial_channels, aux_skip, backend: passed to every MixedEdge.
    """

    name = "darts"

    def __init__(
        self,
        C=16,
        num_classes=10,
        layers=8,
        steps=4,
        multiplier=4,
        stem_multiplier=3,
        in_channels=3,
        op_names=None,
        allowed=None,
        imagenet=False,
        partial_channels=1,
        aux_skip=False,
        backend=None,
    ):
        super().__init__()
        op_names = check_op_names(op_names or DARTS_OPS)
        if layers < 3:
            raise ValueError(f"the DARTS network needs at least 3 layers (two are reductions), got {layers}")
        if multiplier > steps:
            raise ValueError(f"a cell concatenates its last multiplier={multiplier} of steps={steps} nodes: too many")
        self.config = dict(
            C=C, num_classes=num_classes, layers=layers, steps=steps, multiplier=multiplier,
            stem_multiplier=stem_multiplier, in_channels=in_channels, op_names=op_names, allowed=allowed,
            imagenet=imagenet, partial_channels=partial_channels, aux_skip=aux_skip, backend=backend,
        )  # fmt: skip
        self._steps, self._multiplier = steps, multiplier
        edge_kwargs = dict(
            op_names=op_names, pool_bn=True, partial_channels=partial_channels, aux_skip=aux_skip, backend=backend
        )
        if imagenet:
            self.stem0, self.stem1 = imagenet_stem(in_channels, C)
            C_prev_prev, C_prev, C_curr, reduction_prev = C, C, C, True
        else:
            C_curr = stem_multiplier * C
            self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
            C_prev_prev, C_prev, C_curr, reduction_prev = C_curr, C_curr, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(
                Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, edge_kwargs)
            )
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def arch_spec(self):
        nodes = [2 + i for i in range(self._steps) for _ in range(2 + i)]
        sources = [j for i in range(self._steps) for j in range(2 + i)]
        spec = {}
        for group in ("normal", "reduce"):
            allowed = None
            if self.config["allowed"] is not None:
                names = self.config["op_names"]
                per_edge = self.config["allowed"][group]
                if len(per_edge) != len(nodes):
                    raise ValueError(f"allowed[{group!r}] needs {len(nodes)} op lists, got {len(per_edge)}")
                allowed = torch.tensor([[n in check_op_names(ops) for n in names] for ops in per_edge])
            spec[group] = EdgeGroup(list(self.config["op_names"]), nodes, sources, allowed)
        return spec

    def forward(self, x, arch):
        self.check(x, arch)
        if self.config["imagenet"]:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, arch["reduce" if cell.reduction else "normal"])
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def derive(self, scores, parse=parse_darts_cell):
        """The genotype of ``scores`` by the per-cell rule ``parse`` (DARTS's; PR-DARTS and GDAS: top pairs)."""
        return darts_genotype(
            scores["normal"], scores["reduce"], self.config["op_names"], self._steps, self._multiplier, parse
        )
