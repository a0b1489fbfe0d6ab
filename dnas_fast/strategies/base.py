"""Strategy: a small class with named hooks (NASLib-style). A DNAS method overrides only what its paper
changes; the search loop and the search spaces stay the same for all of them.

Hooks, in the order the loop calls them:
    preset(space, space_args)    the authors' settings for this space (loop, space and strategy arguments)
    adapt_space_config(cfg)      before the space is built (e.g. DARTS- adds the auxiliary skip path)
    setup(spec, device)          create the architecture parameters for the space's edge groups
    stage_space(epoch, n, args)  staged strategies (P-DARTS): the space arguments of a stage starting at ``epoch``;
                                 the loop then builds the space, the alphas (``setup``), both optimizers and the lr
                                 schedule (over ``stage_epochs``) anew; None: no stage starts there
    on_epoch_start(epoch, n)     schedules (temperature, decay, pruning)
    wants_arch_step(step)        whether step ``step`` of the epoch (from 0) takes an architecture step (and so
                                 draws a validation batch)
    arch_step(ctx, train, valid) the architecture update (bilevel strategies)
    weight_step(ctx, train)      the weight update (and the alphas too for single-level strategies)
    search_done()                after each epoch: True ends the search early (ASAP once every edge holds one op)
    arch_weights(phase)          alphas -> per-edge weights and masks (``relax_all``, by default ``relax`` per
                                 group), plus the DARTS- auxiliary skip weight when ``aux_skip`` is set
    extra_loss(arch, phase)      added to the cross-entropy (resource or sparsity terms)
    extra_log()                  the strategy's own per-epoch log fields
    scores()/derive(space)       the final architecture

Loop details a strategy sets as class attributes, each as its authors' search script: ``weight_first`` (the
weight step before the architecture step: PR-DARTS, TF-NAS; default DARTS's order, architecture first),
``valid_sampling`` (``"sequential"``: passes over the shuffled validation split, DARTS's ``next(valid_iter)``;
``"random"``: a fresh random batch every step, PC-DARTS's ``next(iter(valid_queue))``), ``reset_optimizers``
(clear both optimizers' state, momentum and Adam moments, at every epoch start: TF-NAS builds them anew each
epoch) and ``arch_grad_clip`` (norm clip of the alpha gradients, in the architecture step or, single-level, in
the weight step).

The loop counts and times the steps itself and logs ``epoch_log()``: the option fields below, then
``extra_log()``'s. So an override of any hook, with or without ``super()``, cannot drop a logged field;
``epoch_log`` itself is not a hook (defining it in a subclass raises ``TypeError``).

Two options compose with every strategy: ``aux_skip`` (DARTS-, Chu et al. ICLR 2021: an auxiliary skip path on
every edge weighted by a beta decayed to 0 over ``skip_beta_epochs``, 50 as the authors) and
``hessian_eigenvalue`` (the dominant eigenvalue of the validation-loss Hessian w.r.t. the alphas, logged per
epoch).
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights, EdgeGroup
from ..guard import DivergenceGuard
from ..precision import Precision
from ..registry import Registry
from .diagnostics import dominant_hessian_eigenvalue, preserved_buffers, reference_backend
from .schedules import AUX_SKIP_SCHEDULES, aux_skip_beta

_STRATEGIES: Registry[type] = Registry("strategy", "strategies")


def register_strategy(cls):
    return _STRATEGIES.add(cls.name, cls)


def known_strategies() -> list[str]:
    return _STRATEGIES.names()


def masks_to_cpu(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring the bool masks of all groups to the host with ONE device->host copy (one sync per step)."""
    names = list(masks)
    flat = torch.cat([masks[n].reshape(-1) for n in names]).cpu()
    out, start = {}, 0
    for n in names:
        out[n] = flat[start : start + masks[n].numel()].view(masks[n].shape)
        start += masks[n].numel()
    return out


def top_k_mask(scores: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of each row of ``scores`` (Tensor[E, K]); stays on the device
    (``F.one_hot`` would read the indices back to check their range)."""
    idx = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


@contextmanager
def frozen(params):
    """Inside the block ``params`` do not require grad, so autograd skips their gradients (a conv's weight
    gradient is as costly as its forward); restored on exit."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def strategy_class(name: str) -> type:
    return _STRATEGIES[name]


def build_strategy(name: str, **hparams) -> "Strategy":
    return _STRATEGIES[name](**hparams)


def weight_optimizer(params, lr: float, momentum=0.9, weight_decay=3e-4, nesterov=False) -> torch.optim.SGD:
    """The network weights' SGD. ``foreach``: one multi-tensor op per update instead of one per parameter, each a
    kernel launch on a GPU (torch's default on CPU is the per-parameter loop; the numbers are the same)."""
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, foreach=True)


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
    precision: Precision = field(default_factory=Precision)  # autocast of the forward, fp16 loss scaling
    guard: DivergenceGuard | None = None  # device-side non-finite checks (the loop reads them)

    def watch_grad_norm(self, norm: torch.Tensor) -> None:
        """Hand a clipped gradient norm to the divergence guard; under fp16 an inf norm is the loss scaler's
        business (it skips that step and lowers the scale), not a divergence."""
        if self.guard is not None and self.precision.name != "fp16":
            self.guard.watch("gradient norm", norm)


class Strategy(nn.Module):
    """Base strategy: softmax relaxation, bilevel first-order updates, DARTS derivation.

    Args:
        arch_lr, arch_betas, arch_weight_decay: Adam for the alphas (DARTS paper: 3e-4, (0.5, 0.999), 1e-3).
        init_std: alphas start at ``init_std * randn`` (authors: 1e-3).
        warmup_epochs: epochs with frozen alphas (PC-DARTS: 15).
        aux_skip: DARTS- auxiliary skip connection with this beta schedule (``linear``, ``cosine``, ``step``)
            or ``None`` (off). skip_beta: its initial weight beta0 (DARTS-: 1.0). skip_beta_epochs: epochs over
            which beta decays to 0 (Meituan-AutoML/DARTS- ``DecayScheduler(T_max=50)``, ``src/utils.py``, whatever
            the run's length: 50); ``None``: over the run's own epochs.
        hessian_eigenvalue: log the dominant eigenvalue of the validation-loss Hessian w.r.t. the alphas each
            epoch (power iteration, ``hessian_iters`` Hessian-vector products, reference backend).

    ``loop_preset``: the authors' search-loop settings (``SearchConfig`` fields, e.g. ``{"batch_size": 256}``),
    used where the user sets none; empty means the loop's defaults (DARTS's). ``preset`` may add to it by space.
    """

    name = ""
    bilevel = True
    loop_preset: dict = {}
    arch_grad_clip: float | None = None  # norm clip of the alpha gradients (architecture or single-level step)
    weight_first = False  # the weight step before the architecture step
    valid_sampling = "sequential"  # or "random": a fresh random validation batch every step
    reset_optimizers = False  # clear the optimizers' state at every epoch start
    staged = False  # the space changes between stages (``stage_space``); a checkpoint holds the stage's space
    # The step may run as one CUDA graph (--cuda-graphs): no host-side draws or reads in it, no per-epoch host
    # values baked in. Opt-in per class and not inherited: a subclass may add host work to its parent's step.
    capture_safe = False

    def __init__(
        self,
        arch_lr=3e-4,
        arch_betas=(0.5, 0.999),
        arch_weight_decay=1e-3,
        init_std=1e-3,
        warmup_epochs=0,
        aux_skip: str | None = None,
        skip_beta: float = 1.0,
        skip_beta_epochs: int | None = 50,
        hessian_eigenvalue: bool = False,
        hessian_iters: int = 20,
    ):
        super().__init__()
        if aux_skip is not None and aux_skip not in AUX_SKIP_SCHEDULES:
            raise ValueError(f"aux_skip must be None or one of {AUX_SKIP_SCHEDULES}, got {aux_skip!r}")
        if skip_beta_epochs is not None and (not isinstance(skip_beta_epochs, int) or skip_beta_epochs < 1):
            raise ValueError(f"skip_beta_epochs must be a positive integer or None, got {skip_beta_epochs!r}")
        self.arch_lr, self.arch_betas, self.arch_weight_decay = arch_lr, tuple(arch_betas), arch_weight_decay
        self.init_std, self.warmup_epochs = init_std, warmup_epochs
        self.aux_skip, self.skip_beta, self.skip_beta_epochs = aux_skip, skip_beta, skip_beta_epochs
        self.hessian_eigenvalue, self.hessian_iters = hessian_eigenvalue, hessian_iters
        self.alphas = nn.ParameterDict()
        self.spec: dict[str, EdgeGroup] = {}
        self.epoch, self.num_epochs = 0, 1
        self._last_arch_batch = None  # (ctx, batch) of the latest arch step, for the Hessian diagnostic
        self._aux_cache = None  # ((beta, dtype, device), Tensor[]) of the DARTS- weight

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "epoch_log" in vars(cls):  # an override could drop the option fields
            raise TypeError(f"{cls.__name__} defines epoch_log; return its own log fields from extra_log instead")
        cls.capture_safe = vars(cls).get("capture_safe", False)

    # ---- setup -------------------------------------------------------------------------------------
    def preset(self, space: str, space_args: dict) -> dict:
        """The authors' settings for ``space`` built with the user's ``space_args``: ``loop_preset``'s loop settings,
        optionally ``space_args`` and ``strategy_args`` dicts, each key applied where the user set none."""
        return dict(self.loop_preset)

    def adapt_space_config(self, config: dict) -> dict:
        return {**config, "aux_skip": True} if self.aux_skip else config

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
        return torch.optim.Adam(
            params, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay, foreach=True
        )

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
        """The allowed subset as a CPU mask; the space's spec holds it on the host already (no device sync)."""
        allowed = self.spec[group].allowed
        return None if allowed is None else allowed.cpu()

    def relax(self, group: str, phase: str) -> ArchWeights:
        """Per-step edge weights of one group; ``phase`` is ``weights``, ``arch`` or ``eval``."""
        return ArchWeights(self.probabilities(group), mask=self.static_mask(group))

    def relax_all(self, phase: str) -> dict[str, ArchWeights]:
        """All groups at once; strategies that sample masks on the device override this to read them back
        with a single host copy (:func:`masks_to_cpu`)."""
        return {group: self.relax(group, phase) for group in self.spec}

    def aux_beta(self) -> float:
        """DARTS- beta of the current epoch (0 once ``epoch >= skip_beta_epochs``, or the run's epochs)."""
        return aux_skip_beta(self.aux_skip, self.epoch, self.skip_beta_epochs or self.num_epochs, self.skip_beta)

    def arch_weights(self, phase: str) -> dict[str, ArchWeights]:
        arch = self.relax_all(phase)
        if self.aux_skip:
            first = next(iter(arch.values())).weights
            key = (self.aux_beta(), first.dtype, first.device)
            if self._aux_cache is None or self._aux_cache[0] != key:  # one host->device copy per epoch
                self._aux_cache = (key, torch.tensor(key[0], dtype=first.dtype, device=first.device))
            for a in arch.values():
                a.aux = self._aux_cache[1]
        return arch

    def extra_loss(self, arch: dict[str, ArchWeights], phase: str):
        return None

    # ---- schedule hooks ----------------------------------------------------------------------------
    def stage_space(self, epoch: int, num_epochs: int, base_args: dict) -> dict | None:
        """The space arguments of a stage starting at ``epoch`` (from the space arguments of the run,
        ``base_args``, and the alphas now), or None when none starts there (every single-stage strategy)."""
        return None

    def stage_epochs(self, epoch: int, num_epochs: int) -> int:
        """The epochs of the stage holding ``epoch``: the weight lr's cosine runs over them."""
        return num_epochs

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.epoch, self.num_epochs = epoch, num_epochs

    def arch_frozen(self) -> bool:
        return self.epoch < self.warmup_epochs

    def wants_arch_step(self, step: int) -> bool:
        """Whether step ``step`` of the epoch (0-based, restarting every epoch) takes an architecture step."""
        return True

    def search_done(self) -> bool:
        """Checked after every epoch: True ends the search there."""
        return False

    def epoch_log(self) -> dict:
        """The strategy's fields of the per-epoch JSON log: those of the options every strategy composes with
        (DARTS- beta, Hessian eigenvalue), then ``extra_log()``'s. Not a hook."""
        log = {}
        if self.aux_skip:
            log["aux_beta"] = self.aux_beta()
        if self.hessian_eigenvalue and self._last_arch_batch is not None:
            log["hessian_eigenvalue"] = self.hessian_dominant_eigenvalue(*self._last_arch_batch)
        return {**log, **self.extra_log()}

    def extra_log(self) -> dict:
        """Hook: this strategy's own per-epoch log fields (temperatures, pruned counts, ...)."""
        return {}

    def hessian_dominant_eigenvalue(self, ctx: StepContext, batch) -> float:
        """Dominant eigenvalue of ``d^2 L_val / d alpha^2`` on ``batch`` (DARTS- / R-DARTS diagnostic).

        Runs through the reference backend (double backward), leaves BN statistics and the RNG untouched.
        """
        alphas = self.arch_parameters()
        devices = [alphas[0].device] if alphas[0].device.type == "cuda" else []
        with reference_backend(), preserved_buffers(ctx.module), torch.random.fork_rng(devices=devices):
            loss, _ = self.loss(ctx, *batch, "arch")
            return dominant_hessian_eigenvalue(loss, alphas, self.hessian_iters)

    # ---- updates -----------------------------------------------------------------------------------
    def loss(self, ctx: StepContext, x, y, phase: str, model=None):
        arch = self.arch_weights(phase)
        with ctx.precision.autocast():
            logits = (ctx.model if model is None else model)(x, arch)
            loss = ctx.criterion(logits, y)
        extra = self.extra_loss(arch, phase)
        return (loss if extra is None else loss + extra), logits

    def remember_arch_batch(self, ctx: StepContext, valid_batch) -> None:
        if self.hessian_eigenvalue:
            self._last_arch_batch = (ctx, valid_batch)

    def arch_backward(self, ctx: StepContext, valid_batch) -> torch.Tensor:
        """The (scaled) gradient of the validation loss into the alphas' ``.grad``; returns the loss.

        The authors' backward also fills dL_val/dw, which their weight step zeroes unread: frozen weights skip it.
        The unwrapped module: DDP would all-reduce those weight gradients."""
        with frozen(ctx.module.parameters()):
            loss, _ = self.loss(ctx, *valid_batch, "arch", model=ctx.module)
            ctx.precision.scale(loss, "arch").backward()
        return loss

    def arch_step(self, ctx: StepContext, train_batch, valid_batch) -> dict:
        """First-order architecture step on the validation batch (DARTS eq. 6 with xi = 0)."""
        self.remember_arch_batch(ctx, valid_batch)
        ctx.a_optimizer.zero_grad(set_to_none=True)
        loss = self.arch_backward(ctx, valid_batch)
        ctx.sync_grads(self.arch_parameters())
        self.clip_arch_grads(ctx)
        ctx.precision.step("arch", ctx.a_optimizer)
        return {"arch_loss": loss.detach()}  # a tensor: no host sync per step

    def clip_arch_grads(self, ctx: StepContext) -> None:
        """Norm-clip the alpha gradients of an architecture step at ``arch_grad_clip`` (None: no clip)."""
        if self.arch_grad_clip is not None:
            ctx.precision.unscale_("arch", ctx.a_optimizer)
            nn.utils.clip_grad_norm_(self.arch_parameters(), self.arch_grad_clip, foreach=True)

    def weight_step(self, ctx: StepContext, train_batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One weight step; single-level strategies update the alphas from the same loss."""
        ctx.w_optimizer.zero_grad(set_to_none=True)
        single_level = not self.bilevel and ctx.a_optimizer is not None and not self.arch_frozen()
        if single_level:
            ctx.a_optimizer.zero_grad(set_to_none=True)
        loss, logits = self.loss(ctx, *train_batch, "weights")
        ctx.precision.scale(loss, "weights").backward()
        ctx.precision.unscale_("weights", ctx.w_optimizer)
        ctx.watch_grad_norm(nn.utils.clip_grad_norm_(self.weight_clip_set(ctx), ctx.grad_clip, foreach=True))
        optimizers = [ctx.w_optimizer]
        if single_level:
            ctx.sync_grads(self.arch_parameters())
            if self.arch_grad_clip is not None:
                ctx.precision.unscale_("weights", ctx.a_optimizer)
                nn.utils.clip_grad_norm_(self.arch_parameters(), self.arch_grad_clip, foreach=True)
            optimizers.append(ctx.a_optimizer)
        ctx.precision.step("weights", *optimizers)
        return loss.detach(), logits.detach()

    def weight_clip_set(self, ctx: StepContext) -> list[torch.Tensor]:
        """The tensors whose gradients the weight step norm-clips together at ``grad_clip``: the weights."""
        return list(ctx.module.parameters())

    # ---- derivation --------------------------------------------------------------------------------
    def scores(self) -> dict[str, torch.Tensor]:
        """Op strengths per group used to derive the final architecture."""
        with torch.no_grad():
            return {group: self.probabilities(group).cpu() for group in self.spec}

    def derive(self, space):
        return space.derive(self.scores())


class AlphasInWeightClip:
    """Mixin: the weight step's norm clip counts the alpha gradients too, as D-X-Y's scripts'
    ``clip_grad_norm_(network.parameters(), 5)`` with the alphas ``nn.Parameter`` of the network (PR-DARTS, GDAS).
    The alphas then hold the previous architecture step's gradient plus the training loss's (their
    ``a_optimizer.zero_grad()`` runs only before the architecture backward). The alpha gradients are carried in a
    buffer, so a resumed search clips the same; under DDP they are all-reduced first, so every rank clips its
    weights by the same norm. Put it before the strategy's base class."""

    def setup(self, spec, device=None) -> None:
        super().setup(spec, device)
        for name, alpha in self.alphas.items():  # the alpha gradients the next weight step's clip counts
            self.register_buffer(f"carried_grad_{name}", torch.zeros_like(alpha))

    def weight_clip_set(self, ctx):
        ctx.sync_grads(self.arch_parameters())
        return [*super().weight_clip_set(ctx), *self.arch_parameters()]

    def arch_step(self, ctx, train_batch, valid_batch) -> dict:
        out = super().arch_step(ctx, train_batch, valid_batch)
        with torch.no_grad():
            for name, alpha in self.alphas.items():
                getattr(self, f"carried_grad_{name}").copy_(alpha.grad)
        return out

    def weight_step(self, ctx, train_batch):
        for name, alpha in self.alphas.items():
            if alpha.grad is None:  # a resumed search: the gradients the last architecture step left
                alpha.grad = getattr(self, f"carried_grad_{name}").clone()
        return super().weight_step(ctx, train_batch)
