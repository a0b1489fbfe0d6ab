"""Dispatch count: ATen ops (and dnas_fast custom ops) dispatched per forward+backward and per DARTS search step
(arch step + weight step, first and second order), per backend, on the DARTS and NB-201 networks. Views
(``OpOverload.is_view``: view, select, slice, transpose, ...) are left out: they launch nothing. On a GPU every
counted op is at least one kernel launch, so this is the CPU-measurable picture of a launch-bound step.

    python bench/bench_dispatch.py --out bench/results/dispatch-cpu.csv

Counts do not depend on the batch or the spatial size, so the cases are small (batch 2, 16 x 16), with one
exception: a ``batched`` block keeps its intermediates when its input is small (``RECOMPUTE_MIN_NUMEL``), as all
are here, and recomputes them otherwise, as at the DARTS search's sizes; ``batched-recompute`` counts that path.
"""

import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dnas_fast import _backend
from dnas_fast.bench_edge import fused_backends
from dnas_fast.benchmark import bench_parser, run_meta, write_rows
from dnas_fast.kernels import batched_cell

NETWORKS = {"darts": dict(C=16, layers=8), "nb201": dict(C=16, N=5)}
CASES = ("fwd_bwd", "step_order1", "step_order2")


class DispatchCounter(TorchDispatchMode):
    """Counts every non-view op dispatched while active (per op name in ``ops``)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


RECOMPUTE = "batched-recompute"  # the batched blocks as they run at search sizes: every block recomputes


def providers() -> list[str]:
    """``naive`` (the reference per-op loop) and every dnas_fast backend usable on the CPU."""
    names = sorted(fused_backends("cpu"))
    return ["naive", *names, *([RECOMPUTE] if "batched" in names else [])]


def count_case(network: str, provider: str, case: str) -> Counter:
    """Op counts of one forward+backward (``fwd_bwd``) or one search step (``step_order1`` / ``step_order2``),
    after one untimed warm-up call (caches, optimizer state)."""
    if provider == RECOMPUTE:
        with batched_cell.recompute_min_numel(0):
            return _count(network, "batched", case)
    return _count(network, provider, case)


def _build(network: str, provider: str, order: int, batch=2, H=16):
    from dnas_fast.spaces import build_space
    from dnas_fast.strategies import StepContext, build_strategy
    from dnas_fast.strategies.base import weight_optimizer

    torch.manual_seed(0)
    backend = "reference" if provider == "naive" else provider
    space = build_space(network, backend=backend, **NETWORKS[network])
    strategy = build_strategy("darts", order=order)
    strategy.setup(space.arch_spec(), torch.device("cpu"))
    w_opt = weight_optimizer(space.parameters(), lr=0.025)
    ctx = StepContext(model=space, module=space, criterion=torch.nn.CrossEntropyLoss(), w_optimizer=w_opt,
                      a_optimizer=strategy.make_arch_optimizer(), lr=0.025)  # fmt: skip
    data = [(torch.randn(batch, 3, H, H), torch.randint(0, 10, (batch,))) for _ in range(2)]
    return space, strategy, ctx, data


def _count(network: str, provider: str, case: str) -> Counter:
    order = 2 if case == "step_order2" else 1
    space, strategy, ctx, (train, valid) = _build(network, provider, order)

    def fwd_bwd():
        x, y = train
        space.zero_grad(set_to_none=True)  # as a training step does: no .grad accumulation counted
        F.cross_entropy(space(x, strategy.arch_weights("weights")), y).backward()

    def step():
        strategy.arch_step(ctx, train, valid)
        strategy.weight_step(ctx, train)

    fn = fwd_bwd if case == "fwd_bwd" else step
    fn()
    with DispatchCounter() as counter:
        fn()
    return counter.ops


def dispatch_rows(networks=tuple(NETWORKS), cases=CASES, names=None) -> list[dict]:
    """One row per (network, case, provider): total ops and the ratio to ``naive`` in the same run."""
    with _backend.use_backend(None):  # an override (DNAS_FAST_BACKEND) would replace each provider's backend
        meta = run_meta(torch.device("cpu"))
        rows = []
        for network in networks:
            for case in cases:
                counts = {p: count_case(network, p, case) for p in names or providers()}
                naive = sum(counts["naive"].values()) if "naive" in counts else None
                for p, ops in counts.items():
                    total = sum(ops.values())
                    top = ", ".join(f"{n} {c}" for n, c in ops.most_common(6))
                    ratio = round(total / naive, 3) if naive else None
                    rows.append({"network": network, "case": case, "provider": p, "ops": total, "ratio_vs_naive": ratio,
                                 "top_ops": top, **meta})  # fmt: skip
                    print(f"{network:6s} {case:12s} {p:10s} {total:7d} ops  {ratio}x naive   [{top}]", flush=True)
        return rows


def write(rows, path: Path) -> None:
    """CSV and JSON (``write_rows``) and a markdown table of the totals for the docs."""
    write_rows(rows, path)
    lines = ["| network | case | provider | ops | x naive |", "|---|---|---|---|---|"]
    lines += [f"| {r['network']} | {r['case']} | {r['provider']} | {r['ops']} | {r['ratio_vs_naive']} |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = bench_parser(__doc__, device=None, threads=None)
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--providers", nargs="+", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = dispatch_rows(args.networks, args.cases, args.providers)
    if args.out:
        write(rows, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
