"""Checkpoints for long epochs: a step- or time-based cadence, and SIGTERM / SIGINT turned into a checkpoint at
the next step boundary, so a preempted job (a cloud GPU taken back, a scheduler's time limit) resumes exactly
where it stopped with ``--resume``.

Example::

    cadence = CheckpointCadence.parse("10m")      # or "500" (steps)
    with PreemptionSignals() as signals:
        for step in steps:
            ...
            if signals.requested or cadence.due(step + 1):
                save()
            if signals.requested:
                raise Preempted(...)
"""

import signal
import threading
import time

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" -- the run is resumable, not failed


class Preempted(RuntimeError):
    """The run stopped on SIGTERM / SIGINT after writing a checkpoint; resume it with ``--resume``."""


class CheckpointCadence:
    """Write a mid-epoch checkpoint every ``steps`` steps or every ``seconds`` seconds (host clock only: no sync)."""

    def __init__(self, steps: int | None = None, seconds: float | None = None):
        self.steps, self.seconds = steps, seconds
        self.last = time.monotonic()

    @classmethod
    def parse(cls, every) -> "CheckpointCadence":
        """``None`` (only at epoch ends), an int or ``"N"`` (steps), or ``"Nm"`` / ``"Ns"`` (minutes / seconds)."""
        if every is None:
            return cls()
        text = str(every).strip()
        try:
            if text[-1:] in ("m", "s"):
                amount = float(text[:-1])
                if amount > 0:
                    return cls(seconds=amount * (60 if text[-1] == "m" else 1))
            elif int(text) > 0:
                return cls(steps=int(text))
        except ValueError:
            pass
        raise ValueError(f"checkpoint_every must be a number of steps (e.g. 500) or minutes (e.g. 10m), got {every!r}")

    def due(self, global_step: int) -> bool:
        if self.steps is not None:
            return global_step % self.steps == 0
        return self.seconds is not None and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()


class PreemptionSignals:
    """While active, SIGTERM and the first SIGINT only set :attr:`requested` (a second SIGINT interrupts at once).
    Installs nothing outside the main thread, where Python cannot receive signals."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C is the user insisting: the default KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def agreed(self, world_size: int = 1, device=None) -> bool:
        """Whether a signal arrived here or, under torchrun, on any rank (one all-reduce: every rank calls it at
        the same step), so every rank checkpoints and stops at the same step."""
        if world_size > 1:
            from . import distributed

            if distributed.any_rank(self.requested is not None, device):
                self.requested = self.requested or "a signal to another rank"
        return self.requested is not None

    def raise_if_requested(self, epoch: int, step_in_epoch: int, checkpoint_path) -> None:
        """:class:`Preempted` naming where the run stopped (``epoch`` epochs done, ``step_in_epoch`` steps into the
        next) and its checkpoint, if a signal arrived."""
        if self.requested:
            where = f"step {step_in_epoch} of epoch {epoch + 1}" if step_in_epoch else f"the end of epoch {epoch}"
            raise Preempted(
                f"stopped by {self.requested} at {where}; checkpoint written to {checkpoint_path}: continue with "
                "--resume"
            )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


__all__ = ["CheckpointCadence", "PREEMPTED_EXIT_CODE", "Preempted", "PreemptionSignals"]
