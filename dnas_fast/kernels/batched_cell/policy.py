"""Keep or recompute: whether a block keeps autograd's intermediates or recomputes them in its backward.

A block whose input has fewer than ``RECOMPUTE_MIN_NUMEL`` elements runs its forward under autograd and keeps the
intermediates: that small, the recompute's extra calls cost more time than the memory they save. Larger blocks run
``BlockFunction`` (saves x, the weights and parameter references; recomputes in the backward). The crossover was
measured on CPU: bench/results/notes.md ("Third pass") and bench/results/batched-cpu-20261203-keep.*."""

import contextlib
import contextvars

from . import block
from .plan import stacked_params

RECOMPUTE_MIN_NUMEL = 32768  # the process default, in elements of the block input
_MIN_NUMEL: contextvars.ContextVar = contextvars.ContextVar("recompute_min_numel", default=RECOMPUTE_MIN_NUMEL)


def recompute_threshold() -> int:
    """The input size (elements) from which blocks recompute here and now."""
    return _MIN_NUMEL.get()


@contextlib.contextmanager
def recompute_min_numel(n: int):
    """Inside, blocks keep their intermediates below ``n`` input elements instead (benchmarks and tests compare
    the paths: 0 recomputes every block, as at search sizes; a huge ``n`` keeps every one)."""
    token = _MIN_NUMEL.set(n)
    try:
        yield
    finally:
        _MIN_NUMEL.reset(token)


def run_block(plan, x, weights, aux_weight, params):
    """The block's output [N, E, C_out, H', W']: recomputed in the backward (``BlockFunction``) unless ``x`` is
    small, then under autograd like any module."""
    if x.numel() < _MIN_NUMEL.get():
        return block.block_forward(plan, x, weights, aux_weight, stacked_params(plan, params))
    return block.BlockFunction.apply(plan, x, weights, aux_weight, *params)
