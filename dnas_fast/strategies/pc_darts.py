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
- search loop (``loop_preset``, ``train_search.py`` lines 24-26): batch 256, weight lr 0.1 cosine to 0.
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
    loop_preset = {"batch_size": 256, "lr": 0.1, "lr_min": 0.0}

    def __init__(self, k: int | None = None, arch_lr: float = 6e-4, warmup_epochs: int = 15, **kwargs):
        super().__init__(arch_lr=arch_lr, warmup_epochs=warmup_epochs, **kwargs)
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"PC-DARTS k (partial-channel divisor) must be a positive integer, got {k!r}")
        self.k = k
        self.betas = nn.ParameterDict()

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
