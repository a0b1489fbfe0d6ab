"""The static structure of a cell's blocks and the host-side plan of one block call, cached per cell.

A block is the set of a cell's edges that read one state; a plan says, for one mask and option set, which op
families run for which of its edges (decided on the host from the CPU mask), and where their parameters are."""

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ..edge_structure import ConvProgram, edge_spec

# ---- which cells can run by blocks --------------------------------------------------------------------------------


def _bns(program: ConvProgram):
    return [
        m for m in (program.layers if program.reduce is None else (program.reduce.bn,)) if isinstance(m, nn.BatchNorm2d)
    ]


def _program_batchable(program: ConvProgram) -> bool:
    if program.reduce is None and not isinstance(program.layers[0], nn.Conv2d):
        return False
    return all(bn.momentum is not None and bn.track_running_stats for bn in _bns(program))


def _block_batchable(edges) -> bool:
    first = edges[0]
    same = ("op_names", "C", "C_out", "stride", "partial_channels")
    if any(getattr(e, a) != getattr(first, a) for e in edges for a in same):
        return False
    if any((e.aux is None) != (first.aux is None) for e in edges):
        return False
    specs = [edge_spec(e) for e in edges]
    if any(s is None for s in specs):
        return False
    programs = [p for s in specs for p in [*s.programs.values(), *([s.aux] if isinstance(s.aux, ConvProgram) else [])]]
    bns = [p.bn for s in specs for p in s.pools.values() if p.bn is not None] + [b for p in programs for b in _bns(p)]
    one_momentum = len({bn.momentum for bn in bns}) <= 1  # one _foreach_lerp_ writes them all
    return all(map(_program_batchable, programs)) and one_momentum and all(bn.momentum is not None for bn in bns)


# ---- the plan of one block call -----------------------------------------------------------------------------------


@dataclass
class Family:
    k: int  # op index
    kind: str  # "max", "avg", "skip", "conv", "aux"
    rows: list  # block rows (edges) it runs for
    slots: int  # parameters per edge (conv)
    programs: list  # per row (conv / aux conv)
    bns: list  # pool BNs of its rows
    index: torch.Tensor | None  # rows as a CPU index; None: every row


@dataclass
class BlockPlan:
    edges: list
    cell_rows: torch.Tensor  # the block's edges' indices in the cell, CPU
    stride: int
    pc: int
    C_ops: int
    families: list
    inactive: torch.Tensor | None  # [E, K] bool (straight-through), CPU
    aux: object  # None, "skip" or "conv"
    copies: dict = field(default_factory=dict)  # (id of a CPU tensor above, device, dtype) -> its copy there

    def on(self, t, device, dtype=None):
        """A CPU tensor of the plan on ``device``, copied once: a replayed CUDA graph reads no host memory."""
        if t is None or (device.type == "cpu" and dtype in (None, t.dtype)):
            return t
        key = (id(t), device, dtype)
        if key not in self.copies:
            self.copies[key] = t.to(device, dtype)
        return self.copies[key]

    def params(self):
        """The parameters a block call reads, read now (``functional_call`` swaps them between calls)."""
        params = []
        for f in self.families:
            tensors = [p.tensors() for p in f.programs]
            for slot in range(f.slots):
                params += [t[slot] for t in tensors]
        return params


def _family(edges, k, kind, rows):
    programs = [edge_spec(edges[r]).programs[k] for r in rows] if kind == "conv" else []
    bns = [edge_spec(edges[r]).pools[k].bn for r in rows] if kind in ("max", "avg") else []
    index = None if len(rows) == len(edges) else torch.tensor(rows)
    return Family(k, kind, rows, len(programs[0].params) if programs else 0, programs, bns, index)


def make_block_plan(edges, cell_rows, mask, straight_through, has_aux):
    """Host-side plan of one block call; ``cell_rows``: the edges' indices in their cell."""
    e0 = edges[0]
    spec0 = edge_spec(e0)
    E, K = len(edges), len(e0.op_names)
    active = [[True] * K] * E if mask is None else mask.tolist()
    families = []
    for k, kind in enumerate(spec0.kinds):
        rows = [r for r in range(E) if active[r][k]]
        if kind != "zero" and rows:
            families.append(_family(edges, k, kind, rows))
    aux = None
    if has_aux:
        aux = "skip" if spec0.aux == "skip" else "conv"
        if aux == "conv":
            programs = [edge_spec(e).aux for e in edges]
            families.append(Family(-1, "aux", list(range(E)), len(programs[0].params), programs, [], None))
    inactive = ~mask if straight_through and mask is not None else None
    pc = e0.partial_channels
    return BlockPlan(list(edges), torch.tensor(cell_rows), e0.stride, pc, e0.C // pc, families, inactive, aux)


# ---- the cache: a cell's blocks and their plans -------------------------------------------------------------------


@dataclass
class CellBlocks:
    """A cell's blocks and the block plans built so far (one per source, mask and option set)."""

    key: tuple
    blocks: tuple | None  # ((source state, edge indices in target order), ...), None: not batchable
    plans: dict = field(default_factory=dict)


_CELLS: "weakref.WeakKeyDictionary[nn.Module, CellBlocks]" = weakref.WeakKeyDictionary()
_MAX_PLANS = 256  # per cell: masks that change every step (sampling strategies) would grow the cache forever


def cell_blocks(edges, sources) -> CellBlocks:
    """The blocks of the cell whose edge list is ``edges`` (``sources[e]``: the state edge ``e`` reads)."""
    key = (tuple(sources), tuple(map(id, edges)))
    cell = _CELLS.get(edges)
    if cell is None or cell.key != key:
        blocks = tuple((s, tuple(e for e, src in enumerate(sources) if src == s)) for s in sorted(set(sources)))
        if not all(_block_batchable([edges[e] for e in idx]) for _, idx in blocks):
            blocks = None
        cell = _CELLS[edges] = CellBlocks(key, blocks)
    return cell


def cached_plan(cell, edges, source, idx, arch, arch_key):
    """The plan of block ``source`` under ``arch`` (``arch_key``: its mask and options, made once per cell call),
    built once."""
    key = (source, *arch_key)
    plan = cell.plans.get(key)
    if plan is None:
        if len(cell.plans) >= _MAX_PLANS:
            cell.plans.clear()
        mask = None if arch.mask is None else arch.mask[list(idx)]
        block = [edges[e] for e in idx]
        plan = cell.plans[key] = make_block_plan(block, idx, mask, arch.straight_through, arch.aux is not None)
    return plan


# ---- the block's parameters, stacked per family -------------------------------------------------------------------


def stacked_params(plan, params):
    """Per family, per parameter slot: the rows' copies of that parameter concatenated along dim 0 (a slot's
    tensors are consecutive in ``params`` and have one shape). Without autograd: views of one concatenation of all
    of them (one cat). Under autograd (a block that keeps its intermediates): one cat per slot, whose backward is a
    split; each view of the one cat would send back a zero-filled gradient the size of all the parameters."""
    if torch.is_grad_enabled():
        out, i = [], 0
        for f in plan.families:
            n = len(f.rows)
            out.append([torch.cat(params[i + s * n : i + (s + 1) * n]) for s in range(f.slots)])
            i += f.slots * n
        return out
    flat = torch.cat([p.reshape(-1) for p in params]) if params else None
    out, i, start = [], 0, 0
    for f in plan.families:
        n = len(f.rows)
        slots = []
        for s in range(f.slots):
            shape = params[i + s * n].shape
            numel = n * math.prod(shape)
            slots.append(flat[start : start + numel].view(n * shape[0], *shape[1:]))
            start += numel
        out.append(slots)
        i += f.slots * n
    return out
