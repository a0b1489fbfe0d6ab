"""Candidate ops, built by name from one registry."""

from . import darts as _darts  # noqa: F401  (registers the DARTS primitives)
from . import nb201 as _nb201  # noqa: F401  (registers the NAS-Bench-201 ops)
from .darts import DARTS_OPS
from .nb201 import NB201_OPS
from .registry import build_op, check_op_names, known_ops, register_op

__all__ = ["DARTS_OPS", "NB201_OPS", "build_op", "check_op_names", "known_ops", "register_op"]
