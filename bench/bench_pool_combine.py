"""Benchmark the Triton pool-combine primitives against the plain-PyTorch reference and the naive DARTS edge.

Providers, side by side on the same inputs:
    triton     pool_stats + pool_combine (fwd), pool_grad_stats + pool_combine_backward (bwd)
    reference  the same four primitives from ``dnas_fast.kernels.pool_combine_ref`` (F.max_pool2d / avg_pool2d)
    naive      the unfused edge w0 * BN(maxpool(x)) + w1 * BN(avgpool(x)) (+ w2 * x) with autograd
    compiled   the naive edge under torch.compile (not in the default set: it compiles once per shape)
Modes: fwd, bwd (dx given dL/dout), full (both). Every row: median / p20 / p80 from ``triton.testing.do_bench``,
peak memory of one call, and achieved bandwidth = the fused algorithm's minimal HBM bytes / time, as a fraction
of the DRAM roofline (``triton.testing.get_dram_gbps`` unless ``--peak-gbps``). The same byte count is used for
every provider, so the fraction compares time spent on the same useful traffic. Metadata, peak memory and the
CSV + JSON files come from ``dnas_fast.benchmark``.

    python bench/bench_pool_combine.py --out bench/results/<device>-<date>-triton-pool-combine.csv   # CUDA only
"""

import itertools
import sys

import torch
import torch.nn.functional as F

from dnas_fast.benchmark import add_case, bench_parser, cuda_peak_mb, run_meta, write_rows

DARTS_SHAPES = ["16x32x32", "32x16x16", "64x8x8"]  # (C, H, W) of the DARTS search network's three stages
TABLE = ("provider", "mode", "N", "C", "H", "W", "stride", "median_ms", "p20_ms", "p80_ms", "peak_mem_mb", "gbps",
         "roofline_frac")  # fmt: skip


def parse_args(argv=None):
    p = bench_parser(__doc__, device=None, threads=None)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="N values")
    p.add_argument("--shapes", nargs="+", default=DARTS_SHAPES, help="CxHxW values")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--modes", nargs="+", default=["fwd", "bwd", "full"], choices=["fwd", "bwd", "full"])
    p.add_argument("--providers", nargs="+", default=["triton", "reference", "naive"],
                   choices=["triton", "reference", "naive", "compiled"])  # fmt: skip
    p.add_argument("--peak-gbps", type=float, default=None, help="HBM roofline in GB/s (default: from the driver)")
    p.add_argument("--rep", type=int, default=100, help="do_bench measuring time in ms")
    p.add_argument("--no-check", action="store_true", help="skip the triton-vs-reference check before timing")
    return p.parse_args(argv)


def make_inputs(N, C, H, W, stride, dtype, device="cuda"):
    """x (Tensor[N, C, H, W]), g = dL/dout, coef (Tensor[3, C]) and (Tensor[6, C]), op weights w (Tensor[3])."""
    x = torch.randn(N, C, H, W, device=device, dtype=dtype)
    g = torch.randn(N, C, (H - 1) // stride + 1, (W - 1) // stride + 1, device=device, dtype=dtype)
    coef3 = torch.randn(3, C, device=device, dtype=dtype)
    coef6 = torch.randn(6, C, device=device, dtype=dtype)
    w = torch.softmax(torch.randn(3, device=device), 0).to(dtype)
    return x, g, coef3, coef6, w


def fused_fns(prims, x, g, stride, coef3, coef6, w_skip):
    """{mode: fn} of the fused algorithm with one provider's four primitives, and the tensors to un-grad (none)."""

    def fwd():
        prims["pool_stats"](x, stride)
        return prims["pool_combine"](x, stride, coef3, w_skip)

    def bwd():
        prims["pool_grad_stats"](x, g, stride)
        return prims["pool_combine_backward"](x, g, stride, coef6, w_skip)

    return {"fwd": fwd, "bwd": bwd, "full": lambda: (fwd(), bwd())}, None


def naive_fns(x, g, stride, w, compiled=False):
    """{mode: fn} of the unfused edge (the quark0/darts MixedOp restricted to these ops) under autograd."""
    xr = x.detach().requires_grad_()

    def edge():
        bn = lambda t: F.batch_norm(t, None, None, training=True)  # affine-free, batch statistics
        mp = F.max_pool2d(xr, 3, stride, 1)
        ap = F.avg_pool2d(xr, 3, stride, 1, count_include_pad=False)
        out = w[0] * bn(mp) + w[1] * bn(ap)
        return out + w[2] * xr if stride == 1 else out

    fwd = torch.compile(edge) if compiled else edge
    out = fwd()
    fns = {"fwd": fwd, "bwd": lambda: out.backward(g, retain_graph=True), "full": lambda: fwd().backward(g)}
    return fns, [xr]


def minimal_bytes(mode, x, g) -> int:
    """HBM traffic of the fused algorithm: fwd reads x twice (stats, combine) and writes out; bwd reads x and g
    twice (grad stats, backward) and writes dx."""
    fwd = 2 * x.nbytes + g.nbytes
    bwd = 2 * (x.nbytes + g.nbytes) + x.nbytes
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def check(triton_prims, ref_prims, x, g, stride, coef3, coef6, w_skip):
    """Triton on the GPU vs the reference in fp32 on the same inputs, relative to each result's largest value."""
    tol = dict(atol=1e-4, rtol=1e-4) if x.dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)

    def args(name, *ts):
        xx, gg, c3, c6, ws = ts
        return {
            "pool_stats": (xx, stride),
            "pool_combine": (xx, stride, c3, ws),
            "pool_grad_stats": (xx, gg, stride),
            "pool_combine_backward": (xx, gg, stride, c6, ws),
        }[name]

    inputs = (x, g, coef3, coef6, w_skip)
    inputs32 = tuple(None if t is None else t.float() for t in inputs)
    for name, f in triton_prims.items():
        expected = ref_prims[name](*args(name, *inputs32))
        scale = expected.abs().max().clamp_min(1)  # the statistics are sums over N*H*W pixels
        actual = f(*args(name, *inputs)).float()
        torch.testing.assert_close(actual / scale, expected / scale, **tol, msg=lambda m, n=name: f"{n}: {m}")


def time_one(fn, rep, grad_to_none=None):
    import triton.testing

    peak_mb = cuda_peak_mb(torch.device("cuda"), fn)
    median, p20, p80 = triton.testing.do_bench(fn, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80, peak_mb


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_pool_combine: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was timed.",
              file=sys.stderr)  # fmt: skip
        return 2
    import triton
    import triton.testing

    from dnas_fast import triton_kernels
    from dnas_fast.kernels import pool_combine_ref

    names = triton_kernels.__all__[1:]
    triton_prims = {n: getattr(triton_kernels, n) for n in names}
    ref_prims = {n: getattr(pool_combine_ref, n) for n in names}
    dtype = getattr(torch, args.dtype)
    peak_gbps = args.peak_gbps or triton.testing.get_dram_gbps()
    meta = {**run_meta("cuda"), "triton": triton.__version__}
    print(f"# {meta['device']}: HBM roofline {peak_gbps:.0f} GB/s", file=sys.stderr)
    rows, sink = [], (lambda r: write_rows(r, args.out)) if args.out else None
    for N, shape, stride in itertools.product(args.batch, args.shapes, args.strides):
        C, H, W = (int(v) for v in shape.split("x"))
        x, g, coef3, coef6, w = make_inputs(N, C, H, W, stride, dtype)
        w_skip = w[2] if stride == 1 else None
        if not args.no_check:
            check(triton_prims, ref_prims, x, g, stride, coef3, coef6, w_skip)
        new = []
        for provider in args.providers:
            if provider in ("naive", "compiled"):
                fns, grads = naive_fns(x, g, stride, w, compiled=provider == "compiled")
            else:
                prims = {"triton": triton_prims, "reference": ref_prims}[provider]
                fns, grads = fused_fns(prims, x, g, stride, coef3, coef6, w_skip)
            for mode in args.modes:
                median, p20, p80, peak_mb = time_one(fns[mode], args.rep, grads)
                nbytes = minimal_bytes(mode, x, g)
                gbps = nbytes / median / 1e6
                new.append(dict(
                    provider=provider, mode=mode, N=N, C=C, H=H, W=W, stride=stride, dtype=args.dtype,
                    median_ms=median, p20_ms=p20, p80_ms=p80, peak_mem_mb=peak_mb, bytes=nbytes, gbps=gbps,
                    roofline_frac=gbps / peak_gbps,
                ))  # fmt: skip
        add_case(rows, new, meta, sink, columns=TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
