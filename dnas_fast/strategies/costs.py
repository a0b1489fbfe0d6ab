"""Where each MixedEdge sits in the architecture, and what each of its ops costs at its actual input shape.

SNAS (Xie et al., ICLR 2019, Sec. 2.4) penalises parameters, FLOPs and memory access cost (MAC) of the ops.
Costs are measured on the real op modules with forward hooks on a probe input of batch size 1:
    params: number of parameters of the op
    flops:  multiply-adds of convolutions (``H_out W_out C_out * C_in / groups * kh kw``) and pooling
            window reads (``numel_out * kh kw``)
    mac:    ShuffleNet V2 memory access cost: input + output (+ weights) elements of every conv and pool
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


def op_cost(op: nn.Module, input_shape: tuple, like: torch.Tensor) -> dict[str, float]:
    """params / flops / mac of ``op`` on one example of shape ``input_shape`` (Tensor[1, C, H, W]) with the
    dtype and device of ``like``."""
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
