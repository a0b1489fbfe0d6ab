"""SNAS (Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019), as SNAS-Series
runs it: the single-GPU command of ``SNAS/README.md`` (lines 27-30: ``--snas --epochs 150 --layer 8
--init_channels 16 --temp 1 --temp_min 0.03 --temp_annealing --resource_efficient --resource_lambda 1.5e-3
--log_penalty --drop_path_prob 3e-1 --method 'reparametrization' --loss``) with ``SNAS/train_search.py`` defaults.

Files below are SNAS-Series ``SNAS/...`` at commit 9a43adb.
- Relaxation (``model_search.py`` ``_get_categ_mask``, 665-670): one Gumbel-softmax sample ``Z = softmax((alpha
  + G) / T)`` per group per step, shared by all cells of the group (281-283). ``hard=True`` (our option) gives
  a one-hot forward with the straight-through gradient.
- Single-level (``train_search.py`` 478-513): one backward of ``CE + resource loss`` on a training batch gives
  the weight and the alpha gradients; weights clipped at ``grad_clip`` (504), alphas at norm 10 (505), then both
  optimizers step (509, 512). The loop draws no validation batch for a single-level strategy (``bilevel``).
- Architecture optimizer (``train_search.py`` 268-271): plain SGD, lr 3e-4 (``--arch_learning_rate``), no
  momentum, no weight decay. Adam (betas (0.5, 0.999), wd 1e-3) is only their distributed branch (254-259):
  ``arch_optimizer="adam"``.
- Temperature (``utils.py`` ``Temp_Scheduler``, 128-148, stepped once before each epoch, ``train_search.py``
  324-325): ``T_e = max(min + (T0 - min)(1 - (e + 1) / 150), min)``; the constructor already steps once, so
  epoch 0 anneals. 150 is hard-coded (``utils.py`` 144) whatever ``--epochs`` is: ``temp_epochs=150``;
  ``temp_epochs=None`` anneals over the run's own epochs instead.
- Resource penalty (``model_search.py`` 416-569, ``train_search.py`` 421-447): per cell and edge the cost of
  the SAMPLED Z, ``R_e = sum_k Z_ek c_ek`` (``method="reparametrization"``, their 448-450), or of the
  probabilities ``p = softmax(alpha)`` (``method="discrete"``, 416-420). ``log_penalty``: each resource's
  ``R_e`` below 1 counts as 1, then ``log``, averaged over the resources (423-431, 452-461, 474);
  otherwise ``0.43 (2 params + flops / 4000 + mac / 100)`` (473; one resource alone: its plain cost, 476-483).
  Summed over edges and over the cells of a group, then divided by 6 (normal) and 2 (reduce) as their loop
  does (``train_search.py`` 425-430: the cell counts of their 8-layer network, kept for any ``layers``); a
  group of another space is divided by its own cell count. ``loss = CE + lambda * penalty`` (445-452),
  ``lambda = 1.5e-3`` (README).
- Drop-path 0.3 on every edge of the search cells, ``none`` and skip included, in training only
  (``model_search.py`` 104-106: the ``Identity`` test never holds for a ``MixedOp``; ``utils.py`` 105-111).
- Derivation: the child is every edge with its argmax op, ``none`` included, so an edge can vanish
  (``model_search.py`` ``genotype_edge_all``, 726-756, logged each epoch by ``train_search.py`` 336-342):
  an :class:`~dnas_fast.genotype.EdgeAllGenotype` on the DARTS space (other spaces: their own argmax rule).
  :meth:`Snas.derive_subnet` keeps the sampled child with its trained weights.
- Alphas start at ``N(1, 0.01)`` (``--loc_mean 1 --loc_std 0.01``); the offset cancels in the softmax.
- Data (``train_search.py`` ``init_loaddata``, 277-278 and 299-305; ``infer``, 355 and 649): weights and
  alphas train on all 50k CIFAR-10 training images; validation numbers come from the 10k test images, unaugmented.
  ``loop_preset`` ``valid_split="test"`` does the same on any data set: the whole training set for the steps, its
  test split for validation and the per-epoch genotype log (digits: a seeded 20% held out; without a test split a
  logged fallback to the ``train_portion`` split).

- Costs (``operations.py``): each op's ``size``, ``flops`` and ``mac`` counted op by op as their op classes do
  (:mod:`.costs`), ``skip_connect`` included (identity: ``mac = 2 C H W``; stride 2: FactorizedReduce, its input
  read twice).
- LR schedule (``train_search.py`` 324-325): ``scheduler.step()`` before each epoch under PyTorch 0.4, so epoch
  ``e`` runs at the cosine value of ``e + 1``: ``loop_preset`` ``scheduler_step="before"``.

Remaining deviations, with reasons: drop-path reaches DARTS cells only (``ArchWeights.drop_path``; the authors
have no other space); ops of other spaces that ``operations.py`` does not define are costed by measurement
(:func:`~dnas_fast.strategies.costs.op_cost`); their ``--ratio`` (1) and auxiliary head (off) are not built.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights
from ..genotype import EdgeAllGenotype, parse_all_edges_cell
from ..spaces import DartsSpace
from .base import Strategy, masks_to_cpu, register_strategy, top_k_mask
from .costs import RESOURCES, cost_tables, locate_edges

METHODS = ("reparametrization", "discrete")
ARCH_OPTIMIZERS = ("sgd", "adam")
PENALTY_DIVISORS = {"normal": 6, "reduce": 2}  # train_search.py 425-430
LINEAR_WEIGHTS = {"params": 0.43 * 2, "flops": 0.43 / 4000, "mac": 0.43 / 100}  # model_search.py 473


@register_strategy
class Snas(Strategy):
    name = "snas"
    bilevel = False
    # SNAS-Series SNAS/train_search.py 31, 277-278, 324-325
    loop_preset = {"epochs": 150, "valid_split": "test", "scheduler_step": "before"}
    arch_grad_clip = 10.0  # train_search.py 505

    def __init__(
        self,
        temp: float = 1.0,
        temp_min: float = 0.03,
        temp_epochs: int | None = 150,
        hard: bool = False,
        resource_lambda: float = 1.5e-3,
        method: str = "reparametrization",
        log_penalty: bool = True,
        resources=RESOURCES,
        drop_path_prob: float = 0.3,
        arch_optimizer: str = "sgd",
        init_std: float = 1e-2,
        **kwargs,
    ):
        super().__init__(init_std=init_std, **kwargs)  # authors: log_alpha ~ N(1, 0.01); the offset cancels
        unknown = set(resources) - set(RESOURCES)
        if unknown or not resources:
            raise ValueError(f"resources must be a non-empty subset of {RESOURCES}, got {resources}")
        if method not in METHODS or arch_optimizer not in ARCH_OPTIMIZERS:
            raise ValueError(f"method must be one of {METHODS} and arch_optimizer one of {ARCH_OPTIMIZERS}")
        if not 0 <= drop_path_prob < 1 or (temp_epochs is not None and temp_epochs < 1):
            raise ValueError(f"need 0 <= drop_path_prob < 1 and temp_epochs >= 1 or None, got {drop_path_prob}, "
                             f"{temp_epochs}")  # fmt: skip
        self.temp0, self.temp_min, self.temp_epochs, self.hard = temp, temp_min, temp_epochs, hard
        self.resource_lambda, self.method, self.log_penalty = resource_lambda, method, log_penalty
        self.resources, self.drop_path_prob, self.arch_optimizer = tuple(resources), drop_path_prob, arch_optimizer
        self.costs: dict[str, torch.Tensor] | None = None  # per group Tensor[cells, E, K, R], measured lazily
        self._last_penalty = None  # Tensor[] of the latest step, for the epoch log

    def make_arch_optimizer(self):
        if self.arch_optimizer == "adam":
            return super().make_arch_optimizer()
        return torch.optim.SGD(self.arch_parameters(), lr=self.arch_lr, foreach=True)

    def temperature(self) -> float:
        progress = (self.epoch + 1) / (self.temp_epochs or self.num_epochs)
        return max(self.temp_min + (self.temp0 - self.temp_min) * (1.0 - progress), self.temp_min)

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
        return {
            g: ArchWeights(weights[g], mask=masks[g], straight_through=self.hard, drop_path=self.drop_path_prob)
            for g in self.spec
        }

    # ---- resource constraint -----------------------------------------------------------------------
    def loss(self, ctx, x, y, phase, model=None):
        if self.resource_lambda and self.costs is None:
            self.costs = self.measure_costs(ctx.module, x[:1])
        return super().loss(ctx, x, y, phase, model)

    def measure_costs(self, space, x: torch.Tensor) -> dict[str, torch.Tensor]:
        device, dtype = self.alphas[next(iter(self.spec))].device, self.alphas[next(iter(self.spec))].dtype
        return {g: t.to(device, dtype) for g, t in cost_tables(space, x, self.resources).items()}

    def resource_penalty(self, choice: dict[str, torch.Tensor]) -> torch.Tensor:
        """The authors' penalty of per-group op weights ``choice[g]`` (Tensor[E, K]): the sample Z
        (reparametrization) or softmax(alpha) (discrete); see the module docstring."""
        total = 0
        for group, table in self.costs.items():
            cost = torch.einsum("ek,cekr->cer", choice[group], table)  # [cells, E, R]
            if self.log_penalty:
                per_edge = cost.clamp_min(1.0).log().mean(-1)
            elif len(self.resources) == 1:
                per_edge = cost[..., 0]
            else:
                per_edge = cost @ cost.new_tensor([LINEAR_WEIGHTS[r] for r in self.resources])
            total = total + per_edge.sum() / PENALTY_DIVISORS.get(group, table.shape[0])
        return total

    def extra_loss(self, arch, phase):
        if not self.resource_lambda or self.costs is None or phase == "eval":
            return None
        if self.method == "reparametrization":
            choice = {g: arch[g].weights for g in self.costs}
        else:
            choice = {g: self.probabilities(g) for g in self.costs}
        penalty = self.resource_penalty(choice)
        self._last_penalty = penalty.detach()
        return self.resource_lambda * penalty

    def extra_log(self) -> dict:
        log = {"temperature": self.temperature()}
        if self._last_penalty is not None:
            log["resource_penalty"] = float(self._last_penalty)
        return log

    # ---- derivation --------------------------------------------------------------------------------
    def derive(self, space):
        """The authors' ``genotype_edge_all`` on the DARTS space: every edge, argmax op, ``none`` included."""
        if not isinstance(space, DartsSpace):
            return super().derive(space)
        scores, cfg = self.scores(), space.config
        steps, multiplier = cfg["steps"], cfg["multiplier"]
        concat = range(2 + steps - multiplier, steps + 2)
        cells = {g: parse_all_edges_cell(scores[g], cfg["op_names"], steps) for g in ("normal", "reduce")}
        return EdgeAllGenotype(cells["normal"], concat, cells["reduce"], concat)

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
