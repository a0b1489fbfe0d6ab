"""Evaluation networks: the discrete architecture a search derived, built to be trained from scratch.

* ``NetworkCIFAR`` / ``NetworkImageNet`` with ``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet`` and ``drop_path``:
  module for module as quark0/darts ``cnn/model.py`` (state_dict keys equal to theirs, so their ``weights.pt``
  loads, see :func:`dnas_fast.interop.load_authors_eval_state`).
* ``NB201Network``: NAS-Bench-201's ``TinyNetwork`` with ``InferCell`` (D-X-Y/AutoDL-Projects
  ``xautodl/models/cell_infers``), the search network's stem, residual reductions and head.
* ``MBConvEvalNet``: the TF-NAS derived network (``MBConvNet``) with the dropout before the classifier of
  AberHu/TF-NAS ``models/model_eval.py``.

Deviations: ``NetworkCIFAR`` takes ``in_channels`` (1 for the digits); ``NetworkImageNet`` pools with
``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(7)`` (identical at 224x224, and no parameters, so the keys
are unchanged) so that smaller ImageFolder images work; TF-NAS's drop-connect inside blocks is not built.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .genotype import EdgeAllGenotype, Genotype, cell_nodes
from .ops import build_op
from .ops.darts import FactorizedReduce, Identity, ReLUConvBN, drop_path
from .spaces.mbconv import MBConvNet
from .spaces.nb201 import ResNetBasicBlock


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
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C)
        )
        C_prev, C_aux = self._build_cells(genotype, C, layers, C, C, True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))


class InferCell(nn.Module):
    """NAS-Bench-201 cell of a fixed arch: node i sums ``op(node_j)`` over its (op, j) pairs (``none`` included,
    as AutoDL's InferCell builds it)."""

    def __init__(self, nodes: list[list[tuple[str, int]]], C):
        super().__init__()
        self.node_IX = [[j for _, j in node] for node in nodes]
        self.layers = nn.ModuleList(build_op(op, C, C, 1, affine=True) for node in nodes for op, _ in node)

    def forward(self, x):
        states, k = [x], 0
        for inputs in self.node_IX:
            states.append(sum(self.layers[k + n](states[j]) for n, j in enumerate(inputs)))
            k += len(inputs)
        return states[-1]


class NB201Network(nn.Module):
    """NAS-Bench-201 ``TinyNetwork``: stem, 3 stages of N cells with residual reductions, BN-ReLU, pool, linear."""

    def __init__(self, nodes, C=16, N=5, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for stage in range(3):
            C_curr = C * 2**stage
            if stage:
                self.cells.append(ResNetBasicBlock(C_prev, C_curr, 2))
            self.cells.extend(InferCell(nodes, C_curr) for _ in range(N))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class MBConvEvalNet(MBConvNet):
    """The TF-NAS derived network with dropout ``dropout`` before the classifier (authors: 0.2)."""

    def __init__(self, config: dict, dropout: float = 0.0):
        super().__init__(config)
        self.dropout = dropout

    def forward(self, x):
        h = self.head[:-1](self.blocks(self.stem(x)))
        return self.head[-1](F.dropout(h, self.dropout, self.training))


def count_parameters_mb(model: nn.Module) -> float:
    """Parameters in millions without the auxiliary head (quark0/darts ``utils.count_parameters_in_MB``)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name) / 1e6


def count_flops(model: nn.Module, input_shape) -> dict:
    """Multiply-accumulates (convs and linears) in millions per image, and parameters in millions."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() / out.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            macs.append(m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:  # the global RNG stays untouched: counting must not change a run's draws
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(torch.zeros(*input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {"mflops": sum(macs) / 1e6, "mparams": sum(p.numel() for p in model.parameters()) / 1e6}


def count_macs_m(model: nn.Module, input_shape) -> float:
    """Multiply-accumulates of one inference forward (conv and linear layers), in millions per image; the
    auxiliary head does not run in eval mode, so it is not counted (as the authors' mult-adds)."""
    was_training = model.training
    try:
        return count_flops(model, input_shape)["mflops"]
    finally:
        model.train(was_training)
