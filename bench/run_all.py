"""Run the edge and search-step benchmarks and write one CSV (+ JSON) to bench/results/<device>-<date>.csv.

python bench/run_all.py [--device cuda] [--quick]     # CPU: about 15 minutes on 2 cores
"""

import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_edge import edge_rows  # noqa: E402
from bench_search_step import search_rows  # noqa: E402

from dnas_fast.benchmark import bench_parser, write_rows  # noqa: E402


def main(argv=None) -> int:
    p = bench_parser(__doc__, out="CSV to write (default: bench/results/<device type>-<date>.csv)",
                     quick="one case of each benchmark")  # fmt: skip
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--skip-edge", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"{torch.device(args.device).type}-{date}.csv")
    # the search step first (the headline numbers); the CSV is rewritten after every case
    rows = search_rows(args.device, args.quick, sink=lambda r: write_rows(r, out))
    if not args.skip_edge:
        edge_rows(args.device, not args.no_compile, args.quick, sink=lambda r: write_rows(rows + r, out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
