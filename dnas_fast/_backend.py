"""One backend selector for MixedEdge.

Rule for ``auto``: among the registered fused backends, the first (in registration priority) that is
available on the input's device and supports the edge's configuration; otherwise ``reference``.
``DNAS_FAST_BACKEND=<name>`` forces one backend for every edge (for tests and benchmarks); forcing a
backend that is unavailable raises instead of silently falling back.
"""

import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .registry import Registry

ENV_VAR = "DNAS_FAST_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    forward: Callable  # forward(edge, x, weights, mask, aux_weight, straight_through) -> Tensor
    available: Callable[[torch.device], bool]  # usable on this device at all
    supports: Callable  # supports(edge) -> bool: this edge's op set / options are implemented
    priority: int = 0  # higher wins under ``auto``
    auto_on: Callable[[torch.device], bool] = lambda device: True  # where ``auto`` may pick it (measured there)


_BACKENDS: Registry[Backend] = Registry("backend")
# edge -> ((requested name, device), backend): resolving runs on every edge of every forward, so it is done once
# per edge, device and env override (and again after a backend registers)
_RESOLVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ANNOUNCED: set = set()
log = logging.getLogger("dnas_fast")


def register_backend(backend: Backend) -> None:
    _BACKENDS.add(backend.name, backend)
    _RESOLVED.clear()


def known_backends() -> list[str]:
    return ["auto", *_BACKENDS.names()]


def _by_priority(device: torch.device) -> list[Backend]:
    """The backends that run on ``device``, highest ``auto`` priority first (ties: registration order)."""
    _load_optional_backends()
    return sorted((b for b in _BACKENDS if b.available(device)), key=lambda b: -b.priority)


def available_backends(device: torch.device | str) -> list[str]:
    """The registered backends that run on ``device`` (highest ``auto`` priority first)."""
    return [b.name for b in _by_priority(torch.device(device))]


def auto_choice(device: torch.device | str) -> str:
    """The backend ``auto`` picks on ``device`` for an edge that every backend supports (benchmarks' "fused")."""
    device = torch.device(device)
    return next(b.name for b in _by_priority(device) if b.auto_on(device))


def _load_optional_backends() -> None:
    # Fused backends register themselves on import; a missing extension or triton just leaves them out.
    from . import kernels  # noqa: F401


def resolve_backend(requested: str | None, device: torch.device, edge) -> Backend:
    """The backend that runs ``edge`` on ``device``: env override > ``requested`` > ``auto``."""
    name = os.environ.get(ENV_VAR) or requested or "auto"
    key = (name, device)
    cached = _RESOLVED.get(edge)
    if cached is not None and cached[0] == key:
        return cached[1]
    backend = _resolve(name, torch.device(device), edge)
    _RESOLVED[edge] = (key, backend)
    return backend


def _resolve(name: str, device: torch.device, edge) -> Backend:
    if name == "auto":
        backend = next(b for b in _by_priority(device) if b.auto_on(device) and b.supports(edge))
        _announce(backend, device)
        return backend
    _load_optional_backends()
    backend = _BACKENDS[name]
    if not backend.available(device):
        raise RuntimeError(f"backend {name!r} was requested but is not available on device {device}")
    if not backend.supports(edge):
        raise RuntimeError(f"backend {name!r} does not support this edge ({edge.extra_repr()})")
    return backend


def _announce(backend: Backend, device: torch.device) -> None:
    """Say once per device type which backend ``auto`` picked, and loudly when the compiled kernels are missing."""
    if device.type in _ANNOUNCED:
        return
    _ANNOUNCED.add(device.type)
    from .kernels import _ext

    if not _ext.load():
        log.warning(
            "dnas_fast._C not built (e.g. installed with build isolation, where torch cannot be imported): "
            "backend 'auto' uses %r on %s; rebuild with `pip install --no-build-isolation -e .`",
            backend.name, device.type,
        )  # fmt: skip
    else:
        log.info("backend 'auto' uses %r on %s", backend.name, device.type)
