"""On a CUDA device: every fused MixedEdge backend against the reference (forward, dx, conv-weight grads, dw)
in fp32 over DARTS edge settings, plus an autocast bf16 forward. Prints one line per case and exits non-zero on
a mismatch. Used for the device runs recorded in bench/results/ (CI has no GPU)."""

import sys

import torch

from dnas_fast import MixedEdge
from dnas_fast._backend import resolve_backend
from dnas_fast.ops import DARTS_OPS


def run(edge, backend, x, w, mask):
    edge.backend = backend
    edge.zero_grad(set_to_none=True)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = edge(xr, wr, mask)
    g = torch.randn_like(out, generator=torch.Generator(x.device).manual_seed(1))
    out.backward(g)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in edge.parameters()]
    return [out.detach(), xr.grad, wr.grad, *grads]


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA device"
    device = torch.device("cuda")
    torch.manual_seed(0)
    failures = 0
    for backend in ("fused", "cuda", "triton"):
        for stride in (1, 2):
            for pc in (1, 4):
                for masked in (False, True):
                    edge = MixedEdge(16, stride, DARTS_OPS, pool_bn=True, partial_channels=pc).to(device)
                    x = torch.randn(8, 16, 15, 15, device=device)
                    w = torch.softmax(torch.randn(8, device=device), 0)
                    mask = torch.tensor([0, 1, 1, 1, 0, 1, 0, 1], dtype=torch.bool) if masked else None
                    ref = run(edge, "reference", x, w, mask)
                    try:
                        got = run(edge, backend, x, w, mask)
                        used = resolve_backend(backend, device, edge).name
                        err = max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(got, ref))
                        ok = err < 2e-3
                    except Exception as e:  # report and go on: one run must show every backend's state
                        used, err, ok = backend, float("nan"), False
                        print(f"  error: {type(e).__name__}: {e}")
                    failures += not ok
                    verdict = "ok" if ok else "FAIL"
                    print(f"{used:7s} stride={stride} pc={pc} masked={masked}: max rel err {err:.2e} {verdict}")
    edge = MixedEdge(16, 1, DARTS_OPS, pool_bn=True).to(device)
    x = torch.randn(8, 16, 16, 16, device=device)
    w = torch.softmax(torch.randn(8, device=device), 0)
    ref = edge(x, w).float()
    for backend in ("reference", "cuda", "triton"):
        edge.backend = backend
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = edge(x, w)
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            print(f"autocast bf16 {backend}: dtype {out.dtype}, max rel err vs fp32 reference {err:.2e}")
        except Exception as e:
            print(f"autocast bf16 {backend}: error {type(e).__name__}: {e}")
    print(f"{failures} failures; device {torch.cuda.get_device_name()}; torch {torch.__version__}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
