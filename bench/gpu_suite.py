"""The one GPU suite: what a session with a lent GPU runs first, in at most 8 minutes, writing everything to
``bench/results/<device>-<date>-*``:

1. ``correctness``: the GPU tests (``pytest -m cuda``: every fused backend against the reference, bf16/fp16
   steps, the Triton ops under torch.compile), log in ``...-correctness.log``;
2. ``search``: one DARTS search step (8 cells, C=16, 32x32, first order) per provider (naive, checkpoint per edge,
   every fused backend incl. ``batched``, and ``batched+graph``: the whole step captured as a CUDA graph) at batch
   16, 64 and 256: time, allocator peak, saved bytes, ``ready_s`` (build plus the calls before the steady step:
   warm-ups and capture); then the largest batch of naive, the ``auto`` pick and ``batched`` (bisection capped at
   65536), the samples/s at each provider's best batch, and the projected wall time of the DARTS paper's CIFAR-10
   search (50 epochs over a 25k/25k split, first order, batch 64); ``batched-keep`` at batch 16 and 64 (every
   block keeps its intermediates: where this device's keep-or-recompute crossover lies); last ``batched+compile``
   (``torch.compile(mode="reduce-overhead")`` of the step) at batch 16 and 64, whose compilation may run into the
   part's time limit;
3. ``edge``: the per-edge table (``bench/bench_edge.py --quick``);
4. ``combine``: the Triton parameter-free combine against the HBM roofline (``bench/bench_pool_combine.py``).

Each part runs in its own process under its own time limit, so one slow part cannot eat the others' time; a part
that times out leaves what it wrote so far. Whoever copies the tree to the GPU machine first writes the commit:
``git rev-parse --short HEAD > bench/results/COMMIT``.

    python bench/gpu_suite.py            # on the GPU machine, after ./dev.sh setup with a CUDA torch
"""

import datetime
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent
SEARCH_BATCHES = (16, 64, 256)
MAX_BATCH_CAP = 65536
DARTS_SEARCH = {"epochs": 50, "train_images": 25_000, "batch": 64}  # the DARTS paper's CIFAR-10 search
KEEP_BATCHES = (16, 64)  # "batched-keep": every batched block keeps its intermediates (no recompute)
COMPILE_BATCHES = (16, 64)  # the batches of the step-time targets; compiling costs minutes, so no more
# torch.compile(mode="reduce-overhead") compiles on the first call, records its CUDA graph on the second and
# replays from the third
COMPILE_READY_CALLS = 3


def ready_step(cfg: dict, device):
    """(step, seconds from building it to its steady state) of ``cfg``'s provider, ``backend[+capture]``."""
    from dnas_fast.bench_edge import build_search_step
    from dnas_fast.cuda_graphs import WARMUP_STEPS

    backend, _, capture = cfg["provider"].partition("+")
    calls = {"": 1, "graph": WARMUP_STEPS + 1, "compile": COMPILE_READY_CALLS}[capture]  # until the steady step
    start = time.perf_counter()
    step = build_search_step({**cfg, "provider": backend, "capture": capture or None})
    for _ in range(calls):
        step()
    torch.cuda.synchronize(device)
    return step, time.perf_counter() - start


def search_part(prefix: str, device: str, batches=SEARCH_BATCHES, cap=MAX_BATCH_CAP) -> None:
    from dnas_fast import _backend
    from dnas_fast.bench_edge import build_search_step, fused_backends, search_step_saved_bytes
    from dnas_fast.benchmark import cuda_peak_mb, largest_batch, run_meta, time_interleaved, timer, write_rows

    device = torch.device(device)
    fused = fused_backends(device)
    providers = ["naive", "checkpoint", *fused, "batched+graph"]
    meta, rows, out = run_meta(device), [], Path(f"{prefix}-search.csv")

    def search_row(p: str, batch: int, label: str | None = None, **extra) -> None:
        cfg = {"C": 16, "layers": 8, "H": 32, "batch": batch, "order": 1, "device": str(device), "provider": p, **extra}
        row = {"bench": "search", "provider": label or p, "batch": batch}
        try:
            step, row["ready_s"] = ready_step(cfg, device)
            row["saved_mb_per_sample"] = search_step_saved_bytes(step) / batch / 2**20
            row["peak_alloc_mb"] = cuda_peak_mb(device, step)
            row.update(time_interleaved({p: timer(step, device)}, device, min_reps=3, budget_s=3)[p])
            row["samples_per_s"] = batch / row["median_ms"] * 1e3
        except Exception as err:  # an OOM or an unsupported provider: record it and go on
            row["note"] = f"{type(err).__name__}: {str(err)[:160]}"
        rows.append({**row, **meta})
        print(row, flush=True)
        write_rows(rows, out)

    for batch in batches:
        for p in providers:
            search_row(p, batch)
    for batch in [b for b in KEEP_BATCHES if b in batches]:  # on CPU kept blocks pay below 32k input elements
        search_row("batched", batch, label="batched-keep", recompute_min_numel=2**62)
    for p in dict.fromkeys(["naive", _backend.auto_choice(device), "batched"]):
        cfg = {"C": 16, "layers": 8, "H": 32, "order": 1, "device": str(device), "provider": p}
        t0 = time.perf_counter()
        n = largest_batch(lambda n, cfg=cfg: build_search_step({**cfg, "batch": n})(), device, hi=cap)
        row = {"bench": "max-batch", "provider": p, "max_batch": n, "search_s": time.perf_counter() - t0}
        if n:
            step = build_search_step({**cfg, "batch": n})
            step()
            stats = time_interleaved({p: timer(step, device)}, device, min_reps=2, max_reps=3, budget_s=0)[p]
            row.update(stats, batch=n, samples_per_s=n / stats["median_ms"] * 1e3)
        rows.append({**row, **meta})
        print(row, flush=True)
        write_rows(rows, out)
    by_provider = {}
    for r in rows:
        if r.get("samples_per_s"):
            by_provider.setdefault(r["provider"], []).append(r)
    for p, rs in by_provider.items():
        best = max(rs, key=lambda r: r["samples_per_s"])
        at64 = next((r for r in rs if r.get("batch") == DARTS_SEARCH["batch"] and r["bench"] == "search"), None)
        steps = DARTS_SEARCH["epochs"] * DARTS_SEARCH["train_images"] / DARTS_SEARCH["batch"]
        hours = steps * at64["median_ms"] / 3.6e6 if at64 else None
        rows.append({"bench": "summary", "provider": p, "best_batch": best["batch"],
                     "best_samples_per_s": best["samples_per_s"], "darts_cifar10_search_h_at_batch64": hours,
                     **meta})  # fmt: skip
        print(rows[-1], flush=True)
    write_rows(rows, out)
    for batch in [b for b in COMPILE_BATCHES if b in batches] or batches[:1]:
        search_row("batched+compile", batch)


def run_part(name: str, cmd: list, log: Path, timeout: float) -> None:
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    print(f"[gpu_suite] {name}: rc {rc} after {time.perf_counter() - t0:.0f} s, log {log}", flush=True)


def main(argv=None) -> int:
    from dnas_fast.benchmark import bench_parser, device_name

    p = bench_parser(__doc__, out=None, device="cuda", threads=None, quick="tiny budgets (a check of the suite itself)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_suite needs a CUDA GPU", file=sys.stderr)
        return 2
    name = device_name(args.device).split(":")[1].split()[-1].lower()  # e.g. "h200"
    prefix = RESULTS / f"{name}-{datetime.date.today():%Y%m%d}"
    budgets = {"correctness": 100, "search": 240, "edge": 50, "combine": 50}  # seconds: 440 s + start-ups
    if args.quick:
        budgets = dict.fromkeys(budgets, 60)
    py = sys.executable
    search = f"from bench.gpu_suite import search_part; search_part({str(prefix)!r}, {args.device!r}"
    search += ", batches=(2,), cap=16)" if args.quick else ")"
    parts = {
        "correctness": [py, "-m", "pytest", "-q", "-m", "cuda", "tests/"],
        "search": [py, "-c", search],
        "edge": [py, "bench/bench_edge.py", "--device", args.device, "--quick", "--out", f"{prefix}-edge.csv"],
        "combine": [py, "bench/bench_pool_combine.py", "--out", f"{prefix}-triton-pool-combine.csv"],
    }
    for part, cmd in parts.items():
        run_part(part, cmd, Path(f"{prefix}-{part}.log"), budgets[part])
    return 0


if __name__ == "__main__":
    sys.exit(main())
