"""The DARTS family's evaluation networks: ``NetworkCIFAR`` / ``NetworkImageNet`` with ``AuxiliaryHeadCIFAR`` /
``AuxiliaryHeadImageNet`` and ``drop_path``, module for module as quark0/darts ``cnn/model.py`` (state_dict keys
equal to theirs, so their ``weights.pt`` loads, see :func:`dnas_fast.interop.load_authors_eval_state`).

Deviations: ``NetworkCIFAR`` takes ``in_channels`` (1 for the digits); ``NetworkImageNet`` pools with
``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(7)`` (identical at 224x224, and no parameters, so the keys
are unchanged) so that smaller ImageFolder images work.
"""

import torch
from torch import nn

from ...ops import build_op
from ...ops.darts import FactorizedReduce, Identity, ReLUConvBN, drop_path, imagenet_stem
from .genotype import EdgeAllGenotype, Genotype, cell_nodes


class EvalCell(nn.Module):
    """quark0/darts ``model.Cell``: two preprocessed inputs, nodes of two ops each; for an
    :class:`EdgeAllGenotype` node ``i`` sums all its ``i + 2`` edges (SNAS-Series ``SNAS/model_edge_all.py``
    ``Cell``), ``none`` edges included."""

    def __init__(self, genotype: Genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        gene, concat = (
            (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        )
        nodes = cell_nodes(gene, isinstance(genotype, EdgeAllGenotype))
        if not nodes:
            raise ValueError("a cell needs at least one node")
        for i, node in enumerate(nodes):
            for _, j in node:
                if not 0 <= j < 2 + i:
                    raise ValueError(
                        f"node {2 + i} of the {'reduce' if reduction else 'normal'} cell reads node {j}, "
                        f"which does not exist yet (nodes 0..{1 + i})"
                    )
        self._steps = len(nodes)
        self._node_sizes = [len(node) for node in nodes]
        self._indices = [j for node in nodes for _, j in node]
        self._concat = list(concat)
        if not self._concat or max(self._concat) >= 2 + self._steps:
            raise ValueError(f"concat {self._concat} names nodes outside 0..{1 + self._steps}")
        self.multiplier = len(self._concat)
        self._ops = nn.ModuleList(
            build_op(name, C, C, 2 if reduction and j < 2 else 1, affine=True) for node in nodes for name, j in node
        )

    def forward(self, s0, s1, drop_prob: float):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        start = 0
        for size in self._node_sizes:
            s = 0
            for k in range(start, start + size):
                h = self._ops[k](states[self._indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(self._ops[k], Identity):
                    h = drop_path(h, drop_prob)
                s = s + h
            start += size
            states.append(s)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 feature map after the second reduction (input side >= 5)."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """As the CIFAR head on the 14x14 map, stride 2 and without the second BN (the authors' published runs)."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _CellStack(nn.Module):
    """The cell chain shared by the CIFAR and ImageNet networks; ``forward`` returns ``(logits, logits_aux)``,
    ``logits_aux`` only in training mode with an auxiliary head (else None)."""

    def _build_cells(self, genotype, C, layers, C_prev_prev, C_prev, reduction_prev):
        self._layers = layers
        self.drop_path_prob = 0.0
        self.cells = nn.ModuleList()
        C_curr, C_to_auxiliary = C, None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        return C_prev, C_to_auxiliary

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux


class NetworkCIFAR(_CellStack):
    """DARTS CIFAR evaluation network: 3x3 stem of ``3 C`` channels, ``layers`` cells (reductions at 1/3 and
    2/3), auxiliary head after the second reduction. x (Tensor[N, in_channels, H, W]) -> (logits, logits_aux)."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3):
        super().__init__()
        if layers < 3:
            raise ValueError(f"the DARTS network needs at least 3 layers (two are reductions), got {layers}")
        self._auxiliary = auxiliary
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_prev, C_aux = self._build_cells(genotype, C, layers, C_stem, C_stem, False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_CellStack):
    """DARTS ImageNet evaluation network: two stride-2 stems (then a third), ``layers`` cells, auxiliary head."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3):
        super().__init__()
        if layers < 3:
            raise ValueError(f"the DARTS network needs at least 3 layers (two are reductions), got {layers}")
        self._auxiliary = auxiliary
        self.stem0, self.stem1 = imagenet_stem(in_channels, C)
        C_prev, C_aux = self._build_cells(genotype, C, layers, C, C, True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))
