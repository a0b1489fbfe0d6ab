"""Search strategies, built by name."""

from .base import StepContext, Strategy, build_strategy, known_strategies, register_strategy
from .darts import Darts

__all__ = ["Darts", "StepContext", "Strategy", "build_strategy", "known_strategies", "register_strategy"]
