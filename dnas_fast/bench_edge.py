"""``dnas-fast bench-edge``: time and memory of one MixedEdge (and of a DARTS search step) per provider, and the
measuring helpers that the scripts in ``bench/`` import (one harness, no copies).

Providers, compared in the same run:
    naive       the authors' per-op loop (``reference`` backend)
    checkpoint  the naive loop under ``torch.utils.checkpoint`` per edge (non-reentrant)
    compile     ``torch.compile`` of the naive edge (edge benchmarks only)
    <backend>   each dnas_fast fused backend available on the device (``fused``, ``cpu``, ``cuda``, ``triton``)
Measures: wall time (median, p20, p80 over repetitions), bytes saved for backward (unique storages packed by
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded), peak memory (CPU: VmHWM of a fresh child
process that runs one step; CUDA: allocator peak), and on CUDA the largest batch that fits (bisection).

Example::

    dnas-fast bench-edge --C 16 --H 32 --batch 16 --providers naive,checkpoint,fused,cpu --mode full
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import _backend
from .mixed_edge import MixedEdge, reference_forward
from .ops import DARTS_OPS, NB201_OPS

OP_SETS = {"darts": DARTS_OPS, "nb201": NB201_OPS}
MODES = ("forward", "backward", "full")
BASELINES = ("naive", "checkpoint", "compile")


def _checkpointed(edge, x, weights, mask, aux_weight, straight_through):
    return checkpoint(reference_forward, edge, x, weights, mask, aux_weight, straight_through, use_reentrant=False)


# The checkpoint baseline as a backend, so a whole search space can run on it (never chosen by ``auto``).
_backend.register_backend(
    _backend.Backend("checkpoint", _checkpointed, lambda device: True, lambda edge: True, priority=-100)
)


# ---- environment -------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def git_sha() -> str:
    """Short commit of the package's checkout (env ``DNAS_FAST_GIT_SHA`` for a copy outside git)."""
    if os.environ.get("DNAS_FAST_GIT_SHA"):
        return os.environ["DNAS_FAST_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_meta(device: torch.device) -> dict:
    """Columns every result row carries."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "git_sha": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # the CPU machine is shared: timings scale with its load
    }


def available_backends(device: torch.device) -> list[str]:
    """dnas_fast fused backends usable on ``device`` (the triton interpreter on CPU is left out: it is a test aid)."""
    names = [n for n in _backend.available_backends(device) if n not in ("reference", "checkpoint")]
    return [n for n in names if not (n == "triton" and device.type == "cpu")]


# ---- measuring helpers -------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    return {name: _summary(ts) for name, ts in times.items()}


def _summary(times) -> dict:
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "reps": len(times)}


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


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return -1


def child_peak_rss(task: dict, timeout=900) -> dict:
    """Run ``task`` (see ``_child``) in a fresh Python process; its baseline RSS before the step and peak RSS
    (VmHWM) in MB. A fresh process per provider keeps one provider's allocations out of another's peak."""
    code = "import sys, json; from dnas_fast.bench_edge import _child; _child(json.loads(sys.argv[1]))"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(task)], capture_output=True, text=True,
                         timeout=timeout, env=env)  # fmt: skip
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if "Error" in line] or out.stderr.splitlines()[-1:]
        raise RuntimeError(f"child benchmark failed: {errors[-1] if errors else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(task: dict) -> None:
    """Child-process body: build the step, warm up, then RSS baseline / peak over ``timed_steps`` timed steps
    (and, for a search step, the bytes saved by one training forward)."""
    torch.set_num_threads(task.get("threads", 2))
    step = build_edge_step(task) if task["kind"] == "edge" else build_search_step(task)
    step()  # warm-up: one-time allocations (oneDNN caches, optimizer state) are not the step's memory
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the warm-up's freed heap back to the OS
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    base = _rss_kb("VmRSS")
    times = []
    for _ in range(task.get("timed_steps", 1)):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = _rss_kb("VmHWM")
    result = {"baseline_rss_mb": base / 1024, "peak_rss_mb": peak / 1024, "step_rss_mb": (peak - base) / 1024}
    result["times_ms"] = times
    if task["kind"] == "search":
        result["saved_bytes"] = search_step_saved_bytes(step)
    print(json.dumps(result))


# ---- one edge ----------------------------------------------------------------------------------------------------


def edge_forward_fn(provider: str):
    """``f(edge, x, weights, mask)`` running one edge with ``provider``."""
    if provider == "naive":
        return lambda edge, x, w, mask: reference_forward(edge, x, w, mask)
    if provider == "checkpoint":
        return lambda edge, x, w, mask: _checkpointed(edge, x, w, mask, None, False)
    if provider == "compile":
        compiled = torch.compile(reference_forward, dynamic=False)
        return lambda edge, x, w, mask: compiled(edge, x, w, mask)
    _backend._load_optional_backends()
    backend = _backend._BACKENDS[provider]
    return lambda edge, x, w, mask: backend.forward(edge, x, w, mask, None, False)


def make_edge_case(cfg: dict):
    """(edge, x, weights, mask) from a config: C, H, W, batch, stride, ops, mask ("10110..." or None), dtype,
    device, partial_channels."""
    device, dtype = torch.device(cfg.get("device", "cpu")), getattr(torch, cfg.get("dtype", "float32"))
    ops = OP_SETS.get(cfg.get("ops", "darts")) or cfg["ops"].split(",")
    torch.manual_seed(0)
    edge = MixedEdge(cfg["C"], cfg.get("stride", 1), ops, pool_bn=True, partial_channels=cfg.get("pc", 1))
    edge = edge.to(device, dtype)
    H, W = cfg["H"], cfg.get("W") or cfg["H"]
    x = torch.randn(cfg["batch"], cfg["C"], H, W, device=device, dtype=dtype, requires_grad=True)
    w = torch.softmax(torch.randn(len(ops), device=device, dtype=dtype), 0).requires_grad_()
    mask = None if not cfg.get("mask") else torch.tensor([c == "1" for c in cfg["mask"]])
    return edge, x, w, mask


def build_edge_step(cfg: dict):
    """One full (forward + backward) edge step as a closure; the child process and ``bench_edge`` use it."""
    edge, x, w, mask = make_edge_case(cfg)
    fn = edge_forward_fn(cfg["provider"])
    g = torch.randn_like(fn(edge, x, w, mask))

    def step():
        fn(edge, x, w, mask).backward(g)

    return step


def bench_edge(cfg: dict, providers, modes=MODES, rss=False, budget_s=4.0) -> list[dict]:
    """Rows of (provider, mode) timings and saved bytes for one edge configuration; a provider that fails (e.g.
    torch.compile without a working toolchain) gets one row whose note says why."""
    edge, x, w, mask = make_edge_case(cfg)
    device = x.device
    g = torch.randn(edge.output_shape(x), device=device, dtype=x.dtype)
    rows, fns = {}, {}
    for provider in providers:
        base = {**cfg, "provider": provider, "mask": cfg.get("mask") or "all"}
        try:
            fn = edge_forward_fn(provider)
            t0 = time.perf_counter()
            fn(edge, x, w, mask).backward(g)
            _sync(device)
            base["first_call_s"] = round(time.perf_counter() - t0, 3)
        except Exception as err:
            rows[provider] = {**base, "mode": "all", "note": f"failed: {type(err).__name__}: {str(err)[:200]}"}
            continue
        fns[provider] = fn
        params = [*edge.parameters(), *edge.buffers()]
        base["saved_bytes"] = saved_tensor_bytes(lambda fn=fn: fn(edge, x, w, mask), exclude=params)
        if rss and device.type == "cpu" and provider != "compile":
            task = {**cfg, "kind": "edge", "provider": provider, "threads": torch.get_num_threads()}
            base.update(child_peak_rss(task))
        elif device.type == "cuda":
            base["peak_alloc_mb"] = _cuda_peak(device, lambda fn=fn: fn(edge, x, w, mask).backward(g))
        rows[provider] = base
    out = [rows[p] for p in providers if p not in fns]
    for mode in modes:
        runners = {p: _timed(mode, fn, edge, x, w, mask, g, device) for p, fn in fns.items()}
        timings = time_interleaved(runners, device, budget_s=budget_s)
        out += [{**rows[p], "mode": mode, **timings[p]} for p in fns]
    return out


def _timed(mode, fn, edge, x, w, mask, g, device):
    def run_once():
        _sync(device)
        t0 = time.perf_counter()
        if mode == "forward":
            fn(edge, x, w, mask)
            _sync(device)
            return time.perf_counter() - t0
        out = fn(edge, x, w, mask)
        if mode == "backward":
            _sync(device)
            t0 = time.perf_counter()
        out.backward(g)
        _sync(device)
        return time.perf_counter() - t0

    return run_once


def _cuda_peak(device, step) -> float:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


# ---- one DARTS search step ---------------------------------------------------------------------------------------


def build_search_step(cfg: dict):
    """A first- or second-order DARTS step (arch step on a validation batch, then a weight step) on the DARTS
    supernet (``layers`` cells, ``C`` channels, ``H`` x ``H`` inputs) with every edge on ``provider``."""
    from .precision import Precision
    from .spaces import build_space
    from .strategies import StepContext, build_strategy

    provider = cfg["provider"]
    backend = "reference" if provider == "naive" else provider
    os.environ.pop(_backend.ENV_VAR, None)  # it would override the per-space backend of every provider
    device = torch.device(cfg.get("device", "cpu"))
    torch.manual_seed(0)
    imagenet = cfg.get("imagenet", False)  # the ImageNet stem, 1000 classes; pc: PC-DARTS partial channels K
    layout = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    classes = 1000 if imagenet else 10
    space = build_space("darts", C=cfg.get("C", 16), layers=cfg.get("layers", 8), backend=backend,
                        imagenet=imagenet, num_classes=classes, partial_channels=cfg.get("pc", 1))  # fmt: skip
    space.to(device, memory_format=layout)
    strategy = build_strategy("darts", order=cfg.get("order", 1))
    strategy.setup(space.arch_spec(), device)
    w_opt = torch.optim.SGD(space.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    ctx = StepContext(model=space, module=space, criterion=torch.nn.CrossEntropyLoss(), w_optimizer=w_opt,
                      a_optimizer=strategy.make_arch_optimizer(), lr=0.025,
                      precision=Precision(cfg.get("precision", "fp32"), device))  # fmt: skip
    N, H = cfg["batch"], cfg.get("H", 32)

    def batch():
        x = torch.randn(N, 3, H, H, device=device).contiguous(memory_format=layout)
        return x, torch.randint(0, classes, (N,), device=device)

    train, valid = batch(), batch()

    def step():
        strategy.arch_step(ctx, train, valid)
        strategy.weight_step(ctx, train)

    step.space, step.strategy, step.train, step.ctx = space, strategy, train, ctx
    return step


def search_step_saved_bytes(step) -> int:
    """Bytes saved for backward by one training forward of the supernet (activations only)."""
    x, y = step.train
    arch = step.strategy.arch_weights("weights")
    exclude = [*step.space.parameters(), *step.space.buffers(), *step.strategy.parameters()]
    with step.ctx.precision.autocast():
        return saved_tensor_bytes(lambda: F.cross_entropy(step.space(x, arch), y), exclude=exclude)


def bench_search_step(cfg: dict, providers, rounds=2) -> list[dict]:
    """One row per provider: time, peak memory and saved bytes (per sample) of a DARTS search step.

    On CPU every measurement runs in fresh child processes, providers round-robin for ``rounds`` rounds (one
    warm-up step and one timed step each), so the peak RSS is the step's own and load changes hit all alike."""
    device = torch.device(cfg.get("device", "cpu"))
    rows = {p: {**cfg, "provider": p, "mode": f"search-step-order{cfg.get('order', 1)}"} for p in providers}
    if device.type == "cuda":
        return [_bench_search_step_cuda(cfg, p, rows[p]) for p in providers]
    times = {p: [] for p in providers}
    for _ in range(rounds):
        for p in providers:
            try:
                res = child_peak_rss({**cfg, "kind": "search", "provider": p, "threads": torch.get_num_threads()})
            except RuntimeError as err:  # e.g. checkpoint + second order: record why, go on
                rows[p]["note"] = str(err)[:200]
                continue
            times[p] += res.pop("times_ms")
            peak = max(res["step_rss_mb"], rows[p].get("step_rss_mb", 0.0))
            rows[p].update(res, step_rss_mb=peak, saved_bytes_per_sample=res["saved_bytes"] / cfg["batch"])
    return [{**rows[p], **(_summary(times[p]) if times[p] else {})} for p in providers]


def _bench_search_step_cuda(cfg, provider, row):
    device = torch.device(cfg.get("device", "cuda"))
    step = build_search_step({**cfg, "provider": provider})
    row["saved_bytes"] = search_step_saved_bytes(step)
    row["saved_bytes_per_sample"] = row["saved_bytes"] / cfg["batch"]
    step()
    row["peak_alloc_mb"] = _cuda_peak(device, step)
    row.update(time_interleaved({provider: _self_timed(step, device)}, device, min_reps=3, budget_s=10)[provider])
    row["max_batch"] = max_batch_cuda(cfg, provider)
    return row


def _self_timed(step, device):
    def run_once():
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        return time.perf_counter() - t0

    return run_once


def max_batch_cuda(cfg: dict, provider: str, hi=4096) -> int:
    """Largest batch of a search step that runs on the GPU without OOM (bisection over powers then halves)."""
    device = torch.device(cfg.get("device", "cuda"))

    def fits(n):
        if n > hi:
            return False
        try:
            build_search_step({**cfg, "provider": provider, "batch": n})()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
            torch.cuda.synchronize(device)

    lo, n = 0, 8
    while fits(n):
        lo, n = n, n * 2
    up = n  # first size that failed (or exceeded ``hi``)
    while up - lo > 1:
        mid = (lo + up) // 2
        lo, up = (mid, up) if fits(mid) else (lo, mid)
    return lo


# ---- output ------------------------------------------------------------------------------------------------------

COLUMNS = ["bench", "provider", "mode", "ops", "mask", "C", "H", "W", "batch", "stride", "pc", "layers", "order",
           "dtype", "median_ms",
           "imagenet", "precision", "channels_last",
           "p20_ms", "p80_ms", "reps", "saved_bytes", "saved_bytes_per_sample", "baseline_rss_mb", "peak_rss_mb",
           "step_rss_mb", "peak_alloc_mb", "max_batch", "first_call_s", "note", "device", "torch", "git_sha", "date",
           "load_avg_1m", "samples_per_s", "protocol_hours"]  # fmt: skip


def write_rows(rows, path: Path) -> None:
    """CSV (long format, one row per measurement) and a JSON twin next to it."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def add_case(rows: list, new: list, meta: dict, sink=None) -> None:
    """Append one case's rows (tagged with the run metadata), print them, and hand everything so far to
    ``sink`` so a long run keeps its partial results."""
    rows += [{**r, **meta} for r in new]
    print(format_table(new), flush=True)
    if sink:
        sink(rows)


def format_table(rows) -> str:
    cols = ["provider", "mode", "median_ms", "p20_ms", "p80_ms", "saved_bytes", "step_rss_mb", "peak_alloc_mb", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int) and v >= 1024:  # byte counts
        return f"{v / 2**20:.3f} MiB"
    return str(v)


# ---- command line ------------------------------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("bench-edge", help="time and memory of one mixed edge per provider")
    p.add_argument("--ops", default="darts", help="'darts', 'nb201' or a comma-separated list of op names")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--W", type=int, default=None, help="default: H")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--stride", type=int, default=1, choices=(1, 2))
    p.add_argument("--partial-channels", type=int, default=1, dest="pc")
    p.add_argument("--mask", default=None, help="active ops as 0/1 string, e.g. 10101010")
    p.add_argument("--providers", "--backends", default=None, dest="providers",
                   help="comma list from naive,checkpoint,compile and the dnas_fast backends (default: "
                        "naive,checkpoint and every available backend)")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    p.add_argument("--mode", default="all", choices=(*MODES, "all"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rss", action="store_true", help="also peak RSS of a child process per provider (CPU)")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV (and a .json twin)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    known = [*BASELINES, *available_backends(device)]
    providers = args.providers.split(",") if args.providers else ["naive", "checkpoint", *available_backends(device)]
    unknown = [p for p in providers if p not in known]
    if unknown:
        raise ValueError(f"unknown or unavailable provider(s) {unknown} on {device}; choose from {known}")
    ops = args.ops if args.ops in OP_SETS else ",".join(args.ops.split(","))
    n_ops = len(OP_SETS.get(ops) or ops.split(","))
    if args.mask is not None and (len(args.mask) != n_ops or set(args.mask) - {"0", "1"}):
        raise ValueError(f"--mask must be {n_ops} characters of 0/1, got {args.mask!r}")
    cfg = {"bench": "edge", "ops": ops, "C": args.C, "H": args.H, "W": args.W or args.H, "batch": args.batch,
           "stride": args.stride, "pc": args.pc, "mask": args.mask, "dtype": args.dtype,
           "device": args.device}  # fmt: skip
    modes = MODES if args.mode == "all" else (args.mode,)
    rows = [{**r, **run_meta(device)} for r in bench_edge(cfg, providers, modes, rss=args.rss)]
    print(format_table(rows))
    if args.csv:
        write_rows(rows, Path(args.csv))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dnas-fast")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
