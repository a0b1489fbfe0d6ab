"""MBConv (inverted residual) candidates of TF-NAS (Hu et al., ECCV 2020; AberHu/TF-NAS ``models/layers.py``).

A block is ``1x1 expand -> BN -> act -> kxk depthwise (stride) -> BN -> act -> [SE] -> 1x1 project -> BN``
plus the identity when ``C_in == C_out`` and ``stride == 1``. The authors' 8 candidates are kernel 3/5 x
expansion 3/6 x with/without squeeze-excitation (SE reduce width ``C_in * e / 3``: ``C_in`` for e3, ``2 C_in``
for e6, as in their ``model_search.py``).

Elastic width: a search candidate allocates the authors' headroom ``4/3 e C_in`` expanded channels (their
e4/e8 supernet) and starts with the first ``e C_in`` active (their ``mc_mask_dddict``). The active channels
are a bool mask buffer; inactive channels are zeroed after the first activation, which zeroes them in every
later layer (depthwise conv, affine-free BN of an all-zero channel, SE, projection), so the output and all
gradients equal those of the sliced block, while the parameters and their optimizer state stay in place.

Registered names: ``mbconv_k{3,5}_e{3,6}[_se]`` (ReLU) and the same with ``_swish`` (their stages 2-6).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_op

MBCONV_OPS = [f"mbconv_k{k}_e{e}{se}" for se in ("", "_se") for k in (3, 5) for e in (3, 6)]
ELASTIC_HEADROOM = 4 / 3  # authors: e3 -> 4 C_in, e6 -> 8 C_in channels allocated


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; known: relu, swish")


def batch_norm(C: int, affine: bool) -> nn.BatchNorm2d:
    # authors: affine=False search BNs keep no running statistics (track_running_stats=affine)
    return nn.BatchNorm2d(C, affine=affine, track_running_stats=affine)


class MBConv(nn.Module):
    """Inverted-residual block with an elastic expanded width.

    Args:
        C_in, C_out, stride, kernel_size: as usual; ``padding = kernel_size // 2``.
        mid: active expanded width at construction.
        max_mid: allocated expanded width (``>= mid``); channels ``mid..max_mid`` start inactive.
        se: squeeze-excitation reduce width (0 = no SE).
        act: ``relu`` or ``swish``.
        expand: ``False`` drops the 1x1 expansion (needs ``mid == max_mid == C_in``; the authors' second stem).

    Example::

        op = MBConv(16, 24, 2, 3, mid=48, max_mid=64, se=16)
        y = op(torch.randn(2, 16, 8, 8))   # Tensor[2, 24, 4, 4]
        op.set_channel_mask(torch.arange(64) < 40)
    """

    def __init__(self, C_in, C_out, stride, kernel_size, mid, max_mid=None, se=0, act="relu", affine=True, expand=True):
        super().__init__()
        max_mid = mid if max_mid is None else max_mid
        if not 0 < mid <= max_mid:
            raise ValueError(f"need 0 < mid <= max_mid, got mid={mid}, max_mid={max_mid}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.C_in, self.C_out, self.stride, self.kernel_size = C_in, C_out, stride, kernel_size
        self.max_mid, self.se_channels, self.act_name = max_mid, se, act
        if not expand and not mid == max_mid == C_in:
            raise ValueError(f"expand=False needs mid == max_mid == C_in, got {mid}, {max_mid}, {C_in}")
        self.expand = (
            nn.Sequential(nn.Conv2d(C_in, max_mid, 1, bias=False), batch_norm(max_mid, affine), activation(act))
            if expand
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(max_mid, max_mid, kernel_size, stride, kernel_size // 2, groups=max_mid, bias=False),
            batch_norm(max_mid, affine),
            activation(act),
        )
        if se > 0:
            self.se_reduce = nn.Conv2d(max_mid, se, 1)
            self.se_act = activation(act)
            self.se_expand = nn.Conv2d(se, max_mid, 1)
        self.project = nn.Sequential(nn.Conv2d(max_mid, C_out, 1, bias=False), batch_norm(C_out, affine))
        self.has_residual = C_in == C_out and stride == 1
        self.register_buffer("channel_mask", torch.arange(max_mid) < mid)
        self.elastic = mid < max_mid  # a fixed-width (derived) block skips the mask multiply

    @property
    def mid(self) -> int:
        """Active expanded width (a host read of the mask; not for the hot path)."""
        return int(self.channel_mask.sum())

    def set_channel_mask(self, mask: torch.Tensor) -> None:
        """mask (Tensor[max_mid] bool): the active expanded channels. Parameters are untouched."""
        if mask.shape != (self.max_mid,) or mask.dtype != torch.bool or not mask.any():
            raise ValueError(f"channel mask must be a non-empty bool tensor of shape [{self.max_mid}], got {mask}")
        self.channel_mask.copy_(mask)
        self.elastic = True

    def channel_importance(self) -> torch.Tensor:
        """Tensor[max_mid]: L1 norm of each depthwise filter (the authors' channel ranking for elastic width)."""
        return self.depthwise[0].weight.detach().abs().sum(dim=(1, 2, 3))

    def forward(self, x):
        """x (Tensor[N, C_in, H, W]) -> Tensor[N, C_out, ceil(H / stride), ceil(W / stride)]"""
        h = self.expand(x)
        if self.elastic:
            # zero the inactive channels once: they stay zero through every later layer (see module doc)
            h = h * self.channel_mask.to(h.dtype).view(1, -1, 1, 1)
        h = self.depthwise(h)
        if self.se_channels:
            h = h * torch.sigmoid(self.se_expand(self.se_act(self.se_reduce(F.adaptive_avg_pool2d(h, 1)))))
        out = self.project(h)
        return out + x if self.has_residual else out


def parse_mbconv_name(name: str) -> dict:
    """``mbconv_k5_e6_se_swish`` -> ``{kernel_size: 5, expansion: 6, se: True, act: 'swish'}``."""
    parts = name.split("_")
    if parts[0] != "mbconv" or len(parts) < 3 or parts[1][0] != "k" or parts[2][0] != "e":
        raise ValueError(f"not an MBConv op name: {name!r}")
    rest = parts[3:]
    act = "swish" if rest and rest[-1] == "swish" else "relu"
    return dict(kernel_size=int(parts[1][1:]), expansion=int(parts[2][1:]), se="se" in rest, act=act)


def se_width(C_in: int, expansion: int) -> int:
    return max(1, C_in * expansion // 3)


def candidate_widths(C_in: int, expansion: int) -> tuple[int, int]:
    """(initial active width, allocated width) of a search candidate."""
    return expansion * C_in, round(expansion * C_in * ELASTIC_HEADROOM)


def build_mbconv(name, C_in, C_out, stride, affine, mid=None) -> MBConv:
    """The search candidate ``name`` (with elastic headroom), or a fixed-width block when ``mid`` is given."""
    p = parse_mbconv_name(name)
    init_mid, max_mid = candidate_widths(C_in, p["expansion"])
    if mid is not None:
        init_mid = max_mid = mid
    se = se_width(C_in, p["expansion"]) if p["se"] else 0
    return MBConv(C_in, C_out, stride, p["kernel_size"], init_mid, max_mid, se, p["act"], affine)


def _register(name):
    register_op(name, lambda C_in, C_out, stride, affine: build_mbconv(name, C_in, C_out, stride, affine))


for _name in MBCONV_OPS:
    _register(_name)
    _register(_name + "_swish")
