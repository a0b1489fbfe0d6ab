"""ImageNet-style folders read with PIL, sampled per class and augmented as PC-DARTS' ImageNet search."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .augment import random_resized_crop_box
from .splits import AUGMENT, Split, generator, seeded_pool

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def scan_folder(root) -> tuple[list[Path], torch.Tensor, list[str]]:
    """Images of ``root/train/<class>/...`` (or ``root/<class>/...``): paths, labels ``Tensor[N]`` int64, classes."""
    if root is None:
        raise ValueError("data set 'imagefolder' needs root=: a folder holding train/<class>/*.jpg or <class>/*.jpg")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: no folder at {root} (expected train/<class>/*.jpg or <class>/*.jpg)")
    base = root / "train" if (root / "train").is_dir() else root
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (base / name).rglob("*") if p.suffix.lower() in EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"imagefolder: no images in {base}/<class>/ (extensions {sorted(EXTENSIONS)})")
    return paths, torch.tensor(labels), classes


def sample_per_class(labels: torch.Tensor, train_fraction: float, valid_fraction: float, seed: int, limit=None):
    """PC-DARTS ImageNet search: draw ``train_fraction`` (10%) of each class's images for the weights and a
    disjoint ``valid_fraction`` (2.5%) for the architecture, from the seeded pool of ``limit`` images."""
    pool = seeded_pool(len(labels), seed, limit)
    train, valid = [], []
    for c in labels.unique():
        members = pool[labels[pool] == c]  # already in seeded random order
        n_train, n_valid = round(train_fraction * len(members)), round(valid_fraction * len(members))
        train.append(members[:n_train])
        valid.append(members[n_train : n_train + n_valid])
    return torch.cat(train), torch.cat(valid)


class FolderImages(Dataset):
    """``dataset[(index, epoch)]`` -> ``(x Tensor[S, S, 3] uint8, label int)``: decoded and cropped, not yet
    normalised, so a quarter of float32's bytes crosses from the workers (``FolderSplit.finish`` normalises).

    With ``augment``: ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip`` drawn from a generator seeded by
    ``(seed, epoch, index)``, so worker count and order never change an image. Without: resize the short side
    to ``S / 0.875`` and centre-crop ``S``.
    """

    def __init__(self, paths, labels: torch.Tensor, image_size: int, augment: bool, seed: int):
        self.paths, self.labels = paths, labels.tolist()
        self.image_size, self.augment, self.seed = image_size, augment, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key
        S = self.image_size
        try:
            with Image.open(self.paths[index]) as img:
                img = img.convert("RGB")
        except (OSError, Image.DecompressionBombError) as err:  # not an image, truncated, or a pixel bomb
            raise ValueError(f"imagefolder: {self.paths[index]} is not a readable image ({err})") from None
        if self.augment:
            gen = generator(AUGMENT, self.seed, epoch, index)
            left, top, w, h = random_resized_crop_box(*img.size, gen)
            img = img.resize((S, S), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
            if torch.rand(1, generator=gen).item() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            k = S / 0.875 / min(img.size)
            img = img.resize((max(S, round(img.width * k)), max(S, round(img.height * k))), Image.Resampling.BILINEAR)
            left, top = (img.width - S) // 2, (img.height - S) // 2
            img = img.crop((left, top, left + S, top + S))
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()), self.labels[index]


class _EpochKeys(torch.utils.data.Sampler):
    """The ``(index, epoch)`` keys of the current epoch; one sampler for the loader's whole life, so its
    (persistent) workers survive from epoch to epoch."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class FolderSplit(Split):
    """One search split of a ``FolderImages`` set, loaded by a ``DataLoader`` with ``num_workers`` persistent
    processes and pinned batches when CUDA is present; batches travel as uint8 ``[B, S, S, 3]`` and ``finish``
    normalises them on whatever device they reach (``to_device``: on the GPU)."""

    def __init__(self, dataset: FolderImages, indices, *, num_workers: int, **split_args):
        super().__init__(indices, **split_args)
        self.dataset, self.num_workers = dataset, num_workers
        self._keys = _EpochKeys()
        self._loader = DataLoader(
            dataset, batch_size=self.batch_size, sampler=self._keys, num_workers=num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        )  # fmt: skip
        self._stats = {}  # device -> (255 * mean, 255 * std) as Tensor[1, 3, 1, 1]

    def _batches(self, order: torch.Tensor, epoch: int, first_batch: int):
        self._keys.keys = [(i, epoch) for i in order.tolist()]
        return iter(self._loader)

    def finish(self, x: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
        """uint8 ``[B, S, S, 3]`` -> float32 ``[B, 3, S, S]`` normalised with the ImageNet mean / std. The layout
        changes while the pixels are uint8 (channels_last: not at all, ``[B, S, S, 3]`` is that layout)."""
        if x.device not in self._stats:
            mean, std = (255 * torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            self._stats[x.device] = mean, std
        mean, std = self._stats[x.device]
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
        return x.float().sub_(mean).div_(std)
