"""dnas_fast: a lean engine for differentiable neural architecture search."""

from ._backend import use_backend
from .arch import ArchWeights, EdgeGroup
from .data import SearchData, build_search_data, known_datasets
from .genotype import Genotype
from .mixed_edge import MixedEdge
from .ops import build_op, known_ops, register_op
from .spaces import DartsSpace, NB201Space, SearchSpace, build_space, known_spaces
from .strategies import Strategy, build_strategy, known_strategies

__version__ = "0.1.0"

__all__ = [
    "ArchWeights",
    "DartsSpace",
    "EdgeGroup",
    "Genotype",
    "MixedEdge",
    "NB201Space",
    "SearchData",
    "SearchSpace",
    "Strategy",
    "build_op",
    "build_search_data",
    "build_space",
    "build_strategy",
    "known_datasets",
    "known_ops",
    "known_spaces",
    "known_strategies",
    "register_op",
    "use_backend",
]
