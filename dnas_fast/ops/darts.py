"""The DARTS primitives with the exact module structure of the authors' ``operations.py``
(quark0/darts), so their state_dict keys and numbers carry over weight for weight.

The registry's pools are plain pools; the DARTS search space wraps them with an affine-free BatchNorm
as the authors' search ``MixedOp`` does (``MixedEdge(pool_bn=True)``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_op

DARTS_OPS = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (quark0/darts ``utils.drop_path``,
    out of place so autograd keeps ``x``). Draws from the global RNG of ``x``'s device."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


def drop_path_scales(paths: int, batch: int, drop_prob: float, like: torch.Tensor) -> torch.Tensor:
    """Tensor[paths, batch]: per path and example, 0 (dropped with probability ``drop_prob``) or ``1 / keep``;
    one draw for all the paths of a cell, so the per-edge and the batched cell drop the same examples."""
    keep = 1.0 - drop_prob
    return torch.empty(paths, batch, device=like.device, dtype=like.dtype).bernoulli_(keep).div_(keep)


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, dilation=1):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise, pointwise, BN) blocks; only the first is strided."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """Output of zeros with the strided shape (``x.mul(0.)`` as in the authors' code, so NaN/inf propagate alike)."""

    def __init__(self, stride, C_out=None):
        super().__init__()
        self.stride = stride
        self.C_out = C_out

    def forward(self, x):
        if self.C_out is not None and self.C_out != x.shape[1]:
            N, _, H, W = x.shape
            return x.new_zeros(N, self.C_out, -(-H // self.stride), -(-W // self.stride))
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 reduction by two offset 1x1 convs. Odd H/W: the shifted branch is zero-padded at the end
    (the authors' code fails there); even sizes give the authors' numbers exactly."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even C_out, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        H, W = x.shape[-2:]
        if H % 2 or W % 2:
            shifted = F.pad(shifted, (0, W % 2, 0, H % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _same_channels(name, C_in, C_out):
    if C_in != C_out:
        raise ValueError(f"{name} keeps the channel count; got C_in={C_in}, C_out={C_out}")


def _pool(kind):
    def factory(C_in, C_out, stride, affine):
        _same_channels(f"{kind}_pool_3x3", C_in, C_out)
        if kind == "max":
            return nn.MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    return factory


def _skip(C_in, C_out, stride, affine):
    if stride == 1 and C_in == C_out:
        return Identity()
    if stride == 1:
        return ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine)
    return FactorizedReduce(C_in, C_out, affine=affine)


def _sep(k):
    return lambda C_in, C_out, stride, affine: SepConv(C_in, C_out, k, stride, k // 2, affine=affine)


def _dil(k):
    return lambda C_in, C_out, stride, affine: DilConv(C_in, C_out, k, stride, k - 1, 2, affine=affine)


register_op("none", lambda C_in, C_out, stride, affine: Zero(stride, C_out))
register_op("max_pool_3x3", _pool("max"))
register_op("avg_pool_3x3", _pool("avg"))
register_op("skip_connect", _skip)
register_op("sep_conv_3x3", _sep(3))
register_op("sep_conv_5x5", _sep(5))
register_op("sep_conv_7x7", _sep(7))
register_op("dil_conv_3x3", _dil(3))
register_op("dil_conv_5x5", _dil(5))


def imagenet_stem(in_channels: int, C: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(stem0, stem1) of the DARTS ImageNet networks (quark0/darts ``NetworkImageNet``, the PC-DARTS ImageNet
    search network): three stride-2 3x3 convs, 224 -> 28."""
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(C),
    )
    stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
    return stem0, stem1
