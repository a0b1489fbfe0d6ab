"""Diagnostics that DARTS- (Chu et al., ICLR 2021) and R-DARTS (Zela et al., ICLR 2020) rely on: the dominant
eigenvalue of the Hessian of the validation loss w.r.t. the architecture parameters."""

import contextlib

import torch
from torch import nn

from .._backend import use_backend


def dominant_hessian_eigenvalue(loss: torch.Tensor, params: list[torch.Tensor], iters: int = 20, seed: int = 0):
    """Largest-magnitude eigenvalue of ``d^2 loss / d params^2`` by power iteration on Hessian-vector products.

    ``loss`` must be built with a graph that supports double backward (the reference MixedEdge backend).
    Returns the Rayleigh quotient ``v^T H v`` of the last iterate (a float).
    """
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    eigenvalue = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eigenvalue = sum((a * b).sum() for a, b in zip(v, hv))
        v = [h.detach() for h in hv]
    return float(eigenvalue)


def reference_backend():
    """Force the reference MixedEdge backend (double backward) for the duration of the block."""
    return use_backend("reference")


@contextlib.contextmanager
def preserved_buffers(module: nn.Module):
    """Restore BatchNorm running statistics (and every other buffer) after a diagnostic forward pass."""
    saved = {name: b.clone() for name, b in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(saved[name])
