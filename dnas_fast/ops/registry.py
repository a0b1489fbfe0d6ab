"""Op registry: candidate ops are built by name so spaces and strategies never import op classes.

A factory has the signature ``factory(C_in, C_out, stride, affine) -> nn.Module`` and must map
``Tensor[N, C_in, H, W]`` to ``Tensor[N, C_out, ceil(H / stride), ceil(W / stride)]``.
"""

from collections.abc import Callable

from torch import nn

from ..registry import Registry

OpFactory = Callable[[int, int, int, bool], nn.Module]

_OPS: Registry[OpFactory] = Registry("op")


def register_op(name: str, factory: OpFactory | None = None):
    """Register ``factory`` under ``name``; usable as a decorator. Re-registering a name is an error."""

    def add(fn: OpFactory) -> OpFactory:
        return _OPS.add(name, fn)

    return add(factory) if factory is not None else add


def known_ops() -> list[str]:
    return _OPS.names()


def check_op_names(names) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in _OPS]
    if unknown:
        raise ValueError(f"unknown op name(s) {unknown}; known ops: {', '.join(known_ops())}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate op names in {names}")
    if not names:
        raise ValueError("an edge needs at least one candidate op")
    return names


def build_op(name: str, C_in: int, C_out: int, stride: int, affine: bool = False) -> nn.Module:
    """Build op ``name``. Raises ValueError listing the known names if ``name`` is unknown."""
    check_op_names([name])
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return _OPS[name](C_in, C_out, stride, affine)
