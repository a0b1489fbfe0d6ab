"""Candidate ops, built by name from one registry; every module here registers its ops on import."""

from .._autoload import import_submodules
from .darts import DARTS_OPS
from .nb201 import NB201_OPS
from .registry import build_op, check_op_names, known_ops, register_op

import_submodules(__name__, __path__)

__all__ = ["DARTS_OPS", "NB201_OPS", "build_op", "check_op_names", "known_ops", "register_op"]
