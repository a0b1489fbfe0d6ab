"""PC-DARTS (Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for Memory-Efficient
Architecture Search", ICLR 2020).

What the paper changes, with the authors' defaults (yuhuixu1993/PC-DARTS ``train_search.py``):
- partial channels (Sec. 3.2): ``1/K`` of the channels go through the ops, the rest bypass, then channel
  shuffle; K = 4 on CIFAR, 2 on ImageNet (``imagenet=True`` spaces). Set on the space via
  ``adapt_space_config``; the MixedEdge does the rest.
- edge normalisation (Sec. 3.3, eq. 4; ``model_search.py`` ``Cell.forward``:
  ``s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j]))``): one beta per incoming edge
  of each node; ``softmax_{e' -> node}(beta)_e`` scales the WHOLE edge output, the bypassed channels included
  (``ArchWeights.edge_scale``), so beta also gets a gradient through the bypass. The fused backends fold the
  scale into the op weights and add ``(beta - 1) * bypass`` on the bypass channels (one pass over them).
- warm-up: alphas and betas frozen for the first 15 epochs; alphas Adam lr 6e-4 (wd 1e-3).
- genotype from op weight times edge weight (the authors' ``_parse(softmax(alpha) * edge weights)``).
- search loop (``loop_preset``, ``train_search.py`` lines 24-26): batch 256, weight lr 0.1 cosine to 0, the
  scheduler stepped before each epoch (PyTorch 0.4: epoch ``e`` runs at the cosine value of ``e + 1``, the last
  epoch at lr 0; ``scheduler_step="before"``); the architecture step before the weight step, on a fresh random
  validation batch every step (``next(iter(valid_queue))``: ``valid_sampling="random"``); weights clipped at 5,
  the alphas and betas not.
- ImageNet (``train_search_imagenet.py``, ``model_search_imagenet.py``; the preset of a ``darts`` space built with
  ``imagenet=True``, the two-stage stride-2 stem): batch 1024, lr 0.5 cosine to 0 stepped before each epoch, a
  linear warm-up ``lr * (e + 1) / 5`` over epochs 0-4 when the batch exceeds 256, momentum 0.9, wd 3e-4, 50
  epochs, grad clip 5 on the weights and (``arch_grad_clip``) on the alphas and betas, alphas Adam lr 6e-3 with
  wd 1e-3, architecture steps from epoch 35 (``--begin``), first order, K = 2, validation batches in a sequential
  pass (their ``next(valid_queue_iter)``). The 10% / 2.5% per-class subset is the ``imagefolder`` data's default.

Remaining deviations, with reasons: the ImageNet validation pass follows our per-epoch shuffle (theirs walks the
folder in file order, ``shuffle=False``, so each of its batches holds a run of consecutive classes; a shuffle
keeps the architecture gradient of a step from following the class order);
random validation batches are seeded by ``(seed, epoch, step)`` rather than drawn from the global RNG, so a
resumed search draws the same ones.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights
from .base import register_strategy
from .darts import Darts


@register_strategy
class PcDarts(Darts):
    name = "pc-darts"
    capture_safe = True
    loop_preset = {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "scheduler_step": "before"}
    imagenet_preset = {
        "epochs": 50, "batch_size": 1024, "lr": 0.5, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4,
        "grad_clip": 5.0, "scheduler_step": "before", "lr_warmup_epochs": 5, "lr_warmup_above_batch": 256,
        "strategy_args": {"arch_lr": 6e-3, "warmup_epochs": 35, "arch_grad_clip": 5.0, "valid_sampling": "sequential"},
    }  # fmt: skip

    def __init__(
        self, k: int | None = None, arch_lr: float = 6e-4, warmup_epochs: int = 15, valid_sampling: str = "random",
        **kwargs,
    ):  # fmt: skip
        super().__init__(arch_lr=arch_lr, warmup_epochs=warmup_epochs, **kwargs)
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"PC-DARTS k (partial-channel divisor) must be a positive integer, got {k!r}")
        if valid_sampling not in ("random", "sequential"):
            raise ValueError(f"valid_sampling must be 'random' or 'sequential', got {valid_sampling!r}")
        self.k, self.valid_sampling = k, valid_sampling
        self.betas = nn.ParameterDict()

    def preset(self, space, space_args):
        if space == "darts" and space_args.get("imagenet"):
            return {**self.imagenet_preset, "strategy_args": dict(self.imagenet_preset["strategy_args"])}
        return super().preset(space, space_args)

    def adapt_space_config(self, config: dict) -> dict:
        k = self.k if self.k is not None else (2 if config.get("imagenet") else 4)
        return {**super().adapt_space_config(config), "partial_channels": k}

    def setup(self, spec, device=None) -> None:
        super().setup(spec, device)
        for name, group in spec.items():
            self.betas[name] = nn.Parameter((self.init_std * torch.randn(group.num_edges)).to(device))
            nodes = torch.tensor(group.node_of_edge)
            incoming = nodes[None, :] == nodes.unique()[:, None]  # Tensor[nodes, E]: edge e feeds node n
            self.register_buffer(f"incoming_{name}", incoming.to(device), persistent=False)

    def edge_weights(self, group: str) -> torch.Tensor:
        """``softmax`` of the betas over the incoming edges of each node, Tensor[E]."""
        incoming = getattr(self, f"incoming_{group}")
        # a masked softmax per node (row); each edge feeds exactly one node, so the column sum places every weight
        return F.softmax(self.betas[group].masked_fill(~incoming, float("-inf")), dim=-1).sum(0)

    def relax(self, group: str, phase: str) -> ArchWeights:
        return ArchWeights(self.probabilities(group), mask=self.static_mask(group), edge_scale=self.edge_weights(group))

    def scores(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {g: (self.probabilities(g) * self.edge_weights(g)[:, None]).cpu() for g in self.spec}
