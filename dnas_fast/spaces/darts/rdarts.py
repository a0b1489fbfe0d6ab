"""The R-DARTS search spaces S1-S4 (Zela, Elsken, Saikia, Marrakchi, Brox & Hutter, "Understanding and
Robustifying Differentiable Architecture Search", ICLR 2020), as named presets of the DARTS space with the
per-edge op lists of automl/RobustDARTS ``src/spaces.py`` (14 edges per cell, node-major order):

    darts-s1: a different pair of ops on every edge (the per-edge lists below)
    darts-s2: {sep_conv_3x3, skip_connect} on every edge
    darts-s3: {none, sep_conv_3x3, skip_connect} on every edge
    darts-s4: {sep_conv_3x3, noise} on every edge
"""

from ..base import register_space
from .supernet import DartsSpace

_S1_NORMAL = [
    ["skip_connect", "dil_conv_3x3"], ["skip_connect", "dil_conv_5x5"], ["skip_connect", "dil_conv_5x5"],
    ["skip_connect", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"], ["max_pool_3x3", "skip_connect"],
    ["skip_connect", "sep_conv_3x3"], ["skip_connect", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"],
    ["skip_connect", "sep_conv_3x3"], ["max_pool_3x3", "skip_connect"], ["skip_connect", "dil_conv_3x3"],
    ["dil_conv_3x3", "dil_conv_5x5"], ["dil_conv_3x3", "dil_conv_5x5"],
]  # fmt: skip
_S1_REDUCE = [
    ["max_pool_3x3", "avg_pool_3x3"], ["max_pool_3x3", "dil_conv_3x3"], ["max_pool_3x3", "avg_pool_3x3"],
    ["max_pool_3x3", "avg_pool_3x3"], ["skip_connect", "dil_conv_5x5"], ["max_pool_3x3", "avg_pool_3x3"],
    ["max_pool_3x3", "sep_conv_3x3"], ["skip_connect", "dil_conv_3x3"], ["skip_connect", "dil_conv_5x5"],
    ["max_pool_3x3", "avg_pool_3x3"], ["max_pool_3x3", "avg_pool_3x3"], ["skip_connect", "dil_conv_5x5"],
    ["skip_connect", "dil_conv_5x5"], ["skip_connect", "dil_conv_5x5"],
]  # fmt: skip


def _union(*lists):
    names = []
    for ops in (op for lst in lists for op in lst):
        names += [n for n in ops if n not in names]
    return names


class _RDartsPreset(DartsSpace):
    """A DARTS space whose ``op_names`` / ``allowed`` default to a preset (both still overridable)."""

    normal: list = []
    reduce: list = []

    def __init__(self, **config):
        if config.get("steps", 4) != 4:
            raise ValueError(f"{self.name} is defined for 4 intermediate nodes (14 edges), got steps={config['steps']}")
        config.setdefault("op_names", _union(self.normal, self.reduce))
        config.setdefault("allowed", {"normal": self.normal, "reduce": self.reduce})
        super().__init__(**config)


@register_space
class DartsS1(_RDartsPreset):
    name = "darts-s1"
    normal, reduce = _S1_NORMAL, _S1_REDUCE


@register_space
class DartsS2(_RDartsPreset):
    name = "darts-s2"
    normal = reduce = 14 * [["skip_connect", "sep_conv_3x3"]]


@register_space
class DartsS3(_RDartsPreset):
    name = "darts-s3"
    normal = reduce = 14 * [["none", "skip_connect", "sep_conv_3x3"]]


@register_space
class DartsS4(_RDartsPreset):
    name = "darts-s4"
    normal = reduce = 14 * [["noise", "sep_conv_3x3"]]
