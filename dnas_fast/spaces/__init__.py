"""Search spaces, built by name; every module here registers its space on import."""

from .._autoload import import_submodules
from .base import SearchSpace, build_space, known_spaces, register_space, space_class
from .darts_cell import DartsSpace
from .nb201 import NB201Space

import_submodules(__name__, __path__)

__all__ = ["DartsSpace", "NB201Space", "SearchSpace", "build_space", "known_spaces", "register_space", "space_class"]
