"""Where each MixedEdge sits in the architecture, and what each of its ops costs at its actual input shape.

SNAS (Xie et al., ICLR 2019, Sec. 2.4) penalises parameters, FLOPs and memory access cost (MAC) of the ops.
Costs are counted op by op as SNAS-Series ``SNAS/operations.py`` does (each op's ``size``, ``flops`` and ``mac``),
on input ``[1, C, H, W]`` with ``y = H`` (stride 1) or ``H // 2`` (stride 2), ``Y = y * y``:

    op                 params (their size)             flops        mac
    none               0                               0            0
    skip (identity)    0                               0            2 C H W          (read and written once)
    skip (stride 2)    C_in C_out (FactorizedReduce)   size Y       2 Y (4 C_in + C_out / 2) + size
    pool 3x3           0                               9 C Y        2 C Y (stride 1), 5 C Y (stride 2)
    ReLUConvBN k       C_in C_out k^2                  size Y       Y (C_in + C_out) + size (4 C_in: stride 2)
    dil_conv k         C_in k^2 + C_in C_out           size Y       Y (3 C_in + C_out) + size (6 C_in: stride 2)
    sep_conv k         2 C_in k^2 + (C_in + C_out) C_in  size Y     Y (7 C_in + C_out) + size (10 C_in: stride 2)

FactorizedReduce reads its input twice (both offset convs read all of it in their formula). BatchNorm, ReLU and
the pools' BatchNorm cost nothing there. An op outside this table (a registered op of another space) is measured
with forward hooks instead: params counted, conv multiply-adds ``H_out W_out C_out C_in / groups kh kw`` and pool
window reads ``numel_out kh kw`` as flops, and ShuffleNet V2 memory access (input + output (+ weights) elements of
every conv and pool) as mac; on even sizes both ways give the same numbers for the table's convs and pools.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchWeights

RESOURCES = ("params", "flops", "mac")


@dataclass
class EdgeSite:
    """The MixedEdge ``edge`` computes edge ``index`` of group ``group``, fed with ``input_shape``."""

    edge: nn.Module
    group: str
    index: int
    input_shape: tuple


def locate_edges(space, x: torch.Tensor) -> list[EdgeSite]:
    """Run ``space`` once on ``x`` (eval mode, no grad, BN statistics untouched) and record, for each MixedEdge
    call, which (group, edge) weights it received and its input shape. Weights are told apart by storage."""
    spec = space.arch_spec()
    arch = {
        g: ArchWeights(
            torch.full((s.num_edges, len(s.op_names)), 1.0 / len(s.op_names), device=x.device, dtype=x.dtype)
        )
        for g, s in spec.items()
    }
    storages = {arch[g].weights.untyped_storage().data_ptr(): g for g in arch}
    sites = []

    def hook(edge, args):
        x_in, weights = args[0], args[1]
        group = storages[weights.untyped_storage().data_ptr()]
        sites.append(EdgeSite(edge, group, weights.storage_offset() // weights.numel(), tuple(x_in.shape)))

    handles = [e.register_forward_pre_hook(hook) for e in space.edges()]
    was_training = space.training
    space.eval()
    try:
        with torch.no_grad():
            space(x, arch)
    finally:
        space.train(was_training)
        for h in handles:
            h.remove()
    return sites


def authors_cost(op: nn.Module, input_shape: tuple) -> dict[str, float] | None:
    """params / flops / mac of ``op`` on ``input_shape`` (``[1, C, H, W]``) by SNAS-Series ``SNAS/operations.py``'s
    closed forms (module docstring), or None for an op they do not define."""
    from ..ops.darts import DilConv, FactorizedReduce, Identity, ReLUConvBN, SepConv, Zero

    _, C, H, W = input_shape
    if isinstance(op, nn.Sequential) and isinstance(op[0], nn.MaxPool2d | nn.AvgPool2d):
        op = op[0]  # a search pool with its affine-free BatchNorm: their MaxPool / AvgPool
    if isinstance(op, Zero):
        return {"params": 0.0, "flops": 0.0, "mac": 0.0}
    if isinstance(op, Identity):  # their Identity.forward: mac = 2 c y^2
        return {"params": 0.0, "flops": 0.0, "mac": float(2 * C * H * W)}
    if isinstance(op, FactorizedReduce):
        c_out = op.conv_1.out_channels + op.conv_2.out_channels
        size, Y = 2 * C * (c_out // 2), (H // 2) * (W // 2)
        return {"params": float(size), "flops": float(size * Y), "mac": float(2 * Y * (4 * C + c_out // 2) + size)}
    if isinstance(op, nn.MaxPool2d | nn.AvgPool2d):
        stride = op.stride if isinstance(op.stride, int) else op.stride[0]
        Y = H * W if stride == 1 else (H // 2) * (W // 2)
        return {"params": 0.0, "flops": float(9 * Y * C), "mac": float((2 if stride == 1 else 5) * Y * C)}
    if not isinstance(op, ReLUConvBN | DilConv | SepConv):
        return None
    first = op.op[1]  # the (first) strided conv
    k, stride = first.kernel_size[0], first.stride[0]
    c_in, c_out = first.in_channels, op.op[-2].out_channels
    Y = H * W if stride == 1 else (H // 2) * (W // 2)
    if isinstance(op, ReLUConvBN):
        size, reads = c_in * c_out * k * k, (1, 4)
    elif isinstance(op, DilConv):
        size, reads = c_in * k * k + c_out * c_in, (3, 6)
    else:
        size, reads = 2 * c_in * k * k + (c_in + c_out) * c_in, (7, 10)
    mac = Y * (reads[stride == 2] * c_in + c_out) + size
    return {"params": float(size), "flops": float(size * Y), "mac": float(mac)}


def op_cost(op: nn.Module, input_shape: tuple, like: torch.Tensor) -> dict[str, float]:
    """params / flops / mac of ``op`` on one example of shape ``input_shape`` (Tensor[1, C, H, W]): the authors'
    closed form where they define the op, else measured with hooks on a zero input with the dtype and device of
    ``like``."""
    closed = authors_cost(op, input_shape)
    if closed is not None:
        return closed
    costs = {"params": float(sum(p.numel() for p in op.parameters())), "flops": 0.0, "mac": 0.0}

    def conv_hook(m, inputs, out):
        kh, kw = m.kernel_size
        costs["flops"] += out.numel() * (m.in_channels // m.groups) * kh * kw
        costs["mac"] += inputs[0].numel() + out.numel() + m.weight.numel()

    def pool_hook(m, inputs, out):
        kh, kw = (m.kernel_size, m.kernel_size) if isinstance(m.kernel_size, int) else m.kernel_size
        costs["flops"] += out.numel() * kh * kw
        costs["mac"] += inputs[0].numel() + out.numel()

    hooks = []
    for m in op.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            hooks.append(m.register_forward_hook(pool_hook))
    was_training = op.training
    op.eval()
    try:
        with torch.no_grad():
            op(like.new_zeros((1, *input_shape[1:])))
    finally:
        op.train(was_training)
        for h in hooks:
            h.remove()
    return costs


def cost_tables(space, x: torch.Tensor, resources=RESOURCES) -> dict[str, torch.Tensor]:
    """Per group, ``Tensor[cells, E, K, R]``: the cost of op k on edge e in each cell that shares the group's
    alphas, for the resources ``resources`` (columns in that order)."""
    per_group: dict[str, list] = {}
    for site in locate_edges(space, x):
        pc = site.edge.partial_channels
        shape = (1, site.input_shape[1] // pc, *site.input_shape[2:])
        row = [[op_cost(op, shape, x)[r] for r in resources] for op in site.edge._ops]
        per_group.setdefault(site.group, []).append((site.index, row))
    tables = {}
    for group, rows in per_group.items():
        E = max(i for i, _ in rows) + 1
        cells = len(rows) // E
        table = torch.zeros(cells, E, len(rows[0][1]), len(resources), dtype=torch.float64)
        seen = [0] * E
        for index, row in rows:
            table[seen[index], index] = torch.tensor(row, dtype=torch.float64)
            seen[index] += 1
        tables[group] = table
    return tables
