"""Triton kernels of dnas_fast's fused primitives.

The launchers are imported lazily, so ``import triton_kernels`` works without triton (then ``available`` is
False) and the kernels are built on first use, under ``TRITON_INTERPRET=1`` if it is set by then.

Example::

    import triton_kernels
    if triton_kernels.available(x.device):
        out = triton_kernels.pool_combine(x, 1, coef, w_skip)
"""

import importlib
import os

import torch

__all__ = ["available", "pool_stats", "pool_combine", "pool_grad_stats", "pool_combine_backward"]

_LAUNCHERS = {name: "pool_combine" for name in __all__[1:]}


def available(device) -> bool:
    """True if the kernels can run on ``device``: triton is importable and the device is CUDA, or the device is
    the CPU and ``TRITON_INTERPRET=1`` (triton's interpreter, for tests)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    device_type = torch.device(device).type
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on")  # triton's own parsing
    return device_type == "cuda" or (device_type == "cpu" and interpret)


def __getattr__(name):
    if name not in _LAUNCHERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAUNCHERS[name]}")  # ImportError names triton if missing
    return getattr(module, name)
