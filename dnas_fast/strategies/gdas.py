"""GDAS (Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019), as
D-X-Y/AutoDL-Projects runs it: ``exps/algos/GDAS.py`` (``script``; commit e59eb80) with
``scripts-search/algos/GDAS.sh`` on NAS-Bench-201 (``--tau_max 10 --tau_min 0.1 --arch_learning_rate 0.0003
--arch_weight_decay 0.001``, ``configs/nas-benchmark/algos/GDAS.config``) and its DARTS-space variant
(``configs/search-opts/GDAS-NASNet-CIFAR.config``, model ``lib/models/cell_searchs/search_model_gdas_nasnet.py``).

- Sample (``search_model_gdas.py`` ``forward``, lines 84-93; ``search_model_gdas_nasnet.py`` ``get_gumbel_prob``):
  per group and step ``probs = softmax((log_softmax(alpha) + G) / tau)``, ``G`` Gumbel(0, 1); ``index`` the
  argmax of ``probs``; ``hardwts = one_hot(index) - probs.detach() + probs``. Drawn again while ``G`` or
  ``probs`` holds an inf or a NaN (their ``while True``): one flag read back with the masks, one host copy.
  One sample per group, shared by every cell of the group (normal / reduce on the DARTS space).
- Only the sampled op runs (``search_cells.py`` ``forward_gdas``: ``weights[k] * op(x)`` for the argmax, plain
  ``weights[k]``, value 0, for the others): :class:`~dnas_fast.arch.ArchWeights` with the one-hot ``mask`` and
  ``straight_through``, so an unsampled op costs nothing and its weight still gets ``dL/dw_k = sum(g)``.
- Temperature (``script`` line 139): ``tau_e = tau_max - (tau_max - tau_min) e / (E - 1)``, set before epoch ``e``.
- Loop (``script`` ``search_func``, lines 33-53): the weight step, then the architecture step on the step's
  validation batch (``weight_first``); the weight step clips ``network.parameters()`` at 5, the alphas included
  (:class:`~dnas_fast.strategies.base.AlphasInWeightClip`); the architecture step is not clipped. Alphas: Adam
  3e-4, (0.5, 0.999), wd 1e-3 (``GDAS.sh``), init ``1e-3 randn`` (the base defaults).
- Presets: NAS-Bench-201 (``GDAS.config``): 240 epochs, batch 64, SGD lr 0.025 cosine to 0.001, momentum 0.9,
  Nesterov, wd 5e-4; the ``nb201`` space's defaults are theirs (C=16, N=5, ``GDAS.sh``). DARTS space
  (``GDAS-NASNet-CIFAR.config``): 250 epochs, batch 256, the same SGD; network C=16, N=2, i.e. ``layers=6``
  (``search_model_gdas_nasnet.py`` lines 24-25: ``[C] * N + [2C] + [2C] * (N-1) + [4C] + [4C] * (N-1)``,
  reductions at cells 2 and 4, as ``DartsSpace(layers=6)``; the model config is the DARTS one of
  ``configs/search-archs/DARTS-NASNet-CIFAR.config``, C=16, N=2: ``GDAS-NASNet-CIFAR.config`` was not in the
  sources we could read).
- Genotype: NAS-Bench-201 (``search_model_gdas.py`` ``genotype``, lines 70-80): each edge's argmax, ``none``
  included; DARTS space (``search_model_gdas_nasnet.py`` ``genotype``): per node the top 2 (op, input) pairs over
  all its edges by the per-edge softmax, ``none`` excluded (:func:`~dnas_fast.genotype.parse_top_pairs_cell`).

Remaining deviations, with reasons:
- The per-epoch validation (``eval`` phase; the authors log the architecture step's loss instead) runs each
  edge's argmax op alone: a deterministic child, one op per edge.
- D-X-Y's lr follows a per-step cosine (``scheduler.update(None, step / len(loader))``, line 24); ours steps once
  per epoch. Their search network's final BN-ReLU and BN without running statistics belong to their space, not
  to the strategy (as for PR-DARTS).
- The mask that decides which op runs is read back to the host once per step (with the finiteness flag), as for
  SNAS and PR-DARTS: the batched cells still take a CPU mask.
"""

import torch
import torch.nn.functional as F

from ..arch import ArchWeights
from ..genotype import parse_top_pairs_cell
from ..spaces import DartsSpace
from .base import AlphasInWeightClip, Strategy, masks_to_cpu, register_strategy, top_k_mask
from .schedules import linear_anneal

FINITE = "finite"  # the key of the finiteness flag read back with the masks


@register_strategy
class Gdas(AlphasInWeightClip, Strategy):
    name = "gdas"
    # configs/nas-benchmark/algos/GDAS.config (NAS-Bench-201)
    loop_preset = {"epochs": 240, "batch_size": 64, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": True,
                   "weight_decay": 5e-4}  # fmt: skip
    # configs/search-opts/GDAS-NASNet-CIFAR.config and the NASNet search network (C=16, N=2)
    space_loop_preset = {"darts": {"epochs": 250, "batch_size": 256}}
    space_preset = {"darts": {"C": 16, "layers": 6}}
    weight_first = True  # GDAS.py search_func: weights, then the architecture

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_max, self.tau_min = tau_max, tau_min

    def preset(self, space, space_args):
        preset = {**super().preset(space, space_args), **self.space_loop_preset.get(space, {})}
        if space in self.space_preset:
            preset["space_args"] = dict(self.space_preset[space])
        return preset

    def tau(self) -> float:
        return linear_anneal(self.tau_max, self.tau_min, self.epoch, self.num_epochs)

    # ---- relaxation --------------------------------------------------------------------------------
    def sample(self, group: str, gumbels: torch.Tensor | None = None):
        """(hardwts Tensor[E, K], chosen bool Tensor[E, K], finite Tensor[] bool) of one draw; ``gumbels``
        (Tensor[E, K]) fixes the draw (tests)."""
        logits = self.masked_logits(group, self.alphas[group])
        if gumbels is None:
            gumbels = -torch.empty_like(logits).exponential_().log()
        probs = F.softmax((logits.log_softmax(-1) + gumbels) / self.tau(), dim=-1)
        chosen = top_k_mask(probs.detach())
        hardwts = chosen.to(probs.dtype) - probs.detach() + probs
        finite = ~(gumbels.isinf().any() | probs.isinf().any() | probs.isnan().any())
        return hardwts, chosen, finite

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        if phase == "eval":  # each edge's argmax alone, weight 1
            with torch.no_grad():
                chosen = {g: top_k_mask(self.masked_logits(g, self.alphas[g])) for g in self.spec}
            masks = masks_to_cpu(chosen)
            return {g: ArchWeights(c.to(self.alphas[g].dtype), mask=masks[g]) for g, c in chosen.items()}
        while True:  # the authors redraw a sample with an inf or a NaN
            draws = {g: self.sample(g) for g in self.spec}
            finite = torch.stack([d[2] for d in draws.values()]).all().view(1)
            masks = masks_to_cpu({**{g: d[1] for g, d in draws.items()}, FINITE: finite})
            if bool(masks.pop(FINITE)):
                break
        return {g: ArchWeights(d[0], mask=masks[g], straight_through=True) for g, d in draws.items()}

    def extra_log(self) -> dict:
        return {"tau": self.tau()}

    # ---- derivation --------------------------------------------------------------------------------
    def derive(self, space):
        """NAS-Bench-201: each edge's argmax (``none`` included); DARTS space: top-2 (op, input) pairs per node."""
        if not isinstance(space, DartsSpace):
            return super().derive(space)
        return space.derive(self.scores(), parse=parse_top_pairs_cell)
