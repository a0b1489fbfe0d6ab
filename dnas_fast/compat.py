"""Drop-in replacements for the authors' search ``MixedOp`` modules: swap one import, keep the constructor,
``forward(x, weights)`` and the state_dict keys, and get the fused memory-lean edge (``auto`` backend).

* ``MixedOp(C, stride)``: quark0/darts ``model_search.MixedOp`` (8 DARTS primitives, pools followed by an
  affine-free BatchNorm). Keys ``_ops.{k}...`` as in the authors' checkpoints.
* ``PCMixedOp(C, stride, k=4)``: yuhuixu1993/PC-DARTS ``model_search.MixedOp``: only ``C / k`` channels go
  through the ops, the rest bypass (2x2 max-pooled on reduction edges) and the result is channel-shuffled with
  ``k`` groups. The authors' ``self.mp = nn.MaxPool2d(2, 2)`` holds no state; the bypass pool here uses
  ``ceil_mode=True`` (the same numbers for the even sizes the authors' code supports, and defined for odd ones).

Example::

    from dnas_fast.compat import MixedOp    # instead of: from model_search import MixedOp
    op = MixedOp(16, 1)
    y = op(torch.randn(2, 16, 32, 32), torch.softmax(torch.zeros(8), 0))
"""

from .mixed_edge import MixedEdge
from .ops import DARTS_OPS


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
