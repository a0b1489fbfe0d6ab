"""Fair baselines: one whole DARTS search step as the authors' ``train_search.py`` runs it (their ``Network(16, 10,
8)``, first-order ``Architect.step`` then the weight step with SGD momentum and clip 5; second order at batch 16),
against the same loop with ``compat.Cell`` swapped in and against ``dnas-fast search``'s own step (default
backend). The authors' network runs as shipped (NCHW) and in channels_last, one line for a user to add: ratios
are quoted against both, the best configuration first.

Every step runs in a fresh child process (peak RSS is its own), providers interleaved round by round, medians.
The authors' network and loop are ``tests/authors_layout.py`` (a plain rebuild, tested against their numbers).

    python bench/bench_fair_step.py --out bench/results/fair-step-cpu.csv [--quick] [--rounds 3]
"""

import statistics
import sys
from pathlib import Path

import torch

from dnas_fast.benchmark import bench_parser, child_peak_rss, format_table, run_meta, write_rows

REPO = Path(__file__).resolve().parents[1]
CASES = [(64, 1), (16, 2)]  # (batch, DARTS order)
PROVIDERS = {  # name -> (builder, task options)
    "authors": ("bench.bench_fair_step:authors_step", {"channels_last": False}),
    "authors+cl": ("bench.bench_fair_step:authors_step", {"channels_last": True}),
    "authors+compat.Cell+cl": ("bench.bench_fair_step:authors_step", {"channels_last": True, "compat_cell": True}),
    "dnas_fast": ("dnas_fast.bench_edge:build_search_step", {"provider": "batched", "channels_last": True}),
}
BEST_BASELINE = "authors+cl"


def authors_step(task: dict):
    """One step of the authors' loop on their search network (``compat_cell``: with ``compat.Cell`` swapped in)."""
    sys.path.insert(0, str(REPO))
    from dnas_fast.compat import Cell
    from tests.authors_layout import AuthorsCell, AuthorsNetwork, authors_search_step

    def drop_in(steps, C_pp, C_p, C, reduction, reduction_prev):
        return Cell(steps, 4, C_pp, C_p, C, reduction, reduction_prev)

    torch.manual_seed(0)
    net = AuthorsNetwork(task["C"], 10, task["layers"], make_cell=drop_in if task.get("compat_cell") else AuthorsCell)
    layout = torch.channels_last if task["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=layout)
    alphas = [net.alphas_normal.requires_grad_(), net.alphas_reduce.requires_grad_()]
    w_opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(alphas, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    N, H = task["batch"], task["H"]

    def batch():
        return torch.randn(N, 3, H, H).contiguous(memory_format=layout), torch.randint(10, (N,))

    train, valid = batch(), batch()
    return lambda: authors_search_step(net, alphas, w_opt, a_opt, train, valid, 0.025, task["order"] == 2)


def fair_rows(quick=False, rounds=2) -> list[dict]:
    meta, rows = run_meta(torch.device("cpu")), []
    for batch, order in CASES[:1] if quick else CASES:
        case = {"C": 16, "layers": 8, "H": 32, "batch": batch, "order": order}
        times, rss = {p: [] for p in PROVIDERS}, {p: 0.0 for p in PROVIDERS}
        for _ in range(rounds):
            for name, (builder, options) in PROVIDERS.items():
                res = child_peak_rss(builder, {**case, **options})
                times[name] += res["times_ms"]
                rss[name] = max(rss[name], res["step_rss_mb"])
        median = {p: statistics.median(t) for p, t in times.items()}
        for name in PROVIDERS:
            rows.append({
                "provider": name, **case, "median_ms": round(median[name], 1), "reps": len(times[name]),
                "x_best": round(median[name] / median[BEST_BASELINE], 3),
                "x_shipped": round(median[name] / median["authors"], 3), "step_rss_mb": round(rss[name], 1),
                "rss_x_best": round(rss[name] / rss[BEST_BASELINE], 3), **meta,
            })  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = bench_parser(__doc__, quick="the batch-64 first-order case only")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (one timed step each)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = fair_rows(args.quick, args.rounds)
    columns = ["provider", "batch", "order", "median_ms", "x_best", "x_shipped", "step_rss_mb", "rss_x_best"]
    print(format_table(rows, columns))
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
