"""Shared test helpers."""

import torch


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol=1e-6, rtol=1e-5) -> None:
    """allclose that names the tensor and reports the worst mismatch."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    if not bool((diff <= bound).all()):
        worst = int((diff - bound).flatten().argmax())
        raise AssertionError(
            f"{name}: max abs diff {diff.max().item():.3e}; worst at flat index {worst}: "
            f"{actual.flatten()[worst].item():.6e} vs {expected.flatten()[worst].item():.6e}"
        )
