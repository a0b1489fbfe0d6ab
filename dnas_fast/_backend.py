"""The one home of backend selection for MixedEdges and cells.

Rule for ``auto``: among the registered backends, the first (in ``auto`` priority) that is available on the
input's device, may be picked there (``auto_on``) and supports the edge's configuration; ``reference`` otherwise.

Override, strongest first: ``use_backend(name)`` (a context variable, for in-process use: tests, benchmarks, the
Hessian diagnostic), then ``DNAS_FAST_BACKEND=<name>``, read once at import as the process default, then the
edge's own ``backend`` argument. Forcing a backend that is unavailable raises instead of silently falling back.
Nothing here writes ``os.environ``.

Resolution is cached per edge (and per cell, for the cell executors) until the device, the override or the set of
registered backends changes; a forward reads one context variable per edge.

Example::

    with dnas_fast.use_backend("reference"):
        loss = model(x, arch).sum()  # every edge runs the naive per-op loop
"""

import contextlib
import contextvars
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .registry import Registry

ENV_VAR = "DNAS_FAST_BACKEND"
_OVERRIDE: contextvars.ContextVar = contextvars.ContextVar(ENV_VAR, default=os.environ.get(ENV_VAR) or None)


@dataclass(frozen=True)
class Backend:
    """A way to run an edge (``forward``) and, optionally, a whole cell at once (``cell_forward``).

    ``cell_forward(edges, states, arch, sources, path_scales)`` -> the cell's node states (``states`` + one per
    node) or None when it declines this call (the cell then runs edge by edge); only called in training mode
    when every edge of the cell resolves to this backend (``spaces.base.run_cell``)."""

    name: str
    forward: Callable  # forward(edge, x, weights, mask, aux_weight, straight_through) -> Tensor
    available: Callable[[torch.device], bool]  # usable on this device at all
    supports: Callable  # supports(edge) -> bool: this edge's op set / options are implemented
    priority: int = 0  # higher wins under ``auto``
    auto_on: Callable[[torch.device], bool] = lambda device: True  # where ``auto`` may pick it (measured there)
    cell_forward: Callable | None = None


_BACKENDS: Registry[Backend] = Registry("backend")
# module (edge or cell's edge list) -> (key, backend): resolving runs on every edge of every forward, so it is
# done once per module, device and override (and again after a backend registers)
_RESOLVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CELLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ANNOUNCED: set = set()
log = logging.getLogger("dnas_fast")


@contextlib.contextmanager
def use_backend(name: str | None):
    """Inside, every edge runs on backend ``name`` (``auto`` included); None lifts any override, the
    ``DNAS_FAST_BACKEND`` default too (benchmarks that compare backends by name)."""
    token = _OVERRIDE.set(name)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def override() -> str | None:
    """The backend forced on every edge here and now, or None."""
    return _OVERRIDE.get()


def register_backend(backend: Backend) -> None:
    _BACKENDS.add(backend.name, backend)
    _RESOLVED.clear()
    _CELLS.clear()


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
    """The backend that runs ``edge`` on ``device``: override > ``requested`` > ``auto``."""
    key = (_OVERRIDE.get(), requested, device)
    cached = _RESOLVED.get(edge)
    if cached is not None and cached[0] == key:
        return cached[1]
    backend = _resolve(key[0] or requested or "auto", torch.device(device), edge)
    _RESOLVED[edge] = (key, backend)
    return backend


def resolve_cell(edges, device: torch.device) -> Backend | None:
    """The backend that runs every edge of ``edges`` (a cell's ModuleList) when they all resolve to one that
    offers ``cell_forward``; else None. Cached per cell until the device, override or an edge's choice changes."""
    key = (_OVERRIDE.get(), device, *(e.backend for e in edges))
    cached = _CELLS.get(edges)
    if cached is not None and cached[0] == key:
        return cached[1]
    chosen = {b.name: b for b in (resolve_backend(e.backend, device, e) for e in edges)}
    backend = next(iter(chosen.values())) if len(chosen) == 1 else None
    if backend is not None and backend.cell_forward is None:
        backend = None
    _CELLS[edges] = (key, backend)
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
