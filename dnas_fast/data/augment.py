"""Search-time augmentation. Batched ops draw from a ``torch.Generator``, so a batch is a pure function of its seed."""

import math

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """``RandomCrop(H, padding)`` per image: zero-pad, then crop at a random offset in ``[0, 2 * padding]``.

    x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]. Zero padding in pixel space, as torchvision before
    ``Normalize`` (quark0/darts utils._data_transforms_cifar10).
    """
    N, C, H, W = x.shape
    xp = F.pad(x, (padding,) * 4)
    top, left = torch.randint(0, 2 * padding + 1, (2, N, 1), generator=gen)
    rows = (top + torch.arange(H))[:, None, :, None]  # [N, 1, H, 1]
    cols = (left + torch.arange(W))[:, None, None, :]  # [N, 1, 1, W]
    return xp[torch.arange(N)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``RandomHorizontalFlip(0.5)`` per image. x (Tensor[N, C, H, W]) -> Tensor[N, C, H, W]."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_resized_crop_box(
    width: int, height: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """Box ``(left, top, w, h)`` of torchvision's ``RandomResizedCrop`` (area in ``scale``, log-uniform aspect
    in ``ratio``, 10 tries, then the largest centred crop that fits ``ratio``), as PC-DARTS' ImageNet search."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1)), w, h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h
