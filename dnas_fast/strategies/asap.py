"""ASAP (Noy, Nayman, Ridnik, Zamir, Doveh, Friedman, Giryes & Zelnik-Manor, "ASAP: Architecture Search, Anneal
and Prune", AISTATS 2020).

What the paper changes (Alg. 1), on top of first-order DARTS:
- annealed Gibbs-Boltzmann softmax ``softmax(alpha / T_t)`` with ``T_t = T0 * beta^t`` (t = epoch);
- progressive pruning, at the paper's cadence (Alg. 1: anneal, then prune, after every architecture step): an
  op whose weight falls below ``theta / K`` (K: the ops an edge started with) is pruned for good (``-inf``
  logit and MixedEdge mask, so it costs no compute any more); an edge's strongest op is never pruned; once
  every edge has one op left the search is over (the alphas freeze, the weights keep training).
- grace period as UniNAS's ASAP (cogsys-tuebingen/uninas ``uninas/methods/asap.py``, ``AsapSearchMethod.
  _on_epoch_start``: loader multiples ``(1, 0)`` while ``tau >= tau_grace``): no architecture step at all (so no
  pruning) while ``T_t >= tau_grace``; with the defaults that is epochs 0-9. UniNAS is the reference we follow:
  the authors published no search code.
Defaults: ``T0 = 1.6``, ``beta = 0.95``, ``theta = 0.4``, ``tau_grace = 1.0`` (UniNAS ``d1_asap.run_config`` and
``AsapStrategy``); its loop settings are DARTS's (50 epochs, batch 64, lr 0.025, wd 3e-4, Adam 3e-4 for alphas).
The pruned set is a registered buffer, so a resumed search continues bitwise.
Deviations: UniNAS prunes once per epoch start, we prune after every architecture step as the paper's
algorithm does; UniNAS's search also applies drop path 0.2, which is not part of ASAP and is left out.
"""

import torch
import torch.nn.functional as F

from ..arch import ArchWeights
from .base import masks_to_cpu, register_strategy, top_k_mask
from .darts import Darts


@register_strategy
class Asap(Darts):
    name = "asap"

    def __init__(self, T0: float = 1.6, beta: float = 0.95, theta: float = 0.4, tau_grace: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < beta <= 1 or T0 <= 0:
            raise ValueError(f"ASAP needs T0 > 0 and 0 < beta <= 1, got T0={T0}, beta={beta}")
        self.T0, self.beta, self.theta, self.tau_grace = T0, beta, theta, tau_grace
        self._cpu_active = None  # host copy of the active masks, refreshed once per prune (one sync per step)

    def setup(self, spec, device=None) -> None:
        super().setup(spec, device)
        for name, group in spec.items():
            self.register_buffer(
                f"pruned_{name}", torch.zeros(group.num_edges, len(group.op_names), dtype=torch.bool, device=device)
            )

    def temperature(self) -> float:
        return self.T0 * self.beta**self.epoch

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self._cpu_active = None  # the buffers may have been loaded from a checkpoint

    # ---- relaxation --------------------------------------------------------------------------------
    def active(self, group: str) -> torch.Tensor:
        """Bool ``[E, K]`` of ops still in the search (allowed and not pruned)."""
        active = ~getattr(self, f"pruned_{group}")
        allowed = self.allowed(group)
        return active if allowed is None else active & allowed

    def probabilities(self, group: str) -> torch.Tensor:
        logits = self.alphas[group].masked_fill(~self.active(group), float("-inf"))
        return F.softmax(logits / self.temperature(), dim=-1)

    def cpu_active(self) -> dict[str, torch.Tensor]:
        if self._cpu_active is None:
            self._cpu_active = masks_to_cpu({g: self.active(g) for g in self.spec})
        return self._cpu_active

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        masks = self.cpu_active()
        return {g: ArchWeights(self.probabilities(g), mask=masks[g]) for g in self.spec}

    # ---- annealing and pruning ---------------------------------------------------------------------
    @torch.no_grad()
    def prune(self) -> None:
        """Prune ops with ``p_k < theta / K`` (never an edge's strongest op), then refresh the host masks."""
        for g, group in self.spec.items():
            p = self.probabilities(g)
            below = p < self.theta / len(group.op_names)
            strongest = top_k_mask(p)
            pruned = getattr(self, f"pruned_{g}")
            pruned |= below & ~strongest & self.active(g)
        self._cpu_active = None
        self.cpu_active()

    def arch_step(self, ctx, train_batch, valid_batch) -> dict:
        out = super().arch_step(ctx, train_batch, valid_batch)
        self.prune()
        return out

    def in_grace(self) -> bool:
        """UniNAS's grace period: no architecture steps while the temperature is still ``>= tau_grace``."""
        return self.temperature() >= self.tau_grace

    def converged(self) -> bool:
        return all(bool((m.sum(-1) <= 1).all()) for m in self.cpu_active().values())

    def arch_frozen(self) -> bool:
        return super().arch_frozen() or self.in_grace() or self.converged()

    def extra_log(self) -> dict:
        masks = self.cpu_active()
        active = torch.cat([m.sum(-1) for m in masks.values()]).double()
        return {
            "temperature": self.temperature(),
            "pruned_ops": int(sum(int(getattr(self, f"pruned_{g}").sum()) for g in self.spec)),
            "active_ops_per_edge": float(active.mean()),
            "converged": self.converged(),
        }
