"""Strategy: a small class with named hooks (NASLib-style). A DNAS method overrides only what its paper
changes; the search loop and the search spaces stay the same for all of them.

Hooks, in the order the loop calls them:
    adapt_space_config(cfg)      before the space is built (e.g. DARTS- adds the auxiliary skip path)
    setup(spec, device)          create the architecture parameters for the space's edge groups
    on_epoch_start(epoch, n)     schedules (temperature, decay, pruning)
    arch_step(ctx, train, valid) the architecture update (bilevel strategies)
    weight_step(ctx, train)      the weight update (and the alphas too for single-level strategies)
    arch_weights(phase)          alphas -> per-edge weights and masks (``relax`` per group)
    extra_loss(arch, phase)      added to the cross-entropy (resource or sparsity terms)
    scores()/derive(space)       the final architecture
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights, EdgeGroup

_STRATEGIES: dict[str, type] = {}


def register_strategy(cls):
    _STRATEGIES[cls.name] = cls
    return cls


def known_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def build_strategy(name: str, **hparams) -> "Strategy":
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(known_strategies())}")
    return _STRATEGIES[name](**hparams)


@dataclass
class StepContext:
    """What a strategy may touch during one search step."""

    model: nn.Module  # what to call (may be a DDP wrapper)
    module: nn.Module  # the bare search space (parameters, functional calls)
    criterion: nn.Module
    w_optimizer: torch.optim.Optimizer
    a_optimizer: torch.optim.Optimizer | None
    lr: float  # current weight learning rate (second-order DARTS unrolls with it)
    grad_clip: float = 5.0
    epoch: int = 0
    sync_grads: callable = field(default=lambda params: None)  # all-reduce of gradients (DDP)


class Strategy(nn.Module):
    """Base strategy: softmax relaxation, bilevel first-order updates, DARTS derivation.

    Args:
        arch_lr, arch_betas, arch_weight_decay: Adam for the alphas (DARTS paper: 3e-4, (0.5, 0.999), 1e-3).
        init_std: alphas start at ``init_std * randn`` (authors: 1e-3).
        warmup_epochs: epochs with frozen alphas (PC-DARTS: 15).
    """

    name = ""
    bilevel = True

    def __init__(self, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, init_std=1e-3, warmup_epochs=0):
        super().__init__()
        self.arch_lr, self.arch_betas, self.arch_weight_decay = arch_lr, tuple(arch_betas), arch_weight_decay
        self.init_std, self.warmup_epochs = init_std, warmup_epochs
        self.alphas = nn.ParameterDict()
        self.spec: dict[str, EdgeGroup] = {}
        self.epoch, self.num_epochs = 0, 1

    # ---- setup -------------------------------------------------------------------------------------
    def adapt_space_config(self, config: dict) -> dict:
        return config

    def setup(self, spec: dict[str, EdgeGroup], device=None) -> None:
        self.spec = spec
        for name, group in spec.items():
            alpha = self.init_std * torch.randn(group.num_edges, len(group.op_names))
            self.alphas[name] = nn.Parameter(alpha.to(device))
            if group.allowed is not None:
                self.register_buffer(f"allowed_{name}", group.allowed.to(device))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def make_arch_optimizer(self):
        params = self.arch_parameters()
        if not params:
            return None
        return torch.optim.Adam(params, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay)

    # ---- relaxation --------------------------------------------------------------------------------
    def allowed(self, group: str) -> torch.Tensor | None:
        return getattr(self, f"allowed_{group}", None)

    def masked_logits(self, group: str, logits: torch.Tensor) -> torch.Tensor:
        """Logits with ops outside an edge's allowed subset at -inf (they get weight 0)."""
        allowed = self.allowed(group)
        return logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))

    def probabilities(self, group: str) -> torch.Tensor:
        return F.softmax(self.masked_logits(group, self.alphas[group]), dim=-1)

    def static_mask(self, group: str) -> torch.Tensor | None:
        allowed = self.allowed(group)
        return None if allowed is None else allowed.cpu()

    def relax(self, group: str, phase: str) -> ArchWeights:
        """Per-step edge weights of one group; ``phase`` is ``weights``, ``arch`` or ``eval``."""
        return ArchWeights(self.probabilities(group), mask=self.static_mask(group))

    def arch_weights(self, phase: str) -> dict[str, ArchWeights]:
        return {group: self.relax(group, phase) for group in self.spec}

    def extra_loss(self, arch: dict[str, ArchWeights], phase: str):
        return None

    # ---- schedule hooks ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.epoch, self.num_epochs = epoch, num_epochs

    def arch_frozen(self) -> bool:
        return self.epoch < self.warmup_epochs

    def epoch_log(self) -> dict:
        """Extra per-epoch fields for the JSON log (temperatures, pruned counts, ...)."""
        return {}

    # ---- updates -----------------------------------------------------------------------------------
    def loss(self, ctx: StepContext, x, y, phase: str):
        arch = self.arch_weights(phase)
        logits = ctx.model(x, arch)
        loss = ctx.criterion(logits, y)
        extra = self.extra_loss(arch, phase)
        return (loss if extra is None else loss + extra), logits

    def arch_step(self, ctx: StepContext, train_batch, valid_batch) -> dict:
        """First-order architecture step on the validation batch (DARTS eq. 6 with xi = 0)."""
        ctx.a_optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loss(ctx, *valid_batch, "arch")
        loss.backward()
        ctx.sync_grads(self.arch_parameters())
        ctx.a_optimizer.step()
        return {"arch_loss": loss.item()}

    def weight_step(self, ctx: StepContext, train_batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One weight step; single-level strategies update the alphas from the same loss."""
        ctx.w_optimizer.zero_grad(set_to_none=True)
        single_level = not self.bilevel and ctx.a_optimizer is not None and not self.arch_frozen()
        if single_level:
            ctx.a_optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss(ctx, *train_batch, "weights")
        loss.backward()
        nn.utils.clip_grad_norm_(ctx.module.parameters(), ctx.grad_clip)
        ctx.w_optimizer.step()
        if single_level:
            ctx.sync_grads(self.arch_parameters())
            ctx.a_optimizer.step()
        return loss.detach(), logits.detach()

    # ---- derivation --------------------------------------------------------------------------------
    def scores(self) -> dict[str, torch.Tensor]:
        """Op strengths per group used to derive the final architecture."""
        with torch.no_grad():
            return {group: self.probabilities(group).cpu() for group in self.spec}

    def derive(self, space):
        return space.derive(self.scores())
