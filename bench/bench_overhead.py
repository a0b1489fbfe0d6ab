"""Python overhead of one training forward+backward where compute is tiny (DARTS network C=4, 5 cells, 8x8 input,
batch 2, one thread): wall time per step and Python function calls per step (an exact count, independent of the
machine's load) for each backend, in one run. Run it at two commits to see what a change to the per-forward path
(backend resolution, arch checks) buys:

    python bench/bench_overhead.py --out bench/results/overhead-cpu-<date>-<commit>.csv
"""

import sys

import torch
import torch.nn.functional as F

from dnas_fast import _backend, build_space, build_strategy
from dnas_fast.benchmark import bench_parser, run_meta, time_interleaved, timer, write_rows

PROVIDERS = ("reference", "cpu", "batched")


def tiny_step(provider: str):
    torch.manual_seed(0)
    space = build_space("darts", C=4, layers=5, in_channels=3, backend=provider)
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))

    def step():
        space.zero_grad(set_to_none=True)
        F.cross_entropy(space(x, strategy.arch_weights("weights")), y).backward()

    return step


def python_calls(step) -> int:
    """Python function calls of one step (C functions and torch ops excluded)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        step()
    finally:
        sys.setprofile(None)
    return calls


def main(argv=None) -> int:
    args = bench_parser(__doc__.splitlines()[0], threads=1).parse_args(argv)
    torch.set_num_threads(args.threads)
    with _backend.use_backend(None):  # an override (DNAS_FAST_BACKEND) would replace each provider's backend
        providers = [p for p in PROVIDERS if p in _backend.available_backends("cpu")]
        steps = {p: tiny_step(p) for p in providers}
        for step in steps.values():
            step()  # warm-up: caches, lazy imports
        stats = time_interleaved({p: timer(s, "cpu") for p, s in steps.items()}, "cpu", min_reps=10, max_reps=60)
        meta = run_meta(torch.device("cpu"))
        rows = []
        for p in providers:
            rows.append(
                {"bench": "overhead", "provider": p, "python_calls": python_calls(steps[p]), **stats[p], **meta}
            )
            print(f"{p:10s} {stats[p]['median_ms']:8.1f} ms  {rows[-1]['python_calls']:7d} Python calls", flush=True)
        if args.out:
            write_rows(rows, args.out)
        return 0


if __name__ == "__main__":
    sys.exit(main())
