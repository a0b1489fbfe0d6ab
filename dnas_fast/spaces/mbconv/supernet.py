"""The TF-NAS / ProxylessNAS MBConv search space (Hu et al., ECCV 2020; AberHu/TF-NAS ``model_search.py``).

A MobileNetV2-like chain: stem (3x3 conv, then a depthwise-SE-project block), stages of searchable blocks,
head (1x1 conv, global pool, linear). Every block is a MixedEdge over the MBConv candidates (no skip op).
Depth is searched by sink-connecting: the outputs of a stage's blocks (and its input when the first block
keeps shape) are summed with depth weights, and the derived depth is the argmax exit.

Groups (``arch_spec``):
    ``ops``   ``[E, K]``: one row per block, ``node_of_edge[e] = e + 1``, ``source_of_edge[e] = e``.
    ``depth`` ``[S, D]``: one row per stage, option ``j`` = exit after ``j`` blocks (``D`` = most blocks + 1);
              ``allowed`` marks the exits a stage has (exit 0 only when its first block keeps the shape).

Default config = the authors' ImageNet search network at 224x224 (6 stages, 18 blocks, stem 32/16, head 1280).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ...arch import EdgeGroup
from ...mixed_edge import MixedEdge
from ...ops import check_op_names
from ...ops.mbconv import MBCONV_OPS, MBConv, activation, batch_norm, build_mbconv
from ..base import SearchSpace, register_space

# [C_out, blocks, stride of the first block, activation] per stage (authors' Network in model_search.py)
TFNAS_STAGES = [[24, 2, 2, "relu"], [40, 3, 2, "swish"], [80, 4, 2, "swish"], [112, 4, 1, "swish"],
                [192, 4, 2, "swish"], [320, 1, 1, "swish"]]  # fmt: skip


@dataclass(frozen=True)
class BlockShape:
    """Where a searchable block sits: its input ``[C_in, H, W]``, output channels, stride, activation."""

    C_in: int
    C_out: int
    stride: int
    H: int
    W: int
    act: str

    def op_name(self, base: str) -> str:
        """Registry name of candidate ``base`` at this block (swish stages use the ``_swish`` ops)."""
        return base + "_swish" if self.act == "swish" else base


def conv_bn_act(C_in, C_out, kernel_size, stride, act, affine):
    return nn.Sequential(
        nn.Conv2d(C_in, C_out, kernel_size, stride, kernel_size // 2, bias=False),
        batch_norm(C_out, affine),
        activation(act),
    )


def build_stem(in_channels, stem, stem_stride, affine) -> nn.Sequential:
    """3x3 conv to ``stem[0]`` (stride ``stem_stride``), then the authors' second stem: depthwise 3x3, SE with
    ``stem[0] // 4`` channels, project to ``stem[1]``."""
    C0, C1 = stem
    second = MBConv(C0, C1, 1, 3, mid=C0, se=max(1, C0 // 4), act="relu", affine=affine, expand=False)
    return nn.Sequential(conv_bn_act(in_channels, C0, 3, stem_stride, "relu", affine), second)


def build_head(C_in, head, num_classes, affine) -> nn.Sequential:
    """1x1 conv to ``head`` channels (swish), global average pool, linear classifier."""
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(conv_bn_act(C_in, head, 1, 1, "swish", affine), *pool, nn.Linear(head, num_classes))


def _config(stages, stem, stem_stride, head, resolution, in_channels, num_classes):
    stages = [list(s) for s in stages]
    for s in stages:
        if len(s) != 4 or s[1] < 1 or s[2] not in (1, 2) or s[3] not in ("relu", "swish"):
            raise ValueError(f"a stage is [C_out, blocks >= 1, stride 1|2, 'relu'|'swish'], got {s}")
    if len(stem) != 2 or stem_stride not in (1, 2):
        raise ValueError(f"stem must be [C0, C1] and stem_stride 1 or 2, got {stem}, {stem_stride}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return dict(
        stages=stages, stem=list(stem), stem_stride=stem_stride, head=head, resolution=resolution,
        in_channels=in_channels, num_classes=num_classes,
    )  # fmt: skip


def block_shapes(config) -> list[list[BlockShape]]:
    """Per stage, the shapes of its blocks for a ``resolution x resolution`` input."""
    H = -(-config["resolution"] // config["stem_stride"])
    C = config["stem"][1]
    out = []
    for C_out, blocks, stride, act in config["stages"]:
        stage = []
        for b in range(blocks):
            s = stride if b == 0 else 1
            stage.append(BlockShape(C, C_out, s, H, H, act))
            H, C = -(-H // s), C_out
        out.append(stage)
    return out


def first_exit(stage: list[BlockShape]) -> int:
    """0 when the stage input may pass through (first block keeps the shape), else 1 (authors' start_res)."""
    b = stage[0]
    return 0 if b.C_in == b.C_out and b.stride == 1 else 1


@register_space
class MBConvSpace(SearchSpace):
    """MBConv supernet. Config (all JSON-friendly):

    Args:
        stages: ``[[C_out, blocks, stride, act], ...]`` (default: TF-NAS ImageNet).
        stem: ``[C0, C1]`` stem widths; stem_stride: 2 for ImageNet, 1 for tiny inputs.
        head: channels of the last 1x1 conv. resolution: input side the latency model assumes.
        op_names: candidate names (default: the 8 MBConv candidates; ``_swish`` is added in swish stages).
        affine: BN affine in the supernet (authors: False, with no running statistics).
        aux_skip: the DARTS- auxiliary skip path on every block (S5 of DARTS-).

    Example::

        space = MBConvSpace(stages=[[8, 2, 1, "relu"], [16, 2, 2, "swish"]], stem=[8, 8], stem_stride=1,
                            head=32, resolution=8, in_channels=1, num_classes=10)
    """

    name = "mbconv"

    def __init__(
        self, stages=None, stem=(32, 16), stem_stride=2, head=1280, resolution=224, in_channels=3,
        num_classes=1000, op_names=None, affine=False, aux_skip=False, backend=None,
    ):  # fmt: skip
        super().__init__()
        op_names = check_op_names(op_names or MBCONV_OPS)
        self.config = _config(stages or TFNAS_STAGES, stem, stem_stride, head, resolution, in_channels, num_classes)
        self.config.update(op_names=op_names, affine=affine, aux_skip=aux_skip, backend=backend)
        self.shapes = block_shapes(self.config)
        self.stem = build_stem(in_channels, self.config["stem"], stem_stride, affine)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                MixedEdge(b.C_in, b.stride, [b.op_name(n) for n in op_names], C_out=b.C_out, affine=affine,
                          aux_skip=aux_skip, backend=backend)
                for b in stage
            )
            for stage in self.shapes
        )  # fmt: skip
        self.head = build_head(self.shapes[-1][-1].C_out, head, num_classes, affine)

    # ---- structure ---------------------------------------------------------------------------------
    def flat_shapes(self) -> list[BlockShape]:
        return [b for stage in self.shapes for b in stage]

    def block_edges(self) -> list[MixedEdge]:
        return [edge for stage in self.stages for edge in stage]

    def arch_spec(self):
        E = len(self.flat_shapes())
        D = max(len(stage) for stage in self.shapes) + 1
        allowed = torch.zeros(len(self.shapes), D, dtype=torch.bool)
        last, first = [], []
        for s, stage in enumerate(self.shapes):
            allowed[s, first_exit(stage) : len(stage) + 1] = True
            first.append(sum(len(t) for t in self.shapes[:s]))
            last.append(first[-1] + len(stage))
        return {
            "ops": EdgeGroup(list(self.config["op_names"]), list(range(1, E + 1)), list(range(E))),
            "depth": EdgeGroup([f"exit_{j}" for j in range(D)], last, first, allowed),
        }

    # ---- elastic width -------------------------------------------------------------------------------
    def widths(self) -> torch.Tensor:
        """LongTensor[E, K]: active expanded width of every candidate (host reads; once per epoch)."""
        return torch.tensor([[op.mid for op in edge._ops] for edge in self.block_edges()])

    def max_widths(self) -> torch.Tensor:
        """LongTensor[E, K]: allocated expanded width of every candidate."""
        return torch.tensor([[op.max_mid for op in edge._ops] for edge in self.block_edges()])

    @torch.no_grad()
    def set_width(self, e: int, k: int, width: int) -> None:
        """Keep the ``width`` channels of candidate ``k`` at block ``e`` with the largest depthwise L1 norm
        (authors' ``train_search.py``); parameters and optimizer state are untouched."""
        op = self.block_edges()[e]._ops[k]
        if not 0 < width <= op.max_mid:
            raise ValueError(f"width must be in [1, {op.max_mid}], got {width}")
        keep = op.channel_importance().topk(width).indices
        mask = torch.zeros(op.max_mid, dtype=torch.bool, device=keep.device)
        op.set_channel_mask(mask.index_fill_(0, keep, True))

    # ---- forward / derive ----------------------------------------------------------------------------
    def forward(self, x, arch):
        """x (Tensor[N, in_channels, H, W]) -> logits (Tensor[N, num_classes])."""
        self.check(x, arch)
        ops, depth = arch["ops"], arch["depth"].weights
        x, e = self.stem(x), 0
        for s, stage in enumerate(self.stages):
            outs = [x]
            for edge in stage:
                outs.append(edge(outs[-1], *ops.edge_args(e)))
                e += 1
            start = first_exit(self.shapes[s])
            # sink-connecting (authors' MixedStage): the stage output is the depth-weighted sum of exits
            x = sum(depth[s, j] * outs[j] for j in range(start, len(outs)))
        return self.head(x)

    def derive(self, scores, widths=None):
        """Derived network config (JSON dict): per stage the argmax exit, per kept block the argmax candidate
        with its current (or the given ``widths[E, K]``) expanded width. Build it with ``MBConvNet``."""
        ops = scores["ops"].argmax(-1).tolist()
        allowed = self.arch_spec()["depth"].allowed
        depths = scores["depth"].masked_fill(~allowed, float("-inf")).argmax(-1).tolist()
        return self.derived_config(ops, depths, self.widths() if widths is None else widths)

    def derived_config(self, ops: list[int], depths: list[int], widths) -> dict:
        names, blocks, e = self.config["op_names"], [], 0
        for stage, depth in zip(self.shapes, depths):
            for b, shape in enumerate(stage):
                if b < depth:
                    k = ops[e]
                    blocks.append(dict(op=shape.op_name(names[k]), C_in=shape.C_in, C_out=shape.C_out,
                                       stride=shape.stride, mid=int(widths[e][k])))  # fmt: skip
                e += 1
        keep = ("stem", "stem_stride", "head", "resolution", "in_channels", "num_classes")
        return {**{k: self.config[k] for k in keep}, "last_channels": self.shapes[-1][-1].C_out, "blocks": blocks}


class MBConvNet(nn.Module):
    """The discrete network of a derived config (``MBConvSpace.derive``): affine BNs, fixed widths.

    A stage whose depth is cut below its first (shape-changing) block cannot exist (exit 0 is not allowed
    there), so consecutive blocks always chain; ``last_channels`` feeds the head.
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.stem = build_stem(config["in_channels"], config["stem"], config["stem_stride"], affine=True)
        self.blocks = nn.Sequential(
            *(build_mbconv(b["op"], b["C_in"], b["C_out"], b["stride"], True, mid=b["mid"]) for b in config["blocks"])
        )
        self.head = build_head(config["last_channels"], config["head"], config["num_classes"], affine=True)

    def forward(self, x):
        """x (Tensor[N, in_channels, H, W]) -> Tensor[N, num_classes]"""
        return self.head(self.blocks(self.stem(x)))
