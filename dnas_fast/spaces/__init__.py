"""Search spaces, built by name, each in its family's folder (``spaces/<family>/``: supernet, evaluation network,
genotype codec, training defaults); every module here registers its spaces and family on import."""

from .._autoload import import_submodules
from .base import SearchSpace, build_space, known_spaces, register_space, space_class
from .darts import DartsSpace
from .family import SpaceFamily, register_family, space_families, space_family
from .nb201 import NB201Space

import_submodules(__name__, __path__)

__all__ = [
    "DartsSpace", "NB201Space", "SearchSpace", "SpaceFamily", "build_space", "known_spaces", "register_family",
    "register_space", "space_class", "space_families", "space_family",
]  # fmt: skip
