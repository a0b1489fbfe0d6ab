"""TF-NAS on this device: does the searched network's *measured* latency hit the target?

python bench/bench_tfnas_latency.py [--device cpu] [--epochs 6] [--out bench/results/tfnas-latency-<dev>.json]

Measures a latency table of a small MBConv space (every width, the authors' table), runs a TF-NAS search on the
digits data at a target inside the achievable range, then times the derived network whole. The claim is the
ratio measured / target (the test suite checks only the table's prediction: wall clock has no place there).
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from dnas_fast.benchmark import bench_parser, run_meta
from dnas_fast.cli import main as cli
from dnas_fast.spaces import build_space
from dnas_fast.strategies.tf_nas_latency import SupernetLatency, build_table, measure_derived

SPACE = {"stages": [[32, 2, 1, "relu"], [48, 3, 2, "swish"]], "stem": [16, 32], "stem_stride": 1, "head": 64,
         "resolution": 8}  # fmt: skip


def main(argv=None) -> int:
    p = bench_parser(__doc__, out="write the result as JSON here", threads=1)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = run_meta(args.device)
    space = build_space("mbconv", in_channels=1, num_classes=10, **SPACE)
    table = build_table(space, args.device, repeats=args.repeats)
    model = SupernetLatency(table, space)
    E = len(space.flat_shapes())
    lo = model.derived([0] * E, [0, 1], space.max_widths() // 2)
    hi = model.derived([7] * E, [2, 3], space.max_widths())
    target = lo + 0.55 * (hi - lo)
    with tempfile.TemporaryDirectory() as tmp:
        table.save(Path(tmp) / "lut.json")
        run = Path(tmp) / "run"
        strategy_args = {"warmup_epochs": 1, "arch_lr": 0.1, "lambda_lat": 1.0}
        code = cli(["search", "--space", "mbconv", "--strategy", "tf-nas", "--latency-target", f"{target:.4f}",
                    "--latency-table", str(Path(tmp) / "lut.json"), "--space-args", json.dumps(SPACE),
                    "--strategy-args", json.dumps(strategy_args), "--data", "digits", "--epochs", str(args.epochs),
                    "--batch-size", "16", "--out", str(run), "--device", args.device,
                    "--max-steps-per-epoch", "30"])  # fmt: skip
        if code:
            return code
        derived = json.loads((run / "genotype.json").read_text())
    measured = measure_derived(derived["config"], args.device, repeats=10 * args.repeats, warmup=args.repeats)
    result = {**meta, "target_ms": target, "range_ms": [lo, hi],
              "predicted_ms": derived["predicted_latency_ms"], "measured_ms": measured,
              "measured_over_target": measured / target}  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
