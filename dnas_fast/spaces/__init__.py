"""Search spaces, built by name."""

from .base import SearchSpace, build_space, known_spaces, register_space
from .darts_cell import DartsSpace
from .nb201 import NB201Space

__all__ = ["DartsSpace", "NB201Space", "SearchSpace", "build_space", "known_spaces", "register_space"]
