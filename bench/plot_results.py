"""Plot a results CSV of bench/run_all.py: per-edge time and saved bytes per provider, and the search step's time
and peak memory. Writes PNGs next to the CSV.

    python bench/plot_results.py bench/results/cpu-<date>.csv
"""

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dnas_fast.benchmark import bench_parser  # noqa: E402

ORDER = ["naive", "checkpoint", "compile", "fused", "cpu", "cuda", "triton"]  # fixed colours across panels


# the thread count in a ``device_name`` (``cpu:<model>:threads=N``; files before 2026-12-03: ``<model> (N threads)``)
THREADS = re.compile(r":threads=(\d+)$| \((\d+) threads\)$")


def _threads(row) -> str:
    m = THREADS.search(row.get("device", ""))
    return f"({m[1] or m[2]} threads)" if m else ""


def load(path: Path) -> list[dict]:
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r.get("median_ms")]


def grouped_bars(ax, groups: dict, title: str, ylabel: str, log=False):
    """groups: {x label: {provider: value}} -> side-by-side bars per provider."""
    providers = [p for p in ORDER if any(p in v for v in groups.values())]
    width = 0.8 / max(len(providers), 1)
    for i, provider in enumerate(providers):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(
            xs, [groups[g].get(provider, 0) for g in groups], width, label=provider, color=f"C{ORDER.index(provider)}"
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], list(groups), rotation=30, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def main(argv=None) -> int:
    p = bench_parser(__doc__, out=None, device=None, threads=None)
    p.add_argument("csv", type=Path, help="a results CSV of bench/run_all.py")
    path = p.parse_args(argv).csv
    rows = load(path)
    device = THREADS.sub("", rows[0]["device"]) if rows else "?"
    edge_time, edge_saved = defaultdict(dict), defaultdict(dict)
    for r in rows:
        if r["bench"] == "edge" and r["mode"] == "full":
            key = f"C{r['C']} {r['H']}x{r['W']} N{r['batch']} {_threads(r)}"
            edge_time[key][r["provider"]] = float(r["median_ms"])
            edge_saved[key][r["provider"]] = float(r["saved_bytes"]) / 2**20
    search_time, search_mem = defaultdict(dict), defaultdict(dict)
    for r in rows:
        if r["bench"] == "search":
            key = f"N{r['batch']} order {r['order']} {_threads(r)}"
            search_time[key][r["provider"]] = float(r["median_ms"]) / 1e3
            mem = r.get("step_rss_mb") or r.get("peak_alloc_mb")
            if mem:
                search_mem[key][r["provider"]] = float(mem)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    grouped_bars(axes[0, 0], edge_time, "one DARTS edge, forward + backward", "ms (median)")
    grouped_bars(axes[0, 1], edge_saved, "one DARTS edge, bytes saved for backward", "MiB", log=True)
    grouped_bars(axes[1, 0], search_time, "DARTS search step (8 cells, C=16, 32x32)", "s (median)")
    grouped_bars(axes[1, 1], search_mem, "DARTS search step, peak memory of the step", "MB")
    fig.suptitle(f"dnas_fast benchmarks on {device}", fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
