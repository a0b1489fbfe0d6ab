"""``dnas-fast bench-edge``: time and memory of one MixedEdge (and of a DARTS search step) per provider; the cases
that ``bench/bench_edge.py``, ``bench/bench_search_step.py`` and ``bench/bench_imagenet_step.py`` run. The
measuring itself (timing, memory, metadata, result files) is ``dnas_fast.benchmark``'s.

Providers, compared in the same run:
    naive       the authors' per-op loop (``reference`` backend)
    checkpoint  the naive loop under ``torch.utils.checkpoint`` per edge (non-reentrant)
    compile     ``torch.compile`` of the naive edge (edge benchmarks only)
    <backend>   each dnas_fast fused backend available on the device (``fused``, ``cpu``, ``cuda``, ``triton``)
Measures: wall time (median, p20, p80 over repetitions), bytes saved for backward (unique storages packed by
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded), peak memory (CPU: VmHWM of a fresh child
process that runs one step; CUDA: allocator peak), and on CUDA the largest batch that fits (bisection).

Example::

    dnas-fast bench-edge --C 16 --H 32 --batch 16 --providers naive,checkpoint,fused,cpu --mode full
"""

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import _backend
from .benchmark import (
    child_peak_rss,
    cuda_peak_mb,
    format_table,
    largest_batch,
    run_meta,
    saved_tensor_bytes,
    summarize,
    time_interleaved,
    timer,
    write_rows,
)
from .kernels import batched_cell
from .mixed_edge import MixedEdge, reference_forward
from .ops import DARTS_OPS, NB201_OPS

OP_SETS = {"darts": DARTS_OPS, "nb201": NB201_OPS}
MODES = ("forward", "backward", "full")
BASELINES = ("naive", "checkpoint", "compile")


def _checkpointed(edge, x, weights, mask, aux_weight, straight_through):
    return checkpoint(reference_forward, edge, x, weights, mask, aux_weight, straight_through, use_reentrant=False)


# The checkpoint baseline as a backend, so a whole search space can run on it (never chosen by ``auto``).
_backend.register_backend(
    _backend.Backend("checkpoint", _checkpointed, lambda device: True, lambda edge: True, priority=-100)
)


def fused_backends(device) -> list[str]:
    """The dnas_fast fused backends usable on ``device``, highest ``auto`` priority first (the triton interpreter
    on CPU is left out: it is a test aid)."""
    names = [n for n in _backend.available_backends(device) if n not in ("reference", "checkpoint")]
    return [n for n in names if not (n == "triton" and torch.device(device).type == "cpu")]


# ---- one edge ----------------------------------------------------------------------------------------------------


def edge_forward_fn(provider: str):
    """``f(edge, x, weights, mask)`` running one edge with ``provider``."""
    if provider == "naive":
        return lambda edge, x, w, mask: reference_forward(edge, x, w, mask)
    if provider == "checkpoint":
        return lambda edge, x, w, mask: _checkpointed(edge, x, w, mask, None, False)
    if provider == "compile":
        compiled = torch.compile(reference_forward, dynamic=False)
        return lambda edge, x, w, mask: compiled(edge, x, w, mask)

    def forward(edge, x, w, mask):
        with _backend.use_backend(None):  # an override (DNAS_FAST_BACKEND) would replace every provider's backend
            return _backend.resolve_backend(provider, x.device, edge).forward(edge, x, w, mask, None, False)

    return forward


def make_edge_case(cfg: dict):
    """(edge, x, weights, mask) from a config: C, H, W, batch, stride, ops, mask ("10110..." or None), dtype,
    device, partial_channels."""
    device, dtype = torch.device(cfg.get("device", "cpu")), getattr(torch, cfg.get("dtype", "float32"))
    ops = OP_SETS.get(cfg.get("ops", "darts")) or cfg["ops"].split(",")
    torch.manual_seed(0)
    edge = MixedEdge(cfg["C"], cfg.get("stride", 1), ops, pool_bn=True, partial_channels=cfg.get("pc", 1))
    edge = edge.to(device, dtype)
    H, W = cfg["H"], cfg.get("W") or cfg["H"]
    x = torch.randn(cfg["batch"], cfg["C"], H, W, device=device, dtype=dtype, requires_grad=True)
    w = torch.softmax(torch.randn(len(ops), device=device, dtype=dtype), 0).requires_grad_()
    mask = None if not cfg.get("mask") else torch.tensor([c == "1" for c in cfg["mask"]])
    return edge, x, w, mask


def build_edge_step(cfg: dict):
    """One full (forward + backward) edge step as a closure; the child process and ``bench_edge`` use it."""
    edge, x, w, mask = make_edge_case(cfg)
    fn = edge_forward_fn(cfg["provider"])
    g = torch.randn_like(fn(edge, x, w, mask))

    def step():
        fn(edge, x, w, mask).backward(g)

    return step


def bench_edge(cfg: dict, providers, modes=MODES, rss=False, budget_s=4.0) -> list[dict]:
    """Rows of (provider, mode) timings and saved bytes for one edge configuration; a provider that fails (e.g.
    torch.compile without a working toolchain) gets one row whose note says why."""
    edge, x, w, mask = make_edge_case(cfg)
    device = x.device
    g = torch.randn(edge.output_shape(x), device=device, dtype=x.dtype)
    rows, fns = {}, {}
    for provider in providers:
        base = {**cfg, "provider": provider, "mask": cfg.get("mask") or "all"}
        try:
            fn = edge_forward_fn(provider)
            base["first_call_s"] = round(timer(lambda fn=fn: fn(edge, x, w, mask).backward(g), device)(), 3)
        except Exception as err:
            rows[provider] = {**base, "mode": "all", "note": f"failed: {type(err).__name__}: {str(err)[:200]}"}
            continue
        fns[provider] = fn
        params = [*edge.parameters(), *edge.buffers()]
        base["saved_bytes"] = saved_tensor_bytes(lambda fn=fn: fn(edge, x, w, mask), exclude=params)
        if rss and device.type == "cpu" and provider != "compile":
            base.update(child_peak_rss("dnas_fast.bench_edge:build_edge_step", {**cfg, "provider": provider}))
        elif device.type == "cuda":
            base["peak_alloc_mb"] = cuda_peak_mb(device, lambda fn=fn: fn(edge, x, w, mask).backward(g))
        rows[provider] = base
    out = [rows[p] for p in providers if p not in fns]
    for mode in modes:
        runners = {p: _timed(mode, fn, edge, x, w, mask, g, device) for p, fn in fns.items()}
        timings = time_interleaved(runners, device, budget_s=budget_s)
        out += [{**rows[p], "mode": mode, **timings[p]} for p in fns]
    return out


def _timed(mode, fn, edge, x, w, mask, g, device):
    """A ``timer`` of one mode: the forward, the backward after an untimed forward, or both."""
    if mode == "forward":
        return timer(lambda: fn(edge, x, w, mask), device)
    if mode == "backward":
        return timer(lambda out: out.backward(g), device, setup=lambda: fn(edge, x, w, mask))
    return timer(lambda: fn(edge, x, w, mask).backward(g), device)


# ---- one DARTS search step ---------------------------------------------------------------------------------------


def build_search_step(cfg: dict):
    """A first- or second-order DARTS step (arch step on a validation batch, then a weight step) on the DARTS
    supernet (``layers`` cells, ``C`` channels, ``H`` x ``H`` inputs) with every edge on ``provider``.

    ``capture``: None (eager), ``"graph"`` (:class:`~dnas_fast.cuda_graphs.CapturedStep`: its first
    ``WARMUP_STEPS`` calls warm up, the next captures) or ``"compile"`` (``torch.compile(mode="reduce-overhead")``
    of the whole step: CUDA graphs of the compiled regions). ``recompute_min_numel``: the ``batched`` blocks'
    keep-or-recompute threshold for this step's calls (default: the library's)."""
    from .precision import Precision
    from .spaces import build_space
    from .strategies import StepContext, build_strategy
    from .strategies.base import weight_optimizer

    provider = cfg["provider"]
    backend = "reference" if provider == "naive" else provider
    device = torch.device(cfg.get("device", "cpu"))
    torch.manual_seed(0)
    imagenet = cfg.get("imagenet", False)  # the ImageNet stem, 1000 classes; pc: PC-DARTS partial channels K
    layout = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    classes = 1000 if imagenet else 10
    space = build_space("darts", C=cfg.get("C", 16), layers=cfg.get("layers", 8), backend=backend,
                        imagenet=imagenet, num_classes=classes, partial_channels=cfg.get("pc", 1))  # fmt: skip
    space.to(device, memory_format=layout)
    strategy = build_strategy("darts", order=cfg.get("order", 1))
    strategy.setup(space.arch_spec(), device)
    w_opt = weight_optimizer(space.parameters(), lr=0.025)
    ctx = StepContext(model=space, module=space, criterion=torch.nn.CrossEntropyLoss(), w_optimizer=w_opt,
                      a_optimizer=strategy.make_arch_optimizer(), lr=0.025,
                      precision=Precision(cfg.get("precision", "fp32"), device))  # fmt: skip
    N, H = cfg["batch"], cfg.get("H", 32)

    def batch():
        x = torch.randn(N, 3, H, H, device=device).contiguous(memory_format=layout)
        return x, torch.randint(0, classes, (N,), device=device)

    train, valid = batch(), batch()

    def search_step(ctx, train, valid):
        strategy.arch_step(ctx, train, valid)
        return strategy.weight_step(ctx, train)

    run = _captured(search_step, cfg.get("capture"), device, ctx, N)
    threshold = cfg.get("recompute_min_numel")

    @contextlib.contextmanager
    def as_configured():
        # no override (DNAS_FAST_BACKEND): it would replace the per-space backend of every provider
        with _backend.use_backend(None):
            with contextlib.nullcontext() if threshold is None else batched_cell.recompute_min_numel(threshold):
                yield

    def step():
        with as_configured():
            run(ctx, train, valid)

    def report():  # measured by ``child_peak_rss``
        with as_configured():
            return {"saved_bytes": search_step_saved_bytes(step)}

    step.space, step.strategy, step.train, step.ctx, step.report = space, strategy, train, ctx, report
    return step


def _captured(search_step, capture, device, ctx, batch_size):
    """``search_step`` run eagerly (``capture`` None), as a captured CUDA graph or compiled."""
    if capture is not None and device.type != "cuda":
        raise ValueError(f"capture {capture!r} needs a CUDA device, got {device}")
    if capture == "graph":
        from .cuda_graphs import CapturedStep

        return CapturedStep(search_step, ctx.w_optimizer, ctx.a_optimizer, batch_size=batch_size)
    if capture == "compile":
        return torch.compile(search_step, mode="reduce-overhead")
    if capture is None:
        return search_step
    raise ValueError(f"capture must be None, 'graph' or 'compile', got {capture!r}")


def search_step_saved_bytes(step) -> int:
    """Bytes saved for backward by one training forward of the supernet (activations only)."""
    x, y = step.train
    arch = step.strategy.arch_weights("weights")
    exclude = [*step.space.parameters(), *step.space.buffers(), *step.strategy.parameters()]
    with step.ctx.precision.autocast():
        return saved_tensor_bytes(lambda: F.cross_entropy(step.space(x, arch), y), exclude=exclude)


def bench_search_step(cfg: dict, providers, rounds=2) -> list[dict]:
    """One row per provider: time, peak memory and saved bytes (per sample) of a DARTS search step.

    On CPU every measurement runs in fresh child processes, providers round-robin for ``rounds`` rounds (one
    warm-up step and one timed step each), so the peak RSS is the step's own and load changes hit all alike."""
    device = torch.device(cfg.get("device", "cpu"))
    rows = {p: {**cfg, "provider": p, "mode": f"search-step-order{cfg.get('order', 1)}"} for p in providers}
    if device.type == "cuda":
        return [_bench_search_step_cuda(cfg, p, rows[p]) for p in providers]
    times = {p: [] for p in providers}
    for _ in range(rounds):
        for p in providers:
            try:
                res = child_peak_rss("dnas_fast.bench_edge:build_search_step", {**cfg, "provider": p})
            except RuntimeError as err:  # e.g. checkpoint + second order: record why, go on
                rows[p]["note"] = str(err)[:200]
                continue
            times[p] += res.pop("times_ms")
            peak = max(res["step_rss_mb"], rows[p].get("step_rss_mb", 0.0))
            rows[p].update(res, step_rss_mb=peak, saved_bytes_per_sample=res["saved_bytes"] / cfg["batch"])
    return [{**rows[p], **(summarize(times[p]) if times[p] else {})} for p in providers]


def _bench_search_step_cuda(cfg, provider, row):
    device = torch.device(cfg.get("device", "cuda"))
    step = build_search_step({**cfg, "provider": provider})
    row["saved_bytes"] = search_step_saved_bytes(step)
    row["saved_bytes_per_sample"] = row["saved_bytes"] / cfg["batch"]
    step()
    row["peak_alloc_mb"] = cuda_peak_mb(device, step)
    row.update(time_interleaved({provider: timer(step, device)}, device, min_reps=3, budget_s=10)[provider])
    row["max_batch"] = max_batch_cuda(cfg, provider)
    return row


def max_batch_cuda(cfg: dict, provider: str, hi=4096) -> int:
    """Largest batch of a search step that runs on the GPU without OOM (bisection over powers then halves)."""
    device = torch.device(cfg.get("device", "cuda"))
    return largest_batch(lambda n: build_search_step({**cfg, "provider": provider, "batch": n})(), device, hi)


# ---- command line ------------------------------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("bench-edge", help="time and memory of one mixed edge per provider")
    p.add_argument("--ops", default="darts", help="'darts', 'nb201' or a comma-separated list of op names")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--W", type=int, default=None, help="default: H")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--stride", type=int, default=1, choices=(1, 2))
    p.add_argument("--partial-channels", type=int, default=1, dest="pc")
    p.add_argument("--mask", default=None, help="active ops as 0/1 string, e.g. 10101010")
    p.add_argument("--providers", "--backends", default=None, dest="providers",
                   help="comma list from naive,checkpoint,compile and the dnas_fast backends (default: "
                        "naive,checkpoint and every available backend)")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    p.add_argument("--mode", default="all", choices=(*MODES, "all"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rss", action="store_true", help="also peak RSS of a child process per provider (CPU)")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV (and a .json twin)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    known = [*BASELINES, *fused_backends(device)]
    providers = args.providers.split(",") if args.providers else ["naive", "checkpoint", *fused_backends(device)]
    unknown = [p for p in providers if p not in known]
    if unknown:
        raise ValueError(f"unknown or unavailable provider(s) {unknown} on {device}; choose from {known}")
    ops = args.ops if args.ops in OP_SETS else ",".join(args.ops.split(","))
    n_ops = len(OP_SETS.get(ops) or ops.split(","))
    if args.mask is not None and (len(args.mask) != n_ops or set(args.mask) - {"0", "1"}):
        raise ValueError(f"--mask must be {n_ops} characters of 0/1, got {args.mask!r}")
    cfg = {"bench": "edge", "ops": ops, "C": args.C, "H": args.H, "W": args.W or args.H, "batch": args.batch,
           "stride": args.stride, "pc": args.pc, "mask": args.mask, "dtype": args.dtype,
           "device": args.device}  # fmt: skip
    modes = MODES if args.mode == "all" else (args.mode,)
    rows = [{**r, **run_meta(device)} for r in bench_edge(cfg, providers, modes, rss=args.rss)]
    print(format_table(rows))
    if args.csv:
        write_rows(rows, Path(args.csv))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dnas-fast")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
