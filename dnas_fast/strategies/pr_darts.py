"""PR-DARTS (Zhou, Xiong, Socher & Hoi, "Theory-Inspired Path-Regularized Differential Network Architecture
Search", NeurIPS 2020).

What the paper changes, with the authors' defaults (salesforce/PR-DARTS ``PRDARTS_search``):
- a stochastic binary gate per op from the stretched hard-concrete relaxation (Louizos et al.):
  ``s = sigmoid((alpha + log u - log(1 - u)) / tau)``, ``g = clamp(s * (zeta - gamma) + gamma, 0, 1)`` with
  ``(gamma, zeta) = (-0.1, 1.1)`` and ``tau`` annealed linearly 10 -> 0.1 over the epochs; the ``top_k`` = 2
  largest gates of an edge are opened (hard 1, straight-through gradient), the rest closed; a gate clamped to
  0 is closed too. Closed ops are not run (MixedEdge mask, one host copy per step).
- group-structured sparsity on the gate activation probabilities ``P(g > 0) = sigmoid(alpha - tau
  log(-gamma / zeta))``: skip group, pooling group and the other ops, each a mean over edges and groups,
  hinged at ``group_threshold`` = 0.2, weights ``lambda_skip`` = 1.0 and ``lambda_nonskip`` = 0.5 (pooling and
  other ops), so skip connections do not win by unfair competition;
- path-depth regularisation: minus ``lambda_path`` = 0.5 times the product, over the chain of edges
  ``node_i <- node_{i-1}`` (the deepest path through the cell), of the mean activation probability of the
  parametric ops; all times ``regular_lambda`` = 0.5, added to the architecture loss only.
Regulariser means run over all ops of the group (the authors' code restricts them to the sampled ops).
"""

import math

import torch
import torch.nn.functional as F

from ..arch import ArchWeights
from .base import masks_to_cpu, register_strategy, top_k_mask
from .darts import Darts
from .schedules import linear_anneal


@register_strategy
class PrDarts(Darts):
    name = "pr-darts"

    def __init__(
        self,
        tau_max: float = 10.0,
        tau_min: float = 0.1,
        stretch=(-0.1, 1.1),
        top_k: int = 2,
        regular_lambda: float = 0.5,
        lambda_skip: float = 1.0,
        lambda_nonskip: float = 0.5,
        lambda_path: float = 0.5,
        group_threshold: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        gamma, zeta = stretch
        if not gamma < 0 < 1 < zeta:
            raise ValueError(f"stretch (gamma, zeta) must satisfy gamma < 0 and zeta > 1, got {stretch}")
        self.tau_max, self.tau_min, self.gamma, self.zeta, self.top_k = tau_max, tau_min, gamma, zeta, top_k
        self.regular_lambda, self.group_threshold = regular_lambda, group_threshold
        self.lambda_skip, self.lambda_nonskip, self.lambda_path = lambda_skip, lambda_nonskip, lambda_path

    def tau(self) -> float:
        return linear_anneal(self.tau_max, self.tau_min, self.epoch, self.num_epochs)

    # ---- gates -------------------------------------------------------------------------------------
    def gates(self, group: str, noise: bool) -> torch.Tensor:
        """Stretched, clamped gates ``Tensor[E, K]`` in [0, 1] (noise-free: the gates' median)."""
        alpha = self.alphas[group]
        if noise:
            u = torch.rand_like(alpha)
            alpha = alpha + u.log() - (-u).log1p()
        g = (torch.sigmoid(alpha / self.tau()) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)
        allowed = self.allowed(group)
        return g if allowed is None else g * allowed

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        gates = {g: self.gates(g, noise=phase != "eval") for g in self.spec}
        open_ = {}
        for g, z in gates.items():
            open_[g] = top_k_mask(z, self.top_k) & (z > 0)
        masks = masks_to_cpu(open_)
        return {
            g: ArchWeights(open_[g].to(z.dtype) - z.detach() + z, mask=masks[g], straight_through=True)
            for g, z in gates.items()
        }

    # ---- regularisers ------------------------------------------------------------------------------
    def activation_probability(self, group: str) -> torch.Tensor:
        """``P(gate > 0) = sigmoid(alpha - tau * log(-gamma / zeta))``, Tensor[E, K]."""
        return torch.sigmoid(self.alphas[group] - self.tau() * math.log(-self.gamma / self.zeta))

    def op_groups(self, group: str) -> dict[str, torch.Tensor]:
        """Bool ``[K]`` per op group: skip, pooling, nonskip (everything else), parametric (nonskip minus none)."""
        names = self.spec[group].op_names
        skip = torch.tensor([n == "skip_connect" for n in names])
        pool = torch.tensor(["pool" in n for n in names])
        nonskip = ~skip & ~pool
        return {
            "skip": skip,
            "pool": pool,
            "nonskip": nonskip,
            "parametric": nonskip & torch.tensor([n != "none" for n in names]),
        }

    def regularizer_terms(self) -> dict[str, torch.Tensor]:
        """Group activations (mean over edges, then over edge groups) and the path activation."""
        terms = {"skip": 0.0, "pool": 0.0, "nonskip": 0.0, "path": 0.0}
        for g, spec in self.spec.items():
            P = self.activation_probability(g)
            allowed = self.allowed(g)
            allowed = torch.ones_like(P, dtype=torch.bool) if allowed is None else allowed
            for name, cols in self.op_groups(g).items():
                sel = allowed & cols.to(P.device)
                if name != "parametric" and bool(sel.any()):
                    terms[name] = terms[name] + (P * sel).sum() / sel.sum() / len(self.spec)
            chain = [e for e, (n, s) in enumerate(zip(spec.node_of_edge, spec.source_of_edge)) if s == n - 1]
            sel = (allowed & self.op_groups(g)["parametric"].to(P.device))[chain]
            per_edge = (P[chain] * sel).sum(-1) / sel.sum(-1).clamp_min(1)
            terms["path"] = terms["path"] + per_edge.prod() / len(self.spec)
        return terms

    def regularizer(self) -> torch.Tensor:
        t = self.regularizer_terms()
        hinge = lambda a: F.relu(torch.as_tensor(a) - self.group_threshold)  # noqa: E731
        return (
            self.lambda_skip * hinge(t["skip"])
            + self.lambda_nonskip * (hinge(t["nonskip"]) + hinge(t["pool"]))
            - self.lambda_path * t["path"]
        )

    def extra_loss(self, arch, phase):
        return self.regular_lambda * self.regularizer() if phase == "arch" else None

    def epoch_log(self) -> dict:
        with torch.no_grad():
            reg = float(self.regularizer())
        return {**super().epoch_log(), "tau": self.tau(), "regularizer": reg}
