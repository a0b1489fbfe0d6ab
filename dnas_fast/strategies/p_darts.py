"""P-DARTS (Chen, Xie, Wu & Tian, "Progressive Differentiable Architecture Search: Bridging the Depth Gap between
Search and Evaluation", ICCV 2019), as chenxin061/pdarts runs it: ``train_search.py`` (``script``; commit 05addf3)
with the command of its ``README.md`` (``--add_layers 6 --add_layers 12 --dropout_rate 0.1 --dropout_rate 0.4
--dropout_rate 0.7``) and the search network ``model_search.py``.

- Stages (``script`` lines 118-135): three, each a new network of ``layers + add_layers[s]`` cells (5, 11, 17)
  built from scratch, with new alphas (``1e-3 randn``), a new SGD, a new Adam and a new cosine schedule over the
  stage's epochs (25 each). In the engine the loop rebuilds the space, the alphas, both optimizers and the lr
  schedule at each stage start (:meth:`PDarts.stage_space`), and the checkpoint holds the stage's space config,
  so a resumed search rebuilds the same stage.
- Op sets (``script`` lines 160-187, ``get_min_k`` 321-329): after stage ``s`` each edge drops its ``num_to_drop``
  = 3, 2 lowest ops by the softmax of its remaining alphas (ties: the first), 8 -> 5 -> 3 ops, as the ``allowed``
  op subsets of the next stage's space: a dropped op never runs again (``model_search.MixedOp`` builds only the
  switched-on ops).
- Architecture steps only after the stage's first ``warmup_epochs`` = 10 epochs (``eps_no_archs``, lines 112,
  138-146), then architecture first, on the next batch of a pass over the validation split, alphas clipped at norm
  5 (``train``, lines 260-275); weights clipped at 5 (279-283). Adam 6e-4, (0.5, 0.999), wd 1e-3 (lines 37-38).
- Final architecture (lines 189-240): the last stage keeps one op per edge (``get_min_k_no_zero``, 330-346:
  ``none`` always dropped, then the lowest), the two edges per node with the strongest kept op (``none``'s
  probability zeroed), then the normal cell's ``skip_connect`` count limited to ``max_skip`` = 2 (the paper's M;
  lines 224-236: ``delete_min_sk_prob`` zeroes the weakest kept skip's probability, ``keep_1_on`` and
  ``keep_2_branches`` pick ops and edges again, until at most ``max_skip`` remain). Earlier stages derive the
  DARTS genotype from the remaining ops (the per-epoch log).
- Loop preset (``script`` lines 22-31): 75 epochs (3 x 25), batch 96, SGD lr 0.025 cosine to 0, momentum 0.9, wd
  3e-4, clip 5, ``scheduler.step()`` before each epoch (``scheduler_step="before"``); ``darts`` space C=16,
  layers=5.

Remaining deviations, with reasons:
- Dropout on ``skip_connect`` (``model_search.MixedOp``, lines 20-21; rate ``p_s (E - e - 1) / E`` in the stage's
  arch-free epochs, ``p_s exp(-0.2 (e - 10))`` after them, lines 139-146; :func:`skip_dropout_rate`) is not
  applied: the edge kernels take no per-op dropout yet. ``skip_dropout`` must stay 0 (the authors' script default;
  their README command sets 0.1, 0.4, 0.7).
- Every stage's space builds all ops and masks the dropped ones (``allowed``), so the weights' random init draws
  differ from the authors', who build only the remaining ops; dropped ops get no gradient and no update.
- The stage lengths split the run's epochs evenly (``round(s E / stages)``); the authors' 25 per stage is the
  preset's 75.
"""

import math

import torch

from ..genotype import Genotype
from .base import Strategy, register_strategy

SKIP = "skip_connect"


def skip_dropout_rate(rate: float, epoch: int, epochs: int, no_arch: int) -> float:
    """The authors' ``skip_connect`` dropout at epoch ``epoch`` of a stage of ``epochs`` (``train_search.py``
    lines 139-146): ``rate (E - e - 1) / E`` before the architecture steps start, ``rate exp(-0.2 (e - no_arch))``
    after."""
    if epoch < no_arch:
        return rate * (epochs - epoch - 1) / epochs
    return rate * math.exp(-(epoch - no_arch) * 0.2)


def drop_lowest(probs: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """``allowed`` (bool Tensor[E, K]) less each edge's ``k`` lowest ``probs`` (Tensor[E, K]) among its allowed ops,
    ties to the first (``get_min_k``'s repeated ``argmin``)."""
    scores = probs.detach().double().masked_fill(~allowed, float("inf"))
    order = scores.sort(dim=-1, stable=True).indices[:, :k]
    return allowed.clone().scatter_(-1, order, False)


def keep_one(probs: torch.Tensor, allowed: torch.Tensor, op_names: list[str]) -> torch.Tensor:
    """Per edge the one op ``get_min_k_no_zero`` keeps of ``allowed``: ``none`` dropped, then the lowest; index
    Tensor[E]."""
    scores = probs.detach().double().masked_fill(~allowed, -1.0)
    if "none" in op_names:
        scores[:, op_names.index("none")] = -1.0
    # the lowest dropped first, ties to the first: the survivor is the last maximum
    K = scores.shape[-1]
    return K - 1 - scores.flip(-1).argmax(-1)


def keep_two_edges(strength: torch.Tensor, steps: int) -> list[int]:
    """``keep_2_branches``: edges 0 and 1 (node 2's two inputs) and, per later node, the two edges of largest
    ``strength`` (Tensor[E]); ``sorted`` ascending is stable, so among equals the later edge ranks higher."""
    keep, start = [0, 1], 2
    for n in range(3, steps + 2):
        edges = sorted(range(n), key=lambda j: float(strength[start + j]))
        keep += [edges[-1] + start, edges[-2] + start]
        start += n
    return keep


def final_cell(probs, allowed, op_names, steps, max_skip=None) -> list[tuple[str, int]]:
    """The authors' last-stage cell from ``probs`` (Tensor[E, K], softmax over ``allowed``, bool Tensor[E, K]):
    one op per edge, two edges per node, then (``max_skip`` not None) at most ``max_skip`` ``skip_connect``."""
    probs = probs.detach().double().clone()
    if "none" in op_names:  # normal_prob[i][0] = 0 where 'none' is still on
        probs[:, op_names.index("none")] = 0.0
    probs = probs.masked_fill(~allowed, 0.0)
    op = keep_one(probs, allowed, op_names)
    kept = keep_two_edges(probs.gather(-1, op[:, None])[:, 0], steps)
    skip = op_names.index(SKIP) if SKIP in op_names else None
    while max_skip is not None and skip is not None and sum(int(op[e]) == skip for e in kept) > max_skip:
        skips = [e for e in kept if int(op[e]) == skip]
        weakest = min(skips, key=lambda e: (float(probs[e, skip]), e))  # np.argmin: the first minimum
        probs[weakest, skip] = 0.0
        op = keep_one(probs, allowed, op_names)
        kept = keep_two_edges(probs.max(-1).values, steps)
    gene, start = [], 0
    for n in range(2, steps + 2):  # parse_network: the kept edges of each node by input
        gene += [(op_names[int(op[start + j])], j) for j in range(n) if start + j in kept]
        start += n
    return gene


@register_strategy
class PDarts(Strategy):
    name = "p-darts"
    staged = True
    # train_search.py lines 22-31 (epochs: 3 stages of 25)
    loop_preset = {"epochs": 75, "batch_size": 96, "lr": 0.025, "lr_min": 0.0, "momentum": 0.9,
                   "weight_decay": 3e-4, "grad_clip": 5.0, "scheduler_step": "before"}  # fmt: skip
    space_preset = {"darts": {"C": 16, "layers": 5}}  # --init_channels 16 --layers 5
    arch_grad_clip = 5.0  # train(): clip_grad_norm_(arch_parameters(), args.grad_clip)

    def __init__(
        self,
        add_layers=(0, 6, 12),
        num_to_keep=(5, 3, 1),
        skip_dropout=(0.0, 0.0, 0.0),
        max_skip: int | None = 2,
        arch_lr: float = 6e-4,
        warmup_epochs: int = 10,
        **kwargs,
    ):
        super().__init__(arch_lr=arch_lr, warmup_epochs=warmup_epochs, **kwargs)
        add_layers, num_to_keep, skip_dropout = tuple(add_layers), tuple(num_to_keep), tuple(skip_dropout)
        if not (len(add_layers) == len(num_to_keep) == len(skip_dropout) >= 1):
            raise ValueError(f"add_layers, num_to_keep and skip_dropout need one entry per stage, got {add_layers}, "
                             f"{num_to_keep}, {skip_dropout}")  # fmt: skip
        if any(not isinstance(a, int) or a < 0 for a in add_layers):
            raise ValueError(f"add_layers must be non-negative integers, got {add_layers}")
        if any(not isinstance(k, int) or k < 1 for k in num_to_keep) or list(num_to_keep) != sorted(num_to_keep)[::-1]:
            raise ValueError(f"num_to_keep must be positive and non-increasing, got {num_to_keep}")
        if any(p != 0 for p in skip_dropout):
            raise ValueError(f"skip_dropout {skip_dropout}: dropout on skip_connect needs per-op dropout in the edge "
                             "kernels, which they do not take yet; use 0 (the authors' script default)")  # fmt: skip
        if max_skip is not None and (not isinstance(max_skip, int) or max_skip < 0):
            raise ValueError(f"max_skip must be a non-negative integer or None, got {max_skip!r}")
        self.add_layers, self.num_to_keep, self.skip_dropout = add_layers, num_to_keep, skip_dropout
        self.max_skip = max_skip

    def preset(self, space, space_args):
        if space != "darts":
            raise ValueError(f"p-darts grows the DARTS network stage by stage: it needs space 'darts', got {space!r}")
        return {**super().preset(space, space_args), "space_args": dict(self.space_preset[space])}

    # ---- stages ------------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.add_layers)

    def stage_starts(self, num_epochs: int) -> list[int]:
        if num_epochs < self.num_stages:
            raise ValueError(f"p-darts needs at least one epoch per stage ({self.num_stages}), got {num_epochs}")
        return [round(s * num_epochs / self.num_stages) for s in range(self.num_stages)] + [num_epochs]

    def stage_of(self, epoch: int, num_epochs: int) -> tuple[int, int, int]:
        """(stage, epoch within it, the stage's epochs) of global epoch ``epoch`` (past the end: the last)."""
        starts = self.stage_starts(num_epochs)
        s = max(i for i in range(self.num_stages) if starts[i] <= min(epoch, num_epochs - 1))
        return s, epoch - starts[s], starts[s + 1] - starts[s]

    def stage_epochs(self, epoch: int, num_epochs: int) -> int:
        return self.stage_of(epoch, num_epochs)[2]

    def stage_space(self, epoch: int, num_epochs: int, base_args: dict) -> dict | None:
        """The space arguments of the stage starting at ``epoch`` (None: none starts there): the base network
        deepened by ``add_layers[s]``, each edge's ops less the previous stage's lowest (from the alphas now)."""
        stage, within, _ = self.stage_of(epoch, num_epochs)
        if within != 0 or epoch >= num_epochs:
            return None
        args = {**base_args, "layers": base_args.get("layers", 8) + self.add_layers[stage]}
        if stage == 0:
            return args
        allowed = {}
        for g, spec in self.spec.items():
            current = torch.ones(spec.num_edges, len(spec.op_names), dtype=torch.bool)
            if spec.allowed is not None:
                current = spec.allowed.cpu()
            drop = int(current.sum(-1).max()) - self.num_to_keep[stage - 1]
            kept = drop_lowest(self.probabilities(g).cpu(), current, drop)
            allowed[g] = [[n for n, on in zip(spec.op_names, row) if on] for row in kept.tolist()]
        return {**args, "allowed": allowed}

    def arch_frozen(self) -> bool:
        return self.stage_of(self.epoch, self.num_epochs)[1] < self.warmup_epochs

    def extra_log(self) -> dict:
        stage, within, epochs = self.stage_of(self.epoch, self.num_epochs)
        rate = skip_dropout_rate(self.skip_dropout[stage], within, epochs, self.warmup_epochs)
        return {"stage": stage, "skip_dropout": rate}

    # ---- derivation --------------------------------------------------------------------------------
    def derive(self, space):
        """Before the last stage: the DARTS genotype of the remaining ops; in it: the authors' final cells."""
        scores, cfg = self.scores(), space.config
        if self.stage_of(self.epoch, self.num_epochs)[0] < self.num_stages - 1:
            return space.derive(scores)
        names, steps = cfg["op_names"], cfg["steps"]
        concat = range(2 + steps - cfg["multiplier"], steps + 2)
        cells = {}
        for g in ("normal", "reduce"):
            allowed = self.spec[g].allowed
            allowed = torch.ones_like(scores[g], dtype=torch.bool) if allowed is None else allowed.cpu()
            cells[g] = final_cell(scores[g], allowed, names, steps, self.max_skip if g == "normal" else None)
        return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)
