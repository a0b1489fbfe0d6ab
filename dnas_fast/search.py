"""The search loop: weights on the train split, architecture on the validation split (bilevel), or weights and
architecture from one loss on the train split (single-level).

Defaults are the DARTS paper's CIFAR-10 search settings (SGD momentum 0.9, lr 0.025 cosine to 0.001,
weight decay 3e-4, grad clip 5, batch 64, 50 epochs; alphas: Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
A strategy's ``preset`` (its authors' search script, which may depend on the space: PC-DARTS's ImageNet stem)
replaces any of these the user leaves unset, and may set space and strategy arguments the user did not set;
log.jsonl's first line records every effective setting and where it came from (per key for ``space_args`` and
``strategy_args`` where a preset set some).

Loop details a preset may change: ``scheduler_step`` (``after``: the lr scheduler steps after each epoch;
``before``: before each epoch as in the authors' PyTorch 0.4 scripts, so epoch ``e`` runs at the cosine value of
``e + 1`` and the last epoch at ``lr_min``), ``lr_warmup_epochs`` (epoch ``e`` below it runs at ``lr_e * (e + 1) /
lr_warmup_epochs``, PC-DARTS ``train_search_imagenet.py``). The strategy sets the step order, the validation
sampling, per-epoch optimizer resets and early stops (:mod:`~dnas_fast.strategies.base`).

``valid_split``: ``train`` (default) splits the training set by ``train_portion`` (DARTS); ``test`` (single-level
strategies only; SNAS's preset) gives the weights the whole training set and takes the validation numbers from
the data set's test split, with a logged fallback to the ``train`` split where there is none
(:func:`~dnas_fast.data.build_search_data`).
"""

import contextlib
import dataclasses
import json
import math
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from tqdm import tqdm

from . import autobatch, cuda_graphs, distributed
from .checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .data import VALID_SPLITS, build_search_data
from .data.splits import derive_seed
from .genotype import Genotype, genotype_to_json
from .guard import DivergedError, DivergenceGuard, check_state
from .precision import PRECISIONS, Precision
from .preemption import CheckpointCadence, PreemptionSignals
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
from .spaces import build_space, space_class
from .strategies import StepContext, build_strategy, strategy_class
from .strategies.base import weight_optimizer

# The loop settings a strategy's ``preset`` may set. SearchConfig leaves them None ("not set by the user");
# ``resolved`` fills them from the preset, else from here.
LOOP_DEFAULTS = {"epochs": 50, "batch_size": 64, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": False,
                 "weight_decay": 3e-4, "grad_clip": 5.0, "valid_split": "train", "scheduler_step": "after",
                 "lr_warmup_epochs": 0}  # fmt: skip
SCHEDULER_STEPS = ("after", "before")
# preset keys that are not settings: the dicts merged into the user's arguments, and the batch at or below which
# a preset's lr warm-up is off (PC-DARTS ImageNet: ``if epoch < 5 and args.batch_size > 256``)
PRESET_ARGS = ("space_args", "strategy_args")
WARMUP_ABOVE_BATCH = "lr_warmup_above_batch"
RANDOM_VALID = 3  # derive_seed stream of the per-step random validation batches (data.splits uses 0-2)


# build_search_data's arguments that the config sets itself (--data-args may not)
DATA_ARGS_FROM_CONFIG = {"name", "root", "batch_size", "train_portion", "valid_split", "seed", "rank",
                         "world_size", "num_workers"}  # fmt: skip


def batch_size_rule(name, value):
    if value != "auto" and not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be a positive integer or 'auto', got {value!r}")


def fraction_rule(name, value):
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")


def memory_rule(name, value):
    autobatch.parse_memory(value)  # raises on a malformed size


def cadence_rule(name, value):
    CheckpointCadence.parse(value)  # raises on a malformed cadence


@dataclass
class SearchConfig:
    """Fields left None take the strategy's ``preset`` value, else ``LOOP_DEFAULTS``. Every field is checked
    (type, range, finiteness) by :meth:`validate` wherever the config comes from (:mod:`~dnas_fast.settings`)."""

    space: str = "darts"
    space_args: dict = setting(factory=dict)
    strategy: str = "darts"
    strategy_args: dict = setting(factory=dict)
    data: str = "digits"
    data_root: str | None = None
    data_args: dict = setting(factory=dict)
    epochs: int | None = setting(None, at_least(1))
    batch_size: int | str | None = setting(None, batch_size_rule)  # "auto": the largest that fits (autobatch)
    train_portion: float = setting(0.5, fraction_rule)
    valid_split: str | None = setting(None, one_of(VALID_SPLITS))  # "train": split by train_portion; "test": all
    lr: float | None = setting(None, at_least(0, above=True))
    lr_min: float | None = setting(None, at_least(0))
    momentum: float | None = setting(None, below(1))
    nesterov: bool | None = None
    weight_decay: float | None = setting(None, at_least(0))
    grad_clip: float | None = setting(None, at_least(0))  # 0: no clipping
    # "after" each epoch, or "before" it (the authors' PyTorch 0.4 order: epoch e runs at the value of e + 1)
    scheduler_step: str | None = setting(None, one_of(SCHEDULER_STEPS))
    lr_warmup_epochs: int | None = setting(None, at_least(0))  # linear lr warm-up: epoch e < W at lr_e (e + 1) / W
    memory_limit: str | None = setting(None, memory_rule)  # bound of batch_size "auto" ("8G"); CUDA: free memory
    scale_lr: bool = False  # lr (preset or default, not the user's) x batch_size / the preset's (default) batch
    seed: int = setting(0, below(2**63))
    deterministic: bool = False
    device: str = setting("auto", device_rule)
    backend: str | None = None
    max_steps_per_epoch: int | None = setting(None, at_least(1))
    num_workers: int = setting(0, at_least(0))
    precision: str = setting("fp32", one_of(PRECISIONS))  # autocast of the forward; fp16 adds loss scaling
    channels_last: bool | None = None  # network and batches in torch.channels_last; None: the device's default
    checkpoint_every: str | None = setting(None, cadence_rule)  # also mid-epoch: every N steps ("500") or "10m"
    cuda_graphs: bool = False  # capture the search step as a CUDA graph and replay it (dnas_fast.cuda_graphs)

    @classmethod
    def from_dict(cls, values: dict) -> "SearchConfig":
        return from_mapping(cls, values, "search")

    def validate(self) -> None:
        """Check every field (None: unset, filled by ``resolved``)."""
        check_fields(self)
        if self.nesterov and self.momentum is not None and self.momentum <= 0:
            raise ValueError(f"nesterov needs a positive momentum, got momentum={self.momentum}")
        if self.cuda_graphs and self.device != "auto" and torch.device(self.device).type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got device {self.device!r}")
        check_call_args(
            "--data-args", f"data set {self.data!r}", build_search_data, self.data_args, DATA_ARGS_FROM_CONFIG
        )

    def resolved(self, strategy_name: str, preset: dict) -> tuple["SearchConfig", dict]:
        """(copy with every unset loop setting filled, {field: source}); a source is ``user``, ``default`` or
        ``preset:<strategy>``. A field outside ``LOOP_DEFAULTS`` counts as ``default`` while it equals its default.
        The preset's ``space_args`` / ``strategy_args`` fill the keys the user did not set; the source of such a
        field is then ``{key: source}``. ``batch_size`` ``"auto"`` and ``scale_lr`` stay to be applied
        (``Searcher.pick_batch_size``)."""
        values, sources = dataclasses.asdict(self), {}
        builtin = dataclasses.asdict(SearchConfig())
        by_preset = f"preset:{strategy_name}"
        for name, value in values.items():
            if name in LOOP_DEFAULTS and value is None:
                values[name] = preset.get(name, LOOP_DEFAULTS[name])
                sources[name] = by_preset if name in preset else "default"
            elif name in PRESET_ARGS and set(preset.get(name, {})) - set(value):
                values[name] = {**preset[name], **value}
                sources[name] = {k: "user" if k in value else by_preset for k in values[name]}
            else:
                sources[name] = "default" if name not in LOOP_DEFAULTS and value == builtin[name] else "user"
        config = SearchConfig(**values)
        config.validate()
        return config, sources


def search_data(config: SearchConfig, batch_size: int, rank: int = 0, world_size: int = 1):
    """The search data of a resolved ``config`` (the run's and eval-child's, so both see the same splits)."""
    return build_search_data(
        config.data, root=config.data_root, batch_size=batch_size, train_portion=config.train_portion,
        valid_split=config.valid_split, seed=config.seed, rank=rank, world_size=world_size,
        num_workers=config.num_workers, **config.data_args,
    )  # fmt: skip


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def describe(derived) -> tuple[str, str]:
    """(human text, JSON) of a derived architecture."""
    if isinstance(derived, Genotype):
        return repr(derived), genotype_to_json(derived)
    if hasattr(derived, "to_json"):
        return str(derived), derived.to_json()
    return str(derived), json.dumps(derived)


@contextlib.contextmanager
def blame_args(kind: str, name: str, user_args: dict):
    """A one-line ValueError naming the user's ``--{kind}-args`` when building from them fails (a wrong key or a
    wrong type, e.g. ``{"C": "x"}``, surfaces deep inside a constructor as a TypeError)."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise ValueError(f"{kind} {name!r} cannot be built with --{kind}-args {user_args}: {err}") from err


def blamed_build(kind: str, name: str, user_args: dict, cls: type, args: dict | None = None, device=None):
    """``cls(**args)`` (default: the user's ``--{kind}-args``, already checked by ``check_call_args``), a failure
    blamed on them; given a ``device``, its weights' size measured on the meta device first and refused if they
    cannot fit there."""
    args = user_args if args is None else args
    with blame_args(kind, name, user_args):
        if device is None:
            return cls(**args)
        check_module_fits(lambda: cls(**args), device)
        return cls(**args).to(device)


class Searcher:
    """Owns the space, the strategy, the optimizers and the run directory (rank 0 writes it)."""

    def __init__(self, config: SearchConfig, run_dir, rank: int = 0, world_size: int = 1, data=None):
        """``data``: the search data, built from the config when None (the auto-batch trial steps pass a stand-in
        with ``in_channels`` and ``num_classes``)."""
        config.validate()
        self.rank, self.world_size = rank, world_size
        self.run_dir = Path(run_dir)
        self.device = pick_device(config.device) if world_size == 1 else distributed.local_device(config.device)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        # the user's arguments, checked once, before anything is built or any data read
        strategy_cls, space_cls = strategy_class(config.strategy), space_class(config.space)
        check_call_args("--strategy-args", f"strategy {config.strategy!r}", strategy_cls, config.strategy_args)
        check_call_args("--space-args", f"space {config.space!r}", space_cls, config.space_args, sizes=True)
        self.strategy = blamed_build("strategy", config.strategy, config.strategy_args, strategy_cls)
        self.preset = self.strategy.preset(config.space, config.space_args)
        preset_args = self.preset.get("strategy_args", {})
        if set(preset_args) - set(config.strategy_args):  # the authors' values of arguments the user left
            args = {**preset_args, **config.strategy_args}
            self.strategy = blamed_build("strategy", config.strategy, config.strategy_args, strategy_cls, args)
        config, self.sources = config.resolved(config.strategy, self.preset)
        if config.channels_last is None:
            config.channels_last = channels_last_default(self.device)
            self.sources["channels_last"] = f"default on {self.device.type}"
        if config.valid_split == "test" and self.strategy.bilevel:  # its architecture steps would fit the test set
            raise ValueError(f"valid_split 'test' needs a single-level strategy; {config.strategy!r} is bilevel")
        self.auto_batch: autobatch.AutoBatch | None = None
        if data is None:
            config = self.pick_batch_size(config)
            data = self.build_data(config, config.batch_size)
        self.config, self.data = config, data
        torch.manual_seed(config.seed)  # after any auto-batch trials: the same start as with that batch given
        from_data = {"in_channels": self.data.in_channels, "num_classes": self.data.num_classes}
        clash = sorted(set(from_data) & set(config.space_args))
        if clash:
            raise ValueError(f"--space-args may not set {clash}: the data set {config.data!r} sets them ({from_data})")
        space_args = {**from_data, **config.space_args}
        if config.backend is not None:
            space_args["backend"] = config.backend
        self.base_space_args = self.strategy.adapt_space_config(space_args)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.precision = Precision(config.precision, self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.epoch = 0  # epochs completed
        stage = self.strategy.stage_space(0, config.epochs, self.base_space_args)
        self.build_stage(self.base_space_args if stage is None else stage, check=True)
        # inside the running epoch: steps done, validation batches drawn in the current pass, running sums
        self.step_in_epoch, self.valid_pos, self.partial = 0, 0, None
        self.cadence = CheckpointCadence.parse(config.checkpoint_every)
        self.signals = PreemptionSignals()
        if world_size > 1 and self.cadence.seconds is not None:  # ranks' clocks differ: they would save apart
            raise ValueError("under torchrun, checkpoint_every must count steps (e.g. 500), not minutes")
        self.guard = DivergenceGuard(self.device)
        self.captured = cuda_graphs.captured_step(self) if config.cuda_graphs else None

    def build_stage(self, space_args: dict, check: bool = False) -> None:
        """Build the space from ``space_args``, the strategy's alphas, both optimizers and the lr schedule; once
        per run, or at each stage start of a staged strategy (P-DARTS), where all of them start anew."""
        config = self.config
        if check:
            self.space = blamed_build("space", config.space, config.space_args, space_class(config.space),
                                      space_args, self.device)  # fmt: skip
        else:
            self.space = None  # free the previous stage's network first
            self.space = build_space(config.space, **space_args).to(self.device)
        self.space.to(memory_format=self.memory_format)
        self.strategy.setup(self.space.arch_spec(), self.device)
        self.model = distributed.wrap(self.space) if self.world_size > 1 else self.space
        self.w_optimizer = weight_optimizer(
            self.space.parameters(), config.lr, config.momentum, config.weight_decay, config.nesterov
        )
        with blame_args("strategy", config.strategy, config.strategy_args):
            self.a_optimizer = self.strategy.make_arch_optimizer()
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_optimizer, self.strategy.stage_epochs(self.epoch, config.epochs), config.lr_min
        )
        if config.scheduler_step == "before":  # the authors' first scheduler.step() before epoch 0
            with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": that is the point
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()

    def enter_stage(self, log=print) -> None:
        """At an epoch start: a new stage of a staged strategy, if one starts here (a resumed epoch has started)."""
        if self.step_in_epoch == 0 and self.epoch > 0:
            stage = self.strategy.stage_space(self.epoch, self.config.epochs, self.base_space_args)
            if stage is not None:
                self.build_stage(stage)
                self.captured = cuda_graphs.captured_step(self) if self.config.cuda_graphs else None
                if self.rank == 0:
                    ops = {g: len(s.op_names) if s.allowed is None else int(s.allowed.sum(-1).max())
                           for g, s in self.space.arch_spec().items()}  # fmt: skip
                    cells = f"{len(self.space.cells)} cells, " if hasattr(self.space, "cells") else ""
                    log(f"{self.config.strategy}: a new stage from epoch {self.epoch + 1}: {cells}ops per edge {ops}")

    def build_data(self, config: SearchConfig, batch_size: int):
        return search_data(config, batch_size, self.rank, self.world_size)

    def pick_batch_size(self, config: SearchConfig) -> SearchConfig:
        """Apply ``batch_size`` "auto" (measured, :mod:`~dnas_fast.autobatch`) and ``scale_lr``; update sources."""
        if config.batch_size == "auto":
            if self.world_size > 1:  # ranks would measure apart and could pick different batches
                raise ValueError("batch_size auto needs a single process; under torchrun give a number")
            probe = self.build_data(config, 1)  # the data's shape and split sizes
            builder = f"{__name__}:{auto_batch_trial_step.__name__}"
            self.auto_batch = autobatch.find_batch_size(config, probe, self.device, builder)
            config = dataclasses.replace(config, batch_size=self.auto_batch.batch)
            self.sources["batch_size"] = "auto"
        reference = self.preset.get("batch_size", LOOP_DEFAULTS["batch_size"])
        if config.scale_lr and self.sources["lr"] != "user" and config.batch_size != reference:
            # linear scaling (Goyal et al. 2017): the preset's lr belongs to the preset's batch, a user's lr to none
            config = dataclasses.replace(config, lr=config.lr * config.batch_size / reference)
            self.sources["lr"] += f", scaled by batch {config.batch_size}/{reference}"
        floor = self.preset.get(WARMUP_ABOVE_BATCH)
        if config.lr_warmup_epochs and self.sources["lr_warmup_epochs"] != "user" and floor is not None:
            if config.batch_size <= floor:  # the authors warm up only above this batch
                config = dataclasses.replace(config, lr_warmup_epochs=0)
                self.sources["lr_warmup_epochs"] += f", off at batch {config.batch_size} <= {floor}"
        return config

    def header(self) -> dict:
        """log.jsonl's first line: every effective setting and its source (and how an auto batch was found)."""
        settings = {k: {"value": v, "source": self.sources[k]} for k, v in dataclasses.asdict(self.config).items()}
        header = {"header": True, "settings": settings, "validation": self.data.validation}
        if self.auto_batch is not None:
            header["auto_batch"] = self.auto_batch.record()
        return header

    # ---- persistence --------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state(self) -> dict:
        return {
            "format": FORMAT,
            "config": dataclasses.asdict(self.config),
            "space": self.config.space,
            "space_config": self.space.config,
            "strategy": self.config.strategy,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "valid_pos": self.valid_pos,
            "partial": self.partial,
            "model": self.space.state_dict(),
            "strategy_state": self.strategy.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": None if self.a_optimizer is None else self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "precision": self.precision.state_dict(),
        }

    def save(self) -> None:
        # never overwrite the last good checkpoint with a diverged state
        epoch = self.epoch if self.step_in_epoch else self.epoch - 1
        self.guard.check(epoch)
        self.cadence.saved()
        state = self.state()
        check_state(state, f"in epoch {epoch + 1}")  # on every rank: none may wait at the barrier for a refusal
        if self.rank == 0:
            atomic_torch_save(state, self.checkpoint_path)
        if self.world_size > 1:  # no rank may run ahead (and, say, resume) before the checkpoint exists
            distributed.barrier()

    def load(self, ckpt: dict) -> None:
        for key in ("space", "strategy"):
            if ckpt[key] != getattr(self.config, key):
                raise CheckpointError(
                    f"checkpoint was made with {key} {ckpt[key]!r}, this run uses {getattr(self.config, key)!r}"
                )
        if ckpt["space_config"] != self.space.config and self.strategy.staged:  # a later stage's network
            self.epoch = ckpt["epoch"]
            with blame_args("space", self.config.space, ckpt["space_config"]):
                self.build_stage(ckpt["space_config"])
        if ckpt["space_config"] != self.space.config:
            raise CheckpointError(
                f"checkpoint space config {ckpt['space_config']} does not match this run's {self.space.config}"
            )
        try:
            self.space.load_state_dict(ckpt["model"])
            self.strategy.load_state_dict(ckpt["strategy_state"])
            self.w_optimizer.load_state_dict(ckpt["w_optimizer"])
            if self.a_optimizer is not None:
                self.a_optimizer.load_state_dict(ckpt["a_optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.precision.load_state_dict(ckpt.get("precision", {}))
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint does not fit this search: {err}") from err
        set_rng_state(ckpt["rng"])
        self.epoch = ckpt["epoch"]
        self.step_in_epoch, self.valid_pos = ckpt.get("step_in_epoch", 0), ckpt.get("valid_pos", 0)
        partial = ckpt.get("partial")
        self.partial = partial and {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in partial.items()}

    # ---- training -----------------------------------------------------------------------------------
    def context(self) -> StepContext:
        return StepContext(
            model=self.model, module=self.space, criterion=self.criterion, w_optimizer=self.w_optimizer,
            a_optimizer=self.a_optimizer, lr=self.w_optimizer.param_groups[0]["lr"], grad_clip=self.config.grad_clip,
            epoch=self.epoch, sync_grads=distributed.all_reduce_grads if self.world_size > 1 else (lambda p: None),
            precision=self.precision, guard=self.guard,
        )  # fmt: skip

    def batches(self, split):
        """``split``'s batches on the device, in the network's memory format, the next one prefetched."""
        return split.to_device(self.device, self.memory_format)

    def epoch_lr(self) -> float:
        """The weight lr of the running epoch: the scheduler's, under a linear warm-up while one runs."""
        lr, warmup = self.scheduler.get_last_lr()[0], self.config.lr_warmup_epochs
        return lr * (self.epoch + 1) / warmup if self.epoch < warmup else lr

    def train_epoch(self) -> dict:
        config, strategy = self.config, self.strategy
        strategy.on_epoch_start(self.epoch, config.epochs)
        self.guard.start_epoch()
        first = self.step_in_epoch  # > 0 when resuming inside this epoch
        if first == 0 and strategy.reset_optimizers:  # as optimizers built anew for the epoch (TF-NAS)
            for optimizer in (self.w_optimizer, self.a_optimizer):
                if optimizer is not None:
                    optimizer.state.clear()
        for group in self.w_optimizer.param_groups:
            group["lr"] = self.epoch_lr()
        self.guard.epoch_start -= first  # the guard names steps within the epoch
        self.data.train.set_epoch(self.epoch, start_batch=first)
        self.data.valid.set_epoch(self.epoch, start_batch=self.valid_pos)
        self.space.train()
        ctx = self.context()
        steps = min(len(self.data.train), config.max_steps_per_epoch or len(self.data.train))
        valid_iter = self.batches(self.data.valid)
        if self.partial is None:
            zero = torch.zeros((), device=self.device)
            self.partial = {"loss_sum": zero, "correct": zero.clone(), "seen": 0}
        partial = self.partial
        bar = tqdm(
            zip(range(first, steps), self.batches(self.data.train)), total=steps, initial=first,
            desc=f"epoch {self.epoch + 1}/{config.epochs}", disable=None if self.rank == 0 else True, leave=False,
        )  # fmt: skip
        start = time.perf_counter()
        for step, (x, y) in bar:
            valid_batch = None
            if self.arch_step_due(step) and strategy.valid_sampling == "random":
                valid_batch = self.random_valid_batch(step)
            elif self.arch_step_due(step):
                try:
                    valid_batch = next(valid_iter)
                except StopIteration:  # a new pass over this epoch's validation order, from its start
                    self.data.valid.set_epoch(self.epoch)
                    self.valid_pos, valid_iter = 0, self.batches(self.data.valid)
                    valid_batch = next(valid_iter)
                self.valid_pos += 1
            loss, logits = self.search_step(ctx, (x, y), valid_batch)
            partial["loss_sum"] += loss * len(y)
            partial["correct"] += (logits.argmax(1) == y).sum()
            partial["seen"] += len(y)
            self.step_in_epoch = step + 1
            if not bar.disable:  # .item() syncs with the device: only when a bar is shown
                rate = (step + 1 - first) * len(y) / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{rate:.0f}")
                self.guard.check(self.epoch)  # the device has just synced for the loss: stop at once
            if self.step_in_epoch < steps and (
                self.signals.agreed(self.world_size, self.device) or self.cadence.due(self.guard.host_steps)
            ):
                self.save()  # mid-epoch: resumes at the next step, same batches, same random draws
                self.signals.raise_if_requested(self.epoch, self.step_in_epoch, self.checkpoint_path)
        self.guard.check(self.epoch)  # reads the device: the time below includes the queued work
        # the loop, not a strategy hook, counts and times the steps: an overridden step cannot skip them
        step_time = (time.perf_counter() - start) / (steps - first)
        for group, lr in zip(self.w_optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the scheduler's value (a warm-up epoch overrode it), which its next step reads
        self.scheduler.step()
        self.data.valid.set_epoch(self.epoch)  # evaluation reads the whole validation split
        self.step_in_epoch, self.valid_pos, self.partial = 0, 0, None
        seen = partial["seen"]
        return {
            "train_loss": (partial["loss_sum"] / seen).item(), "train_acc": (partial["correct"] / seen).item(),
            "step_time": step_time,
        }  # fmt: skip

    def arch_step_due(self, step: int = 0) -> bool:
        """Whether step ``step`` of the running epoch takes an architecture step (and draws a validation batch)."""
        return self.strategy.bilevel and not self.strategy.arch_frozen() and self.strategy.wants_arch_step(step)

    def random_valid_batch(self, step: int):
        """A random validation batch of its own for step ``step`` of the running epoch (PC-DARTS draws one with a
        fresh iterator every step): the first batch of a shuffle keyed by ``(epoch, step)``, so a resumed run
        draws the same one."""
        valid = self.data.valid
        valid.set_epoch(derive_seed(RANDOM_VALID, self.config.seed, self.epoch, step))
        x, y = next(iter(valid.raw_batches()))  # one batch read, none prefetched
        return valid.finish(x.to(self.device), self.memory_format), y.to(self.device)

    def search_step(self, ctx: StepContext, train_batch, valid_batch):
        """One step: the architecture update on ``valid_batch`` (None: none now), then the weight update;
        returns (loss, logits) of the weight update (a captured step's static outputs: the next step overwrites
        them)."""
        loss, logits = (self.captured or self.device_step)(ctx, train_batch, valid_batch)
        self.guard.step()  # outside any graph: its host count must advance every step
        return loss, logits

    def device_step(self, ctx: StepContext, train_batch, valid_batch):
        """The step's device work, what ``cuda_graphs`` captures: both updates, in the strategy's order, and the
        guard's checks."""
        if not self.strategy.weight_first:
            self.arch_update(ctx, train_batch, valid_batch)
        loss, logits = self.strategy.weight_step(ctx, train_batch)
        if self.strategy.weight_first:
            self.arch_update(ctx, train_batch, valid_batch)
        self.guard.watch("loss", loss)
        self.guard.watch_parameters("architecture parameters", self.strategy.arch_parameters())
        return loss, logits

    def arch_update(self, ctx: StepContext, train_batch, valid_batch) -> None:
        if valid_batch is not None:
            arch_loss = self.strategy.arch_step(ctx, train_batch, valid_batch).get("arch_loss")
            if arch_loss is not None:
                self.guard.watch("architecture loss", arch_loss)

    def evaluate(self) -> dict:
        self.space.eval()
        arch = self.strategy.arch_weights("eval")
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in self.batches(self.data.valid):
            with self.precision.autocast():
                logits = self.space(x, arch)
            total_loss += self.criterion(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        self.space.train()
        if not math.isfinite(total_loss):  # e.g. non-finite batch-norm statistics behind finite weights
            raise DivergedError(f"diverged: non-finite validation loss after epoch {self.epoch + 1}; nothing saved")
        return {"valid_loss": total_loss / seen, "valid_acc": correct / seen}

    def epoch_record(self, train: dict, valid: dict, seconds: float) -> dict:
        text, _ = describe(self.strategy.derive(self.space))
        with torch.no_grad():
            alphas = {g: s.tolist() for g, s in self.strategy.scores().items()}
        return {
            "epoch": self.epoch, **train, **valid, "lr": self.scheduler.get_last_lr()[0], "epoch_time": seconds,
            "peak_memory_mb": peak_memory_mb(self.device), "genotype": text, "alphas": alphas,
            **self.strategy.epoch_log(),
        }  # fmt: skip

    def run(self, log=print, stop_after: int | None = None):
        """Search until ``config.epochs`` (or ``stop_after`` more epochs in this process, for time-boxed
        jobs); after each epoch append to log.jsonl, then checkpoint. Returns the derived architecture."""
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            spec = {group: g.op_names for group, g in self.space.arch_spec().items()}
            atomic_write_text(self.run_dir / "arch_spec.json", json.dumps(spec) + "\n")
            if not (self.run_dir / "log.jsonl").exists():  # a fresh run; a resumed one keeps its header
                atomic_write_text(self.run_dir / "log.jsonl", json.dumps(self.header()) + "\n")
                if self.auto_batch is not None:
                    log(self.auto_batch.describe())
                if self.config.valid_split == "test":
                    log(f"validation: {self.data.validation}")
        last = self.config.epochs if stop_after is None else min(self.config.epochs, self.epoch + stop_after)
        with self.signals:
            while self.epoch < last and not self.strategy.search_done():
                self.enter_stage(log)
                self.run_epoch(log)
                self.signals.agreed(self.world_size, self.device)
                self.signals.raise_if_requested(self.epoch, self.step_in_epoch, self.checkpoint_path)
        if self.epoch < self.config.epochs and self.strategy.search_done() and self.rank == 0:
            log(f"{self.config.strategy}: search done after epoch {self.epoch} of {self.config.epochs}")
        return self.finish()

    def run_epoch(self, log) -> None:
        """Train (or finish) one epoch, evaluate, append its log.jsonl line, checkpoint."""
        start = time.perf_counter()
        train = self.train_epoch()
        valid = self.evaluate()
        self.epoch += 1
        record = self.epoch_record(train, valid, time.perf_counter() - start)
        if self.rank == 0:
            append_line(self.run_dir / "log.jsonl", record)
            log(
                f"epoch {record['epoch']}/{self.config.epochs}  train {record['train_loss']:.3f}/"
                f"{record['train_acc']:.3f}  valid {record['valid_loss']:.3f}/{record['valid_acc']:.3f}  "
                f"{record['epoch_time']:.1f}s  {record['peak_memory_mb']:.0f} MB"
            )
        self.save()

    def finish(self):
        self.guard.check(self.epoch - 1)
        derived = self.strategy.derive(self.space)
        if self.rank == 0:
            text, as_json = describe(derived)
            atomic_write_text(self.run_dir / "genotype.txt", text + "\n")
            atomic_write_text(self.run_dir / "genotype.json", as_json + "\n")
        return derived


def run_search(
    config: SearchConfig, run_dir, resume=False, rank=0, world_size=1, log=print, stop_after: int | None = None
):
    """Run (or resume) a search in ``run_dir``, which rank 0 holds locked meanwhile; returns the derived
    architecture."""
    run_dir = Path(run_dir)
    with RunLock(run_dir) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            remove_orphans(run_dir)
        if resume:
            ckpt = load_checkpoint(run_dir / "checkpoint.pt")
            searcher = Searcher(config, run_dir, rank, world_size)
            searcher.load(ckpt)
            if rank == 0:
                truncate_log(run_dir, searcher.epoch)
        else:
            if rank == 0 and (run_dir / "checkpoint.pt").exists():
                raise FileExistsError(
                    f"{run_dir} already holds a search; pass --resume to continue it or pick a new --out"
                )
            searcher = Searcher(config, run_dir, rank, world_size)
        return searcher.run(log=log, stop_after=stop_after)


def stored_config(ckpt: dict) -> SearchConfig:
    """The resolved config a checkpoint holds; one saved before ``valid_split``, ``scheduler_step`` or
    ``lr_warmup_epochs`` existed ran with the ``train`` split, the scheduler stepped after each epoch, no warm-up."""
    return SearchConfig.from_dict(
        {"valid_split": "train", "scheduler_step": "after", "lr_warmup_epochs": 0, **ckpt["config"]}
    )


def config_from_checkpoint(path) -> SearchConfig:
    return stored_config(load_checkpoint(path))


def restore_search(ckpt: dict, device="cpu"):
    """(space with its trained weights, strategy with its alphas at the checkpoint's epoch) of a search
    checkpoint: what ``dnas-fast derive`` and ``eval-child`` derive from."""
    config = stored_config(ckpt)
    space = build_space(ckpt["space"], **ckpt["space_config"]).to(device)
    space.load_state_dict(ckpt["model"])
    strategy = build_strategy(ckpt["strategy"], **config.strategy_args)
    strategy.setup(space.arch_spec(), device)
    strategy.load_state_dict(ckpt["strategy_state"])
    strategy.on_epoch_start(ckpt["epoch"], config.epochs)
    return space, strategy


def auto_batch_trial_step(task: dict, batch: int) -> Callable[[], None]:
    """The search loop's step at ``batch`` on random input of the data's shape, as in the run's last epoch (past
    a warm-up that ends before it, both updates run, as in the run's heaviest epochs; a run no longer than its
    warm-up has weight updates only, and so do the trials), as a closure."""
    config = SearchConfig.from_dict({**task["config"], "batch_size": batch, "device": task["device"]})
    shape = SimpleNamespace(**task["shape"])
    searcher = Searcher(config, run_dir=".", data=shape)
    searcher.strategy.on_epoch_start(config.epochs - 1, config.epochs)
    ctx, device = searcher.context(), searcher.device

    def batch_of_data():
        x = torch.randn(batch, shape.in_channels, shape.image_size, shape.image_size, device=device)
        return x.contiguous(memory_format=searcher.memory_format), torch.randint(
            shape.num_classes, (batch,), device=device
        )

    train, valid = batch_of_data(), batch_of_data() if searcher.arch_step_due() else None
    return lambda: searcher.search_step(ctx, train, valid)


__all__ = [
    "SearchConfig",
    "Searcher",
    "auto_batch_trial_step",
    "config_from_checkpoint",
    "restore_search",
    "run_search",
]
