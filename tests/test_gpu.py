"""On a CUDA GPU: every fused MixedEdge backend against the reference (output, dx, dweights and every parameter
gradient) in fp32 over DARTS edge settings, and under bf16 autocast. Runs whenever a GPU is visible (the
``cuda`` marker); CPU-only machines skip it. Tolerances: the H200 run of 2026-11-26 (then ``bench/gpu_check.py``,
log in ``bench/results/h200-20261126-gpu_check.log``) had at most 1.1e-3 relative error in fp32; bf16 autocast
3.2e-3 for the fused backends against 4.8e-3 for the reference itself.
"""

import pytest
import torch

from dnas_fast import MixedEdge
from dnas_fast.ops import DARTS_OPS

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FUSED = ("fused", "cuda", "triton", "batched")  # batched: a lone edge runs the fused path
FP32_REL_TOL = 2e-3
MASK = [0, 1, 1, 1, 0, 1, 0, 1]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the statistics-based ops (BN) make elementwise rtol meaningless."""
    return ((actual.float() - expected.float()).abs().max() / (expected.float().abs().max() + 1e-6)).item()


def outputs_and_grads(edge, backend, x, w, mask) -> dict:
    """{name: tensor} of the output and every gradient of one forward + backward on ``backend``."""
    edge.backend = backend
    edge.zero_grad(set_to_none=True)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = edge(xr, wr, mask)
    out.backward(torch.randn(out.shape, device=x.device, generator=torch.Generator(x.device).manual_seed(1)))
    params = {f"d{n}": p.grad if p.grad is not None else torch.zeros_like(p) for n, p in edge.named_parameters()}
    return {"out": out.detach(), "dx": xr.grad, "dweights": wr.grad, **params}


@pytest.mark.parametrize("masked", [False, True], ids=["all-ops", "masked"])
@pytest.mark.parametrize("pc", [1, 4], ids=["pc1", "pc4"])
@pytest.mark.parametrize("stride", [1, 2], ids=["stride1", "stride2"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_backend_matches_reference_in_fp32(backend, stride, pc, masked):
    torch.manual_seed(0)
    edge = MixedEdge(16, stride, DARTS_OPS, pool_bn=True, partial_channels=pc).cuda()
    x = torch.randn(8, 16, 15, 15, device="cuda")  # odd H, W: the stride-2 edge's padding paths
    w = torch.softmax(torch.randn(len(DARTS_OPS), device="cuda"), 0)
    mask = torch.tensor(MASK, dtype=torch.bool) if masked else None
    expected = outputs_and_grads(edge, "reference", x, w, mask)
    actual = outputs_and_grads(edge, backend, x, w, mask)  # raises if the backend is unavailable on this GPU
    errors = {name: rel_err(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    assert errors[worst] < FP32_REL_TOL, f"{backend}: {worst} off by {errors[worst]:.2e} relative ({errors})"


@pytest.mark.parametrize("backend", [b for b in FUSED if b != "fused"])
def test_bf16_autocast_error_within_twice_the_references_own(backend):
    torch.manual_seed(0)
    edge = MixedEdge(16, 1, DARTS_OPS, pool_bn=True).cuda()
    x = torch.randn(8, 16, 16, 16, device="cuda")
    w = torch.softmax(torch.randn(len(DARTS_OPS), device="cuda"), 0)
    edge.backend = "reference"
    fp32 = edge(x, w)
    errors = {}
    for name in ("reference", backend):
        edge.backend = name
        with torch.autocast("cuda", dtype=torch.bfloat16):
            errors[name] = rel_err(edge(x, w), fp32)
    assert errors[backend] <= 2 * errors["reference"] + 1e-3, errors


def test_batched_cell_matches_reference_on_cuda():
    """The cell-level batched path on a GPU (``auto`` picks it only on CPU until a GPU run has measured it): one
    training forward + backward of a small DARTS network, every parameter and alpha gradient."""
    from dnas_fast import build_space, build_strategy

    results = {}
    for backend in ("reference", "batched"):
        torch.manual_seed(0)
        space = build_space("darts", C=8, layers=3, backend=backend).cuda()
        strategy = build_strategy("darts")
        strategy.setup(space.arch_spec(), torch.device("cuda"))
        x = torch.randn(4, 3, 16, 16, device="cuda")
        space(x, strategy.arch_weights("weights")).square().mean().backward()
        grads = {n: p.grad for n, p in [*space.named_parameters(), *strategy.named_parameters()] if p.grad is not None}
        results[backend] = grads
    assert results["batched"].keys() == results["reference"].keys()
    errors = {n: rel_err(results["batched"][n], g) for n, g in results["reference"].items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < FP32_REL_TOL, f"batched: {worst} off by {errors[worst]:.2e} relative"
