"""Issue 22: what skipping ops buys GDAS and P-DARTS. One search step (architecture + weight step, in the
strategy's order) on the DARTS network of the README's strategy examples (C = 8, 1 x 8 x 8 digits-sized inputs,
batch 64), providers interleaved in one run, on the backend ``auto`` picks (``--backend`` to force one):

* ``gdas`` vs ``darts`` on the same 5-cell network: GDAS runs one sampled op of eight per edge (target <= 0.35x);
* each P-DARTS stage (5 cells x 8 ops, 11 x 5, 17 x 3; the ops of each edge a random subset as a stage would hold)
  vs a full 8-op P-DARTS step of the same depth (target: within 1.2x of 5/8 and 3/8 of it).

    python bench/bench_methods.py --out bench/results/methods-cpu.csv [--quick]
"""

import sys

import torch
from torch import nn

from dnas_fast import build_space, build_strategy
from dnas_fast.benchmark import bench_parser, format_table, run_meta, time_interleaved, timer, write_rows
from dnas_fast.ops import DARTS_OPS
from dnas_fast.shapes import channels_last_default
from dnas_fast.strategies import StepContext
from dnas_fast.strategies.base import weight_optimizer

C, BATCH, H, EDGES = 8, 64, 8, 14
PDARTS_STAGES = [(5, 8), (11, 5), (17, 3)]  # (cells, ops per edge): layers 5 + (0, 6, 12), 8 -> 5 -> 3 ops


def random_allowed(k: int, seed: int) -> dict | None:
    """Each edge's ``k`` ops, drawn at random (None: all of them)."""
    if k == len(DARTS_OPS):
        return None
    g = torch.Generator().manual_seed(seed)
    pick = lambda: [[DARTS_OPS[i] for i in sorted(torch.randperm(len(DARTS_OPS), generator=g)[:k].tolist())]
                    for _ in range(EDGES)]  # fmt: skip
    return {"normal": pick(), "reduce": pick()}


def search_step(strategy_name: str, layers: int, allowed=None, backend=None, device="cpu", epochs=50, seed=0):
    """``step()`` of one search step, as the loop runs it, on fixed random batches."""
    torch.manual_seed(seed)
    device = torch.device(device)
    strategy = build_strategy(strategy_name)
    cfg = dict(C=C, layers=layers, in_channels=1, num_classes=10, allowed=allowed, backend=backend)
    space = build_space("darts", **strategy.adapt_space_config(cfg)).to(device)
    fmt = torch.channels_last if channels_last_default(device) else torch.contiguous_format
    space.to(memory_format=fmt)
    strategy.setup(space.arch_spec(), device)
    strategy.on_epoch_start(epochs - 1, epochs)  # past any arch-free epochs: both updates run
    ctx = StepContext(space, space, nn.CrossEntropyLoss(), weight_optimizer(space.parameters(), 0.025),
                      strategy.make_arch_optimizer(), lr=0.025)  # fmt: skip

    def data():
        x = torch.randn(BATCH, 1, H, H, device=device).contiguous(memory_format=fmt)
        return x, torch.randint(10, (BATCH,), device=device)

    train, valid = data(), data()

    def step():
        if not strategy.weight_first:
            strategy.arch_step(ctx, train, valid)
        strategy.weight_step(ctx, train)
        if strategy.weight_first:
            strategy.arch_step(ctx, train, valid)

    return step


def method_rows(device="cpu", backend=None, quick=False, budget_s=6.0) -> list[dict]:
    meta, rows = run_meta(device), []
    base = {"bench": "methods", "C": C, "batch": BATCH, "H": H, "backend": backend or "auto", "device": str(device)}
    # GDAS vs DARTS, same 5-cell network
    runners = {name: timer(search_step(name, 5, backend=backend, device=device), device) for name in ("darts", "gdas")}
    stats = time_interleaved(runners, device, budget_s=budget_s)
    for name, s in stats.items():
        ratio = s["median_ms"] / stats["darts"]["median_ms"]
        rows.append({**base, "provider": name, "layers": 5, "ops": 8, **s, "ratio": ratio, "target": 0.35
                     if name == "gdas" else 1.0, **meta})  # fmt: skip
    # P-DARTS stages vs the full 8-op step of the same depth
    for layers, k in PDARTS_STAGES[: 2 if quick else 3]:
        epochs = 75
        runners = {"p-darts 8 ops": timer(search_step("p-darts", layers, None, backend, device, epochs), device)}
        if k < 8:
            step = search_step("p-darts", layers, random_allowed(k, layers), backend, device, epochs)
            runners[f"p-darts {k} ops"] = timer(step, device)
        stats = time_interleaved(runners, device, budget_s=budget_s)
        full = stats["p-darts 8 ops"]["median_ms"]
        for name, s in stats.items():
            ops = int(name.split()[1])
            rows.append({**base, "provider": name, "layers": layers, "ops": ops, **s, "ratio": s["median_ms"] / full,
                         "target": 1.2 * ops / 8, **meta})  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = bench_parser(__doc__, quick="the first two P-DARTS stages only")
    p.add_argument("--backend", default=None, help="force one backend (default: auto)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = method_rows(args.device, args.backend, args.quick)
    print(format_table(rows, ("provider", "layers", "ops", "median_ms", "p20_ms", "p80_ms", "ratio", "target")))
    print(f"load average (1 min): {rows[0]['load_avg_1m']}")
    if args.out:
        write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
