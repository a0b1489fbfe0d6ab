"""Search strategies, built by name; every module here registers its strategy on import."""

from .._autoload import import_submodules
from .base import StepContext, Strategy, build_strategy, known_strategies, register_strategy, strategy_class
from .darts import Darts

import_submodules(__name__, __path__)

__all__ = [
    "Darts",
    "StepContext",
    "Strategy",
    "build_strategy",
    "known_strategies",
    "register_strategy",
    "strategy_class",
]
