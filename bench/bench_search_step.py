"""End-to-end: one DARTS search step (arch step on a validation batch + weight step; 8 cells, C = 16, 32 x 32
inputs) with every edge naive, naive + checkpoint per edge, or fused: time, bytes saved for backward per sample,
peak memory (CPU: peak RSS of a fresh child process per provider; CUDA: allocator peak and max batch).

    python bench/bench_search_step.py --out bench/results/search.csv [--quick]
"""

import sys

import torch

from dnas_fast import _backend
from dnas_fast.bench_edge import bench_search_step, fused_backends
from dnas_fast.benchmark import add_case, bench_parser, run_meta, write_rows

CASES = [(16, 1), (64, 1), (16, 2)]  # (batch, DARTS order)


def search_rows(device="cpu", quick=False, rounds=1, all_backends=False, sink=None) -> list[dict]:
    """Rows for every case; the fused provider is the backend ``auto`` picks (all of them with ``all_backends``);
    ``sink(rows)`` (if given) is called after every case so partial results survive."""
    device = torch.device(device)
    fused = fused_backends(device)
    fused = fused if all_backends else [_backend.auto_choice(device)]
    providers = ["naive", "checkpoint", *fused]
    meta = run_meta(device)
    rows = []
    for batch, order in CASES[:1] if quick else CASES:
        cfg = {"bench": "search", "C": 16, "layers": 8, "H": 32, "batch": batch, "order": order,
               "device": str(device)}  # fmt: skip
        new = bench_search_step(cfg, providers, rounds=rounds)
        add_case(rows, new, meta, sink)
    return rows


def main(argv=None) -> int:
    p = bench_parser(__doc__, quick="the first case only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = search_rows(args.device, args.quick)
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
