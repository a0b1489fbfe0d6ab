"""Fused MixedEdge backends vs the naive reference loop: forward, dL/dx, every parameter gradient, dL/dw, running
statistics, masks, partial channels, aux skip, straight-through, layouts, bad inputs, and one DARTS search step."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported: the triton backend runs on CPU

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from dnas_fast import MixedEdge, _backend, triton_kernels  # noqa: E402
from dnas_fast.arch import ArchWeights  # noqa: E402
from dnas_fast.kernels.edge_structure import supports  # noqa: E402
from dnas_fast.kernels.fused_edge import REF_PRIMS, fused_edge_forward  # noqa: E402
from dnas_fast.mixed_edge import reference_forward  # noqa: E402
from dnas_fast.ops import DARTS_OPS, NB201_OPS, known_ops, register_op  # noqa: E402
from dnas_fast.spaces import DartsSpace  # noqa: E402
from tests.utils import assert_close  # noqa: E402

BACKENDS = ["fused"] + [b for b in ("cpu",) if b in _backend.available_backends("cpu")]
if triton_kernels.available("cpu"):
    BACKENDS = sorted(set(BACKENDS) | {"triton"})  # the backend is available only when forced through the env var
FAST_BACKENDS = [b for b in BACKENDS if b != "triton"]  # triton runs in its interpreter: tiny cases only
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-4, rtol=2e-3)}

OP_SETS = {
    "darts": DARTS_OPS,
    "nb201": NB201_OPS,
    "pools-skip": ["max_pool_3x3", "skip_connect", "avg_pool_3x3"],
    "convs": ["sep_conv_3x3", "dil_conv_5x5"],
    "zero-avg-sep5": ["none", "avg_pool_3x3", "sep_conv_5x5"],
}


def run(edge, x, w, backend, monkeypatch, mask=None, aux=None, straight_through=False, g=None):
    """Output, named gradients (x, w, aux, every parameter) and buffers after one forward + backward."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    aux = None if aux is None else aux.detach().requires_grad_()
    if backend == "reference":
        out = reference_forward(edge, x, w, mask, aux, straight_through)
    else:
        with _backend.use_backend(backend):
            out = edge(x, w, mask, aux, straight_through)
    # logical order, whatever out's memory format (randn_like would fill channels_last outputs differently)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype) if g is None else g
    inputs = {"x": x, "w": w, **({} if aux is None else {"aux": aux}), **dict(edge.named_parameters())}
    grads = torch.autograd.grad(out, list(inputs.values()), g, allow_unused=True)
    grads = {n: torch.zeros_like(t) if d is None else d for (n, t), d in zip(inputs.items(), grads)}
    return out.detach(), grads, {n: b.clone() for n, b in edge.named_buffers()}


def compare(edge, x, w, backend, monkeypatch, dtype=torch.float32, **kw):
    """Run a copy of ``edge`` on ``backend`` and on the reference; assert every output and gradient match."""
    ref_edge, test_edge = copy.deepcopy(edge), copy.deepcopy(edge)
    out_r, grads_r, bufs_r = run(ref_edge, x, w, "reference", monkeypatch, **kw)
    out_t, grads_t, bufs_t = run(test_edge, x, w, backend, monkeypatch, **kw)
    tol = TOL[dtype]
    assert_close("out", out_t, out_r, **tol)
    for name in grads_r:
        scale = grads_r[name].abs().max().item() + 1.0  # conv weight grads are sums over N*H*W terms
        assert_close(f"d{name}", grads_t[name], grads_r[name], atol=tol["atol"] * scale, rtol=tol["rtol"])
    for name in bufs_r:
        assert_close(f"buffer {name}", bufs_t[name], bufs_r[name], **tol)
    return grads_t


def make(ops, stride=1, C=6, N=2, H=7, W=9, dtype=torch.float32, pool_bn=True, pc=1, aux=False, seed=0):
    torch.manual_seed(seed)
    edge = MixedEdge(C, stride, ops, pool_bn=pool_bn, partial_channels=pc, aux_skip=aux).to(dtype)
    x = torch.randn(N, C, H, W, dtype=dtype)
    w = torch.softmax(torch.randn(len(ops), dtype=dtype), 0)
    return edge, x, w


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("ops", list(OP_SETS), ids=list(OP_SETS))
def test_forward_and_all_gradients_fp32(backend, stride, ops, monkeypatch):
    edge, x, w = make(OP_SETS[ops], stride, pool_bn=ops != "nb201")
    compare(edge, x, w, backend, monkeypatch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_and_all_gradients_fp64(backend, stride, monkeypatch):
    edge, x, w = make(DARTS_OPS, stride, C=4, H=5, W=6, dtype=torch.float64)
    compare(edge, x, w, backend, monkeypatch, dtype=torch.float64)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_float64(stride):
    edge, x, w = make(DARTS_OPS, stride, C=2, N=2, H=5, W=4, dtype=torch.float64, aux=True)
    aux = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def f(x, w, aux):
        return fused_edge_forward(edge, x, w, None, aux, False, prims=REF_PRIMS)

    inputs = (x.requires_grad_(), w.requires_grad_(), aux)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize(
    "mask",
    [[1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 0],
     [0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]],
    ids=["all", "some", "all-but-one", "only-dil5", "only-skip", "none"],
)  # fmt: skip
@pytest.mark.parametrize("straight_through", [False, True], ids=["plain", "st"])
def test_masks_and_straight_through(backend, mask, straight_through, monkeypatch):
    edge, x, w = make(DARTS_OPS, 2 if straight_through else 1)
    mask = torch.tensor(mask, dtype=torch.bool)
    grads = compare(edge, x, w, backend, monkeypatch, mask=mask, straight_through=straight_through)
    inactive = ~mask
    if straight_through and inactive.any():  # GDAS trick: every inactive weight gets sum(g)
        assert (grads["w"][inactive] != 0).all()
    elif not straight_through:
        assert (grads["w"][inactive] == 0).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_masked_ops_never_run(backend, monkeypatch):
    """Masked conv ops with NaN weights leave no trace; masked pool BNs keep their running statistics."""
    edge, x, w = make(DARTS_OPS, 1)
    mask = torch.tensor([0, 0, 1, 1, 1, 0, 0, 0], dtype=torch.bool)
    with torch.no_grad():
        for k in (5, 6, 7):
            for p in edge._ops[k].parameters():
                p.fill_(float("nan"))
    before = edge._ops[1][1].running_mean.clone()
    out, grads, _ = run(edge, x, w, backend, monkeypatch, mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(grads["x"]).all() and torch.isfinite(grads["w"]).all()
    assert torch.equal(edge._ops[1][1].running_mean, before)
    assert edge._ops[2][1].num_batches_tracked.item() == 1 and edge._ops[1][1].num_batches_tracked.item() == 0


def test_zero_op_weight_gradient_is_exactly_zero(monkeypatch):
    edge, x, w = make(["none", "sep_conv_3x3"], 1)
    _, grads, _ = run(edge, x, w, "fused", monkeypatch)
    assert grads["w"][0].item() == 0.0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("pc", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels(backend, pc, stride, monkeypatch):
    edge, x, w = make(DARTS_OPS, stride, C=8, H=9, W=7, pc=pc)
    compare(edge, x, w, backend, monkeypatch)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pc", [1, 2])
def test_aux_skip(backend, stride, pc, monkeypatch):
    edge, x, w = make(DARTS_OPS, stride, C=8, pc=pc, aux=True)
    compare(edge, x, w, backend, monkeypatch, aux=torch.tensor(0.7))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_and_batch_one(backend, stride, monkeypatch):
    edge, x, w = make(DARTS_OPS, stride, N=1, H=8, W=8)
    compare(edge, x.to(memory_format=torch.channels_last), w, backend, monkeypatch)
    edge, x, w = make(DARTS_OPS, stride, C=8, N=3, pc=2)
    compare(edge, x.to(memory_format=torch.channels_last), w, backend, monkeypatch)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_eval_mode_uses_running_statistics(backend, stride, monkeypatch):
    edge, x, w = make(DARTS_OPS, stride)
    with torch.no_grad():  # non-trivial running statistics
        for m in edge.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    edge.eval()
    compare(edge, x, w, backend, monkeypatch)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_affine_bn_and_momentum_none(backend, monkeypatch):
    torch.manual_seed(0)
    edge = MixedEdge(6, 1, DARTS_OPS, pool_bn=True, affine=True)
    for m in edge.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: 1 / num_batches_tracked
    x, w = torch.randn(2, 6, 7, 7), torch.softmax(torch.randn(8), 0)
    compare(edge, x, w, backend, monkeypatch)


def test_running_stats_updated_once_over_two_steps(monkeypatch):
    edge, x, w = make(DARTS_OPS, 1)
    ref_edge, test_edge = copy.deepcopy(edge), copy.deepcopy(edge)
    for step in range(2):
        run(ref_edge, x + step, w, "reference", monkeypatch)
        run(test_edge, x + step, w, "fused", monkeypatch)
    for (name, a), b in zip(test_edge.named_buffers(), ref_edge.buffers()):
        assert_close(name, a, b, atol=1e-5, rtol=1e-4)


def test_functional_call_gradients_flow_to_the_given_parameters(monkeypatch):
    """Second-order DARTS evaluates the space with torch.func.functional_call at shifted weights."""
    edge, x, w = make(DARTS_OPS, 2, dtype=torch.float64)
    shifted = {n: (p.detach() + 0.1).requires_grad_() for n, p in edge.named_parameters()}
    outs = {}
    for backend in ("reference", "fused"):
        with _backend.use_backend(backend):
            out = functional_call(copy.deepcopy(edge), shifted, (x, w))
        outs[backend] = (out, torch.autograd.grad(out.sum(), list(shifted.values())))
    assert_close("out", outs["fused"][0], outs["reference"][0], **TOL[torch.float64])
    for name, a, b in zip(shifted, outs["fused"][1], outs["reference"][1]):
        assert_close(f"d{name}", a, b, **TOL[torch.float64])


def test_double_backward_is_a_clear_error():
    edge, x, w = make(DARTS_OPS, 1, dtype=torch.float64)
    x.requires_grad_()
    out = fused_edge_forward(edge, x, w)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_auto_picks_the_batched_path_on_cpu():
    """The cell-level batched path (fewest dispatched ops, bench/results/dispatch-cpu-*); a lone edge on it runs the
    fused path with the compiled primitives when they are built."""
    edge = MixedEdge(4, 1, DARTS_OPS, pool_bn=True)
    assert _backend.resolve_backend(None, torch.device("cpu"), edge).name == "batched"


def _unknown_op(C_in, C_out, stride, affine):
    return nn.Sequential(nn.Conv2d(C_in, C_out, 3, stride, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


def test_unknown_op_falls_back_to_reference_and_forcing_is_an_error(backend_override):
    if "test_fused_unknown_op" not in known_ops():
        register_op("test_fused_unknown_op", _unknown_op)
    edge = MixedEdge(4, 1, ["skip_connect", "test_fused_unknown_op"])
    assert not supports(edge)
    assert _backend.resolve_backend(None, torch.device("cpu"), edge).name == "reference"
    backend_override("fused")
    with pytest.raises(RuntimeError, match="does not support"):
        edge(torch.randn(1, 4, 5, 5), torch.ones(2))
    with pytest.raises(ValueError, match="does not know"):
        fused_edge_forward(edge, torch.randn(1, 4, 5, 5), torch.ones(2))


def test_bad_inputs(backend_override):
    backend_override("fused")
    edge = MixedEdge(4, 1, DARTS_OPS, pool_bn=True)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="weights must have shape"):
        edge(x, torch.ones(7))
    with pytest.raises(ValueError, match="mask must be"):
        edge(x, torch.ones(8), torch.ones(8))
    with pytest.raises(ValueError, match="expects x of shape"):
        edge(torch.randn(2, 5, 6, 6), torch.ones(8))
    with pytest.raises(TypeError, match="floating-point"):
        edge(x.long(), torch.ones(8))
    with pytest.raises(ValueError, match="on meta"):
        edge(x, torch.ones(8, device="meta"))
    backend_override("no_such_backend")
    with pytest.raises(ValueError, match="unknown backend"):
        edge(x, torch.ones(8))


def test_darts_search_step_fused_equals_reference(backend_override):
    """One first-order step of a small DARTS supernet: same loss, arch and weight gradients, same BN buffers."""
    torch.manual_seed(0)
    space = DartsSpace(C=8, layers=5)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([0, 1])
    alphas = {g: (1e-1 * torch.randn(14, 8)).requires_grad_() for g in ("normal", "reduce")}
    results = {}
    for backend in ("reference", "fused"):
        backend_override(backend)
        model = copy.deepcopy(space)
        arch = {g: ArchWeights(torch.softmax(a, -1)) for g, a in alphas.items()}
        loss = nn.functional.cross_entropy(model(x, arch), y)
        grads = torch.autograd.grad(loss, [*alphas.values(), *model.parameters()])
        results[backend] = (loss, grads, list(model.buffers()))
    loss_r, grads_r, bufs_r = results["reference"]
    loss_f, grads_f, bufs_f = results["fused"]
    assert_close("loss", loss_f, loss_r, atol=1e-5, rtol=1e-5)
    names = ["alpha_normal", "alpha_reduce", *(n for n, _ in space.named_parameters())]
    for name, a, b in zip(names, grads_f, grads_r):
        assert_close(f"d{name}", a, b, atol=1e-4 * (b.abs().max().item() + 1e-3), rtol=1e-3)
    for (name, _), a, b in zip(space.named_buffers(), bufs_f, bufs_r):
        assert_close(name, a, b, atol=1e-4, rtol=1e-4)
