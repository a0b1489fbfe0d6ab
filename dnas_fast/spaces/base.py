"""SearchSpace: a supernet built only from MixedEdges. It never knows which strategy drives it."""

from torch import nn

from ..arch import ArchWeights, EdgeGroup, check_arch
from ..registry import Registry

_SPACES: Registry[type] = Registry("search space", "spaces")


def register_space(cls):
    return _SPACES.add(cls.name, cls)


def known_spaces() -> list[str]:
    return _SPACES.names()


def space_class(name: str) -> type:
    return _SPACES[name]


def build_space(name: str, **config) -> "SearchSpace":
    return _SPACES[name](**config)


class SearchSpace(nn.Module):
    """Subclasses set ``name``, store their constructor arguments in ``self.config`` (so a checkpoint can
    rebuild them) and implement ``arch_spec``, ``forward(x, arch)`` and ``derive(scores)``."""

    name: str = ""
    config: dict

    def arch_spec(self) -> dict[str, EdgeGroup]:
        raise NotImplementedError

    def forward(self, x, arch: dict[str, ArchWeights]):
        raise NotImplementedError

    def derive(self, scores: dict):
        """The discrete architecture from per-group op strengths ``{group: Tensor[E, K]}``."""
        raise NotImplementedError

    def check(self, x, arch):
        if "_checked_spec" not in self.__dict__:  # the spec is static; rebuilding it on every forward costs
            self._checked_spec = self.arch_spec()
        check_arch(arch, self._checked_spec)
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"{self.name} expects input [N, {self.config['in_channels']}, H, W], got {list(x.shape)}")

    def edges(self):
        """All MixedEdges (for counting active ops, backends, benchmarks)."""
        from ..mixed_edge import MixedEdge

        return [m for m in self.modules() if isinstance(m, MixedEdge)]
