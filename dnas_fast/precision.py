"""Mixed precision for the search: autocast around the network forward, fp32 everywhere else.

Under ``bf16`` / ``fp16`` the forward (and so the backward) runs in ``torch.autocast``; the weights, alphas,
optimizer states and batch-norm statistics stay float32 (autocast casts copies per op). ``fp16`` also scales
the losses with one ``torch.amp.GradScaler`` per update (weights, alphas), so small gradients do not flush to zero
and a step with non-finite gradients is skipped and the scale lowered.

Example::

    precision = Precision("bf16", torch.device("cpu"))
    with precision.autocast():
        loss = criterion(model(x), y)
    precision.scale(loss, "weights").backward()
    precision.unscale_("weights", optimizer)  # before gradient clipping
    precision.step("weights", optimizer)
"""

import functools

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ROLES = ("weights", "arch")


class Precision:
    """Autocast context and gradient scalers of one search; ``fp32`` makes every method a no-op."""

    def __init__(self, name: str = "fp32", device: torch.device | str = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}")
        self.name, self.dtype = name, PRECISIONS[name]
        self.device_type = torch.device(device).type
        enabled = name == "fp16"
        self.scalers = {role: torch.amp.GradScaler(self.device_type, enabled=enabled) for role in ROLES}

    def autocast(self, enabled: bool = True):
        """The forward's autocast; ``enabled=False``: fp32 (for differences finer than bf16's rounding)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=enabled and self.dtype is not None)

    def scale(self, loss: torch.Tensor, role: str) -> torch.Tensor:
        """``loss`` times the current loss scale of ``role`` (``weights`` or ``arch``); unchanged unless fp16."""
        return self.scalers[role].scale(loss)

    def unscaled(self, role: str, grads):
        """Gradients of a ``scale``-d loss divided by the scale, for gradients that are used rather than stepped
        (the unrolled weights of second-order DARTS). A sequence of tensors or None."""
        scaler = self.scalers[role]
        if not scaler.is_enabled():
            return grads
        device = next(g.device for g in grads if g is not None)
        inv = scaler.scale(torch.ones((), device=device)).reciprocal()
        return [None if g is None else g * inv for g in grads]

    def unscale_(self, role: str, *optimizers) -> None:
        """Divide the gradients held by ``optimizers`` by the loss scale (call before clipping them)."""
        for optimizer in optimizers:
            self.scalers[role].unscale_(optimizer)

    def step(self, role: str, *optimizers) -> None:
        """``optimizer.step()`` of each, skipped under fp16 when a gradient is not finite; then adapt the scale."""
        scaler = self.scalers[role]
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> dict:
        return {role: s.state_dict() for role, s in self.scalers.items()}

    def load_state_dict(self, state: dict) -> None:
        for role, s in self.scalers.items():
            if state.get(role):
                s.load_state_dict(state[role])


def autocast_state(device_type: str) -> tuple:
    """``(device_type, enabled, dtype)`` of the autocast in force, for :func:`restore_autocast` (a recomputing
    backward must run its ops in the dtypes of the forward)."""
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def restore_autocast(state: tuple):
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def recomputing_backward(what: str):
    """Decorator of the ``backward(ctx, g)`` of a Function that recomputes its forward (the fused edge, a batched
    block): runs it under the forward's autocast (``ctx.autocast``, from :func:`autocast_state`), so the
    recomputed ops run in the forward's dtypes, and refuses double backward with a clear error naming ``what``."""

    def wrap(backward):
        @functools.wraps(backward)
        def run(ctx, g):
            with restore_autocast(ctx.autocast):
                if torch.is_grad_enabled():
                    raise RuntimeError(
                        f"the {what} backward is not differentiable (create_graph=True / double backward); use "
                        "backend='reference' for higher-order gradients (second-order DARTS uses finite differences)"
                    )
                return backward(ctx, g)

        return run

    return wrap
