"""Triton kernels of dnas_fast's fused primitives, installed as ``dnas_fast.triton_kernels`` (the folder sits at
the repository top level; a top-level ``triton_kernels`` module is Triton's own package).

``from dnas_fast import triton_kernels`` works without triton: then ``available`` is False and using a launcher
raises an ImportError that names the missing dependency. For triton's CPU interpreter (tests), set
``TRITON_INTERPRET=1`` before the first import of triton or of this package.

Example::

    from dnas_fast import triton_kernels
    if triton_kernels.available(x.device):
        out = triton_kernels.pool_combine(x, 1, coef, w_skip)
"""

import os

import torch

__all__ = ["available", "pool_stats", "pool_combine", "pool_grad_stats", "pool_combine_backward"]

try:
    # Binds the launcher pool_combine over the submodule of the same name (still in sys.modules).
    from .pool_combine import pool_combine, pool_combine_backward, pool_grad_stats, pool_stats
except ImportError as error:
    if (error.name or "").split(".")[0] != "triton":  # only a missing or broken triton means "not available"
        raise
    _IMPORT_ERROR = error


def available(device) -> bool:
    """True if the kernels can run on ``device``: triton is importable and the device is CUDA, or the device is
    the CPU and ``TRITON_INTERPRET=1`` (triton's interpreter, for tests)."""
    if "_IMPORT_ERROR" in globals():
        return False
    device_type = torch.device(device).type
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on")  # triton's own parsing
    return device_type == "cuda" or (device_type == "cpu" and interpret)


def __getattr__(name):
    if name in __all__ and "_IMPORT_ERROR" in globals():
        raise ImportError(f"dnas_fast.triton_kernels.{name} needs triton, which failed to import: {_IMPORT_ERROR}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
