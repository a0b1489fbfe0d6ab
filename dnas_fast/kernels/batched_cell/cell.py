"""The cell loop of the ``batched`` backend: a cell's blocks in order, into one running node accumulator."""

from ...shapes import memory_format_of
from .block import run_block
from .plan import cached_plan, cell_blocks


def cell_forward(edges, states: list, arch, sources, path_scales=None) -> list | None:
    """Run a cell's edges block by block: ``states`` with the cell's nodes appended, or None when this cell
    does not run by blocks (PC-DARTS edge scales, an op or option the blocks do not know).

    ``sources[e]``: the state edge ``e`` reads; edges are in target order and each block's targets are the cell's
    last nodes (DARTS, NB-201). ``path_scales`` (Tensor[edges, N], optional): drop-path factors of each edge's
    output per example. Called by ``spaces.base.run_cell`` in training mode when every edge is on ``batched``.
    """
    if arch.edge_scale is not None:  # PC-DARTS edge scales run per edge (the blocks do not scale their outputs)
        return None
    cell = cell_blocks(edges, sources)
    if cell.blocks is None:
        return None
    x0 = states[0]
    n_init = len(states)
    acc = None
    mask_bytes = None if arch.mask is None else arch.mask.cpu().numpy().tobytes()
    arch_key = (mask_bytes, arch.straight_through, arch.aux is not None)
    for s, idx in cell.blocks:
        plan = cached_plan(cell, edges, s, idx, arch, arch_key)
        rows = plan.on(plan.cell_rows, x0.device)
        out = run_block(plan, states[s], arch.weights.index_select(0, rows), arch.aux, plan.params())
        if path_scales is not None:  # out is [N, E, C, H, W]: one factor per example and edge
            scales = path_scales.index_select(0, rows).t()
            out = out * scales.reshape(out.shape[0], len(idx), 1, 1, 1).to(out.dtype)
        acc = out if acc is None else acc[:, acc.shape[1] - out.shape[1] :] + out
        if s + 1 >= n_init:
            # a copy: a view would keep the whole accumulator alive
            states.append(acc[:, 0].contiguous(memory_format=memory_format_of(states[s])))
    return states
