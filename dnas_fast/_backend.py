"""One backend selector for MixedEdge.

Rule for ``auto``: among the registered fused backends, the first (in registration priority) that is
available on the input's device and supports the edge's configuration; otherwise ``reference``.
``DNAS_FAST_BACKEND=<name>`` forces one backend for every edge (for tests and benchmarks); forcing a
backend that is unavailable raises instead of silently falling back.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

ENV_VAR = "DNAS_FAST_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    forward: Callable  # forward(edge, x, weights, mask, aux_weight, straight_through) -> Tensor
    available: Callable[[torch.device], bool]  # usable on this device at all
    supports: Callable  # supports(edge) -> bool: this edge's op set / options are implemented
    priority: int = 0  # higher wins under ``auto``


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def known_backends() -> list[str]:
    return ["auto", *sorted(_BACKENDS)]


def _load_optional_backends() -> None:
    # Fused backends register themselves on import; a missing extension or triton just leaves them out.
    from . import kernels  # noqa: F401


def resolve_backend(requested: str | None, device: torch.device, edge) -> Backend:
    """The backend that runs ``edge`` on ``device``: env override > ``requested`` > ``auto``."""
    _load_optional_backends()
    name = os.environ.get(ENV_VAR) or requested or "auto"
    if name == "auto":
        usable = [b for b in _BACKENDS.values() if b.available(device) and b.supports(edge)]
        return max(usable, key=lambda b: b.priority)
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())}")
    backend = _BACKENDS[name]
    if not backend.available(device):
        raise RuntimeError(f"backend {name!r} was requested but is not available on device {device}")
    if not backend.supports(edge):
        raise RuntimeError(f"backend {name!r} does not support this edge ({edge.extra_repr()})")
    return backend
