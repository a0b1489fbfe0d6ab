"""Per-edge benchmark at the DARTS search stages: (C, H, W) = (16, 32, 32), (32, 16, 16), (64, 8, 8), batch 16 and
64, K = 8 ops, modes forward / backward / full, every provider in the same run (naive, naive + checkpoint,
torch.compile of naive, each dnas_fast backend), plus masked variants (half the ops, one op).

    python bench/bench_edge.py --out bench/results/edge.csv [--quick] [--no-compile]
"""

import argparse
import sys
from pathlib import Path

import torch

from dnas_fast.bench_edge import MODES, available_backends, bench_edge, format_table, run_meta, write_rows

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
BATCHES = [16, 64]
MASKS = {"half": "01010101", "one": "00001000"}  # half: max, skip, sep5, dil5; one: sep_conv_3x3


def edge_rows(device="cpu", compile_=True, quick=False, budget_s=2.0, sink=None) -> list[dict]:
    """All per-edge rows; ``sink(rows)`` (if given) is called after every case so partial results survive."""
    device = torch.device(device)
    meta = run_meta(device)
    providers = ["naive", "checkpoint", *(["compile"] if compile_ else []), *available_backends(device)]
    rows = []
    for C, H, W in SHAPES[:1] if quick else SHAPES:
        for N in BATCHES[:1] if quick else BATCHES:
            cfg = {"bench": "edge", "ops": "darts", "C": C, "H": H, "W": W, "batch": N, "stride": 1,
                   "dtype": "float32", "device": str(device)}  # fmt: skip
            new = bench_edge(cfg, providers, MODES, rss=device.type == "cpu", budget_s=budget_s)
            rows += [{**r, **meta} for r in new]
            print(format_table(new), flush=True)
            if sink:
                sink(rows)
    masked = [p for p in providers if p != "compile"]
    for C, H, W in SHAPES[:1] if quick else SHAPES:
        for name, mask in MASKS.items():
            cfg = {"bench": f"edge-mask-{name}", "ops": "darts", "C": C, "H": H, "W": W, "batch": 16, "stride": 1,
                   "mask": mask, "dtype": "float32", "device": str(device)}  # fmt: skip
            new = bench_edge(cfg, masked, ("full",), budget_s=budget_s)
            rows += [{**r, **meta} for r in new]
            print(format_table(new), flush=True)
            if sink:
                sink(rows)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="one shape, one batch size")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = edge_rows(args.device, not args.no_compile, args.quick)
    if args.out:
        write_rows(rows, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
