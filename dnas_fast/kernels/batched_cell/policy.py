"""Keep or recompute: whether a block keeps autograd's intermediates or recomputes them in its backward.

A block whose input has fewer than ``RECOMPUTE_MIN_NUMEL`` elements runs its forward under autograd and keeps the
intermediates: that small, the recompute's extra calls cost more time than the memory they save. Larger blocks run
``block.BlockFunction`` (saves x, the weights and parameter references; recomputes in the backward); the choice
is made per call by ``block.run_block``. The crossover was measured on CPU: bench/results/notes.md (2026-12-03,
"Third pass") and bench/results/batched-cpu-20261203-keep.*."""

import contextlib
import contextvars

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


def keeps_intermediates(x) -> bool:
    """A block reading ``x`` runs under autograd and keeps its intermediates (else it recomputes them)."""
    return x.numel() < _MIN_NUMEL.get()
