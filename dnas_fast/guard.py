"""Divergence guard: a search or training run that goes non-finite stops instead of saving NaN state.

Every step adds a few device-side checks (``torch.isfinite`` of the loss, the gradient norm that clipping
computes anyway, the architecture parameters) into one small tensor holding the first bad step of each quantity.
Nothing is read back per step: the loop calls :meth:`DivergenceGuard.check` where it syncs anyway (progress
display, epoch end) and always before it writes a checkpoint or a genotype, so the last good files stay intact.

Example::

    guard = DivergenceGuard(device)
    for batch in loader:
        loss = step(batch)
        guard.watch("loss", loss)
        guard.step()
    guard.check(epoch)  # raises DivergedError naming the quantity, the epoch and the step
"""

import torch

QUANTITIES = ("loss", "gradient norm", "architecture parameters", "architecture loss")


class DivergedError(RuntimeError):
    """A run produced a non-finite loss, gradient norm or parameter; nothing was saved after it."""


class DivergenceGuard:
    def __init__(self, device):
        # first_bad[q] = the step at which quantity q was first non-finite, -1 while it never was
        self.first_bad = torch.full((len(QUANTITIES),), -1, dtype=torch.long, device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # device-side count: no host->device copy
        self.epoch_start = 0  # host count of steps before the current epoch, to name the step within it
        self.host_steps = 0  # the same count on the host, for step-based cadences

    def watch(self, quantity: str, value: torch.Tensor) -> None:
        """Record ``value`` (any shape) of ``quantity`` at the current step; no host sync."""
        q = QUANTITIES.index(quantity)
        bad = ~torch.isfinite(value.detach()).all()
        first = self.first_bad[q]
        self.first_bad[q] = torch.where(bad & (first < 0), self.steps, first)

    def watch_parameters(self, quantity: str, params) -> None:
        """One finiteness check over a few parameter tensors (their sums: NaN and inf survive a sum)."""
        params = list(params)
        if params:
            self.watch(quantity, torch.stack([p.detach().sum() for p in params]))

    def step(self) -> None:
        self.steps += 1
        self.host_steps += 1

    def start_epoch(self) -> None:
        self.epoch_start = self.host_steps

    def check(self, epoch: int) -> None:
        """Raise :class:`DivergedError` if anything went non-finite (one device->host copy)."""
        first_bad = self.first_bad.tolist()
        bad = [(step, q) for q, step in enumerate(first_bad) if step >= 0]
        if bad:
            step, q = min(bad)
            raise DivergedError(
                f"diverged: non-finite {QUANTITIES[q]} at step {step - self.epoch_start + 1} of epoch {epoch + 1} "
                f"(global step {step + 1}); stopped without saving, the last good checkpoint is kept"
            )


def _tensors(state, path=""):
    """(path, tensor) of every tensor in a nest of dicts, lists and tuples (a checkpoint's state)."""
    if torch.is_tensor(state):
        yield path, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(state, list | tuple):
        for i, value in enumerate(state):
            yield from _tensors(value, f"{path}[{i}]")


def check_state(state, where: str) -> None:
    """Raise :class:`DivergedError` naming the first non-finite floating-point tensor of ``state`` (weights,
    alphas, optimizer buffers, BN statistics: all a checkpoint holds), so no file is ever written with one."""
    for path, tensor in _tensors(state):
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            raise DivergedError(
                f"diverged: non-finite {path} {where}; stopped without saving, the last good checkpoint is kept"
            )


__all__ = ["DivergedError", "DivergenceGuard", "check_state"]
