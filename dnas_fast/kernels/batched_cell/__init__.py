"""Cell-level batched execution: every edge that reads one state runs each op family once for all of them.

A cell's edges are grouped into *blocks* by the state they read (DARTS: s0 and s1 feed 4 edges each, node 2 feeds 3,
node 3 feeds 2, node 4 one; NB-201: 3, 2, 1). For a block of ``E`` edges and one op family ``k`` active on ``n`` of
them:
    * conv ops (sep / dil conv, ReLU-conv-BN, FactorizedReduce) share one ``ReLU(x)``; the ``n`` edges' weights
      are concatenated at call time (so ``torch.func.functional_call`` works) into one grouped convolution per layer:
      a dense first conv reads ``ReLU(x)`` with ``n * C_out`` filters, a depthwise first conv reads ``ReLU(x)``
      repeated ``n`` times with ``groups = n * C``, every later conv has ``groups * n``; the output is edge-major,
      ``[N, n * C, H, W] = [N, n, C, H, W]``. One batch-norm call normalises the stacked channels (per-channel batch
      statistics are exactly the per-edge ones); running statistics go to each edge's own BN buffers (the BN
      kernel's batch statistics + ``_foreach_lerp_``), so state_dict keys and checkpoints are unchanged;
    * pools and skip are computed once per block (same input, same stride; their affine-free batch-stat BN gives the
      same numbers for every edge) and weighted per edge by one broadcast ``addcmul``;
    * the block returns ``[N, E, C_out, H', W']``, edge ``e`` feeding the block's ``e``-th target node; the cell
      adds blocks into one running node accumulator (one add per block).
Masks (a CPU tensor) decide on the host which edges each family runs for; PC-DARTS partial channels, the DARTS- aux
skip and straight-through are kept.

Memory: ``BlockFunction`` stores x, the block's weights and the concatenated op parameters; the backward recomputes
one family at a time (its intermediates freed before the next), like the fused per-edge path. The backward is not
differentiable (second-order DARTS uses finite differences through ``functional_call``, which works). A block whose
input has fewer than ``policy.RECOMPUTE_MIN_NUMEL`` elements runs its forward under autograd instead and keeps the
intermediates: that small, recomputing costs more time than it saves memory.

The ``batched`` backend's ``cell_forward`` (registered in ``kernels/backends.py``): ``spaces.base.run_cell`` calls it
in training mode when every edge of a cell resolves to ``batched``; a lone ``MixedEdge`` (``compat.MixedOp``) on
``batched`` runs the fused per-edge path.

Modules, in the order a call runs through them: ``plan`` (which cells batch, the host-side plan of a block call
and its cache), ``layout`` (the tensors' memory order), ``families`` (one op family of one block), ``block``
(``block_forward`` / ``block_backward`` and ``BlockFunction``), ``policy`` (keep or recompute), ``cell`` (the loop).
"""

from .block import BlockFunction
from .cell import cell_forward
from .policy import RECOMPUTE_MIN_NUMEL, recompute_min_numel, recompute_threshold

__all__ = ["RECOMPUTE_MIN_NUMEL", "BlockFunction", "cell_forward", "recompute_min_numel", "recompute_threshold"]
