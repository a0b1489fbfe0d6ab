"""MBConv mixed edge: TF-NAS bi-sampled single paths vs the naive all-ops mixed op, same run.

Providers (one MixedEdge over the 8 MBConv candidates, elastic widths at their initial e3/e6):
    naive_all_ops   ``sum_k w_k op_k(x)`` over all 8 candidates (DARTS-style MixedOp; TF-NAS's arch step)
    bisample        TF-NAS weight step: two single-op passes (Gumbel path + a uniformly drawn other op)
    single_path     one sampled op (TF-NAS warm-up epochs)
Modes: ``forward`` (no grad) and ``full`` (forward + backward). Memory: peak CUDA allocation on a GPU; on a
CPU the bytes autograd saves for backward (the activation memory), counted with saved-tensor hooks.

Providers are timed round-robin (``dnas_fast.benchmark.time_interleaved``), so load changes hit all alike.

Usage: ``python bench/bench_mbconv.py [--device cpu] [--threads 1] [--repeats 20] [--out CSV]``
(default CSV: bench/results/mbconv-<device type>-<date>.csv)
"""

import datetime
from pathlib import Path

import torch

from dnas_fast.benchmark import (
    add_case,
    bench_parser,
    cuda_peak_mb,
    run_meta,
    saved_tensor_bytes,
    time_interleaved,
    timer,
    write_rows,
)
from dnas_fast.mixed_edge import MixedEdge
from dnas_fast.ops.mbconv import MBCONV_OPS

SHAPES = [  # (N, C_in, C_out, H, stride): TF-NAS stage shapes at reduced batch
    (8, 24, 24, 28, 1),
    (8, 40, 80, 28, 2),
    (8, 80, 80, 14, 1),
]
PROVIDERS = ("naive_all_ops", "bisample", "single_path")
TABLE = ("shape", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "memory_mb", "memory_kind")


def provider_step(name, edge, x, K, mode):
    """A closure running one step of ``name`` (new random paths each call); ``step.passes()`` draws the
    (weights, mask) of one step's passes."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(K, generator=gen), 0).to(x.device).requires_grad_()

    def one_hot(k):
        mask = torch.zeros(K, dtype=torch.bool)
        mask[k] = True
        return mask.to(x.device, torch.float32), mask

    def passes():
        if name == "naive_all_ops":
            return [(weights, None)]
        first = int(torch.randint(K, (1,), generator=gen))
        second = (first + 1 + int(torch.randint(K - 1, (1,), generator=gen))) % K
        return [one_hot(first)] + ([one_hot(second)] if name == "bisample" else [])

    def step():
        for w, mask in passes():
            if mode == "forward":
                with torch.no_grad():
                    edge(x, w, mask)
            else:
                edge(x, w, mask).square().mean().backward()  # each pass frees its graph before the next one

    step.passes = passes
    return step


def saved_bytes(step, edge, x, mode) -> int:
    """Largest bytes autograd saves for backward in one pass of ``step`` (CPU activation memory; nothing under
    ``forward``'s no_grad)."""
    if mode == "forward":
        return 0
    params = [*edge.parameters(), *edge.buffers()]
    return max(saved_tensor_bytes(lambda w=w, m=m: edge(x, w, m), exclude=params) for w, m in step.passes())


def main(argv=None):
    parser = bench_parser(__doc__, out="CSV to write (default: bench/results/mbconv-<device type>-<date>.csv)",
                          threads=torch.get_num_threads())  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out or f"bench/results/mbconv-{device.type}-{date}.csv")
    meta, rows = run_meta(device), []
    for N, C_in, C_out, H, stride in SHAPES:
        torch.manual_seed(0)
        edge = MixedEdge(C_in, stride, MBCONV_OPS, C_out=C_out).to(device)
        x = torch.randn(N, C_in, H, H, device=device)
        for mode in ("forward", "full"):
            steps = {p: provider_step(p, edge, x, len(MBCONV_OPS), mode) for p in PROVIDERS}
            runners = {p: timer(step, device) for p, step in steps.items()}
            timings = time_interleaved(runners, device, warmup=3, min_reps=args.repeats, max_reps=args.repeats)
            new = []
            for provider, step in steps.items():
                if device.type == "cuda":
                    mem_mb, mem_kind = cuda_peak_mb(device, step), "peak_cuda_alloc"
                else:
                    mem_mb, mem_kind = saved_bytes(step, edge, x, mode) / 2**20, "autograd_saved"
                edge.zero_grad(set_to_none=True)
                new.append({"shape": f"N{N}-C{C_in}-{C_out}-H{H}-s{stride}", "provider": provider, "mode": mode,
                            **timings[provider], "memory_mb": mem_mb, "memory_kind": mem_kind})  # fmt: skip
            add_case(rows, new, meta, columns=TABLE)
    write_rows(rows, out)
    print(f"written {out}")


if __name__ == "__main__":
    main()
