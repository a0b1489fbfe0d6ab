"""``batch_size="auto"``: the largest batch whose full search step fits in memory.

A search step (architecture update on a validation batch, then weight update, in the run's order, precision and
memory format) needs about ``bytes(n) = a + b * n`` at batch ``n``: weights, gradients, optimizer state and
workspaces in ``a``, activations saved for backward in ``b``. :func:`largest_fitting_batch` measures real steps
at batches 1 and 2, fits ``a`` and ``b``, steps to the batch the line predicts and measures it; a prediction that
fits is refitted on the two largest measured batches (so a pessimistic line gets another go), one that does not
fit is bisected down. It stops when the line puts ``batch + 1`` over the limit or ``batch + 1`` was measured not
to fit, so the chosen batch is always a measured one.

What one measurement is (``measure(n) -> bytes``, None when out of memory):

- CUDA: ``torch.cuda.max_memory_allocated`` over two steps in this process, less what was allocated before the
  trial's network was built; an ``OutOfMemoryError`` counts as not fitting. Limit: ``memory_limit``, else the
  device's free memory when the search starts.
- CPU: a fresh Python process runs (and frees) a warm-up step at batch 1, then builds the network and runs two
  steps; the step's memory is its peak resident set (``VmHWM``) less its resident set before that network
  (``VmRSS``). A fresh process per batch keeps one trial's freed-but-cached heap out of the next one's peak and
  does not depend on the allocator; the Python and torch runtime with its lazy imports (a few hundred MB) and the
  data set are outside the limit. Limit: ``memory_limit`` (required).

Two steps, because the first creates the optimizer state (momentum, Adam moments) the second runs with.
"""

import dataclasses
import gc
import importlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .benchmark import cuda_peak_bytes, reset_peak_rss, rss_kb
from .cuda_graphs import WARMUP_STEPS

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
MAX_TRIALS = 12  # measured steps per search; each CPU trial is a fresh process (seconds)


def parse_memory(text: str) -> int:
    """Bytes of a size such as ``8G``, ``512M``, ``1.5G`` or ``64K`` (binary units; ``8GB``/``8GiB`` read the same)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(f"memory_limit must be a positive size such as 8G, 512M or 64K, got {text!r}")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def mb(n_bytes: float) -> float:
    return n_bytes / 2**20


@dataclass
class AutoBatch:
    """The chosen batch, its measured step memory, the limit, the fitted line and every trial."""

    batch: int
    step_bytes: int
    limit_bytes: int
    intercept: float  # a of bytes = a + b * batch, on the two largest measured batches that fit
    per_sample: float  # b
    trials: dict[int, int | None]  # batch -> measured bytes (None: out of memory)
    measure: str  # what a measurement is (see the module docstring)
    seconds: float = 0.0

    def record(self) -> dict:
        """For log.jsonl's header."""
        return {
            "batch": self.batch, "step_mb": round(mb(self.step_bytes), 1), "limit_mb": round(mb(self.limit_bytes), 1),
            "model_mb": round(mb(self.intercept), 1), "per_sample_mb": round(mb(self.per_sample), 3),
            "trials_mb": {n: None if b is None else round(mb(b), 1) for n, b in sorted(self.trials.items())},
            "measure": self.measure, "seconds": round(self.seconds, 1),
        }  # fmt: skip

    def describe(self) -> str:
        return (
            f"batch size auto: {self.batch} (search step {mb(self.step_bytes):.0f} MB of the "
            f"{mb(self.limit_bytes):.0f} MB limit; {mb(self.intercept):.0f} MB + {mb(self.per_sample):.2f} MB/sample; "
            f"{len(self.trials)} trial steps, {self.seconds:.0f} s, {self.measure})"
        )


def largest_fitting_batch(measure: Callable[[int], int | None], limit: int, cap: int) -> AutoBatch:
    """The largest batch in ``[1, cap]`` whose ``measure(n)`` (bytes, None: out of memory) is at most ``limit``."""
    trials: dict[int, int | None] = {}

    def fits(n: int) -> bool:
        if n not in trials:
            trials[n] = measure(n)
        return trials[n] is not None and trials[n] <= limit

    if not fits(1):
        need = "runs out of memory" if trials[1] is None else f"needs {mb(trials[1]):.0f} MB"
        raise ValueError(f"batch_size auto: a search step at batch 1 {need}, over the {mb(limit):.0f} MB limit")
    good, bad = 1, cap + 1  # largest measured fit, smallest measured misfit (or past the cap)
    if cap >= 2 and not fits(2):
        bad = 2
    a, b = float(trials[1]), 0.0
    while bad - good > 1 and len(trials) < MAX_TRIALS:
        fitting = sorted(n for n, used in trials.items() if used is not None and used <= limit)
        if len(fitting) >= 2:
            x0, x1 = fitting[-2:]
            if x1 > 4 * x0 and trials[x1] < 0.9 * (a + b * x1):
                # the small batches' line overshot the largest fit (small batched blocks keep their intermediates,
                # larger ones recompute): take the slope near it instead
                fits(x1 // 2)
                continue
            b = max((trials[x1] - trials[x0]) / (x1 - x0), 1.0)  # a step never needs less for a larger batch
            a = trials[x1] - b * x1
        predicted = math.floor((limit - a) / b) if b > 0 else cap
        if predicted <= good:  # the line puts good + 1 over the limit
            break
        n = min(predicted, bad - 1)
        if fits(n):
            good = n
            continue
        bad = n
        while bad - good > 1 and len(trials) < MAX_TRIALS:  # the line was optimistic: bisect down
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
    return AutoBatch(good, trials[good], limit, a, b, trials, measure="")


def find_batch_size(config, probe, device: torch.device, builder: str) -> AutoBatch:
    """The auto batch of ``config`` (a resolved ``SearchConfig``) on ``probe``'s data shape, at most its smaller
    split (a batch must fit in one split); ``builder`` (``"module:function"``) builds the step at a batch."""
    cap = min(probe.train.shard_size, probe.valid.shard_size)
    shape = {"in_channels": probe.in_channels, "num_classes": probe.num_classes, "image_size": probe.image_size}
    task = {"config": dataclasses.asdict(config), "shape": shape, "device": str(device), "builder": builder}
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limit = parse_memory(config.memory_limit) if config.memory_limit else free
        steps = measured_steps(task)
        measure, what = (lambda n: measure_cuda(task, n)), f"CUDA max_memory_allocated over {steps} steps"
    else:
        if config.memory_limit is None:
            raise ValueError("batch_size auto on the CPU needs memory_limit (--memory-limit, e.g. 8G)")
        limit = parse_memory(config.memory_limit)
        measure, what = (lambda n: measure_cpu(task, n)), "peak RSS over 2 steps in a fresh process"
    start = time.perf_counter()
    result = largest_fitting_batch(measure, limit, cap)
    return dataclasses.replace(result, measure=what, seconds=time.perf_counter() - start)


def trial_step(task: dict, batch: int) -> Callable[[], None]:
    """The step to measure, built by ``task["builder"]`` (``"module:function"``, called as ``function(task,
    batch)``): the search loop names its own, so this module needs no import of the loop."""
    module, function = task["builder"].split(":")
    return getattr(importlib.import_module(module), function)(task, batch)


def measured_steps(task: dict) -> int:
    """The steps a trial runs: two, after a captured step's warm-ups (``cuda_graphs``: the graph and its memory
    pool exist from the capture on, and the run holds them)."""
    return (WARMUP_STEPS if task["config"].get("cuda_graphs") else 0) + 2


def measure_cuda(task: dict, batch: int) -> int | None:
    device = torch.device(task["device"])
    gc.collect()
    torch.cuda.empty_cache()

    def trial():  # the trial's network lives in this frame only: dropped before the cache is emptied
        step = trial_step(task, batch)
        for _ in range(measured_steps(task)):
            step()

    try:
        return cuda_peak_bytes(device, trial)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        gc.collect()
        torch.cuda.empty_cache()


# Messages of a CPU allocation failure (the child's last stderr line); any other failure is a bug to report.
_CPU_OOM = ("can't allocate memory", "MemoryError", "Cannot allocate memory")


def measure_cpu(task: dict, batch: int) -> int | None:
    code = "import json, sys; from dnas_fast.autobatch import _cpu_child; _cpu_child(json.loads(sys.argv[1]))"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps({**task, "batch": batch, "threads": torch.get_num_threads()})],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if out.returncode == 0:
        return int(out.stdout.strip().splitlines()[-1])
    last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    if out.returncode == -9 or any(m in last for m in _CPU_OOM):  # -9: the kernel's OOM killer
        return None
    raise RuntimeError(f"batch_size auto: the trial step at batch {batch} failed: {last}")


def _cpu_child(task: dict) -> None:
    """Child body: print the bytes of the trial's search steps at ``task["batch"]`` above the RSS before their
    network."""
    torch.set_num_threads(task["threads"])
    # a freed warm-up trial first: lazy imports (sympy via torch.library, ~150 MB) and one-time runtime set-up stay
    # below the baseline, as the CUDA context stays outside max_memory_allocated
    warm_up = trial_step(task, 1)
    warm_up()
    del warm_up
    gc.collect()
    base = reset_peak_rss()
    step = trial_step(task, task["batch"])
    for _ in range(measured_steps(task)):
        step()
    print((rss_kb("VmHWM") - base) * 1024)
