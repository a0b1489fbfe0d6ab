"""Per-epoch schedules shared by strategies. Each is a pure function of ``(epoch, num_epochs)`` so a resumed
search recomputes exactly the value it had (nothing to checkpoint)."""

import math

AUX_SKIP_SCHEDULES = ("linear", "cosine", "step")
STEP_LEVELS = 4  # the ``step`` schedule holds 1, 3/4, 1/2, 1/4 of beta0 for a quarter of the search each


def aux_skip_beta(schedule: str, epoch: int, num_epochs: int, beta0: float = 1.0) -> float:
    """DARTS- auxiliary skip weight at ``epoch`` of a decay over ``num_epochs`` epochs (Meituan-AutoML/DARTS-
    ``src/utils.py`` ``DecayScheduler``, ``T_max = T_stop = 50`` in ``src/search/args.py`` whatever the run's
    length; strategies pass their ``skip_beta_epochs``).

    linear: ``beta0 * (1 - e / E)``; cosine: ``beta0 * (1 + cos(pi * e / E)) / 2``; step (ours, not the
    authors'): ``beta0`` times a staircase of ``STEP_LEVELS`` levels. All reach 0 at ``e = E`` and stay there.
    """
    if schedule not in AUX_SKIP_SCHEDULES:
        raise ValueError(f"unknown aux_skip schedule {schedule!r}; known: {', '.join(AUX_SKIP_SCHEDULES)}")
    progress = min(max(epoch / num_epochs, 0.0), 1.0)
    if schedule == "linear":
        return beta0 * (1.0 - progress)
    if schedule == "cosine":
        return beta0 * (1.0 + math.cos(math.pi * progress)) / 2.0
    return beta0 * (1.0 - math.floor(STEP_LEVELS * progress) / STEP_LEVELS)


def linear_anneal(start: float, end: float, epoch: int, num_epochs: int) -> float:
    """``start -> end`` linearly over epochs ``0 .. E-1`` (PR-DARTS' tau schedule: ``e / (E - 1)``)."""
    if num_epochs <= 1:
        return end
    return start - (start - end) * min(epoch, num_epochs - 1) / (num_epochs - 1)
