"""SNAS (Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019).

What the paper changes, with the authors' defaults (SNAS-Series/SNAS-Series ``SNAS/train_search.py`` README
command ``--temp 1 --temp_min 0.03 --temp_annealing --resource_efficient --resource_lambda 1e-2 --log_penalty``):
- eq. 2-3: each edge's op choice is a Gumbel-softmax sample ``softmax((alpha + G) / lambda)`` drawn per step;
  ``hard=True`` gives a one-hot forward with the straight-through gradient.
- single-level: weights and alphas are updated from the same training loss (``bilevel = False``).
- temperature: the authors' linear annealing ``lambda_e = min + (lambda_0 - min) (1 - (e + 1) / E)``.
- Sec. 2.4 resource constraint: ``lambda_R * E_{Z~p}[C(Z)]``; C is linear in Z, so the expectation is
  ``sum_e sum_k p_ek c_ek`` (p = softmax(alpha)), per cell, averaged over the cells of a group; with
  ``log_penalty`` each edge contributes ``log(max(E[c_e], 1))`` (authors' ``log_resource_penalty``). Costs are
  parameters, FLOPs and MAC measured on the actual ops (:mod:`.costs`), averaged over the chosen ``resources``.
- ops whose sampled weight is exactly 0 are not run (MixedEdge mask, one host copy per step).
- derivation keeps the sampled child with its trained weights: :meth:`Snas.derive_subnet`.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights
from .base import Strategy, masks_to_cpu, register_strategy, top_k_mask
from .costs import RESOURCES, cost_tables, locate_edges


@register_strategy
class Snas(Strategy):
    name = "snas"
    bilevel = False
    loop_preset = {"epochs": 150}  # SNAS-Series SNAS/train_search.py line 31

    def __init__(
        self,
        temp: float = 1.0,
        temp_min: float = 0.03,
        hard: bool = False,
        resource_lambda: float = 1e-2,
        log_penalty: bool = True,
        resources=RESOURCES,
        init_std: float = 1e-2,
        **kwargs,
    ):
        super().__init__(init_std=init_std, **kwargs)  # authors: log_alpha ~ N(1, 0.01); the offset cancels
        unknown = set(resources) - set(RESOURCES)
        if unknown or not resources:
            raise ValueError(f"resources must be a non-empty subset of {RESOURCES}, got {resources}")
        self.temp0, self.temp_min, self.hard = temp, temp_min, hard
        self.resource_lambda, self.log_penalty, self.resources = resource_lambda, log_penalty, tuple(resources)
        self.costs: dict[str, torch.Tensor] | None = None  # per group Tensor[cells, E, K, R], measured lazily

    def temperature(self) -> float:
        progress = min((self.epoch + 1) / self.num_epochs, 1.0)
        return self.temp_min + (self.temp0 - self.temp_min) * (1.0 - progress)

    # ---- relaxation --------------------------------------------------------------------------------
    def sample(self, group: str) -> torch.Tensor:
        """One Gumbel-softmax sample ``Tensor[E, K]`` at the current temperature (eq. 3)."""
        logits = self.masked_logits(group, self.alphas[group])
        gumbel = -torch.empty_like(logits).exponential_().log()
        return F.softmax((logits + gumbel) / self.temperature(), dim=-1)

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        soft = {g: self.sample(g) for g in self.spec}
        if self.hard:
            chosen = {g: top_k_mask(y) for g, y in soft.items()}
            weights = {g: chosen[g].to(y.dtype) - y.detach() + y for g, y in soft.items()}
            masks = masks_to_cpu(chosen)
        else:
            weights = soft
            masks = masks_to_cpu({g: y != 0 for g, y in soft.items()})
        return {g: ArchWeights(weights[g], mask=masks[g], straight_through=self.hard) for g in self.spec}

    # ---- resource constraint -----------------------------------------------------------------------
    def loss(self, ctx, x, y, phase):
        if self.resource_lambda and self.costs is None:
            self.costs = self.measure_costs(ctx.module, x[:1])
        return super().loss(ctx, x, y, phase)

    def measure_costs(self, space, x: torch.Tensor) -> dict[str, torch.Tensor]:
        device, dtype = self.alphas[next(iter(self.spec))].device, self.alphas[next(iter(self.spec))].dtype
        return {g: t.to(device, dtype) for g, t in cost_tables(space, x, self.resources).items()}

    def resource_penalty(self) -> torch.Tensor:
        """``sum_groups mean_cells sum_edges E_p[cost]`` (or its log form), averaged over resources."""
        total = 0
        for group, table in self.costs.items():
            expected = torch.einsum("ek,cekr->cer", self.probabilities(group), table)  # [cells, E, R]
            per_edge = expected.clamp_min(1.0).log() if self.log_penalty else expected
            total = total + per_edge.sum(1).mean(0).mean()
        return total

    def extra_loss(self, arch, phase):
        if not self.resource_lambda or self.costs is None or phase == "eval":
            return None
        return self.resource_lambda * self.resource_penalty()

    def extra_log(self) -> dict:
        log = {"temperature": self.temperature()}
        if self.costs is not None:
            with torch.no_grad():
                log["resource_penalty"] = float(self.resource_penalty())
        return log

    # ---- derivation --------------------------------------------------------------------------------
    def derive_subnet(self, space, choice: dict[str, torch.Tensor] | None = None) -> "DerivedSubnet":
        """The discrete child network, inheriting the supernet's weights (no retraining).

        choice: per group ``Tensor[E]`` op indices (default: argmax of the alphas, 'none' included, as the
        authors' ``genotype_edge_all``). Unchosen op modules are dropped.
        """
        if choice is None:
            with torch.no_grad():
                choice = {g: self.masked_logits(g, self.alphas[g]).argmax(-1).cpu() for g in self.spec}
        return DerivedSubnet(space, choice)


class DerivedSubnet(nn.Module):
    """A deep copy of ``space`` fixed to one op per edge; ``forward(x)`` runs only the chosen ops, with weight 1.

    Example::

        child = strategy.derive_subnet(space)
        logits = child(x)  # x (Tensor[N, C, H, W])
    """

    def __init__(self, space, choice: dict[str, torch.Tensor]):
        super().__init__()
        self.space = copy.deepcopy(space)
        spec = self.space.arch_spec()
        param = next(self.space.parameters())
        self.masks = {}  # CPU bool [E, K] per group: the mask is fixed, so no host copy per forward
        for g, s in spec.items():
            idx = torch.as_tensor(choice[g]).cpu().long()
            if idx.shape != (s.num_edges,) or idx.min() < 0 or idx.max() >= len(s.op_names):
                raise ValueError(f"choice[{g!r}] must hold {s.num_edges} op indices < {len(s.op_names)}, got {idx}")
            one_hot = F.one_hot(idx, len(s.op_names))
            self.masks[g] = one_hot.bool()
            self.register_buffer(f"onehot_{g}", one_hot.to(param.device, param.dtype))
        x = torch.zeros(1, self.space.config["in_channels"], 16, 16, device=param.device, dtype=param.dtype)
        for site in locate_edges(self.space, x):
            keep = int(choice[site.group][site.index])
            for k in range(len(site.edge._ops)):
                if k != keep:
                    site.edge._ops[k] = nn.Identity()  # a parameter-free placeholder that the mask never runs
            site.edge.aux = None  # the DARTS- auxiliary path is gone at the end of the search

    def arch(self) -> dict[str, ArchWeights]:
        return {g: ArchWeights(getattr(self, f"onehot_{g}"), mask=m) for g, m in self.masks.items()}

    def forward(self, x):
        return self.space(x, self.arch())
