"""Python side of the compiled extension ``dnas_fast._C`` (built from csrc/): loading, availability, thin calls of
``torch.ops.dnas_fast.*`` and their fake (shape-only) implementations, so torch.compile and torch.export trace them.

Contract and plain-PyTorch reference: ``pool_combine_ref.py`` (same argument order and meaning). Details:

- ``w_skip`` is a ``Tensor[]`` (any floating dtype, on x's device) or ``None`` (schema ``Tensor? w_skip``); it is
  only defined at stride 1. ``coef`` may have any floating dtype; it is cast to x's math dtype.
- The kernels read and write NCHW: a channels_last or strided x (and g) is copied to NCHW inside the op, and the
  maps are copied back to channels_last when x is channels_last (so a --channels-last network stays so).
- Per-channel sums come back in x's math dtype (float32 for float16/bfloat16/float32 inputs, float64 for float64)
  and are accumulated in float64 on the CPU, in the math dtype on CUDA, in a fixed order (deterministic).
- CUDA (when the extension was built with nvcc): float32, float64, float16, bfloat16 (opmath accumulation). CPU
  kernels: float32, float64; float16 / bfloat16 inputs (autocast) run them on a transient float32 copy of x and g,
  and maps come back in x's dtype.
- Bad inputs raise ``RuntimeError`` naming what was expected and what was got.

Example::

    >>> from dnas_fast.kernels import _ext
    >>> if _ext.available("cpu"):
    ...     x = torch.randn(2, 4, 9, 9)
    ...     out = _ext.pool_combine(x, 1, torch.randn(3, 4), torch.tensor(0.5))  # Tensor[2, 4, 9, 9]
"""

import functools

import torch

from ..shapes import strided_shape

_OPS = ("pool_stats", "pool_combine", "pool_grad_stats", "pool_combine_backward")


@functools.cache
def load() -> bool:
    """Import ``dnas_fast._C`` (which registers ``torch.ops.dnas_fast.*``); False when it was not built."""
    try:
        import dnas_fast._C  # noqa: F401
    except ImportError:
        return False
    _register_fakes()
    return True


def available(device: torch.device | str) -> bool:
    """Whether the compiled ops run on ``device``: CPU whenever the extension is built, CUDA when it was built with
    nvcc and a GPU is visible."""
    device = torch.device(device)
    if not load():
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and all(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"dnas_fast::{op}", "CUDA") for op in _OPS
        )
    return False


def _cpu_math(t: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 CPU tensors as float32 (the CPU kernels' dtypes); everything else unchanged."""
    return t.float() if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16) else t


def _like(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A map of the kernels in x's dtype, channels_last if x is."""
    cl = torch.channels_last
    layout = cl if x.is_contiguous(memory_format=cl) and not x.is_contiguous() else torch.contiguous_format
    return out.to(x.dtype).contiguous(memory_format=layout)


def pool_stats(x: torch.Tensor, stride: int) -> torch.Tensor:
    """x (Tensor[N, C, H, W]) -> Tensor[4, C]: per-channel sum and sum of squares of maxpool3x3(x), then
    avgpool3x3(x) (padding 1, ``stride``)."""
    return torch.ops.dnas_fast.pool_stats.default(_cpu_math(x), stride)


def pool_combine(x: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None) -> torch.Tensor:
    """x (Tensor[N, C, H, W]), coef (Tensor[3, C]) = (s_max, s_avg, bias), w_skip (Tensor[] or None, stride 1
    only) -> Tensor[N, C, H', W'] = s_max * maxpool(x) + s_avg * avgpool(x) + bias + w_skip * x."""
    return _like(x, torch.ops.dnas_fast.pool_combine.default(_cpu_math(x), stride, coef, w_skip))


def pool_grad_stats(x: torch.Tensor, g: torch.Tensor, stride: int) -> torch.Tensor:
    """x (Tensor[N, C, H, W]), g (Tensor[N, C, H', W']) -> Tensor[3, C]: per-channel sum(g), sum(g * maxpool(x)),
    sum(g * avgpool(x))."""
    return torch.ops.dnas_fast.pool_grad_stats.default(_cpu_math(x), _cpu_math(g), stride)


def pool_combine_backward(
    x: torch.Tensor, g: torch.Tensor, stride: int, coef: torch.Tensor, w_skip: torch.Tensor | None
) -> torch.Tensor:
    """x (Tensor[N, C, H, W]), g (Tensor[N, C, H', W']), coef (Tensor[6, C]) = (a_max, b_max, c_max, a_avg, b_avg,
    c_avg), w_skip (Tensor[] or None) -> dx (Tensor[N, C, H, W]); the pools are recomputed from x, max-pool ties go
    to the first maximum of the window in row-major order (as PyTorch's max_pool2d backward)."""
    dx = torch.ops.dnas_fast.pool_combine_backward.default(_cpu_math(x), _cpu_math(g), stride, coef, w_skip)
    return _like(x, dx)


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register_fakes() -> None:
    # csrc/pool_combine.cpp names this module with set_python_module: torch checks the fakes are registered here.
    @torch.library.register_fake("dnas_fast::pool_stats")
    def _(x, stride):
        return x.new_empty((4, x.shape[1]), dtype=_math_dtype(x.dtype))

    @torch.library.register_fake("dnas_fast::pool_combine")
    def _(x, stride, coef, w_skip):
        return x.new_empty(strided_shape(x, stride, x.shape[1]))

    @torch.library.register_fake("dnas_fast::pool_grad_stats")
    def _(x, g, stride):
        return x.new_empty((3, x.shape[1]), dtype=_math_dtype(x.dtype))

    @torch.library.register_fake("dnas_fast::pool_combine_backward")
    def _(x, g, stride, coef, w_skip):
        return x.new_empty(x.shape)


# Importing this module is all a caller needs: it loads the extension and registers the fakes.
load()
