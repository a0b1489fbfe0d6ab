"""Triton pool-combine kernels vs the plain-PyTorch reference, on the CPU through triton's interpreter."""

import os
import sys

# triton decorates its own @jit library (tl.sum, tl.zeros) and our kernels for the interpreter only if
# TRITON_INTERPRET is set when they are first imported. If an earlier test module imported triton without it,
# this module's tests run in a fresh process instead (test_in_fresh_process).
_std = sys.modules.get("triton.language.standard")
NEEDS_FRESH_PROCESS = _std is not None and type(_std.zeros).__name__ != "InterpretedFunction"
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", exc_type=ImportError)  # without triton this module is skipped, and collection still works

from dnas_fast import triton_kernels  # noqa: E402
from dnas_fast.kernels import pool_combine_ref as ref  # noqa: E402
from dnas_fast.kernels.pool_combine_ref import Prims  # noqa: E402
from tests.utils import assert_close, combine_with_kernel_vjp  # noqa: E402

pc = importlib.import_module("dnas_fast.triton_kernels.pool_combine")
REPO = Path(__file__).resolve().parents[1]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


if NEEDS_FRESH_PROCESS:

    @pytest.fixture(autouse=True)
    def _only_in_fresh_process(request):
        if request.node.originalname != "test_in_fresh_process":
            pytest.skip("triton was imported without TRITON_INTERPRET; test_in_fresh_process runs this test")

    def test_in_fresh_process():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            pytest.fail(result.stdout[-5000:] + result.stderr[-2000:], pytrace=False)


def make_inputs(N, C, H, W, stride, skip, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=dtype)
    g = torch.randn(N, C, (H - 1) // stride + 1, (W - 1) // stride + 1, generator=gen, dtype=dtype)
    coef3 = torch.randn(3, C, generator=gen, dtype=dtype)
    coef6 = torch.randn(6, C, generator=gen, dtype=dtype)
    w_skip = torch.tensor(0.7, dtype=dtype) if skip else None
    return x, g, coef3, coef6, w_skip


def run_all(module, x, g, stride, coef3, coef6, w_skip):
    """The four primitives of ``module`` (the triton launchers or the reference) on one input."""
    f = Prims.of(module)
    return {
        "pool_stats": f.pool_stats(x, stride),
        "pool_combine": f.pool_combine(x, stride, coef3, w_skip),
        "pool_grad_stats": f.pool_grad_stats(x, g, stride),
        "pool_combine_backward": f.pool_combine_backward(x, g, stride, coef6, w_skip),
    }


def _cases():
    """Small awkward planes (odd, 1x1) x stride x skip; (N, C) cycles through pairs, some packing N*C planes over
    two programs (8x8: 8 planes per program)."""
    nc = [(1, 1), (2, 3), (1, 5), (2, 5), (2, 1), (1, 3)]
    combos = [
        (hw, s, skip) for hw in [(5, 7), (8, 8), (9, 9), (1, 1)] for s, skip in [(1, False), (1, True), (2, False)]
    ]
    cases = [(*nc[i % len(nc)], *hw, s, skip) for i, (hw, s, skip) in enumerate(combos)]
    for N, C, H, W, s, skip in cases:
        yield pytest.param(N, C, H, W, s, skip, id=f"N{N}-C{C}-H{H}xW{W}-stride{s}-{'skip' if skip else 'noskip'}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("N, C, H, W, stride, skip", list(_cases()))
def test_matches_reference(N, C, H, W, stride, skip, dtype):
    x, g, coef3, coef6, w_skip = make_inputs(N, C, H, W, stride, skip, dtype)
    expected = run_all(ref, x, g, stride, coef3, coef6, w_skip)
    actual = run_all(pc, x, g, stride, coef3, coef6, w_skip)
    for name in expected:
        assert_close(name, actual[name], expected[name], **TOL[dtype], same_dtype=True)


@pytest.mark.parametrize(
    "N, C, H, W, stride",
    [
        pytest.param(1, 1, 23, 25, 1, id="N1-C1-H23xW25-stride1"),
        pytest.param(1, 2, 35, 30, 2, id="N1-C2-H35xW30-stride2"),
    ],
)
def test_multi_tile_planes(N, C, H, W, stride):
    """Planes larger than one program's tile (512 pixels): tile edges and the partial sums of the statistics."""
    x, g, coef3, coef6, w_skip = make_inputs(N, C, H, W, stride, stride == 1, torch.float64)
    expected = run_all(ref, x, g, stride, coef3, coef6, w_skip)
    actual = run_all(pc, x, g, stride, coef3, coef6, w_skip)
    for name in expected:
        assert_close(name, actual[name], expected[name], **TOL[torch.float64], same_dtype=True)


@pytest.mark.parametrize("stride", [1, 2], ids=["stride1", "stride2"])
def test_max_pool_ties_route_to_first_maximum(stride):
    """Values from {0, 1, 2} tie in most windows; dx must follow PyTorch's first-maximum (row-major) argmax."""
    x, g, coef3, coef6, w_skip = make_inputs(2, 3, 7, 6, stride, False, torch.float64, seed=1)
    x = torch.randint(0, 3, x.shape, generator=torch.Generator().manual_seed(2)).to(torch.float64)
    coef6[3:] = 0  # only the max-pool path, so a wrongly routed gradient cannot hide behind the avg path
    expected = ref.pool_combine_backward(x, g, stride, coef6, None)
    assert_close("dx", pc.pool_combine_backward(x, g, stride, coef6, None), expected, **TOL[torch.float64])


@pytest.mark.parametrize("stride", [1, 2], ids=["stride1-skip", "stride2"])
def test_backward_gradcheck(stride):
    """dx against finite differences of the kernel's own forward (independent of the reference)."""
    x, _, coef3, _, _ = make_inputs(1, 2, 3, 4, stride, False, torch.float64, seed=3)
    w_skip = torch.tensor(0.7, dtype=torch.float64) if stride == 1 else None
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        combine_with_kernel_vjp(pc, stride, coef3, w_skip), (x,), eps=1e-6, atol=1e-8, fast_mode=True
    )


def test_nan_propagates_like_pytorch():
    x, g, coef3, coef6, w_skip = make_inputs(1, 2, 6, 5, 1, True, torch.float64)
    x[0, 1, 2, 3] = float("nan")
    assert_close("out", pc.pool_combine(x, 1, coef3, w_skip), ref.pool_combine(x, 1, coef3, w_skip))
    assert_close("stats", pc.pool_stats(x, 1), ref.pool_stats(x, 1))


def test_empty_batch():
    x, g, coef3, coef6, w_skip = make_inputs(0, 3, 5, 4, 1, True, torch.float64)
    expected = run_all(ref, x, g, 1, coef3, coef6, w_skip)
    actual = run_all(pc, x, g, 1, coef3, coef6, w_skip)
    for name in expected:
        assert_close(name, actual[name], expected[name], same_dtype=True)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_strided_inputs(layout):
    """x and g are read through their strides: channels_last and non-contiguous views need no copy."""
    x, g, coef3, coef6, w_skip = make_inputs(2, 3, 6, 6, 1, True, torch.float64)
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    else:
        x, g = x.transpose(2, 3).contiguous().transpose(2, 3), g.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x.is_contiguous()
    expected = run_all(ref, x, g, 1, coef3, coef6, w_skip)
    actual = run_all(pc, x, g, 1, coef3, coef6, w_skip)
    for name in expected:
        assert_close(name, actual[name], expected[name], **TOL[torch.float64], same_dtype=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_accumulates_in_fp32(dtype):
    """Error vs the fp64 reference on the same (rounded) inputs is at most twice the low-precision reference's
    own error plus one rounding of the output; the statistics come back in fp32."""
    x, g, coef3, coef6, w_skip = (t.to(dtype) for t in make_inputs(2, 3, 9, 9, 1, True, torch.float64))
    exact = run_all(ref, *(t.double() for t in (x, g)), 1, coef3.double(), coef6.double(), w_skip.double())
    low = run_all(ref, x, g, 1, coef3, coef6, w_skip)
    actual = run_all(pc, x, g, 1, coef3, coef6, w_skip)
    for name in exact:
        assert actual[name].dtype == (torch.float32 if "stats" in name else dtype), name
        err = (actual[name].double() - exact[name]).abs().max().item()
        ref_err = (low[name].double() - exact[name]).abs().max().item()
        ulp = torch.finfo(actual[name].dtype).eps * exact[name].abs().max().item()
        assert err <= 2 * ref_err + ulp, f"{name}: error {err:.3g} vs reference's own {ref_err:.3g} (+ulp {ulp:.3g})"


def _bad_calls():
    x, g, coef3, coef6, w_skip = make_inputs(1, 2, 4, 4, 1, True, torch.float32)
    g2 = torch.zeros(1, 2, 2, 2)
    calls = {
        "x-3d": (lambda: pc.pool_stats(x[0], 1), r"4-D tensor.*\[2, 4, 4\]"),
        "x-int": (lambda: pc.pool_stats(x.to(torch.int32), 1), "torch.int32"),
        "H-0": (lambda: pc.pool_stats(x[:, :, :0], 1), r"non-empty planes, got shape \[1, 2, 0, 4\]"),
        "stride-3": (lambda: pc.pool_stats(x, 3), "stride must be 1 or 2, got 3"),
        "stride-float": (lambda: pc.pool_stats(x, 1.0), "stride must be 1 or 2, got 1.0"),
        "coef3-shape": (lambda: pc.pool_combine(x, 1, coef6, None), r"coef must have shape \[3, 2\], got \[6, 2\]"),
        "coef6-shape": (lambda: pc.pool_combine_backward(x, g, 1, coef3, None), r"coef must have shape \[6, 2\]"),
        "g-shape": (lambda: pc.pool_grad_stats(x, g2, 1), r"g must have shape \[1, 2, 4, 4\], got \[1, 2, 2, 2\]"),
        "coef-device": (lambda: pc.pool_combine(x, 1, coef3.to("meta"), None), "coef is on meta"),
        "skip-stride2": (lambda: pc.pool_combine(x, 2, coef3, w_skip), r"stride 1 .*got stride=2"),
        "skip-shape": (lambda: pc.pool_combine(x, 1, coef3, torch.ones(2)), r"w_skip must have shape \[\]"),
        "skip-float": (lambda: pc.pool_combine(x, 1, coef3, 0.5), "w_skip must be a tensor, got float"),
    }
    return [pytest.param(call, message, id=name) for name, (call, message) in calls.items()]


@pytest.mark.parametrize("call, message", _bad_calls())
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_available(monkeypatch):
    assert triton_kernels.available("cpu") and triton_kernels.available(torch.device("cuda", 0))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_kernels.available("cpu")


def test_import_without_triton():
    """``from dnas_fast import triton_kernels`` works without triton; nothing is available, a launcher names triton."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from dnas_fast import triton_kernels\n"
        "assert not triton_kernels.available('cuda')\n"
        "try:\n    triton_kernels.pool_combine\nexcept ImportError as e:\n    assert 'triton' in str(e), e\n"
        "else:\n    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_benchmark_helpers_on_cpu(capsys):
    """The GPU benchmark's check and timed closures run (on the interpreter here); main() exits cleanly on CPU."""
    spec = importlib.util.spec_from_file_location("bench_pool_combine", REPO / "bench" / "bench_pool_combine.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = triton_kernels.__all__[1:]
    triton_prims = {n: getattr(pc, n) for n in names}
    ref_prims = {n: getattr(ref, n) for n in names}
    for stride in (1, 2):
        x, g, coef3, coef6, w = bench.make_inputs(2, 3, 5, 6, stride, torch.float32, device="cpu")
        w_skip = w[2] if stride == 1 else None
        bench.check(triton_prims, ref_prims, x, g, stride, coef3, coef6, w_skip)
        fused, _ = bench.fused_fns(triton_prims, x, g, stride, coef3, coef6, w_skip)
        naive, (xr,) = bench.naive_fns(x, g, stride, w)
        for mode in ("fwd", "bwd", "full"):
            fused[mode]()
            naive[mode]()
            assert bench.minimal_bytes(mode, x, g) > 0
        # The naive edge is the fused one with BN folded in (eps 1e-5, biased batch variance).
        stats = ref.pool_stats(x, stride).double()
        mean = stats[0::2] / g[:, 0].numel()
        scale = w[:2, None] / (stats[1::2] / g[:, 0].numel() - mean**2 + 1e-5).sqrt()
        coef = torch.cat([scale, -(scale * mean).sum(0, keepdim=True)]).float()
        assert_close("naive", naive["fwd"](), ref.pool_combine(x, stride, coef, w_skip), atol=1e-4, rtol=1e-4)
    if not torch.cuda.is_available():
        assert bench.main(["--batch", "1"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


COMPILE_FOR_SM90 = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import importlib
pc = importlib.import_module("dnas_fast.triton_kernels.pool_combine")  # the package attribute is the launcher
skip = {"HAS_SKIP": True}
kernels = [(pc._pool_stats_kernel, {}), (pc._pool_grad_stats_kernel, {}), (pc._pool_combine_kernel, skip),
           (pc._pool_combine_backward_kernel, skip)]
for dtype, acc in [("bf16", tl.float32), ("fp64", tl.float64)]:
    for kernel, extra in kernels:
        const = {"STRIDE": 2, "ACC": acc, "PLANES": 8, "BLOCK_P": 64, **extra}
        names = kernel.arg_names
        sig = {n: "constexpr" if n in const else "*" + dtype if n.endswith("_ptr") else "i32" for n in names}
        sig["part_ptr"] = "*fp64" if dtype == "fp64" else "*fp32"
        src = ASTSource(kernel, {n: sig[n] for n in names}, {(names.index(k),): v for k, v in const.items()})
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 16})
"""


def test_kernels_compile_for_h100(tmp_path):
    """The interpreter skips triton's type checks and code generation: compile every kernel to an sm_90 cubin
    (no GPU needed) in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], cwd=REPO, env=env, check=True, timeout=300)


def test_launchers_are_custom_ops():
    """Each launcher runs through ``torch.ops.dnas_fast.triton_*`` (a ``torch.library.triton_op``), so torch.compile
    sees into the Triton path as it sees the compiled extension's ops."""
    x, g, coef3, coef6, w_skip = make_inputs(1, 2, 5, 5, 1, True, torch.float64)
    args = {
        "pool_stats": (x, 1),
        "pool_grad_stats": (x, g, 1),
        "pool_combine": (x, 1, coef3, w_skip),
        "pool_combine_backward": (x, g, 1, coef6, w_skip),
    }
    for name, a in args.items():
        op = getattr(torch.ops.dnas_fast, f"triton_{name}")
        assert_close(name, op(*a), getattr(ref, name)(*a), **TOL[torch.float64])


COMPILE_ON_CUDA = """
import torch
from dnas_fast import triton_kernels as tk
from dnas_fast.kernels import pool_combine_ref as ref
x = torch.randn(2, 8, 9, 9, device="cuda")
coef, w = torch.randn(3, 8, device="cuda"), torch.tensor(0.3, device="cuda")
f = torch.compile(lambda x: tk.pool_combine(x, 1, coef, w).sin(), fullgraph=True)
torch.testing.assert_close(f(x), ref.pool_combine(x, 1, coef, w).sin())
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_torch_compile_traces_the_triton_ops_on_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter cannot be traced
    subprocess.run([sys.executable, "-c", COMPILE_ON_CUDA], cwd=REPO, env=env, check=True, timeout=600)
