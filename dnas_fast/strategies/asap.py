"""ASAP (Noy, Nayman, Ridnik, Zamir, Doveh, Friedman, Giryes & Zelnik-Manor, "ASAP: Architecture Search, Anneal
and Prune", AISTATS 2020), as UniNAS runs it: the authors published no search code, so cogsys-tuebingen/uninas is
the public reference, ``uninas/methods/asap.py`` (``AsapStrategy``, ``AsapSearchMethod``) on
``uninas/methods/darts.py`` (``DifferentiableStrategy``) with ``experiments/configs/tasks/d1_asap.run_config``.

From the paper (Alg. 1), on top of first-order DARTS:
- annealed Gibbs-Boltzmann softmax ``softmax(alpha / T_t)`` with ``T_t = T0 * beta^t`` (t = epoch);
- pruned ops leave the search for good (``-inf`` logit and MixedEdge mask, so they cost no compute any more).

Where we follow UniNAS (the paper leaves these open or differs):
- pruning at every epoch start (``AsapStrategy.on_epoch_start`` -> ``mask_all_weights_below``), not after every
  architecture step as Alg. 1; the probabilities are the softmax their last forward pass cached
  (``get_weight_sm``), i.e. at the previous epoch's temperature ``T_{t-1}`` (``T0`` at epoch 0);
- the threshold edge by edge as ``mask_all_weights_below(0.4, div_by_numel=True)`` applies it: its running
  threshold ``p`` is divided by each edge's op count in turn (``p /= w_sm.numel()`` inside the loop over edges),
  so edge ``i`` (groups in spec order, then edges) prunes below ``theta / (K_0 K_1 ... K_i)``
  (``threshold_rule="uninas"``); ``threshold_rule="paper"`` prunes below ``theta / K`` on every edge;
- the search stops once every edge holds one op (``on_epoch_end`` returns True: early stop): ``search_done``;
- grace period (``AsapSearchMethod._on_epoch_start``: loader multiples ``(1, 0)`` while ``tau >= tau_grace``):
  no architecture step at all while ``T_t >= tau_grace``; with the defaults that is epochs 0-9;
- alpha gradients norm-clipped at 5 (``d1_asap.run_config``: the Adam optimizer's ``clip_norm_value``).
Defaults: ``T0 = 1.6``, ``beta = 0.95``, ``theta = 0.4``, ``tau_grace = 1.0``; the loop settings are DARTS's, as
``d1_asap.run_config`` (50 epochs, batch 64, lr 0.025 cosine to 0.001, wd 3e-4, clip 5; Adam 3e-4, wd 1e-3).
The pruned set and the epoch last pruned are registered buffers, so a resumed search continues bitwise.

Remaining deviations, with reasons: an edge's strongest op is never pruned (UniNAS cannot prune it either, as
long as ``theta <= 1``; the guard keeps ``theta > 1`` from emptying an edge); UniNAS's search also applies drop
path 0.2 (``DropPathRegularizer``), which is not part of ASAP and is left out.
"""

import torch
import torch.nn.functional as F

from ..arch import ArchWeights
from .base import masks_to_cpu, register_strategy, top_k_mask
from .darts import Darts

THRESHOLD_RULES = ("uninas", "paper")


@register_strategy
class Asap(Darts):
    name = "asap"

    def __init__(
        self, T0: float = 1.6, beta: float = 0.95, theta: float = 0.4, tau_grace: float = 1.0,
        threshold_rule: str = "uninas", arch_grad_clip: float | None = 5.0, **kwargs,
    ):  # fmt: skip
        super().__init__(arch_grad_clip=arch_grad_clip, **kwargs)
        if not 0 < beta <= 1 or T0 <= 0:
            raise ValueError(f"ASAP needs T0 > 0 and 0 < beta <= 1, got T0={T0}, beta={beta}")
        if threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}")
        self.T0, self.beta, self.theta, self.tau_grace = T0, beta, theta, tau_grace
        self.threshold_rule = threshold_rule
        self.register_buffer("pruned_epoch", torch.tensor(-1))  # the epoch whose start last pruned
        self._cpu_active = None  # host copy of the active masks, refreshed once per prune (one sync per step)

    def setup(self, spec, device=None) -> None:
        super().setup(spec, device)
        for name, group in spec.items():
            self.register_buffer(
                f"pruned_{name}", torch.zeros(group.num_edges, len(group.op_names), dtype=torch.bool, device=device)
            )

    def temperature(self, epoch: int | None = None) -> float:
        return self.T0 * self.beta ** (self.epoch if epoch is None else epoch)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self._cpu_active = None  # the buffers may have been loaded from a checkpoint
        if int(self.pruned_epoch) < epoch:  # once per epoch: not again when resuming inside it
            self.prune(self.temperature(max(epoch - 1, 0)))
            self.pruned_epoch.fill_(epoch)

    # ---- relaxation --------------------------------------------------------------------------------
    def active(self, group: str) -> torch.Tensor:
        """Bool ``[E, K]`` of ops still in the search (allowed and not pruned)."""
        active = ~getattr(self, f"pruned_{group}")
        allowed = self.allowed(group)
        return active if allowed is None else active & allowed

    def probabilities(self, group: str, temperature: float | None = None) -> torch.Tensor:
        logits = self.alphas[group].masked_fill(~self.active(group), float("-inf"))
        return F.softmax(logits / (temperature or self.temperature()), dim=-1)

    def cpu_active(self) -> dict[str, torch.Tensor]:
        if self._cpu_active is None:
            self._cpu_active = masks_to_cpu({g: self.active(g) for g in self.spec})
        return self._cpu_active

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        masks = self.cpu_active()
        return {g: ArchWeights(self.probabilities(g), mask=masks[g]) for g in self.spec}

    # ---- annealing and pruning ---------------------------------------------------------------------
    def thresholds(self) -> dict[str, torch.Tensor]:
        """Per group the pruning threshold of each edge, ``Tensor[E]`` float64 (see the module docstring)."""
        out, running = {}, self.theta
        for g, group in self.spec.items():
            K = len(group.op_names)
            if self.threshold_rule == "paper":
                out[g] = torch.full((group.num_edges,), self.theta / K, dtype=torch.float64)
            else:  # UniNAS: p /= w_sm.numel() for each edge in turn
                out[g] = running / torch.tensor(float(K), dtype=torch.float64) ** torch.arange(1, group.num_edges + 1)
                running = float(out[g][-1])
        return out

    @torch.no_grad()
    def prune(self, temperature: float | None = None) -> None:
        """Prune the ops whose probability at ``temperature`` is below their edge's threshold (never an edge's
        strongest op), then refresh the host masks."""
        for g, threshold in self.thresholds().items():
            p = self.probabilities(g, temperature)
            below = p < threshold.to(p.device, p.dtype)[:, None]
            pruned = getattr(self, f"pruned_{g}")
            pruned |= below & ~top_k_mask(p) & self.active(g)
        self._cpu_active = None
        self.cpu_active()

    def in_grace(self) -> bool:
        """UniNAS's grace period: no architecture steps while the temperature is still ``>= tau_grace``."""
        return self.temperature() >= self.tau_grace

    def converged(self) -> bool:
        return all(bool((m.sum(-1) <= 1).all()) for m in self.cpu_active().values())

    def search_done(self) -> bool:
        return self.converged()  # UniNAS on_epoch_end: every edge holds one op -> stop

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
