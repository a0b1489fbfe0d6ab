"""Per-edge benchmark at the DARTS search stages: (C, H, W) = (16, 32, 32), (32, 16, 16), (64, 8, 8), batch 16 and
64, K = 8 ops, modes forward / backward / full, every provider in the same run (naive, naive + checkpoint,
torch.compile of naive, each dnas_fast backend), plus masked variants (half the ops, one op).

    python bench/bench_edge.py --out bench/results/edge.csv [--quick] [--no-compile]
"""

import sys

import torch

from dnas_fast.bench_edge import MODES, bench_edge, fused_backends
from dnas_fast.benchmark import add_case, bench_parser, run_meta, write_rows

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
BATCHES = [16, 64]
MASKS = {"half": "01010101", "one": "00001000"}  # half: max, skip, sep5, dil5; one: sep_conv_3x3


def edge_rows(
    device="cpu",
    compile_=True,
    quick=False,
    budget_s=2.0,
    sink=None,
    shapes=SHAPES,
    batches=BATCHES,
    modes=MODES,
    masks=True,
) -> list[dict]:
    """All per-edge rows; ``sink(rows)`` (if given) is called after every case so partial results survive."""
    device = torch.device(device)
    meta = run_meta(device)
    providers = ["naive", "checkpoint", *(["compile"] if compile_ else []), *fused_backends(device)]
    shapes, batches = (shapes[:1], batches[:1]) if quick else (shapes, batches)
    rows = []
    for C, H, W in shapes:
        for N in batches:
            cfg = {"bench": "edge", "ops": "darts", "C": C, "H": H, "W": W, "batch": N, "stride": 1,
                   "dtype": "float32", "device": str(device)}  # fmt: skip
            new = bench_edge(cfg, providers, modes, rss=device.type == "cpu", budget_s=budget_s)
            add_case(rows, new, meta, sink)
    masked = [p for p in providers if p != "compile"]
    for C, H, W in shapes if masks else []:
        for name, mask in MASKS.items():
            cfg = {"bench": f"edge-mask-{name}", "ops": "darts", "C": C, "H": H, "W": W, "batch": 16, "stride": 1,
                   "mask": mask, "dtype": "float32", "device": str(device)}  # fmt: skip
            new = bench_edge(cfg, masked, ("full",), budget_s=budget_s)
            add_case(rows, new, meta, sink)
    return rows


def main(argv=None) -> int:
    p = bench_parser(__doc__, quick="one shape, one batch size")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--shapes", default=None, help="e.g. 32x16,64x8 (C x H, square maps); default: the 3 stages")
    p.add_argument("--batches", default=None, help="e.g. 16,64")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--no-masks", action="store_true", help="skip the masked variants")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = (
        [(int(c), int(h), int(h)) for c, h in (s.split("x") for s in args.shapes.split(","))] if args.shapes else SHAPES
    )
    batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES
    sink = (lambda rows: write_rows(rows, args.out)) if args.out else None
    rows = edge_rows(
        args.device,
        not args.no_compile,
        args.quick,
        sink=sink,
        shapes=shapes,
        batches=batches,
        modes=tuple(args.modes.split(",")),
        masks=not args.no_masks,
    )
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
