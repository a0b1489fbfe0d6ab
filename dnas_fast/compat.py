"""Drop-in replacements for the authors' search modules: swap one import, keep the constructor, the forward and
the state_dict keys. ``MixedOp`` gives an edge the fused memory-lean path; ``Cell`` gives a whole cell the
batched executor (the ``auto`` backend's: every edge reading one state runs each op family once).

* ``MixedOp(C, stride)``: quark0/darts ``model_search.MixedOp`` (8 DARTS primitives, pools followed by an
  affine-free BatchNorm). Keys ``_ops.{k}...`` as in the authors' checkpoints.
* ``PCMixedOp(C, stride, k=4)``: yuhuixu1993/PC-DARTS ``model_search.MixedOp``: only ``C / k`` channels go
  through the ops, the rest bypass (2x2 max-pooled on reduction edges) and the result is channel-shuffled with
  ``k`` groups. The authors' ``self.mp = nn.MaxPool2d(2, 2)`` holds no state; the bypass pool here uses
  ``ceil_mode=True`` (the same numbers for the even sizes the authors' code supports, and defined for odd ones).

* ``Cell(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev)``: quark0/darts
  ``model_search.Cell``, ``forward(s0, s1, weights)`` with ``weights`` ``Tensor[E, 8]`` (softmaxed alphas).
* ``PCCell(...)``: yuhuixu1993/PC-DARTS ``model_search.Cell`` (``k=4`` partial channels, as their ``MixedOp``),
  ``forward(s0, s1, weights, weights2)`` with the edge-normalisation weights ``weights2`` ``Tensor[E]`` scaling
  each whole edge output, bypassed channels included.

Example::

    from dnas_fast.compat import MixedOp    # instead of: from model_search import MixedOp
    op = MixedOp(16, 1)
    y = op(torch.randn(2, 16, 32, 32), torch.softmax(torch.zeros(8), 0))
"""

from .arch import ArchWeights
from .mixed_edge import MixedEdge
from .ops import DARTS_OPS
from .spaces.darts.supernet import Cell as _SpaceCell


class MixedOp(MixedEdge):
    """DARTS search edge ``sum_k w_k op_k(x)``.

    Args:
        C: channels. stride: 1 or 2. primitives: candidate op names (default: the authors' ``PRIMITIVES``).
        backend: MixedEdge backend (default ``auto``: the fused path).
    """

    def __init__(self, C: int, stride: int, primitives=tuple(DARTS_OPS), backend: str | None = None):
        super().__init__(C, stride, list(primitives), pool_bn=True, backend=backend)

    def forward(self, x, weights):
        """x (Tensor[N, C, H, W]), weights (Tensor[K]) -> Tensor[N, C, H / stride, W / stride]."""
        return super().forward(x, weights)


class PCMixedOp(MixedEdge):
    """PC-DARTS search edge with partial channels ``k`` (the authors use 4; 1 is plain DARTS)."""

    def __init__(self, C: int, stride: int, k: int = 4, primitives=tuple(DARTS_OPS), backend: str | None = None):
        super().__init__(C, stride, list(primitives), pool_bn=True, partial_channels=k, backend=backend)
        self.k = k

    def forward(self, x, weights):
        """x (Tensor[N, C, H, W]), weights (Tensor[K]) -> Tensor[N, C, H / stride, W / stride]."""
        return super().forward(x, weights)


class Cell(_SpaceCell):
    """DARTS search cell (quark0/darts ``model_search.Cell``) on the batched executor.

    Args:
        steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev: as the authors'.
        primitives: candidate op names (default: the authors' ``PRIMITIVES``). backend: as ``MixedOp``'s.
    """

    partial_channels = 1

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 primitives=tuple(DARTS_OPS), backend: str | None = None):  # fmt: skip
        edge_kwargs = dict(op_names=list(primitives), pool_bn=True, partial_channels=self.partial_channels,
                           backend=backend)  # fmt: skip
        super().__init__(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, edge_kwargs)

    def forward(self, s0, s1, weights):
        """s0, s1 (Tensor[N, C_prev(_prev), H, W]), weights (Tensor[E, K]) -> Tensor[N, multiplier C, H', W']."""
        return super().forward(s0, s1, ArchWeights(weights))


class PCCell(Cell):
    """PC-DARTS search cell (yuhuixu1993/PC-DARTS ``model_search.Cell``): partial channels ``k = 4``, and
    ``weights2`` (Tensor[E]) scaling each edge's whole output."""

    partial_channels = 4

    def forward(self, s0, s1, weights, weights2):
        return _SpaceCell.forward(self, s0, s1, ArchWeights(weights, edge_scale=weights2))
