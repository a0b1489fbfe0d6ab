"""Train a derived architecture from scratch (``dnas-fast train``) and measure a search's child network
with its inherited weights (``dnas-fast eval-child``).

Training families and their authors' settings live with their search space's family (``spaces/<family>/``:
``cifar`` and ``imagenet`` in ``spaces/darts``, ``nb201``, ``mbconv``), each on top of ``COMMON_DEFAULTS``; every
one is overridable, and ``log.jsonl``'s first line records each effective value and whether it came from the
authors or the user.

Deviations: one test pass per epoch on every rank (the test set is not sharded, so every rank reports the same
number); each rank draws the same drop-path masks (same seed; the authors train on one GPU).
"""

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    safe_load,
    set_rng_state,
)
from .data.evaluation import build_eval_data
from .data.splits import AUGMENT, generator
from .genotype import EdgeAllGenotype, cell_mask
from .guard import DivergedError, check_state
from .networks import count_macs_m, count_parameters_mb
from .precision import PRECISIONS, Precision
from .preemption import PreemptionSignals
from .rundir import RunLock, append_line, remove_orphans, truncate_log
from .settings import (
    at_least,
    below,
    check_call_args,
    check_fields,
    check_module_fits,
    device_rule,
    from_mapping,
    one_of,
    setting,
)
from .shapes import channels_last_default
from .spaces.family import family_of_train, space_families, space_family, train_families

FORMAT = "dnas_fast.train/1"
# The SGD baseline every training family starts from; each family's ``train_defaults`` sets the rest.
COMMON_DEFAULTS = dict(
    momentum=0.9,
    nesterov=False,
    lr_min=0.0,
    lr_gamma=0.97,
    lr_decay_period=1,
    warmup_epochs=0,
    label_smoothing=0.0,
    auxiliary=False,
    auxiliary_weight=0.4,
    drop_path_prob=0.0,
    cutout_length=0,
    dropout=0.0,
    grad_clip=5.0,
)
LR_SCHEDULES = ("cosine", "step")


# ---- architectures ---------------------------------------------------------------------------------------
@dataclass
class Architecture:
    """What to build: ``kind`` names its space family (``darts``: a Genotype, ``nb201``: an arch string,
    ``mbconv``: a derived TF-NAS network config), which reads, writes and builds ``value``."""

    kind: str
    value: object

    def describe(self) -> str:
        return space_family(self.kind).describe(self.value)

    def to_json(self):
        return space_family(self.kind).to_json(self.value)


def architecture_from_json(data, where: str) -> Architecture:
    for family in space_families():
        value = family.from_json(data)
        if value is not None:
            return Architecture(family.name, value)
    labels = [family.label for family in space_families()]
    raise ValueError(f"{where} holds no {', '.join(labels[:-1])} or {labels[-1]}")


def resolve_architecture(text: str) -> Architecture:
    """GENOTYPE of ``dnas-fast train``: a run directory or its ``genotype.json``, or a form a space family reads
    (a ``Genotype(...)`` string, a name from the authors' genotypes.py files (``DARTS_V2``, ``PC_DARTS_cifar``,
    ...), an NB201 arch string)."""
    text = text.strip()
    for family in space_families():
        value = family.from_text(text)
        if value is not None:
            return Architecture(family.name, value)
    path = Path(text)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise FileNotFoundError(f"{text} holds no genotype.json: is it a finished dnas-fast search?")
    if path.is_file():
        try:
            return architecture_from_json(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON: {err}") from err
    forms = ["a run directory", "a genotype.json", *(f for family in space_families() for f in family.text_forms)]
    raise ValueError(f"cannot read architecture {text[:80]!r}: give {', '.join(forms[:-1])} or {forms[-1]}")


def authors_defaults(family: str) -> dict:
    """The authors' value of every family-dependent setting of training family ``family``."""
    return {**COMMON_DEFAULTS, **family_of_train(family).train_defaults[family]}


def train_family_rule(name, value):
    one_of(train_families())(name, value)


# ---- configuration ---------------------------------------------------------------------------------------
# build_eval_data's arguments that the config sets itself (--data-args may not)
DATA_ARGS_FROM_CONFIG = {"name", "root", "batch_size", "seed", "rank", "world_size", "num_workers"}


@dataclass
class TrainConfig:
    """None means "the family's authors' value" (:func:`authors_defaults`); ``family`` None lets the architecture's
    space family pick it (DARTS: ``imagenet`` on ``imagefolder`` data, else ``cifar``). Every field is checked
    (type, range, finiteness) by :meth:`validate` wherever the config comes from (:mod:`~dnas_fast.settings`)."""

    arch: str = "DARTS_V2"
    family: str | None = setting(None, train_family_rule)
    data: str = "digits"
    data_root: str | None = None
    data_args: dict = setting(factory=dict)
    epochs: int | None = setting(None, at_least(1))
    batch_size: int | None = setting(None, at_least(1))
    lr: float | None = setting(None, at_least(0, above=True))
    lr_schedule: str | None = setting(None, one_of(LR_SCHEDULES))
    lr_min: float | None = setting(None, at_least(0))
    lr_gamma: float | None = setting(None, at_least(0, above=True))
    lr_decay_period: int | None = setting(None, at_least(1))
    warmup_epochs: int | None = setting(None, at_least(0))
    momentum: float | None = setting(None, below(1))
    nesterov: bool | None = None
    weight_decay: float | None = setting(None, at_least(0))
    grad_clip: float | None = setting(None, at_least(0))  # 0: no clipping
    label_smoothing: float | None = setting(None, below(1))
    auxiliary: bool | None = None
    auxiliary_weight: float | None = setting(None, at_least(0))
    drop_path_prob: float | None = setting(None, below(1))
    cutout_length: int | None = setting(None, at_least(0))
    dropout: float | None = setting(None, below(1))
    C: int | None = setting(None, at_least(0))  # 0: the mbconv family's network sets its own widths
    layers: int | None = setting(None, at_least(0))
    seed: int = setting(0, below(2**63))
    device: str = setting("auto", device_rule)
    precision: str = setting("fp32", one_of(PRECISIONS))
    channels_last: bool | None = None  # None: the device's default (shapes.channels_last_default)
    deterministic: bool = False
    max_steps_per_epoch: int | None = setting(None, at_least(1))
    num_workers: int = setting(0, at_least(0))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return from_mapping(cls, values, "train")

    def resolved(self, arch: Architecture) -> tuple["TrainConfig", dict]:
        """(copy with every None filled from the family defaults, {setting: "user" | "authors"})."""
        space = space_family(arch.kind)
        family = self.family or space.default_train_family(self.data)
        if family_of_train(family) is not space:
            raise ValueError(f"a {arch.kind} architecture cannot be trained as family {family!r}")
        values, sources = dataclasses.asdict(self), {}
        for key, default in authors_defaults(family).items():
            sources[key] = "user" if values[key] is not None else "authors"
            if values[key] is None:
                values[key] = default
        space.adjust_defaults(family, values, sources)
        values["family"] = family
        config = TrainConfig(**values)
        config.validate()
        return config, sources

    def validate(self) -> None:
        """Check every field (None: the family's value, filled by ``resolved``)."""
        check_fields(self)
        check_call_args("--data-args", f"data set {self.data!r}", build_eval_data, self.data_args,
                        DATA_ARGS_FROM_CONFIG)  # fmt: skip
        if self.family is not None and family_of_train(self.family).sized and 0 in (self.C, self.layers):
            raise ValueError(f"the {self.family} family needs C >= 1 and layers >= 1, got C={self.C}, "
                             f"layers={self.layers}")  # fmt: skip

    def lr_at(self, epoch: int) -> float:
        """Learning rate of epoch ``epoch`` (the authors step their schedulers once per epoch, before it)."""
        if self.lr_schedule == "cosine":
            lr = self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        else:
            lr = self.lr * self.lr_gamma ** (epoch // self.lr_decay_period)
        if epoch < self.warmup_epochs:  # TF-NAS: linear warm-up over the first epochs
            lr *= (epoch + 1) / self.warmup_epochs
        return lr


def build_network(arch: Architecture, config: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    return space_family(arch.kind).build_network(arch.value, config, in_channels, num_classes)


def cutout(x: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """quark0/darts ``utils.Cutout`` per image of a normalised batch: zero a ``length`` square (clipped at the
    border) centred at a random pixel. x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]."""
    N, _, H, W = x.shape
    cy, cx = torch.randint(0, H, (N,), generator=gen), torch.randint(0, W, (N,), generator=gen)
    rows, cols = torch.arange(H), torch.arange(W)
    inside_y = (rows >= (cy - length // 2).clamp(0, H)[:, None]) & (rows < (cy + length // 2).clamp(0, H)[:, None])
    inside_x = (cols >= (cx - length // 2).clamp(0, W)[:, None]) & (cols < (cx + length // 2).clamp(0, W)[:, None])
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.device, x.dtype)


def split_logits(out):
    """(logits, logits_aux or None) from any evaluation network's output."""
    return out if isinstance(out, tuple) else (out, None)


@torch.no_grad()
def evaluate(model: nn.Module, split, device, precision: str = "fp32", arch=None) -> dict:
    """Loss, top-1 and top-5 accuracy (fractions) of ``model`` on ``split`` in eval mode."""
    model.eval()
    loss, top1, top5, seen = 0.0, 0, 0, 0
    criterion = nn.CrossEntropyLoss(reduction="sum")
    for x, y in split:
        x, y = x.to(device), y.to(device)
        with Precision(precision, device).autocast():
            logits, _ = split_logits(model(x) if arch is None else model(x, arch))
        logits = logits.float()
        loss += criterion(logits, y).item()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(1).sum().item()
        seen += len(y)
    return {"test_loss": loss / seen, "test_acc": top1 / seen, "test_top5": top5 / seen}


# ---- the training loop -----------------------------------------------------------------------------------
class Trainer:
    """Owns the network, the optimizer and the run directory (rank 0 writes it)."""

    def __init__(self, config: TrainConfig, run_dir, rank: int = 0, world_size: int = 1, arch=None):
        """``arch``: the :class:`Architecture` to train (a resumed run's stored copy), else ``config.arch``'s."""
        from .search import pick_device

        self.arch = arch or resolve_architecture(config.arch)
        self.config, self.sources = config.resolved(self.arch)
        config = self.config
        self.rank, self.world_size, self.run_dir = rank, world_size, Path(run_dir)
        self.device = pick_device(config.device) if world_size == 1 else distributed.local_device(config.device)
        if config.channels_last is None:
            config.channels_last = channels_last_default(self.device)
            self.sources["channels_last"] = f"default on {self.device.type}"
        torch.manual_seed(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.data = build_eval_data(
            config.data,
            root=config.data_root,
            batch_size=config.batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            num_workers=config.num_workers,
            **config.data_args,
        )
        space_family(self.arch.kind).check_data(config, self.data.image_size)
        check_module_fits(lambda: build_network(self.arch, config, self.data.in_channels, self.data.num_classes),
                          self.device)  # fmt: skip
        self.net = build_network(self.arch, config, self.data.in_channels, self.data.num_classes).to(self.device)
        shape = (1, self.data.in_channels, self.data.image_size, self.data.image_size)
        self.params_mb, self.macs_m = count_parameters_mb(self.net), count_macs_m(self.net, shape)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=self.memory_format)
        self.model = distributed.wrap(self.net) if world_size > 1 else self.net
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.precision = Precision(config.precision, self.device)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        self.epoch = 0  # epochs completed
        self.step_in_epoch, self.partial = 0, None  # inside the running epoch: steps done, running sums
        self.signals = PreemptionSignals()

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state(self) -> dict:
        return {
            "format": FORMAT, "config": dataclasses.asdict(self.config), "arch": self.arch.to_json(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "partial": self.partial,
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
            "precision": self.precision.state_dict(),
        }  # fmt: skip

    def load(self, ckpt: dict) -> None:
        ignore = ("device", "num_workers", "channels_last")  # how it runs, not what it computes
        stored = {k: v for k, v in ckpt["config"].items() if k not in ignore}
        clashes = {
            k: (stored[k], v)
            for k, v in dataclasses.asdict(self.config).items()
            if k not in ignore and stored.get(k) != v
        }
        if clashes:
            raise CheckpointError(f"--resume continues the stored run; these settings differ (stored, now): {clashes}")
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.precision.load_state_dict(ckpt["precision"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt.get("step_in_epoch", 0)
        partial = ckpt.get("partial")
        self.partial = partial and {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in partial.items()}

    def header(self) -> dict:
        settings = {
            k: {"value": v, "source": self.sources.get(k, "user")} for k, v in dataclasses.asdict(self.config).items()
        }
        return {"header": True, "family": self.config.family, "architecture": self.arch.describe(),
                "params_mb": self.params_mb, "macs_m": self.macs_m, "world_size": self.world_size,
                "settings": settings}  # fmt: skip

    def train_epoch(self) -> dict:
        config, net = self.config, self.net
        lr = config.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if hasattr(net, "drop_path_prob"):
            net.drop_path_prob = config.drop_path_prob * self.epoch / config.epochs
        first = self.step_in_epoch  # > 0 when resuming inside this epoch
        self.data.train.set_epoch(self.epoch, start_batch=first)
        self.model.train()
        steps = min(len(self.data.train), config.max_steps_per_epoch or len(self.data.train))
        if self.partial is None:
            zero = torch.zeros((), device=self.device)
            self.partial = {"loss_sum": zero, "correct": zero.clone(), "seen": 0}
        partial = self.partial
        bar = tqdm(
            zip(range(first, steps), self.data.train), total=steps, initial=first,
            desc=f"epoch {self.epoch + 1}/{config.epochs}", disable=None if self.rank == 0 else True, leave=False,
        )  # fmt: skip
        start = time.perf_counter()
        for b, (x, y) in bar:
            loss, logits = self.train_step(b, x, y)
            partial["loss_sum"] += loss.detach() * len(y)
            partial["correct"] += (logits.detach().argmax(1) == y).sum()
            partial["seen"] += len(y)
            self.step_in_epoch = b + 1
            if not bar.disable:
                rate = (b + 1 - first) * len(y) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
            if self.step_in_epoch < steps and self.signals.agreed(self.world_size, self.device):
                self.save()  # mid-epoch: resumes at the next step, same batches, same random draws
                self.signals.raise_if_requested(self.epoch, self.step_in_epoch, self.checkpoint_path)
        train_loss = (partial["loss_sum"] / partial["seen"]).item()
        if not math.isfinite(train_loss):  # divergence guard: never checkpoint a non-finite network
            raise DivergedError(
                f"diverged: non-finite training loss in epoch {self.epoch + 1}; stopped without saving, the "
                f"checkpoint of epoch {self.epoch} is kept: lower --lr or use --precision fp32, then --resume"
            )
        train_acc = (partial["correct"] / partial["seen"]).item()
        self.step_in_epoch, self.partial = 0, None
        return {"train_loss": train_loss, "train_acc": train_acc, "lr": lr,
                "drop_path_prob": getattr(net, "drop_path_prob", 0.0)}  # fmt: skip

    def train_step(self, b: int, x, y):
        """One weight update on batch ``b`` of the epoch; returns (loss, logits)."""
        config, precision = self.config, self.precision
        if config.cutout_length:
            x = cutout(x, config.cutout_length, generator(AUGMENT, config.seed, self.epoch, self.rank, 7, b))
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logits, logits_aux = split_logits(self.model(x))
            loss = self.criterion(logits.float(), y)
            if logits_aux is not None:
                loss = loss + config.auxiliary_weight * self.criterion(logits_aux.float(), y)
        precision.scale(loss, "weights").backward()
        precision.unscale_("weights", self.optimizer)  # before clipping
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), config.grad_clip)
        precision.step("weights", self.optimizer)
        return loss, logits

    def save(self) -> None:
        state = self.state()
        check_state(state, f"in epoch {self.epoch + (1 if self.step_in_epoch else 0)}")  # every rank: no hang
        if self.rank == 0:
            atomic_torch_save(state, self.checkpoint_path)
        if self.world_size > 1:
            distributed.barrier()

    def run(self, log=print, stop_after: int | None = None) -> dict:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / "log.jsonl").exists():  # a fresh run; a resumed one keeps its header
                atomic_write_text(self.run_dir / "log.jsonl", json.dumps(self.header()) + "\n")
                atomic_write_text(self.run_dir / "architecture.json", json.dumps(self.arch.to_json()) + "\n")
            log(f"{self.config.family} network: {self.params_mb:.3f} M params, {self.macs_m:.1f} M MACs")
        last = self.config.epochs if stop_after is None else min(self.config.epochs, self.epoch + stop_after)
        record = None
        with self.signals:
            while self.epoch < last:
                record = self.run_epoch(log)
                self.signals.agreed(self.world_size, self.device)
                self.signals.raise_if_requested(self.epoch, self.step_in_epoch, self.checkpoint_path)
        return self.finish(record)

    def run_epoch(self, log) -> dict:
        """Train (or finish) one epoch, test, append its log.jsonl line, checkpoint; returns the line."""
        from .search import peak_memory_mb

        start = time.perf_counter()
        train = self.train_epoch()
        if self.world_size > 1:  # DDP syncs BN statistics only at the start of a forward: take rank 0's
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, 0)
        test = evaluate(self.net, self.data.test, self.device, self.config.precision)
        self.epoch += 1
        record = {"epoch": self.epoch, **train, **test, "epoch_time": time.perf_counter() - start,
                  "peak_memory_mb": peak_memory_mb(self.device)}  # fmt: skip
        if self.rank == 0:
            append_line(self.run_dir / "log.jsonl", record)
            log(
                f"epoch {self.epoch}/{self.config.epochs}  train {record['train_loss']:.3f}/"
                f"{record['train_acc']:.3f}  test {record['test_loss']:.3f}/{record['test_acc']:.4f} "
                f"(top-5 {record['test_top5']:.4f})  lr {train['lr']:.2e}  {record['epoch_time']:.1f}s"
            )
        self.save()
        return record

    def finish(self, record) -> dict:
        if record is None:  # nothing left to train: measure the stored network
            record = {"epoch": self.epoch, **evaluate(self.net, self.data.test, self.device, self.config.precision)}
        result = {"epochs": self.epoch, "test_acc": record["test_acc"], "test_top5": record["test_top5"],
                  "test_loss": record["test_loss"], "params_mb": self.params_mb, "macs_m": self.macs_m,
                  "family": self.config.family, "data": self.config.data}  # fmt: skip
        if self.rank == 0:
            atomic_write_text(self.run_dir / "result.json", json.dumps(result, indent=1) + "\n")
        return result


def load_train_checkpoint(path) -> dict:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dnas-fast train checkpoint (expected format {FORMAT})")
    return ckpt


def run_train(config: TrainConfig, run_dir, resume=False, rank=0, world_size=1, log=print, stop_after=None) -> dict:
    """Train (or resume) in ``run_dir``, which rank 0 holds locked meanwhile; returns the result (test accuracy,
    params, MACs). A resumed run trains the architecture its checkpoint stored (not ``config.arch``'s path again,
    which may be relative to another working directory or changed since)."""
    run_dir = Path(run_dir)
    with RunLock(run_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            remove_orphans(run_dir)
        if not resume:
            if rank == 0 and (run_dir / "checkpoint.pt").exists():
                raise FileExistsError(f"{run_dir} already holds a training run; pass --resume or pick a new --out")
            trainer = Trainer(config, run_dir, rank, world_size)
        else:
            ckpt = load_train_checkpoint(run_dir / "checkpoint.pt")
            trainer = Trainer(
                config, run_dir, rank, world_size, arch=architecture_from_json(ckpt["arch"], "checkpoint")
            )
            trainer.load(ckpt)
            if rank == 0:
                truncate_log(run_dir, trainer.epoch)
        return trainer.run(log=log, stop_after=stop_after)


# ---- the child network of a search -----------------------------------------------------------------------
def child_arch_weights(space, strategy) -> dict:
    """One-hot ArchWeights of the child that ``strategy.derive`` picks: on the DARTS space its genotype's
    (op, input) pairs (DARTS: two inputs per node; PR-DARTS: the top two pairs, maybe both on one edge; SNAS:
    every edge, one whose argmax is ``none`` dropped), elsewhere each edge's top op. Only the chosen ops run
    (the rest of the supernet is skipped), so the child computes with exactly the weights it inherits."""
    from .arch import ArchWeights
    from .spaces import DartsSpace

    spec = space.arch_spec()
    device = next(space.parameters()).device
    if isinstance(space, DartsSpace):
        genotype = strategy.derive(space)
        edge_all = isinstance(genotype, EdgeAllGenotype)
        genes = {"normal": genotype.normal, "reduce": genotype.reduce}
        chosen = {group: cell_mask(genes[group], spec[group].op_names, edge_all) for group in spec}
    else:  # NB201 and MBConv derive each edge's (allowed) argmax
        scores, chosen = strategy.scores(), {}
        for group, g in spec.items():
            s = scores[group].masked_fill(~g.allowed, float("-inf")) if g.allowed is not None else scores[group]
            chosen[group] = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.argmax(1, keepdim=True), True)
    return {
        group: ArchWeights(mask.to(device=device, dtype=torch.float32), mask=mask) for group, mask in chosen.items()
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device, arch) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as exact averages over ``batches``
    (train mode, no gradient); returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    n = 0
    for x, _ in batches:
        model(x.to(device), arch)
        n += 1
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return n


def eval_child(run_dir, recal_batches: int = 20, device: str = "auto", log=print) -> dict:
    """Supernet vs. child (``child_arch_weights``) accuracy on the search's validation split (``valid_split``
    ``test``: the test split), the child with and without BN recalibration."""
    from .search import describe, pick_device, restore_search, search_data, stored_config

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    dev = pick_device(device)
    space, strategy = restore_search(ckpt, dev)
    config = stored_config(ckpt)
    data = search_data(config, config.batch_size)
    data.train.set_epoch(0)
    result = {"epochs_searched": ckpt["epoch"], "architecture": describe(strategy.derive(space))[0],
              "validation": data.validation}  # fmt: skip
    result["supernet_acc"] = evaluate(space, data.valid, dev, arch=strategy.arch_weights("eval"))["test_acc"]
    child = child_arch_weights(space, strategy)
    result["child_acc"] = evaluate(space, data.valid, dev, arch=child)["test_acc"]
    used = recalibrate_bn(space, (b for _, b in zip(range(recal_batches), data.train)), dev, child)
    result["child_recalibrated_acc"] = evaluate(space, data.valid, dev, arch=child)["test_acc"]
    result["recal_batches"] = used
    atomic_write_text(run_dir / "eval_child.json", json.dumps(result, indent=1) + "\n")
    log(
        f"supernet {result['supernet_acc']:.4f}  child {result['child_acc']:.4f}  "
        f"child + BN recalibration ({used} batches) {result['child_recalibrated_acc']:.4f}  ({data.validation})"
    )
    return result


# ---- command line ----------------------------------------------------------------------------------------
def register_cli(subparsers) -> None:
    from .cli import _bool_arg, _json_arg, positive_int

    p = subparsers.add_parser("train", help="train a derived architecture from scratch and report test accuracy")
    p.add_argument(
        "arch",
        metavar="GENOTYPE",
        nargs="?",
        help="run dir, genotype.json, Genotype(...) string, known name (DARTS_V2, ...) or NB201 string "
        "(not needed with --resume)",
    )
    parse = {int: int, float: float, bool: _bool_arg, str: str, dict: _json_arg}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "arch":
            kind = next(t for t in parse if t.__name__ in str(f.type))  # "int | None" -> int
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=parse[kind], default=None)
    p.add_argument("--out", help="run directory (default runs/train-<arch>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-after", type=positive_int, help="train at most this many epochs now (resume later)")
    p.add_argument("--threads", type=positive_int, help="intra-op CPU threads (torch.set_num_threads)")
    p.set_defaults(func=cmd_train)
    p = subparsers.add_parser("eval-child", help="accuracy of a search's child network with inherited weights")
    p.add_argument("run_dir")
    p.add_argument("--recal-batches", type=positive_int, default=20, help="train batches for BN recalibration")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval_child)


def cmd_train(args) -> int:
    from .plots import plot_run

    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR")
        values = {**load_train_checkpoint(Path(args.out) / "checkpoint.pt")["config"], **values}
    elif args.arch is None:
        raise ValueError("GENOTYPE is required (or --resume --out RUN_DIR)")
    config = TrainConfig.from_dict(values)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(config.arch).name[:32])
    out = args.out or f"runs/train-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rank, world_size = distributed.init(config.device)
    try:
        result = run_train(
            config, out, resume=args.resume, rank=rank, world_size=world_size, stop_after=args.stop_after
        )
        if rank == 0:
            plot_run(out)
            print(f"run directory: {out}")
            print(json.dumps(result))
    finally:
        distributed.shutdown()
    return 0


def cmd_eval_child(args) -> int:
    eval_child(args.run_dir, args.recal_batches, args.device)
    return 0


__all__ = ["Architecture", "TrainConfig", "Trainer", "eval_child", "resolve_architecture", "run_train"]
