"""The NAS-Bench-201 search network (Dong & Yang, ICLR 2020; AutoDL-Projects ``TinyNetworkDarts``):
stem, three stages of N search cells separated by residual reduction blocks, 4-node cells with 6 edges."""

from torch import nn

from ...arch import EdgeGroup
from ...mixed_edge import MixedEdge
from ...ops import NB201_OPS, check_op_names
from ...ops.darts import ReLUConvBN
from ..base import SearchSpace, register_space, run_cell
from .genotype import nb201_arch_string


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's reduction block; ``ceil_mode`` pooling keeps odd sizes aligned (same on even sizes)."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine=True)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine=True)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class SearchCell(nn.Module):
    """Node i sums edges ``i<-j`` for j < i; edges are ordered 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""

    def __init__(self, C, max_nodes, edge_kwargs):
        super().__init__()
        self.max_nodes = max_nodes
        self.edges = nn.ModuleList(MixedEdge(C, 1, **edge_kwargs) for i in range(1, max_nodes) for _ in range(i))
        self._sources = [j for i in range(1, max_nodes) for j in range(i)]

    def forward(self, x, arch):
        return run_cell(self.edges, [x], arch, self._sources, self.training)[-1]


@register_space
class NB201Space(SearchSpace):
    """NAS-Bench-201 network: one group ``cell`` of shape ``[6, 5]`` (C=16, N=5 by default)."""

    name = "nb201"

    def __init__(
        self, C=16, N=5, num_classes=10, max_nodes=4, in_channels=3, op_names=None,
        partial_channels=1, aux_skip=False, backend=None,
    ):  # fmt: skip
        super().__init__()
        op_names = check_op_names(op_names or NB201_OPS)
        self.config = dict(
            C=C, N=N, num_classes=num_classes, max_nodes=max_nodes, in_channels=in_channels, op_names=op_names,
            partial_channels=partial_channels, aux_skip=aux_skip, backend=backend,
        )  # fmt: skip
        edge_kwargs = dict(op_names=op_names, partial_channels=partial_channels, aux_skip=aux_skip, backend=backend)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layer_channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        layer_reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in zip(layer_channels, layer_reductions):
            if reduction:
                self.cells.append(ResNetBasicBlock(C_prev, C_curr, 2))
            else:
                self.cells.append(SearchCell(C_curr, max_nodes, edge_kwargs))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def arch_spec(self):
        n = self.config["max_nodes"]
        nodes = [i for i in range(1, n) for _ in range(i)]
        sources = [j for i in range(1, n) for j in range(i)]
        return {"cell": EdgeGroup(list(self.config["op_names"]), nodes, sources)}

    def forward(self, x, arch):
        self.check(x, arch)
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, arch["cell"]) if isinstance(cell, SearchCell) else cell(x)
        out = self.global_pooling(self.lastact(x))
        return self.classifier(out.flatten(1))

    def derive(self, scores):
        return nb201_arch_string(scores["cell"], self.config["op_names"], self.config["max_nodes"])
