"""What a strategy hands a search space each step, and what a space tells a strategy about itself."""

from dataclasses import dataclass

import torch


@dataclass
class EdgeGroup:
    """A set of edges sharing one architecture-parameter matrix ``Tensor[num_edges, K]``.

    ``node_of_edge[e]`` is the node that edge ``e`` feeds (PC-DARTS edge normalisation, path depth);
    ``source_of_edge[e]`` the node it reads (0 and 1 are the cell inputs in a DARTS cell).
    ``allowed`` (bool ``[num_edges, K]``) restricts edges to subsets of ``op_names`` (R-DARTS S1).
    """

    op_names: list[str]
    node_of_edge: list[int]
    source_of_edge: list[int]
    allowed: torch.Tensor | None = None

    @property
    def num_edges(self) -> int:
        return len(self.node_of_edge)


@dataclass
class ArchWeights:
    """Per-step edge weights of one group.

    weights (Tensor[E, K]): relaxed op weights (on the model's device).
    mask (Tensor[E, K] bool, CPU, optional): ops that run; others are skipped entirely.
    aux (Tensor[] optional): DARTS- auxiliary skip weight beta, shared by all edges.
    straight_through: inactive ops still pass a gradient to their weight (GDAS-style).
    edge_scale (Tensor[E] optional): a factor on each edge's whole output, bypassed channels and aux skip
        included (PC-DARTS edge normalisation: ``s = sum_e beta_e * MixedOp_e(h_e)``).
    drop_path: probability of dropping each edge's whole output per example in training (SNAS search; DARTS
        cells only), 0 = off.
    """

    weights: torch.Tensor
    mask: torch.Tensor | None = None
    aux: torch.Tensor | None = None
    straight_through: bool = False
    edge_scale: torch.Tensor | None = None
    drop_path: float = 0.0

    def edge_args(self, e: int) -> tuple:
        mask = None if self.mask is None else self.mask[e]
        scale = None if self.edge_scale is None else self.edge_scale[e]
        return self.weights[e], mask, self.aux, self.straight_through, scale


def check_arch(arch: dict, spec: dict[str, EdgeGroup]) -> None:
    """Clear error when a strategy's weights do not fit a space."""
    if set(arch) != set(spec):
        raise ValueError(f"arch groups {sorted(arch)} do not match the space's groups {sorted(spec)}")
    for name, group in spec.items():
        w = arch[name].weights
        expected = (group.num_edges, len(group.op_names))
        if tuple(w.shape) != expected:
            raise ValueError(f"arch[{name!r}].weights must have shape {list(expected)}, got {list(w.shape)}")
