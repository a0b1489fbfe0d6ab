"""SearchSpace: a supernet built only from MixedEdges. It never knows which strategy drives it."""

from torch import nn

from .._backend import resolve_cell
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


def run_cell(edges: nn.ModuleList, states: list, arch: ArchWeights, sources, training: bool, path_scales=None):
    """A cell's node states: ``states`` (its inputs) with one node appended per group of edges, node ``i`` the sum
    of the edges that feed it, each edge reading ``states[sources[e]]``. Edges are in target order and every node
    reads each state before it (DARTS, NB-201): the first ``len(states)`` edges feed the first node, and so on.

    In training, when every edge resolves to one backend that offers ``cell_forward`` (``batched``), that backend
    runs the whole cell; otherwise (or when it declines the call) each edge runs on its own backend.
    ``path_scales`` (Tensor[edges, N], optional): drop-path factors of each edge's output per example."""
    backend = resolve_cell(edges, states[0].device) if training else None
    if backend is not None and backend.cell_forward(edges, states, arch, sources, path_scales) is not None:
        return states
    offset = 0
    while offset < len(edges):
        n = len(states)
        states.append(sum(_edge(edges, offset + j, states[sources[offset + j]], arch, path_scales) for j in range(n)))
        offset += n
    return states


def _edge(edges, e, h, arch, path_scales):
    out = edges[e](h, *arch.edge_args(e))
    return out if path_scales is None else out * path_scales[e].view(-1, 1, 1, 1)
