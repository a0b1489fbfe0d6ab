"""The NAS-Bench-201 family's evaluation network: ``TinyNetwork`` with ``InferCell`` (D-X-Y/AutoDL-Projects
``xautodl/models/cell_infers``), the search network's stem, residual reductions and head."""

from torch import nn

from ...ops import build_op
from .supernet import ResNetBasicBlock


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
