"""Whole-step CUDA graphs (``--cuda-graphs``): the search step (architecture step, weight step, the divergence
guard's device checks) recorded once as a ``torch.cuda.CUDAGraph`` and replayed, so a step costs one launch
instead of thousands.

As PyTorch documents (CUDA semantics, "CUDA Graphs"): the first ``WARMUP_STEPS`` steps run eagerly on a side
stream (lazy initialisation, optimizer state), the next one is captured into static input buffers and replayed,
and every later step copies its batch into those buffers and replays. Warm-up steps are real steps on the real
batches, and a capture runs nothing, so a captured search takes the eager search's steps. What a replay cannot
see, the capture fixes:

- Python floats are baked into the kernels: the weight lr, which the cosine schedule changes each epoch, is read
  from a device tensor updated in place (SGD runs ``fused`` for it: the ``foreach`` SGD turns a tensor lr into a
  float with ``.item()``, a sync that capture forbids); Adam runs ``capturable`` (its step count and bias
  corrections on the device). Both only while warming up and capturing: eager steps and checkpoints keep the
  run's own settings.
- Gradients: the strategies' ``zero_grad(set_to_none=True)`` runs while capturing, so each backward allocates
  its ``.grad`` from the graph's private pool (PyTorch's own recipe) and every replay rewrites those tensors;
  replays run no Python, so the ``.grad`` a graph reads cannot change between replays. An eager step between
  replays rebinds ``.grad`` to its own tensors; the graph keeps reading its own.
- Outputs: a replay overwrites the same (loss, logits); the caller reads them before the next step.

Example::

    step = CapturedStep(searcher.device_step, w_optimizer, a_optimizer, batch_size=64)
    loss, logits = step(ctx, (x, y), (x_val, y_val))  # a warm-up, then capture, then replays
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # PyTorch's examples warm up for 3 iterations; the first ones also create optimizer state
# Why the strategies that do host work in their step (``capture_safe`` False) cannot be captured, for the log.
HOST_STEP_STRATEGIES = {
    "snas": "it reads its sampled masks to the host every step (masks_to_cpu)",
    "pr-darts": "it reads its sampled gate masks to the host every step (masks_to_cpu)",
    "asap": "it reads its pruning masks to the host (masks_to_cpu) and prunes on the host",
    "tf-nas": "it samples its path on the host every step",
    "gdas": "it reads its sampled one-hot masks (and their finiteness) to the host every step (masks_to_cpu)",
    "p-darts": "its stages rebuild the network and optimizers on the host (a capture per stage: not yet tried)",
}


def fallback_reason(strategy, precision: str, world_size: int) -> str | None:
    """Why a search with this strategy and setup cannot be captured (it then runs eagerly); None: it can."""
    if world_size > 1:
        return "multi-process runs all-reduce gradients through DDP outside any graph"
    if precision == "fp16":
        return "fp16 loss scaling: GradScaler reads its inf checks on the host every step"
    if strategy.aux_skip:
        return "aux_skip (DARTS-): its beta is a new device tensor each epoch, a graph would keep the first"
    if not strategy.capture_safe:
        return HOST_STEP_STRATEGIES.get(strategy.name, "it is not known to be capture-safe")
    return None


def captured_step(searcher) -> "CapturedStep | None":
    """The searcher's step as a :class:`CapturedStep`, or None (eager) after one log line saying why."""
    if searcher.device.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device; this search runs on {searcher.device}")
    reason = fallback_reason(searcher.strategy, searcher.config.precision, searcher.world_size)
    if reason is not None:
        log.warning("cuda_graphs: strategy %r runs eagerly: %s", searcher.strategy.name, reason)
        return None
    return CapturedStep(searcher.device_step, searcher.w_optimizer, searcher.a_optimizer, searcher.config.batch_size)


@contextmanager
def device_lr_sgd(optimizer: torch.optim.SGD, lr: torch.Tensor):
    """Inside: ``optimizer`` runs fused with the lr read from the device tensor ``lr``."""
    saved = [dict(group) for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group.update(lr=lr, foreach=False, fused=True)
    try:
        yield
    finally:
        for group, old in zip(optimizer.param_groups, saved):
            group.update(old)


@contextmanager
def capturable_adam(optimizer: torch.optim.Optimizer | None):
    """Inside: ``optimizer`` (Adam, or None) runs ``capturable``; its step counts move to the parameters' device
    once (a non-capturable Adam keeps them on the host; it steps them in place wherever they are)."""
    if optimizer is None:
        yield
        return
    for p, state in optimizer.state.items():
        if "step" in state and state["step"].device != p.device:
            state["step"] = state["step"].to(p.device, torch.float32)
    saved = [group["capturable"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group, old in zip(optimizer.param_groups, saved):
            group["capturable"] = old


class CapturedStep:
    """``step(ctx, train_batch, valid_batch) -> (loss, logits)`` warmed up, captured and replayed.

    A step whose batches are not ``batch_size`` long (an epoch's last, partial batch) runs eagerly: a graph per
    shape would hold a second memory pool for one step an epoch. A full step of another shape (the
    architecture step starting after its warm-up epochs) warms up and captures anew, dropping the old graph.
    """

    def __init__(self, step: Callable, w_optimizer, a_optimizer, batch_size: int, warmup: int = WARMUP_STEPS):
        self.step, self.w_optimizer, self.a_optimizer = step, w_optimizer, a_optimizer
        self.batch_size, self.warmup = batch_size, warmup
        self.lr: torch.Tensor | None = None  # the weight lr on the device, the graphs' only copy of it
        self.lr_value: float | None = None  # what ``lr`` holds, so it is written only when the schedule moves
        self.signature, self.warmed, self.replay = None, 0, None
        self.inputs, self.outputs = None, None
        self.stream = None  # the side stream of the warm-ups and the capture

    def __call__(self, ctx, train_batch, valid_batch):
        batches = [train_batch] if valid_batch is None else [train_batch, valid_batch]
        if any(len(y) != self.batch_size for _, y in batches):
            return self.step(ctx, train_batch, valid_batch)
        signature = [(t.shape, t.dtype, t.stride()) for batch in batches for t in batch]
        if signature != self.signature:
            self.signature, self.warmed, self.replay, self.inputs, self.outputs = signature, 0, None, None, None
        self.set_lr(ctx.lr, train_batch[0].device)
        if self.warmed < self.warmup:
            self.warmed += 1
            return self.warm_up(ctx, train_batch, valid_batch)
        if self.replay is None:
            self.record(ctx, train_batch, valid_batch)
        for static, batch in zip(self.inputs, batches):
            for s, t in zip(static, batch):
                s.copy_(t, non_blocking=True)
        self.replay()
        return self.outputs

    def set_lr(self, value: float, device) -> None:
        """Write the schedule's lr into the device tensor the graphs read (no sync: a fill, not a copy)."""
        if self.lr is None:
            self.lr = torch.full((), value, device=device)
        elif value != self.lr_value:
            self.lr.fill_(value)
        self.lr_value = value

    @contextmanager
    def graph_settings(self, ctx):
        """The capture's optimizer settings and a ctx whose lr (second-order DARTS unrolls with it) is the
        device tensor."""
        with device_lr_sgd(self.w_optimizer, self.lr), capturable_adam(self.a_optimizer):
            yield dataclasses.replace(ctx, lr=self.lr)

    def side(self) -> "torch.cuda.Stream":
        """The one side stream of the warm-ups and the captures, made on first use."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.lr.device)
        return self.stream

    @contextmanager
    def side_stream(self):
        """Run the block on the side stream, ordered after and before the current stream's work (the CPU of the
        tests has no streams)."""
        if self.lr.device.type != "cuda":
            yield
            return
        stream = self.side()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)

    def warm_up(self, ctx, train_batch, valid_batch):
        with self.side_stream(), self.graph_settings(ctx) as graph_ctx:
            return self.step(graph_ctx, train_batch, valid_batch)

    def record(self, ctx, train_batch, valid_batch) -> None:
        """Capture one step on static copies of these batches (filled again before each replay)."""
        train = [t.clone() for t in train_batch]
        valid = None if valid_batch is None else [t.clone() for t in valid_batch]
        self.inputs = [train] if valid is None else [train, valid]
        start = time.perf_counter()
        with self.graph_settings(ctx) as graph_ctx:
            self.replay, self.outputs = self.capture(lambda: self.step(graph_ctx, train, valid))
        log.info("cuda_graphs: captured the search step in %.2f s", time.perf_counter() - start)

    def capture(self, run: Callable) -> tuple[Callable[[], None], tuple]:
        """(replay, static outputs) of ``run`` captured into a CUDA graph with its own memory pool."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.side()):
            outputs = run()
        return graph.replay, outputs


__all__ = ["CapturedStep", "captured_step", "fallback_reason"]
