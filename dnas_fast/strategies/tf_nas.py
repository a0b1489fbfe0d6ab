"""TF-NAS (Hu et al., ECCV 2020; AberHu/TF-NAS ``train_search.py``): operator, depth and width search under
a latency target, on the ``mbconv`` space.

* Weight step (bi-sampling, Sec. 3.2): per block one op drawn from ``softmax(alpha)`` (Gumbel-max) and one
  drawn uniformly from the remaining ops; the network runs once per path with only that op per block
  (MixedEdge masks) and the two losses are summed. Warm-up epochs run the Gumbel path only (authors'
  ``train_wo_arch``). All paths of a step come from one host copy of the alphas.
* Architecture step (after every ``arch_every``-th weight step of an epoch): Gumbel-softmax over all candidates
  with temperature ``tau`` (5, x0.96 per architecture epoch), sink depth weights ``softmax(beta)``, loss
  ``CE + lambda * |LAT / target - 1|`` with the expected LUT latency (lambda 0.1), Adam lr 0.01,
  betas (0.5, 0.999), wd 5e-4, grad clip 5; the alphas are kept log-normalised (authors' log_softmax).
* Elastic width (Sec. 3.4): after every architecture epoch the expanded widths of the current argmax
  architecture are shrunk or expanded, stage group by stage group, until the LUT latency meets the target
  (authors' ``fit_mc_num_by_latency``, widths in ``[max/2, max]``); the kept channels are those with the
  largest depthwise L1 norm. Widths are channel masks in the space, so parameters and momentum survive.
* Derivation: argmax ops and exits, widths fitted once more, with predicted latency, FLOPs and parameters.
* Search loop (``loop_preset``, ``train_search.py`` lines 43-47 and 112, as ``example.sh`` runs it): 90 epochs,
  batch 32, weight decay 1e-5, cosine to 0 (``CosineAnnealingLR`` without ``eta_min``); lr 0.025, momentum 0.9
  and grad clip 5 are the loop's defaults.
* Step order (``train_search.py`` ``train_w_arch``): the weight step, then, when ``step % 2 == 0`` with ``step``
  restarting at 0 every epoch (``enumerate(train_queue)``), the architecture step on a validation batch drawn
  only then, from an iterator built anew every epoch (``weight_first``, ``wants_arch_step``).
* Optimizers (``train_search.py`` epoch loop): the weights' SGD and the alphas' Adam are built anew every epoch,
  so momentum and Adam moments restart each epoch (``reset_optimizers``); ``keep_optimizer_state=True`` keeps
  them across epochs instead (not the authors').

Remaining deviations, with reasons: the supernet is not rebuilt and reloaded every epoch (the authors' way of
applying the elastic widths): widths are channel masks on one network, which gives the same forward; the epoch's
validation numbers use the argmax architecture (the authors validate the last 5 epochs on Gumbel samples).
"""

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ArchWeights
from .base import StepContext, Strategy, register_strategy


@dataclass
class TFNASArch:
    """The derived network: ``config`` builds it with ``MBConvNet``; latency in ms on ``device``."""

    config: dict
    predicted_latency_ms: float
    latency_target_ms: float
    device: str
    mflops: float
    mparams: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    def __str__(self) -> str:
        ops = " ".join(f"{b['op'].replace('mbconv_', '')}/{b['mid']}" for b in self.config["blocks"])
        return (
            f"TF-NAS arch: {len(self.config['blocks'])} blocks [{ops}] predicted {self.predicted_latency_ms:.4f} ms "
            f"(target {self.latency_target_ms:.4f} ms on {self.device}), {self.mflops:.2f} MFLOPs, "
            f"{self.mparams:.3f} M params"
        )


def fit_widths(latency, ops, depths, widths, max_widths, target):
    """Authors' elastic width fit: returns new ``widths`` (LongTensor[E, K]) of the kept blocks' chosen ops.

    Shrink (LAT > target): shrink all stages until below target, then expand stage suffixes 2.., 3.., ...
    while staying below it. Expand (LAT < target): expand all stages, then the suffixes, while below target.
    Every block moves by its width ratio to the narrowest one, within ``[max // 2, max]``.
    """
    widths = widths.clone()
    S = len(latency.stage_edges)
    lat = latency.derived(ops, depths, widths)
    if lat == target:
        return widths
    first_sign = -1 if lat > target else 1
    for sign, start in [(first_sign, 0)] + [(1, s) for s in range(1, S)]:
        widths = _fit(latency, ops, depths, widths, max_widths, target, range(start, S), sign)
    return widths


def _fit(latency, ops, depths, widths, max_widths, target, stages, sign):
    sel = [(e, ops[e]) for s in stages for e in latency.stage_edges[s][: depths[s]]]
    if not sel:
        return widths
    base = min(int(widths[e, k]) for e, k in sel)
    ratio = [max(1, round(int(widths[e, k]) / base)) for e, k in sel]
    new, new_lat = widths.clone(), latency.derived(ops, depths, widths)
    free = [True] * len(sel)
    while any(free) and sign * new_lat <= sign * target:
        widths = new.clone()
        for i, (e, k) in enumerate(sel):
            hi = int(max_widths[e, k])
            w = int(widths[e, k]) + sign * ratio[i]
            free[i] = hi // 2 < w < hi
            new[e, k] = min(max(w, hi // 2), hi)
        new_lat = latency.derived(ops, depths, new)
    return new if sign == -1 else widths


@register_strategy
class TFNAS(Strategy):
    """Args:
    latency_target: target latency in ms (required). latency_table: LUT file (``dnas-fast latency build``);
        without one, the table is measured for the space at the first step on its device (and checkpointed).
    latency_device: which device's table to read from a multi-device file (default: this device's name,
        else the only one in the file).
    lambda_lat: weight of ``|LAT / target - 1|`` (0.1). tau, tau_decay: Gumbel temperature (5, 0.96).
    warmup_epochs: weight-only epochs (authors: 10 of 90). arch_every: weight steps per arch step (2).
    elastic_width: fit the widths to the target after each architecture epoch and at derivation.
    lut_repeats: timed runs per entry when measuring a table on the fly.
    keep_optimizer_state: keep SGD momentum and Adam moments across epochs (default False: reset every epoch
        as the authors' optimizers built anew each epoch).
    """

    name = "tf-nas"
    loop_preset = {"epochs": 90, "batch_size": 32, "weight_decay": 1e-5, "lr_min": 0.0}
    weight_first = True  # train_w_arch: the weight step, then the architecture step

    def __init__(
        self, latency_target=None, latency_table=None, latency_device=None, lambda_lat=0.1, tau=5.0,
        tau_decay=0.96, warmup_epochs=10, arch_every=2, elastic_width=True, lut_repeats=30, arch_lr=0.01,
        arch_betas=(0.5, 0.999), arch_weight_decay=5e-4, arch_grad_clip=5.0, keep_optimizer_state=False, **kwargs,
    ):  # fmt: skip
        super().__init__(arch_lr=arch_lr, arch_betas=arch_betas, arch_weight_decay=arch_weight_decay,
                         warmup_epochs=warmup_epochs, **kwargs)  # fmt: skip
        if latency_target is None or not latency_target > 0:
            raise ValueError(f"tf-nas needs a positive latency_target in ms (--latency-target), got {latency_target}")
        if arch_every < 1:
            raise ValueError(f"arch_every must be >= 1, got {arch_every}")
        self.latency_target = float(latency_target)
        self.latency_table, self.latency_device = latency_table, latency_device
        self.lambda_lat, self.tau0, self.tau_decay, self.arch_every = lambda_lat, tau, tau_decay, arch_every
        self.elastic_width, self.lut_repeats, self.arch_grad_clip = elastic_width, lut_repeats, arch_grad_clip
        self.keep_optimizer_state = keep_optimizer_state
        self.reset_optimizers = not keep_optimizer_state
        # schedule state in buffers so a checkpoint resumes bit for bit
        self.register_buffer("tau", torch.tensor(float(tau), dtype=torch.float64))
        self.register_buffer("width_epoch", torch.tensor(-1))
        self.table = None  # LatencyTable, saved through get_extra_state
        self._latency = self._block_lat = None  # per-space caches, rebuilt from the space
        self._lat_sum = self._lat_count = None

    # ---- setup ---------------------------------------------------------------------------------------
    def setup(self, spec, device=None):
        if set(spec) != {"ops", "depth"}:
            raise ValueError(f"tf-nas needs the mbconv space (groups ops, depth), got groups {sorted(spec)}")
        super().setup(spec, device)
        with torch.no_grad():  # authors: log_alphas = log_softmax(zeros), betas = zeros
            for alpha in self.alphas.values():
                alpha.zero_()
            self._normalise()

    def get_extra_state(self):
        return {"table": None if self.table is None else (self.table.device, self.table.to_dict())}

    def set_extra_state(self, state):
        from .tf_nas_latency import LatencyTable

        self.table = None if state["table"] is None else LatencyTable.from_dict(*state["table"])
        self._latency = self._block_lat = None

    def _normalise(self):
        """Alphas as log-probabilities over the allowed ops (authors renormalise after each arch step)."""
        for group, alpha in self.alphas.items():
            alpha.sub_(torch.logsumexp(self.masked_logits(group, alpha), dim=-1, keepdim=True))

    # ---- schedules -----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch, num_epochs):
        super().on_epoch_start(epoch, num_epochs)
        self.tau.fill_(self.tau0 * self.tau_decay ** max(0, epoch - self.warmup_epochs))

    def extra_log(self):
        log = {"tau": float(self.tau)}
        if self._lat_count:  # mean expected LUT latency over this epoch's arch steps
            log["expected_latency_ms"] = (self._lat_sum / self._lat_count).item()
            self._lat_sum, self._lat_count = None, 0
        return log

    # ---- latency -------------------------------------------------------------------------------------
    def latency_model(self, space):
        """The space's ``SupernetLatency`` (table loaded, or measured on the space's device, on first use)."""
        from .tf_nas_latency import SupernetLatency, build_table, device_name, load_table

        if self._latency is None:
            device = next(space.parameters()).device
            if self.table is None and self.latency_table is not None:
                self.table = load_table(self.latency_table, self.latency_device or device_name(device),
                                        strict=self.latency_device is not None)  # fmt: skip
            elif self.table is None:
                self.table = build_table(space, device, repeats=self.lut_repeats)
            self._latency = SupernetLatency(self.table, space)
        return self._latency

    def _prepare(self, space):
        """Once per epoch: elastic width after an architecture epoch, then the per-op latency table."""
        latency = self.latency_model(space)
        epoch = self.epoch
        if int(self.width_epoch) != epoch:
            if self.elastic_width and epoch > self.warmup_epochs:
                ops, depths = self.parse()
                fitted = fit_widths(latency, ops, depths, space.widths(), space.max_widths(), self.latency_target)
                for e, k in (fitted != space.widths()).nonzero().tolist():
                    space.set_width(e, k, int(fitted[e, k]))
            self.width_epoch.fill_(epoch)
            self._block_lat = None
        if self._block_lat is None:
            alpha = self.alphas["ops"]
            self._block_lat = latency.block_table(space.widths()).to(alpha.device, alpha.dtype)

    def expected_latency(self, arch) -> torch.Tensor:
        return self._latency.expected(arch["ops"].weights, arch["depth"].weights, self._block_lat)

    def extra_loss(self, arch, phase):
        if phase != "arch":
            return None
        lat = self.expected_latency(arch)
        self._lat_sum = lat.detach() if self._lat_sum is None else self._lat_sum + lat.detach()
        self._lat_count = (self._lat_count or 0) + 1
        return self.lambda_lat * (lat / self.latency_target - 1).abs()

    # ---- relaxation ----------------------------------------------------------------------------------
    def relax(self, group, phase):
        logits = self.masked_logits(group, self.alphas[group])
        if group == "depth":
            w = F.softmax(logits, dim=-1)
            return ArchWeights(w if phase == "arch" else w.detach())
        if phase == "arch":
            return ArchWeights(F.gumbel_softmax(logits, tau=float(self.tau), hard=False, dim=-1))
        # weights/eval phases run single paths: ``eval`` is the current argmax architecture
        return self.path_arch(logits.detach().argmax(-1).cpu())["ops"]

    def path_arch(self, idx: torch.Tensor) -> dict[str, ArchWeights]:
        """idx (LongTensor[E], CPU): one op per block; only those ops run, with weight 1."""
        K = len(self.spec["ops"].op_names)
        onehot = F.one_hot(idx, K)
        alpha = self.alphas["ops"]
        ops = ArchWeights(onehot.to(alpha.device, alpha.dtype, non_blocking=True), mask=onehot.bool())
        return {"ops": ops, "depth": self.relax("depth", "weights")}

    def sample_paths(self, bi: bool) -> list[torch.Tensor]:
        """The Gumbel path (an op per block from ``softmax(alpha)``) and, if ``bi``, a path uniform over the
        remaining allowed ops. One host copy of the alphas; sampling on the CPU generator."""
        with torch.no_grad():
            logp = F.log_softmax(self.masked_logits("ops", self.alphas["ops"]), dim=-1).cpu()
        gumbel = -torch.log(-torch.log(torch.rand(logp.shape).clamp_min(1e-20)))
        first = (logp + gumbel).argmax(-1)
        if not bi:
            return [first]
        allowed = self.static_mask("ops")
        rest = torch.ones_like(logp, dtype=torch.bool) if allowed is None else allowed.clone()
        rest[torch.arange(len(first)), first] = False
        return [first, torch.multinomial(rest.float(), 1).squeeze(1)]

    # ---- updates -------------------------------------------------------------------------------------
    def _check_resolution(self, space, x):
        if x.shape[-1] != space.config["resolution"] or x.shape[-2] != space.config["resolution"]:
            raise ValueError(
                f"inputs are {list(x.shape[-2:])} but the mbconv space's latency model assumes resolution "
                f"{space.config['resolution']}: pass --space-args '{{\"resolution\": {x.shape[-1]}, ...}}'"
            )

    def wants_arch_step(self, step: int) -> bool:
        return step % self.arch_every == 0  # authors: ``if step % 2 == 0``, step restarting every epoch

    def arch_step(self, ctx: StepContext, train_batch, valid_batch) -> dict:
        self._check_resolution(ctx.module, valid_batch[0])
        self._prepare(ctx.module)
        self.remember_arch_batch(ctx, valid_batch)
        ctx.a_optimizer.zero_grad(set_to_none=True)
        self.arch_backward(ctx, valid_batch)
        ctx.sync_grads(self.arch_parameters())
        self.clip_arch_grads(ctx)
        ctx.precision.step("arch", ctx.a_optimizer)
        with torch.no_grad():
            self._normalise()
        return {}

    def weight_step(self, ctx: StepContext, train_batch):
        x, y = train_batch
        self._check_resolution(ctx.module, x)
        self._prepare(ctx.module)
        ctx.w_optimizer.zero_grad(set_to_none=True)
        total, first_logits = 0.0, None
        for idx in self.sample_paths(bi=not self.arch_frozen()):
            with ctx.precision.autocast():
                logits = ctx.model(x, self.path_arch(idx))
                loss = ctx.criterion(logits, y)
            ctx.precision.scale(loss, "weights").backward()  # one path's graph at a time: one path's memory
            total = total + loss.detach()
            first_logits = logits.detach() if first_logits is None else first_logits
        ctx.precision.unscale_("weights", ctx.w_optimizer)
        ctx.watch_grad_norm(nn.utils.clip_grad_norm_(ctx.module.parameters(), ctx.grad_clip, foreach=True))
        ctx.precision.step("weights", ctx.w_optimizer)
        return total, first_logits

    # ---- derivation ----------------------------------------------------------------------------------
    def parse(self) -> tuple[list[int], list[int]]:
        """Argmax op per block and argmax exit per stage (authors' ``parse_architecture``)."""
        with torch.no_grad():
            ops = self.alphas["ops"].argmax(-1).tolist()
            depths = self.masked_logits("depth", self.alphas["depth"]).argmax(-1).tolist()
        return ops, depths

    def derive(self, space):
        from ..networks import count_flops
        from ..spaces.mbconv import MBConvNet

        latency = self.latency_model(space)
        ops, depths = self.parse()
        widths = space.widths()
        if self.elastic_width:  # the authors fit the widths once more after the last epoch
            widths = fit_widths(latency, ops, depths, widths, space.max_widths(), self.latency_target)
        predicted = latency.derived(ops, depths, widths)
        config = space.derived_config(ops, depths, widths)
        res = space.config["resolution"]
        with torch.random.fork_rng(devices=[]):  # deriving (every epoch's log) must not move the search's RNG
            cost = count_flops(MBConvNet(config), (1, config["in_channels"], res, res))
        return TFNASArch(config, predicted, self.latency_target, latency.table.device, **cost)
