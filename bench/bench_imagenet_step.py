"""The ImageNet-shaped search step: DARTS supernet with the ImageNet stem (224 x 224 inputs, 8 cells, C=16, 1000
classes), first-order arch step + weight step, full channels (K=1) and PC-DARTS partial channels (K=2), naive
per-op edges against dnas_fast's fused edges in the same run.

CPU (small batch): step time and memory per sample (step peak RSS in a fresh child process, bytes saved for
backward). CUDA: additionally the largest batch that fits, samples/s at that batch and the projected time of the
PC-DARTS ImageNet protocol (50 epochs over 10% of ImageNet-1k's training set, each step one train and one
validation batch; warm-up epochs counted as full steps, so an upper bound).

    python bench/bench_imagenet_step.py --out bench/results/imagenet-step-cpu.csv              # CPU, batch 8
    python bench/bench_imagenet_step.py --device cuda --precision bf16 --out imagenet-step-gpu.csv
"""

import math
import sys

import torch

from dnas_fast import _backend
from dnas_fast.bench_edge import bench_search_step, build_search_step, max_batch_cuda
from dnas_fast.benchmark import add_case, bench_parser, run_meta, time_interleaved, timer, write_rows

IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images
PCDARTS_EPOCHS, PCDARTS_TRAIN_FRACTION = 50, 0.1  # yuhuixu1993/PC-DARTS train_search_imagenet.py


def protocol_hours(step_s: float, batch: int) -> float:
    """Hours of the PC-DARTS ImageNet search at ``step_s`` seconds per step of ``batch`` train samples."""
    steps_per_epoch = math.ceil(PCDARTS_TRAIN_FRACTION * IMAGENET_TRAIN / batch)
    return PCDARTS_EPOCHS * steps_per_epoch * step_s / 3600


def cuda_rows(cfg: dict, provider: str) -> dict:
    """Largest batch, then time at that batch (interleaved repeats), samples/s and the protocol projection."""
    device = torch.device(cfg["device"])
    row = {**cfg, "provider": provider, "mode": "search-step-order1"}
    best = max_batch_cuda(cfg, provider, hi=cfg.get("max_batch_cap", 4096))
    row["max_batch"] = best
    step = build_search_step({**cfg, "provider": provider, "batch": best})
    step()
    row.update(time_interleaved({provider: timer(step, device)}, device, min_reps=3, budget_s=20)[provider])
    row["batch"] = best
    row["samples_per_s"] = best / (row["median_ms"] / 1e3)
    row["protocol_hours"] = protocol_hours(row["median_ms"] / 1e3, best)
    return row


def main(argv=None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--batch", type=int, default=8, help="CPU batch (CUDA: searched)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2], help="partial-channel divisors K")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--max-batch-cap", type=int, default=4096, help="CUDA: stop the max-batch search here")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    providers = ["naive", _backend.auto_choice(device)]
    meta, rows = run_meta(device), []
    sink = (lambda r: write_rows(r, args.out)) if args.out else None
    for k in args.ks:
        cfg = {"bench": "imagenet-search", "C": 16, "layers": 8, "H": 224, "imagenet": True, "pc": k, "order": 1,
               "batch": args.batch, "precision": args.precision, "channels_last": args.channels_last,
               "device": str(device), "max_batch_cap": args.max_batch_cap}  # fmt: skip
        if device.type == "cuda":
            new = [cuda_rows(cfg, provider) for provider in providers]
        else:
            new = bench_search_step(cfg, providers, rounds=args.rounds)
            for row in new:
                row["step_rss_mb_per_sample"] = row.get("step_rss_mb", float("nan")) / args.batch
        add_case(rows, new, meta, sink)
    return 0


if __name__ == "__main__":
    sys.exit(main())
