"""PR-DARTS (Zhou, Xiong, Socher & Hoi, "Theory-Inspired Path-Regularized Differential Network Architecture
Search", NeurIPS 2020), as salesforce/PR-DARTS runs it: the search script its README runs,
``PRDARTS_search/test_PRDARTS.py`` (``script`` below), whose arguments override the init values of the model
``PRDARTS_search/search_model_prdarts_nasnet.py`` (``model``; script lines 110-112, 164-170).

- Gates (model ``forward.get_gumbel_prob``, lines 260-303): per op a stretched hard-concrete gate
  ``g = clamp(sigmoid((alpha + log u - log(1 - u)) / tau) * (zeta - gamma) + gamma, 0, 1)``, ``(gamma, zeta) =
  (-0.1, 1.1)`` (script ``--a_min/--b_max``), ``tau`` linear ``1 -> 0.1`` as ``tau_max - (tau_max - tau_min) *
  e / (E - 1)`` (script line 164, ``--tau_max 1 --tau_min 0.1`` lines 253-254).
- Gate dropout (the ``dropout_pro > 0`` branch, model lines 290-302; script ``--dropout_pro 0.4``, line 268, set
  every epoch): each gate is dropped with probability 0.4 by subtracting 1 from it, and the ``top_k`` = 2
  (``--k``) highest of an edge open, ties broken by one random column permutation. So exactly ``top_k`` ops
  run on every edge, even when gates sit at 0 or are dropped.
- An open op's weight is a hard 1 with a straight-through gradient to its clamped gate; only open ops run
  (``search_cells.py`` ``MixedOp.forward_prdarts``, lines 24-30, on ``nonzero(weights)``, line 72), so a closed op
  gets no gradient at all.
- Regulariser (model ``get_regularization``, lines 184-255) over the ops opened in the same forward pass:
  activation probability ``P = sigmoid(alpha - tau log(-gamma / zeta))``; per cell type the mean of ``P`` over
  the open ops of each group, skip (``skip_connect``), pooling, non-skip (every other op, ``none`` included), 0
  for a group with no open op; each group averaged over the cell types, then reduced by ``group_threshold`` =
  0.2 (``x - 0.2`` if ``x > 0.2`` else 0, lines 245-247). Path: on the chain ``node_i <- node_{i-1}``
  (``0<-1, 1<-2, 2<-3, 3<-4``, line 220) and the conv ops only, the product over the chain edges with an open
  conv op of their mean conv ``P`` (0 if none), averaged over the cell types. Loss ``lambda_skip * skip +
  lambda_nonskip * (nonskip + pool) - lambda_path * path`` with (0.01, 0.005, 0.005) (``--regular_lambda1..3``,
  lines 260-262), added as is to the architecture loss only (script line 52).
- Genotype (model ``genotype``, lines 139-161): per node the top 2 (op, input) pairs over all its edges, ranked
  by the per-edge softmax of the alphas, ``none`` excluded, so both may come from one edge
  (:func:`~dnas_fast.genotype.parse_top_pairs_cell`).
- Loop (``loop_preset``, ``configs/PRDARTS-NASNet-optimizer.config`` lines 3-12, the default ``--config_path``
  of ``test_PRDARTS.py`` line 247): 200 epochs, batch 250, SGD lr 0.025 cosine to 0.001, momentum 0.9, weight
  decay 5e-4, Nesterov; alphas Adam 3e-4, (0.5, 0.999), wd 1e-3 (script line 118, lines 251-252), the base
  defaults. On the DARTS space the preset also sets the network of ``configs/PRDARTS-NASNet-archs.config``: C=16,
  N=2, i.e. ``layers=6`` (``search_model_prdarts_nasnet.py``: ``[C] * N + [2C] * N + [4C] * N``, reductions at
  cells 2 and 4, as ``DartsSpace(layers=6)``), where the user sets no ``C`` / ``layers``.
- Step order (script ``search_func``, lines 30-49): the weight step, then the architecture step on the same
  step's validation batch (``weight_first``). The weight step clips ``network.parameters()`` at norm 5, the
  alphas included (they are ``nn.Parameter`` of the network): their gradients then hold the previous architecture
  step's gradient plus the training loss's (``a_optimizer.zero_grad()`` runs only before the architecture
  backward), and all of them count in the norm that scales the weight gradients
  (:class:`~dnas_fast.strategies.base.AlphasInWeightClip`; the alpha gradients are carried in a buffer, so a
  resumed search clips the same).

Remaining deviations, with reasons:
- The per-epoch validation (``eval`` phase, which the authors do not have) uses the noise-free gates (their
  median), no dropout, and opens the ``top_k`` highest: a deterministic network for a comparable number.
- On CUDA the tie-break permutation is drawn on the device (the authors draw it on the CPU and copy it over):
  no host-to-device copy per step, same distribution.
- ``gate_dropout=0`` opens the ``top_k`` highest gates with the same random tie-break; the authors' branch for it
  (resample until a gate is non-zero, shuffle only when ``top_k`` gates sit at 1) is not reproduced.
- Op groups are found by name (``skip_connect``; names with ``pool``; the path's names with ``conv``) and the
  chain as the edges whose source is the previous node, so every space works; terms are averaged over the
  space's edge groups (the authors' 0.5 for their two cell types). Ops outside an edge's allowed subset
  (R-DARTS spaces) never open.
- Their search network (D-X-Y's NASNet search cell, ``search_cells.py``, ``cell_operations.py``) has a final
  BatchNorm-ReLU before the pooling, pools without BatchNorm and BatchNorms that keep no running statistics
  (``--track_running_stats 0``): these belong to the search space, which stays the DARTS network (its size is
  theirs through the preset).
- Their lr follows D-X-Y's per-step cosine (``w_scheduler.update(None, step / len(loader))``, line 26); ours steps
  once per epoch. Under fp16 the alpha gradients in the weight clip carry the architecture loss scale.
"""

import math

import torch
import torch.nn.functional as F

from ..arch import ArchWeights
from ..genotype import parse_top_pairs_cell
from ..spaces import DartsSpace
from .base import AlphasInWeightClip, masks_to_cpu, register_strategy, top_k_mask
from .darts import Darts
from .schedules import linear_anneal

GROUP_TERMS = ("skip", "pool", "nonskip")


@register_strategy
class PrDarts(AlphasInWeightClip, Darts):
    name = "pr-darts"
    loop_preset = {"epochs": 200, "batch_size": 250, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9,
                   "weight_decay": 5e-4, "nesterov": True}  # fmt: skip
    space_preset = {"darts": {"C": 16, "layers": 6}}  # configs/PRDARTS-NASNet-archs.config: C=16, N=2
    weight_first = True  # test_PRDARTS.py search_func: weights, then the architecture

    def __init__(
        self,
        tau_max: float = 1.0,
        tau_min: float = 0.1,
        stretch=(-0.1, 1.1),
        top_k: int = 2,
        gate_dropout: float = 0.4,
        lambda_skip: float = 0.01,
        lambda_nonskip: float = 0.005,
        lambda_path: float = 0.005,
        group_threshold: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        gamma, zeta = stretch
        if not gamma < 0 < 1 < zeta:
            raise ValueError(f"stretch (gamma, zeta) must satisfy gamma < 0 and zeta > 1, got {stretch}")
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not 0 <= gate_dropout < 1:
            raise ValueError(f"gate_dropout must be in [0, 1), got {gate_dropout}")
        self.tau_max, self.tau_min, self.gamma, self.zeta, self.top_k = tau_max, tau_min, gamma, zeta, top_k
        self.gate_dropout, self.group_threshold = gate_dropout, group_threshold
        self.lambda_skip, self.lambda_nonskip, self.lambda_path = lambda_skip, lambda_nonskip, lambda_path
        self._opened: dict[str, torch.Tensor] = {}  # device masks of the latest relax_all, for the regulariser
        self._last_regularizer = None  # Tensor[] of the latest architecture step, read once per epoch
        self._columns: dict = {}  # (group, device, dtype) -> op-group masks, built once (no copy per step)

    def preset(self, space, space_args):
        preset = super().preset(space, space_args)
        if space in self.space_preset:
            preset["space_args"] = dict(self.space_preset[space])
        return preset

    def tau(self) -> float:
        return linear_anneal(self.tau_max, self.tau_min, self.epoch, self.num_epochs)

    # ---- gates -------------------------------------------------------------------------------------
    def gates(self, group: str, noise: bool) -> torch.Tensor:
        """Stretched, clamped gates ``Tensor[E, K]`` in [0, 1] (noise-free: the gates' median)."""
        alpha = self.alphas[group]
        if noise:
            u = torch.rand_like(alpha)
            alpha = alpha + torch.log(u) - torch.log(1 - u)
        return (torch.sigmoid(alpha / self.tau()) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def open_ops(self, group: str, gates: torch.Tensor, sample: bool) -> torch.Tensor:
        """Bool ``[E, K]``: the ``top_k`` ops of each edge by gate, after gate dropout when ``sample``."""
        scores = gates.detach()
        if sample and self.gate_dropout > 0:
            scores = scores - torch.bernoulli(torch.zeros_like(scores), self.gate_dropout)
        allowed = self.allowed(group)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if sample:  # random tie-break: the same column permutation for every edge
            perm = torch.randperm(scores.shape[-1], device=scores.device)
            opened = torch.empty_like(scores, dtype=torch.bool)
            opened[:, perm] = top_k_mask(scores[:, perm], self.top_k)
        else:
            opened = top_k_mask(scores, self.top_k)
        return opened if allowed is None else opened & allowed

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        sample = phase != "eval"
        gates, opened = {}, {}
        for g in self.spec:  # per group: noise, dropout, permutation (the authors' draw order)
            gates[g] = self.gates(g, noise=sample)
            opened[g] = self.open_ops(g, gates[g], sample)
        self._opened = opened
        masks = masks_to_cpu(opened)
        return {g: ArchWeights(opened[g].to(z.dtype) - z.detach() + z, mask=masks[g]) for g, z in gates.items()}

    # ---- regularisers ------------------------------------------------------------------------------
    def activation_probability(self, group: str) -> torch.Tensor:
        """``P(gate > 0) = sigmoid(alpha - tau * log(-gamma / zeta))``, Tensor[E, K]."""
        return torch.sigmoid(self.alphas[group] - self.tau() * math.log(-self.gamma / self.zeta))

    def op_columns(self, group: str, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """0/1 masks like ``like``: ``skip``, ``pool``, ``nonskip`` ``[K]``, and ``path`` ``[E, K]`` (conv ops on
        the chain edges ``node_i <- node_{i-1}``)."""
        key = (group, like.device, like.dtype)
        if key not in self._columns:
            spec = self.spec[group]
            skip = torch.tensor([n == "skip_connect" for n in spec.op_names])
            pool = torch.tensor(["pool" in n for n in spec.op_names])
            conv = torch.tensor(["conv" in n for n in spec.op_names])
            chain = torch.tensor([s == n - 1 for n, s in zip(spec.node_of_edge, spec.source_of_edge)])
            cols = {"skip": skip, "pool": pool, "nonskip": ~skip & ~pool, "path": chain[:, None] & conv}
            self._columns[key] = {k: v.to(like.device, like.dtype) for k, v in cols.items()}
        return self._columns[key]

    def regularizer_terms(self, opened: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Group activations and the path activation over the ``opened`` ops (bool ``[E, K]`` per group),
        before the threshold; no host sync."""
        terms = dict.fromkeys((*GROUP_TERMS, "path"), 0.0)
        for g in self.spec:
            P = self.activation_probability(g)
            cols = self.op_columns(g, P)
            on = opened[g].to(P.dtype)
            for name in GROUP_TERMS:
                sel = on * cols[name]
                count = sel.sum()
                mean = torch.where(count > 0, (P * sel).sum() / count.clamp_min(1), 0.0)
                terms[name] = terms[name] + mean / len(self.spec)
            sel = on * cols["path"]
            count = sel.sum(-1)  # open conv ops per edge; edges off the chain have none
            per_edge = torch.where(count > 0, (P * sel).sum(-1) / count.clamp_min(1), 1.0)
            path = torch.where((count > 0).any(), per_edge.prod(), 0.0)
            terms["path"] = terms["path"] + path / len(self.spec)
        return terms

    def regularizer(self, opened: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.regularizer_terms(opened)
        skip, pool, nonskip = (F.relu(t[n] - self.group_threshold) for n in ("skip", "pool", "nonskip"))
        return self.lambda_skip * skip + self.lambda_nonskip * (nonskip + pool) - self.lambda_path * t["path"]

    def extra_loss(self, arch, phase):
        if phase != "arch":
            return None
        reg = self.regularizer(self._opened)  # the ops this step's relax_all opened
        self._last_regularizer = reg.detach()
        return reg

    def extra_log(self) -> dict:
        log = {"tau": self.tau()}
        if self._last_regularizer is not None:
            log["regularizer"] = float(self._last_regularizer)
        return log

    # ---- derivation --------------------------------------------------------------------------------
    def derive(self, space):
        if not isinstance(space, DartsSpace):
            return super().derive(space)
        return space.derive(self.scores(), parse=parse_top_pairs_cell)
