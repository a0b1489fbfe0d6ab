"""The compiled ops of dnas_fast._C (csrc/) against the plain-PyTorch reference (dnas_fast/kernels/pool_combine_ref.py).

Skipped as a whole only when the extension is not built; CI builds it (pip install -e .).
"""

import itertools
import zlib

import pytest
import torch

from dnas_fast.kernels import _ext
from dnas_fast.kernels import pool_combine_ref as ref
from tests.utils import assert_close, combine_with_kernel_vjp

if not _ext.load():
    pytest.skip("dnas_fast._C not built: run pip install -e .", allow_module_level=True)

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def make(shape, dtype, layout, gen, integer=False):
    """A tensor of ``shape`` in ``layout``: contiguous, channels_last, or a strided slice (every 2nd channel,
    columns 1..W of a wider base)."""
    n, c, h, w = shape
    base_shape = (n, 2 * c, h, w + 2) if layout == "sliced" else shape
    base = torch.randint(-2, 3, base_shape, generator=gen) if integer else torch.randn(base_shape, generator=gen)
    base = base.to(dtype)
    if layout == "channels_last":
        return base.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return base[:, ::2, :, 1 : w + 1]
    return base


def inputs(shape, stride, dtype, layout, integer=False):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, stride, layout)).encode()))
    n, c, h, w = shape
    x = make(shape, dtype, layout, gen, integer)
    g = make((n, c, (h - 1) // stride + 1, (w - 1) // stride + 1), dtype, layout, gen)
    coef3 = torch.randn(3, c, generator=gen, dtype=torch.float64).to(dtype)
    coef6 = torch.randn(6, c, generator=gen, dtype=torch.float64).to(dtype)
    w_skip = torch.tensor(0.37, dtype=dtype) if stride == 1 else None
    return x, g, coef3, coef6, w_skip


def check_all_ops(x, g, stride, coef3, coef6, w_skip, tol):
    """All four ops vs the reference evaluated in float64 on the same values."""
    xd, gd = x.double(), g.double()
    c3, c6 = coef3.double(), coef6.double()
    wd = None if w_skip is None else w_skip.double()
    assert_close("pool_stats", _ext.pool_stats(x, stride), ref.pool_stats(xd, stride), **tol)
    assert_close(
        "pool_combine", _ext.pool_combine(x, stride, coef3, w_skip), ref.pool_combine(xd, stride, c3, wd), **tol
    )
    assert_close("pool_grad_stats", _ext.pool_grad_stats(x, g, stride), ref.pool_grad_stats(xd, gd, stride), **tol)
    assert_close(
        "pool_combine_backward",
        _ext.pool_combine_backward(x, g, stride, coef6, w_skip),
        ref.pool_combine_backward(xd, gd, stride, c6, wd),
        **tol,
    )


CASES = [
    pytest.param(
        (n, c, h, w), stride, layout, dtype, id=f"N{n}-C{c}-H{h}xW{w}-stride{stride}-{layout}-{str(dtype)[6:]}"
    )
    for (n, c, (h, w), stride, layout, dtype) in itertools.product(
        (1, 3),
        (1, 5, 16),
        ((1, 1), (5, 7), (8, 8), (9, 9)),
        (1, 2),
        ("contiguous", "channels_last", "sliced"),
        (torch.float64, torch.float32),
    )
]


@pytest.mark.parametrize("shape, stride, layout, dtype", CASES)
def test_ops_match_reference(shape, stride, layout, dtype):
    x, g, coef3, coef6, w_skip = inputs(shape, stride, dtype, layout)
    check_all_ops(x, g, stride, coef3, coef6, w_skip, TOL[dtype])


@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride{s}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (1, 4, 7, 5)], ids=lambda s: "N{}-C{}-H{}xW{}".format(*s))
def test_max_pool_ties_go_to_first_maximum(shape, dtype, stride):
    # Integer values in [-2, 2] make most 3x3 windows hold tied maxima; routing a tie to another element than
    # PyTorch's max_pool2d backward (first in row-major order) moves a whole gradient and breaks the comparison.
    x, g, coef3, coef6, w_skip = inputs(shape, stride, dtype, "contiguous", integer=True)
    check_all_ops(x, g, stride, coef3, coef6, w_skip, TOL[dtype])


@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride{s}")
def test_nan_propagates_like_max_pool2d(stride):
    # A NaN wins its max-pool windows (and takes their gradient), as in PyTorch's max_pool2d.
    x, g, coef3, coef6, w_skip = inputs((1, 2, 7, 6), stride, torch.float64, "contiguous")
    x[0, 1, 3, 2] = float("nan")
    for name, out, want in [
        ("pool_combine", _ext.pool_combine(x, stride, coef3, w_skip), ref.pool_combine(x, stride, coef3, w_skip)),
        (
            "pool_combine_backward",
            _ext.pool_combine_backward(x, g, stride, coef6, w_skip),
            ref.pool_combine_backward(x, g, stride, coef6, w_skip),
        ),
    ]:
        assert bool(out.isnan().any()), name
        assert_close(name, out, want)


@pytest.mark.parametrize("stride", [1, 2], ids=lambda s: f"stride{s}")
def test_backward_is_gradient_of_combine_gradcheck(stride):
    x, _, coef3, _, w_skip = inputs((1, 2, 5, 6), stride, torch.float64, "contiguous")
    x.requires_grad_()
    assert torch.autograd.gradcheck(combine_with_kernel_vjp(_ext, stride, coef3, w_skip), (x,))


def test_stats_are_deterministic_across_thread_counts():
    x, g, *_ = inputs((3, 16, 9, 9), 1, torch.float32, "contiguous")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (_ext.pool_stats(x, 1), _ext.pool_grad_stats(x, g, 1))
        torch.set_num_threads(max(2, threads))
        many = (_ext.pool_stats(x, 1), _ext.pool_grad_stats(x, g, 1))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_empty_batch():
    x = torch.randn(0, 4, 5, 5)
    assert torch.equal(_ext.pool_stats(x, 2), torch.zeros(4, 4))
    assert _ext.pool_combine(x, 1, torch.randn(3, 4), None).shape == (0, 4, 5, 5)


def _bad_cases():
    x = torch.randn(2, 3, 5, 5)
    g1 = torch.randn(2, 3, 5, 5)
    c3, c6 = torch.randn(3, 3), torch.randn(6, 3)
    ops = torch.ops.dnas_fast
    # (id, call, message the RuntimeError must match)
    return [
        ("x-3d", lambda: ops.pool_stats(x[0], 1), "expected x to be a 4-D tensor"),
        ("x-int", lambda: ops.pool_stats(x.long(), 1), "expected x to have a floating dtype, got Long"),
        ("x-half-cpu", lambda: ops.pool_stats(x.half(), 1), "expected x of dtype float32 or float64 on CPU, got Half"),
        ("x-empty-plane", lambda: ops.pool_stats(x[:, :, :0], 1), "expected H >= 1 and W >= 1"),
        ("stride-3", lambda: ops.pool_combine(x, 3, c3, None), "expected stride 1 or 2, got 3"),
        (
            "coef-rows",
            lambda: ops.pool_combine(x, 1, c6, None),
            r"expected coef of shape \[3, C\] = \[3, 3\], got \[6, 3\]",
        ),
        ("coef-bwd", lambda: ops.pool_combine_backward(x, g1, 1, c3, None), r"expected coef of shape \[6, C\]"),
        ("coef-channels", lambda: ops.pool_combine(x, 1, torch.randn(3, 4), None), r"\[3, 3\], got \[3, 4\]"),
        ("g-shape", lambda: ops.pool_grad_stats(x, g1, 2), r"expected g of shape \[2, 3, 3, 3\]"),
        ("g-dtype", lambda: ops.pool_grad_stats(x, g1.double(), 1), "expected g to have x's dtype Float, got Double"),
        (
            "skip-stride2",
            lambda: ops.pool_combine(x, 2, c3, torch.tensor(1.0)),
            "only defined at stride 1, got stride 2",
        ),
        ("skip-numel", lambda: ops.pool_combine(x, 1, c3, torch.ones(2)), "one-element tensor"),
    ]


@pytest.mark.parametrize("call, message", [pytest.param(call, msg, id=name) for name, call, msg in _bad_cases()])
def test_bad_inputs_raise(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def _samples():
    x, g, coef3, coef6, w_skip = inputs((2, 3, 7, 6), 1, torch.float32, "contiguous")
    x2, g2, *_ = inputs((2, 3, 7, 6), 2, torch.float32, "contiguous")
    ops = torch.ops.dnas_fast
    return [
        pytest.param(ops.pool_stats.default, (x, 2), id="pool_stats-stride2"),
        pytest.param(ops.pool_combine.default, (x, 1, coef3, w_skip), id="pool_combine-stride1-skip"),
        pytest.param(ops.pool_combine.default, (x, 2, coef3, None), id="pool_combine-stride2"),
        pytest.param(ops.pool_grad_stats.default, (x2, g2, 2), id="pool_grad_stats-stride2"),
        pytest.param(ops.pool_combine_backward.default, (x, g, 1, coef6, w_skip), id="pool_combine_backward-stride1"),
        pytest.param(ops.pool_combine_backward.default, (x2, g2, 2, coef6, None), id="pool_combine_backward-stride2"),
    ]


@pytest.mark.parametrize("op, args", _samples())
def test_opcheck_fake_and_schema(op, args):
    # Schema, fake (meta) implementation and AOT dispatch: what torch.compile / torch.export rely on.
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_compile_fullgraph_traces_ops():
    x, g, coef3, coef6, w_skip = inputs((2, 3, 7, 7), 1, torch.float32, "contiguous")

    def f(x, g):
        return (
            _ext.pool_combine(x, 1, coef3, w_skip),
            _ext.pool_stats(x, 1),
            _ext.pool_combine_backward(x, g, 1, coef6, w_skip),
        )

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, g)
    for name, a, b in zip(("pool_combine", "pool_stats", "pool_combine_backward"), got, f(x, g)):
        assert_close(name, a, b, atol=0, rtol=0)
