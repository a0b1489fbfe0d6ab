"""The measuring harness of every benchmark (``dnas-fast bench-edge``, ``bench/*.py``,
``bench/bench_pool_combine.py``): run metadata, timing, memory, and result files, in one place.

* metadata: ``run_meta(device)`` = the columns every result row carries (``device_name``, torch version,
  ``git_sha``, UTC date, 1-minute load average);
* timing: ``time_interleaved`` (providers round-robin, median / p20 / p80), ``timer`` (a synchronised
  ``run_once`` for it), ``median_ms`` (one step alone: the latency tables), ``summarize``;
* memory: ``saved_tensor_bytes`` (bytes autograd saves for backward), ``child_peak_rss`` (peak RSS of one step
  in a fresh process, CPU), ``reset_peak_rss`` / ``rss_kb`` (the peak-RSS window of this process, which
  ``child_peak_rss`` and ``autobatch`` read), ``cuda_peak_bytes`` / ``cuda_peak_mb`` (allocator peak of one step),
  ``largest_batch`` (bisection to the first CUDA out-of-memory);
* output: ``write_rows`` (long CSV + JSON twin), ``format_table``, ``add_case`` (print and save as a run goes);
* command line: ``bench_parser`` (the ``--out`` / ``--device`` / ``--threads`` / ``--quick`` flags).

The commit a result was measured at: ``DNAS_FAST_GIT_SHA`` if set, else ``git rev-parse`` of this checkout,
else the first line of ``bench/results/COMMIT``. A copy of the repository without ``.git`` (the GPU machine's)
gets it from the script that copies the tree: ``git rev-parse --short HEAD > bench/results/COMMIT`` first. git
wins over the file so a stale file in a checkout never mislabels a run.

This module imports only torch and the standard library (no spaces, strategies or search), so any script can
use it. Example::

    meta = run_meta(torch.device("cpu"))
    stats = time_interleaved({"a": timer(step_a, "cpu"), "b": timer(step_b, "cpu")}, "cpu")
    write_rows([{"provider": p, **s, **meta} for p, s in stats.items()], Path("bench/results/ab.csv"))
"""

import argparse
import csv
import ctypes
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT_FILE = REPO_ROOT / "bench" / "results" / "COMMIT"
META_COLUMNS = ("device", "torch", "git_sha", "date", "load_avg_1m")
LEADING_COLUMNS = ("bench", "provider", "mode")


# ---- run metadata --------------------------------------------------------------------------------------------


def device_name(device) -> str:
    """``cuda:<GPU name>`` or ``cpu:<CPU model>:threads=<torch threads>``; also the key of a latency table."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"cpu:{model}:threads={torch.get_num_threads()}"


def git_sha() -> str:
    """Short commit of the measured code: ``DNAS_FAST_GIT_SHA``, else git, else ``bench/results/COMMIT``."""
    if os.environ.get("DNAS_FAST_GIT_SHA"):
        return os.environ["DNAS_FAST_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=REPO_ROOT)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if COMMIT_FILE.exists():
        return COMMIT_FILE.read_text().strip().split("\n")[0] or "unknown"
    return "unknown"


def run_meta(device) -> dict:
    """The columns (``META_COLUMNS``) every result row carries."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "git_sha": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the CPU machine is shared: timings scale with its load
    }


# ---- timing --------------------------------------------------------------------------------------------------


def sync(device) -> None:
    """Wait for the device's queued work, so a host clock measures it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timer(step, device, setup=None):
    """``run_once() -> seconds`` of one synchronised call of ``step()``, for ``time_interleaved``. With ``setup``,
    each call runs ``step(setup())`` and times only ``step`` (a backward after its untimed forward)."""

    def run_once():
        arg = None if setup is None else setup()
        sync(device)
        t0 = time.perf_counter()
        step() if setup is None else step(arg)
        sync(device)
        return time.perf_counter() - t0

    return run_once


def median_ms(step, device, repeats: int, warmup: int = 0) -> float:
    """Median wall time (ms) of ``repeats`` synchronised calls of ``step()`` after ``warmup`` calls."""
    stats = time_interleaved({"step": timer(step, device)}, device, warmup, repeats, repeats, budget_s=0)
    return stats["step"]["median_ms"]


def time_interleaved(runners: dict, device, warmup=1, min_reps=3, max_reps=15, budget_s=4.0) -> dict:
    """{name: {median_ms, p20_ms, p80_ms, reps}} for ``runners`` = {name: run_once() -> seconds} (each times
    itself, so ``backward`` can leave the forward out). Providers run round-robin, one call each per round, so a
    load change on a shared machine hits all of them alike; rounds go on until ``budget_s`` is spent."""
    for _ in range(warmup):
        for run_once in runners.values():
            run_once()
    times = {name: [] for name in runners}
    start, rounds = time.perf_counter(), 0
    while rounds < min_reps or (rounds < max_reps and time.perf_counter() - start < budget_s):
        for name, run_once in runners.items():
            times[name].append(run_once() * 1e3)
        rounds += 1
    return {name: summarize(ts) for name, ts in times.items()}


def summarize(times_ms) -> dict:
    """Median, 20th and 80th percentile and count of a list of times in ms."""
    q = statistics.quantiles(times_ms, n=10, method="inclusive") if len(times_ms) > 1 else times_ms * 9
    return {"median_ms": statistics.median(times_ms), "p20_ms": q[1], "p80_ms": q[7], "reps": len(times_ms)}


# ---- memory --------------------------------------------------------------------------------------------------


def saved_tensor_bytes(forward, exclude=()) -> int:
    """Bytes of the unique storages that autograd saves for backward while ``forward()`` runs; storages of the
    tensors in ``exclude`` (parameters, buffers) are not counted. The output is kept alive until counted."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(seen.values())


def child_peak_rss(builder: str, task: dict, timed_steps=1, timeout=900) -> dict:
    """Build a step with ``builder`` (``"module:function"``, called as ``function(task) -> step``) in a fresh
    Python process, run it once to warm up, then ``timed_steps`` times: {baseline_rss_mb, peak_rss_mb,
    step_rss_mb, times_ms} plus whatever ``step.report()`` returns if the step has one. A fresh process per
    provider keeps one provider's allocations out of another's peak (Linux only: VmHWM and clear_refs)."""
    threads = torch.get_num_threads()
    code = "import sys, json; from dnas_fast.benchmark import _child; _child(*json.loads(sys.argv[1]))"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = json.dumps([builder, task, timed_steps, threads])
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=timeout,
                         env=env)  # fmt: skip
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if "Error" in line] or out.stderr.splitlines()[-1:]
        raise RuntimeError(f"child benchmark failed: {errors[-1] if errors else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(builder: str, task: dict, timed_steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    module, function = builder.split(":")
    step = getattr(importlib.import_module(module), function)(task)
    step()  # warm-up: one-time allocations (oneDNN caches, optimizer state) are not the step's memory
    base = reset_peak_rss()
    times = []
    for _ in range(timed_steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = rss_kb("VmHWM")
    result = {"baseline_rss_mb": base / 1024, "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base) / 1024}
    result["times_ms"] = times
    if hasattr(step, "report"):
        result.update(step.report())
    print(json.dumps(result))


def reset_peak_rss() -> int:
    """Hand the freed heap back to the OS and restart the peak-RSS count (``VmHWM``) from the current resident
    set, which it returns (KiB): a step's peak is then ``rss_kb("VmHWM")`` less it (Linux >= 4.0)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return rss_kb("VmRSS")


def rss_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (KiB) of this process, from ``/proc/self/status`` (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (peak-RSS measurement needs Linux)")


def cuda_peak_bytes(device, step) -> int:
    """Bytes the CUDA allocator's peak rose above the memory already allocated while ``step()`` ran."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def cuda_peak_mb(device, step) -> float:
    """``cuda_peak_bytes`` in MiB."""
    return cuda_peak_bytes(device, step) / 2**20


def largest_batch(run_at, device, hi=4096, start=8) -> int:
    """Largest batch ``n <= hi`` for which ``run_at(n)`` raises no CUDA out-of-memory: doubling from ``start``,
    then bisection between the last size that ran and the first that did not (0 if ``start`` fails)."""

    def fits(n):
        if n > hi:
            return False
        try:
            run_at(n)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
            sync(device)

    lo, n = 0, start
    while fits(n):
        lo, n = n, n * 2
    up = n  # first size that failed (or exceeded ``hi``)
    while up - lo > 1:
        mid = (lo + up) // 2
        lo, up = (mid, up) if fits(mid) else (lo, mid)
    return lo


# ---- output --------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("provider", "mode", "median_ms", "p20_ms", "p80_ms", "saved_bytes", "step_rss_mb", "peak_alloc_mb",
                 "note")  # fmt: skip


def columns_of(rows) -> list[str]:
    """Every key of ``rows``: ``LEADING_COLUMNS`` first, ``META_COLUMNS`` last, the rest in order of appearance."""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    middle = [k for k in seen if k not in LEADING_COLUMNS and k not in META_COLUMNS]
    return [k for k in LEADING_COLUMNS if k in seen] + middle + [k for k in META_COLUMNS if k in seen]


def write_rows(rows, path) -> None:
    """``path`` as a long CSV (one row per measurement, a column per key of any row) and a JSON twin next to
    it (``.json``); both are rewritten, so a run can save after every case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns_of(rows))
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def format_table(rows, columns=TABLE_COLUMNS) -> str:
    """A plain-text table of ``rows`` with those of ``columns`` that any row has (floats to 2 decimals, byte
    counts in MiB)."""
    cols = [c for c in columns if any(c in r for r in rows)]
    cells = [[_fmt(c, r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _fmt(column: str, v) -> str:
    if column.endswith("bytes") and isinstance(v, (int, float)):
        return f"{v / 2**20:.3f} MiB"
    if isinstance(v, float):  # sub-ms GPU times keep 3 significant digits
        return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
    return str(v)


def add_case(rows: list, new: list, meta: dict, sink=None, columns=TABLE_COLUMNS) -> None:
    """Append one case's rows (tagged with the run metadata), print them, and hand everything so far to
    ``sink`` so a long run keeps its partial results."""
    rows += [{**r, **meta} for r in new]
    print(format_table(new, columns), flush=True)
    if sink:
        sink(rows)


# ---- command line --------------------------------------------------------------------------------------------


def bench_parser(description: str, *, out="write the rows to this CSV (and a .json twin)", device="cpu", threads=2,
                 quick=None) -> argparse.ArgumentParser:  # fmt: skip
    """The parser of a bench script with the flags they share; ``None`` leaves a flag out. ``out``, ``quick``:
    the help of ``--out`` / ``--quick``; ``device``, ``threads``: the defaults of ``--device`` / ``--threads``
    (torch intra-op threads; the script applies it). ``description``: the script's docstring, shown as written."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if out is not None:
        p.add_argument("--out", default=None, help=out)
    if device is not None:
        p.add_argument("--device", default=device)
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    return p
