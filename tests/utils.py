"""Shared test helpers."""

from pathlib import Path

import numpy as np
import torch


def assert_close(
    name: str, actual: torch.Tensor, expected: torch.Tensor, atol=1e-6, rtol=1e-5, *, same_dtype=False
) -> None:
    """allclose that names the tensor and reports the worst mismatch; NaN matches only NaN (a kernel must propagate
    NaN where the reference does); ``same_dtype`` also asks for the reference's dtype."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if same_dtype:
        assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype}, expected {expected.dtype}"
    a, e = actual.double(), expected.double()
    both_nan = a.isnan() & e.isnan()
    diff = (a - e).abs().masked_fill(both_nan | (a == e), 0).nan_to_num(nan=float("inf"))  # a == e: equal infinities
    bound = atol + rtol * e.abs().masked_fill(both_nan, 0)
    if not bool((diff <= bound).all()):
        worst = int((diff - bound).argmax())
        where = tuple(int(k) for k in torch.unravel_index(torch.tensor(worst), diff.shape))
        raise AssertionError(
            f"{name}: max abs diff {diff.max().item():.3e}; worst at {where}: got "
            f"{actual.flatten()[worst].item():.8g}, want {expected.flatten()[worst].item():.8g} "
            f"(|err| {diff.flatten()[worst].item():.3g} > {bound.flatten()[worst].item():.3g})"
        )


def combine_with_kernel_vjp(prims, stride, coef3, w_skip):
    """``x -> prims.pool_combine(x, ...)`` as a differentiable function whose backward is the kernel's own
    ``pool_combine_backward`` with BN scales held constant, i.e. (a, b, c) = (s, 0, 0): gradcheck then tests
    the backward kernel against finite differences of the forward kernel, independently of the reference."""

    class Combine(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return prims.pool_combine(x, stride, coef3, w_skip)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            zero = torch.zeros_like(coef3[0])
            coef6 = torch.stack([coef3[0], zero, zero, coef3[1], zero, zero])
            return prims.pool_combine_backward(x, g.contiguous(), stride, coef6, w_skip)

    return Combine.apply


# The real CIFAR-10 training subset in shared/ beside the repository (see its README.md).
CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset" / "cifar10_subset.npz"


def write_jpeg_folder(root: Path, per_class: int, side: int, npz: Path = CIFAR_SUBSET, quality: int = 90) -> Path:
    """An ImageNet-style folder ``root/train/<class>/<i>.jpg`` of the first ``per_class`` real photos of each
    class of ``npz`` (x_train uint8 [N, H, W, 3], y_train, classes), bicubic-upscaled to ``side`` x ``side``."""
    from PIL import Image

    with np.load(npz) as f:
        x, y, classes = f["x_train"], f["y_train"], f["classes"]
    for c, name in enumerate(classes):
        folder = root / "train" / str(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(np.flatnonzero(y == c)[:per_class]):
            img = Image.fromarray(x[k]).resize((side, side), Image.Resampling.BICUBIC)
            img.save(folder / f"{i}.jpg", quality=quality)
    return root
