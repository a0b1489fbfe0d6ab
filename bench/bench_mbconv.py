"""MBConv mixed edge: TF-NAS bi-sampled single paths vs the naive all-ops mixed op, same run.

Providers (one MixedEdge over the 8 MBConv candidates, elastic widths at their initial e3/e6):
    naive_all_ops   ``sum_k w_k op_k(x)`` over all 8 candidates (DARTS-style MixedOp; TF-NAS's arch step)
    bisample        TF-NAS weight step: two single-op passes (Gumbel path + a uniformly drawn other op)
    single_path     one sampled op (TF-NAS warm-up epochs)
Modes: ``forward`` (no grad) and ``full`` (forward + backward). Memory: peak CUDA allocation on a GPU; on a
CPU the bytes autograd saves for backward (the activation memory), counted with saved-tensor hooks.

Usage: ``python bench/bench_mbconv.py [--device cpu] [--threads 1] [--repeats 20] [--out CSV]``
(default CSV: bench/results/mbconv-<device type>-<date>.csv)
"""

import argparse
import csv
import datetime
import statistics
import subprocess
import time
from pathlib import Path

import torch

from dnas_fast.mixed_edge import MixedEdge
from dnas_fast.ops.mbconv import MBCONV_OPS
from dnas_fast.strategies.tf_nas_latency import device_name

SHAPES = [  # (N, C_in, C_out, H, stride): TF-NAS stage shapes at reduced batch
    (8, 24, 24, 28, 1),
    (8, 40, 80, 28, 2),
    (8, 80, 80, 14, 1),
]


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provider_step(name, edge, x, K, mode):
    """A closure running one step of ``name``; returns the output of the last pass."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(K, generator=gen), 0).to(x.device).requires_grad_()

    def one_hot(k):
        mask = torch.zeros(K, dtype=torch.bool)
        mask[k] = True
        return mask.to(x.device, torch.float32), mask

    def run(on_pass_end=lambda: None):
        if name == "naive_all_ops":
            passes = [(weights, None)]
        else:
            first = int(torch.randint(K, (1,), generator=gen))
            second = (first + 1 + int(torch.randint(K - 1, (1,), generator=gen))) % K
            passes = [one_hot(first)] + ([one_hot(second)] if name == "bisample" else [])
        out = None
        for w, mask in passes:
            if mode == "forward":
                with torch.no_grad():
                    out = edge(x, w, mask)
            else:
                out = edge(x, w, mask)
                out.square().mean().backward()  # each pass frees its graph before the next one
            on_pass_end()
        return out

    return run


def saved_bytes(step) -> int:
    """Largest bytes autograd saves for backward in one pass of ``step`` (CPU activation memory)."""
    current, peak = [0], [0]

    def pack(t):
        current[0] += t.numel() * t.element_size()
        return t

    def end_pass():
        peak[0], current[0] = max(peak[0], current[0]), 0

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(end_pass)
    return peak[0]


def measure(step, device, repeats, warmup=3):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[1], q[7]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy box)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out or f"bench/results/mbconv-{device.type}-{date}.csv")
    meta = dict(device=device_name(device), torch=torch.__version__, git_sha=git_sha(), date=date)
    rows = []
    for N, C_in, C_out, H, stride in SHAPES:
        torch.manual_seed(0)
        edge = MixedEdge(C_in, stride, MBCONV_OPS, C_out=C_out).to(device)
        x = torch.randn(N, C_in, H, H, device=device)
        for mode in ("forward", "full"):
            for provider in ("naive_all_ops", "bisample", "single_path"):
                step = provider_step(provider, edge, x, len(MBCONV_OPS), mode)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    median, p20, p80 = measure(step, device, args.repeats)
                    mem_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                    mem_kind = "peak_cuda_alloc"
                else:
                    median, p20, p80 = measure(step, device, args.repeats)
                    mem_mb = saved_bytes(step) / 2**20
                    mem_kind = "autograd_saved"
                edge.zero_grad(set_to_none=True)
                row = dict(shape=f"N{N}-C{C_in}-{C_out}-H{H}-s{stride}", provider=provider, mode=mode,
                           median_ms=round(median, 4), p20_ms=round(p20, 4), p80_ms=round(p80, 4),
                           memory_mb=round(mem_mb, 3), memory_kind=mem_kind, **meta)  # fmt: skip
                rows.append(row)
                print(f"{row['shape']:24s} {mode:8s} {provider:14s} {median:9.3f} ms  {mem_mb:8.2f} MB")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {out}")


if __name__ == "__main__":
    main()
