"""Cell-level batched execution vs the naive per-op loop and the fused per-edge path, same run, interleaved:
* ``tiny``: the overhead-bound case (DARTS network C=4, 5 cells, 8x8 input, batch 2, forward+backward);
* ``step``: one first-order DARTS search step (8 cells, C=16, 32x32, batch 64) and a second-order one (batch 16),
  each also with the network and batches channels_last (``+cl``);
* bytes saved for backward per sample by one training forward of the 8-cell network.

python bench/bench_batched.py --out bench/results/batched-cpu.csv [--threads 2] [--cases tiny step saved]
"""

import sys
import time

import torch
import torch.nn.functional as F

from dnas_fast import _backend
from dnas_fast.bench_edge import build_search_step, search_step_saved_bytes
from dnas_fast.benchmark import bench_parser, run_meta, time_interleaved, timer, write_rows

PROVIDERS = ("naive", "cpu", "batched")
# the search step also in --channels-last, where CPU depthwise convs are several times faster
STEP_PROVIDERS = {"naive": ("naive", False), "naive+cl": ("naive", True), "cpu": ("cpu", False),
                  "batched": ("batched", False), "batched+cl": ("batched", True)}  # fmt: skip
STEP_CASES = ((64, 1), (16, 2))  # (batch, DARTS order)


def tiny_runner(provider):
    from dnas_fast.spaces import build_space
    from dnas_fast.strategies import build_strategy

    torch.manual_seed(0)
    space = build_space("darts", C=4, layers=5, backend="reference" if provider == "naive" else provider)
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec(), torch.device("cpu"))
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))

    params = list(space.parameters())

    def run_once():
        for p in params:  # outside the timed part: as a training step's zero_grad(set_to_none=True)
            p.grad = None
        t0 = time.perf_counter()
        F.cross_entropy(space(x, strategy.arch_weights("weights")), y).backward()
        return time.perf_counter() - t0

    return run_once


def _rows(case, stats, meta, **cfg):
    naive = stats["naive"]["median_ms"]
    rows = []
    for p, s in stats.items():
        rows.append({"case": case, **cfg, "provider": p, **{k: round(v, 2) for k, v in s.items()},
                     "ratio_vs_naive": round(s["median_ms"] / naive, 3), **meta})  # fmt: skip
        print(f"{case} {cfg} {p:8s} {s['median_ms']:9.1f} ms  {rows[-1]['ratio_vs_naive']}x naive", flush=True)
    return rows


def run(cases, budget_s) -> list[dict]:
    with _backend.use_backend(None):  # an override (DNAS_FAST_BACKEND) would replace each provider's backend
        meta = run_meta(torch.device("cpu"))
        rows = []
        if "tiny" in cases:
            stats = time_interleaved({p: tiny_runner(p) for p in PROVIDERS}, "cpu", warmup=2, min_reps=10,
                                     max_reps=60, budget_s=budget_s)  # fmt: skip
            rows += _rows("tiny_fwd_bwd", stats, meta, C=4, layers=5, H=8, batch=2)
        if "step" in cases:
            for batch, order in STEP_CASES:
                cfg = {"C": 16, "layers": 8, "H": 32, "batch": batch, "order": order}
                runners = {
                    name: timer(build_search_step({**cfg, "provider": p, "channels_last": cl}), "cpu")
                    for name, (p, cl) in STEP_PROVIDERS.items()
                }
                stats = time_interleaved(runners, "cpu", warmup=1, min_reps=2, max_reps=2, budget_s=0)
                rows += _rows("search_step", stats, meta, **cfg)
        if "saved" in cases:
            for p in PROVIDERS:
                step = build_search_step({"C": 16, "layers": 8, "H": 32, "batch": 4, "order": 1, "provider": p})
                mib = search_step_saved_bytes(step) / 4 / 2**20
                rows.append({"case": "saved_bytes", "provider": p, "saved_mib_per_sample": round(mib, 3), **meta})
                print(f"saved for backward {p:8s} {mib:8.3f} MiB / sample", flush=True)
        return rows


def main(argv=None) -> int:
    p = bench_parser(__doc__, device=None, threads=1)
    p.add_argument("--cases", nargs="+", default=["tiny", "saved", "step"], choices=["tiny", "saved", "step"])
    p.add_argument("--budget-s", type=float, default=20.0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args.cases, args.budget_s)
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
