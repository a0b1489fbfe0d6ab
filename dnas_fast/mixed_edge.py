"""MixedEdge: the one module through which every strategy computes ``sum_k w_k * op_k(x)``."""

import torch
from torch import nn

from . import _backend
from .ops import build_op, check_op_names
from .partial_channels import ScaledBypass, bypass_of, channel_shuffle
from .shapes import strided_shape


class MixedEdge(nn.Module):
    """One supernet edge over candidate ops ``op_names``.

    Args:
        C: input channels; the output has ``C_out`` (default ``C``).
        stride: 1 or 2.
        op_names: candidate op names from the op registry.
        pool_bn: follow pools by an affine-free BatchNorm (the DARTS search network's MixedOp).
        partial_channels: PC-DARTS ``K``: ``C / K`` channels go through the ops, the rest bypass (2x2
            max-pooled on stride 2) and the result is channel-shuffled. 1 disables it.
        aux_skip: build the DARTS- auxiliary skip path (weighted by ``aux_weight`` in forward).
        backend: ``auto`` (default), ``reference`` or a fused backend; ``dnas_fast.use_backend`` and env
            ``DNAS_FAST_BACKEND`` override it.

    The ops live in ``self._ops`` with the authors' layout, so a quark0/darts ``MixedOp`` state_dict loads.

    Example::

        edge = MixedEdge(16, 1, ["skip_connect", "sep_conv_3x3", "avg_pool_3x3"], pool_bn=True)
        y = edge(torch.randn(2, 16, 8, 8), torch.softmax(torch.zeros(3), 0))
    """

    def __init__(
        self,
        C: int,
        stride: int,
        op_names,
        *,
        C_out: int | None = None,
        pool_bn: bool = False,
        partial_channels: int = 1,
        aux_skip: bool = False,
        affine: bool = False,
        backend: str | None = None,
    ):
        super().__init__()
        self.op_names = check_op_names(op_names)
        C_out = C if C_out is None else C_out
        if partial_channels < 1 or C % partial_channels or C_out % partial_channels:
            raise ValueError(f"partial_channels={partial_channels} must divide C={C} and C_out={C_out}")
        if partial_channels > 1 and C != C_out:
            raise ValueError("partial channels need C_out == C (the bypassed channels are passed through)")
        self.C, self.C_out, self.stride = C, C_out, stride
        self.partial_channels = partial_channels
        self.backend = backend
        C_op, C_op_out = C // partial_channels, C_out // partial_channels
        self._ops = nn.ModuleList()
        for name in self.op_names:
            op = build_op(name, C_op, C_op_out, stride, affine)
            if pool_bn and "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C_op_out, affine=False))
            self._ops.append(op)
        self.aux = build_op("skip_connect", C, C_out, stride, affine) if aux_skip else None

    def extra_repr(self):
        return (
            f"C={self.C}, C_out={self.C_out}, stride={self.stride}, ops={self.op_names}, "
            f"partial_channels={self.partial_channels}, aux_skip={self.aux is not None}"
        )

    def forward(self, x, weights, mask=None, aux_weight=None, straight_through=False, scale=None):
        """
        Args:
            x (Tensor[N, C, H, W]): edge input.
            weights (Tensor[K]): op weights, already relaxed by the strategy.
            mask (Tensor[K] bool, CPU, optional): active ops; inactive ones are not computed at all.
            aux_weight (Tensor[] optional): weight of the auxiliary skip path (needs ``aux_skip=True``).
            straight_through: inactive ops still add ``w_k`` (GDAS trick) so their weight gets a gradient.
            scale (Tensor[] optional): factor on the whole output, bypassed channels and aux skip included
                (PC-DARTS edge normalisation).
        Returns:
            Tensor[N, C_out, ceil(H / stride), ceil(W / stride)]
        """
        self._check_inputs(x, weights, mask, aux_weight)
        backend = _backend.resolve_backend(self.backend, x.device, self)
        if scale is None:
            return backend.forward(self, x, weights, mask, aux_weight, straight_through)
        if backend.name == "reference":  # the authors' formula: weights2[e] * MixedOp_e(h_e, weights[e])
            return scale * backend.forward(self, x, weights, mask, aux_weight, straight_through)
        # fused: the scale folds into the op and aux weights (no extra pass); only the bypass needs it added
        aux_weight = None if aux_weight is None else aux_weight * scale
        out = backend.forward(self, x, weights * scale, mask, aux_weight, straight_through)
        if self.partial_channels > 1:
            out = ScaledBypass.apply(out, x, scale, self.partial_channels, self.stride)
        return out

    def _check_inputs(self, x, weights, mask, aux_weight):
        if x.dim() != 4 or x.shape[1] != self.C:
            raise ValueError(f"MixedEdge expects x of shape [N, {self.C}, H, W], got {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        K = len(self.op_names)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape [{K}] (one per op {self.op_names}), got {list(weights.shape)}")
        if weights.device != x.device:
            raise ValueError(f"weights are on {weights.device} but x is on {x.device}")
        if mask is not None:
            if mask.shape != (K,) or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor of shape [{K}], got {mask.dtype} {list(mask.shape)}")
            if mask.device.type != "cpu":
                raise ValueError("mask must live on the CPU: it decides on the host which ops run")
        if aux_weight is not None and self.aux is None:
            raise ValueError("aux_weight given but the edge was built without aux_skip=True")

    def output_shape(self, x):
        return strided_shape(x, self.stride, self.C_out)


def active_ops(edge: MixedEdge, mask):
    """Indices of the ops that run; a host-side list (mask is a CPU tensor by contract)."""
    K = len(edge.op_names)
    return list(range(K)) if mask is None else mask.nonzero().flatten().tolist()


def reference_forward(edge: MixedEdge, x, weights, mask=None, aux_weight=None, straight_through=False):
    """The naive per-op loop, in numbers identical to the authors' (PC-)DARTS MixedOp."""
    pc = edge.partial_channels
    x_ops = x[:, : edge.C // pc] if pc > 1 else x
    active = active_ops(edge, mask)
    terms = [weights[k] * edge._ops[k](x_ops) for k in active]
    if terms:
        out = sum(terms)
    else:  # keep the graph connected to ``weights`` so every strategy sees a (zero) gradient
        out = x_ops.new_zeros(strided_shape(x_ops, edge.stride, edge.C_out // pc)) + weights.sum() * 0
    inactive = [k for k in range(len(edge.op_names)) if k not in active]
    if straight_through and inactive:
        out = out + weights[inactive].sum()
    if pc > 1:
        out = channel_shuffle(torch.cat([out, bypass_of(x, pc, edge.stride)], dim=1), pc)
    if aux_weight is not None:
        out = out + aux_weight * edge.aux(x)
    return out


_backend.register_backend(
    _backend.Backend(
        name="reference",
        forward=reference_forward,
        available=lambda device: True,
        supports=lambda edge: True,
        priority=-1,
    )
)
