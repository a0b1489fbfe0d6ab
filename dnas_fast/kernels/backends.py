"""The fused MixedEdge backends: which primitives (``Prims``) each one runs, where it is available, and its
priority under ``auto`` (the highest among those available on x's device that support the edge wins):

    batched  40  the cell-level batched path (``batched_cell/``, offered as the backend's ``cell_forward``):
                 every edge reading one state runs each op family once (fewer dispatched ops than the naive
                 supernet: bench/results/dispatch-cpu-20261203.*); a lone edge runs
                 the fused path with the best primitives of its device; ``auto`` picks it on CPU only (on CUDA
                 it runs when asked for by name, until a GPU run has measured it)
    cpu      30  compiled-extension primitives (``_ext``), device CPU
    cuda     30  compiled-extension primitives, device CUDA (extension built with nvcc)
    triton   20  Triton primitives (``dnas_fast.triton_kernels``) on CUDA; on CPU only when forced
                 (``use_backend("triton")`` or ``DNAS_FAST_BACKEND=triton``) with ``TRITON_INTERPRET=1`` (tests),
                 so ``auto`` never picks the interpreter
    fused    10  plain-PyTorch primitives (``pool_combine_ref``): the fused path on every device
    reference -1 (``mixed_edge.py``): the naive per-op loop; ``auto`` falls back to it for edges with an op the
                 fused path does not know (e.g. MBConv)

So on CPU ``auto`` = batched (its per-edge fallback: cpu if ``dnas_fast._C`` is built, else fused); on CUDA =
cuda > triton > fused.
"""

import torch

from .. import _backend
from .batched_cell import cell_forward
from .edge_structure import supports
from .fused_edge import REF_PRIMS, fused_edge_forward
from .pool_combine_ref import Prims


def _ext():
    try:
        from . import _ext
    except ImportError:
        return None
    return _ext


def _triton():
    try:
        from .. import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def _ext_runs_on(device) -> bool:
    ext = _ext()
    return ext is not None and ext.available(device)


def _ext_available(device_type: str):
    return lambda device: torch.device(device).type == device_type and _ext_runs_on(device)


def _triton_available(device) -> bool:
    device = torch.device(device)
    tk = _triton()
    if tk is None or not tk.available(device):
        return False
    return device.type == "cuda" or _backend.override() == "triton"


def ext_prims() -> Prims:
    return Prims.of(_ext())


def triton_prims() -> Prims:
    return Prims.of(_triton())


def best_prims(device) -> Prims:
    """The compiled primitives where they run on ``device``, else the plain-PyTorch ones."""
    return ext_prims() if _ext_runs_on(device) else REF_PRIMS


def _on_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def _forward_with(get_prims):
    def forward(edge, x, weights, mask, aux_weight, straight_through):
        return fused_edge_forward(edge, x, weights, mask, aux_weight, straight_through, prims=get_prims(x.device))

    return forward


for _b in (
    _backend.Backend("cpu", _forward_with(lambda device: ext_prims()), _ext_available("cpu"), supports, priority=30),
    _backend.Backend("cuda", _forward_with(lambda device: ext_prims()), _ext_available("cuda"), supports, priority=30),
    _backend.Backend("triton", _forward_with(lambda device: triton_prims()), _triton_available, supports, priority=20),
    _backend.Backend("fused", _forward_with(lambda device: REF_PRIMS), lambda device: True, supports, priority=10),
    _backend.Backend(  # on CUDA only when asked for: not yet measured on a GPU (bench/gpu_suite.py does)
        "batched",
        _forward_with(best_prims),
        lambda device: True,
        supports,
        priority=40,
        auto_on=_on_cpu,
        cell_forward=cell_forward,
    ),
):
    _backend.register_backend(_b)
