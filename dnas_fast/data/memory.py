"""Training sets that fit in memory, served as augmented, normalised batches straight from one uint8 tensor."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import random_crop, random_flip
from .splits import AUGMENT, Split, generator


@dataclass
class InMemory:
    """A training set: pixel values are ``x * scale`` in ``[0, 1]``.

    x (Tensor[N, C, H, W] uint8), y (Tensor[N] int64), mean / std (Tensor[C]) of the ``[0, 1]`` pixels.
    ``crop_padding`` > 0 turns on ``RandomCrop(H, padding)``; ``flip`` turns on ``RandomHorizontalFlip``.
    """

    x: torch.Tensor
    y: torch.Tensor
    scale: float
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    crop_padding: int
    flip: bool


def channel_stats(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and (population) std of ``x * scale`` from a histogram of the uint8 values.

    x (Tensor[N, C, H, W] uint8) -> (Tensor[C], Tensor[C]) float32; no float copy of the data set is made.
    """
    values = torch.arange(256, dtype=torch.float64) * scale
    counts = torch.stack([torch.bincount(x[:, c].flatten(), minlength=256) for c in range(x.shape[1])]).double()
    n = counts.sum(1)
    mean = counts @ values / n
    var = counts @ values.square() / n - mean.square()
    return mean.float(), var.clamp_min(0).sqrt().float()


class TensorSplit(Split):
    """One search split of an ``InMemory`` set; yields ``(x Tensor[B, C, S, S] float32, y Tensor[B] int64)``.

    Batch ``b`` of epoch ``e`` is augmented with a generator seeded by ``(seed, e, rank, split, b)``, so any
    batch can be rebuilt alone (resume inside an epoch) and runs never touch the global RNG.
    """

    def __init__(self, data: InMemory, indices, *, augment: bool, image_size: int, **split_args):
        super().__init__(indices, **split_args)
        self.data, self.augment, self.image_size = data, augment, image_size

    def _batches(self, order: torch.Tensor, epoch: int, first_batch: int):
        d = self.data
        for b, idx in enumerate(order.split(self.batch_size), start=first_batch):
            x = d.x[idx].float() * d.scale
            if self.augment:
                gen = generator(AUGMENT, self.seed, epoch, self.rank, self.stream, b)
                if d.crop_padding:
                    x = random_crop(x, d.crop_padding, gen)
                if d.flip:
                    x = random_flip(x, gen)
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
            yield (x - d.mean[:, None, None]) / d.std[:, None, None], d.y[idx]
