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
    """``dataset[(index, epoch)]`` -> ``(x Tensor[3, S, S] float32 normalised, label int)``.

    With ``augment``: ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip`` drawn from a generator seeded by
    ``(seed, epoch, index)``, so worker count and order never change an image. Without: resize the short side
    to ``S / 0.875`` and centre-crop ``S``.
    """

    def __init__(self, paths, labels: torch.Tensor, image_size: int, augment: bool, seed: int):
        self.paths, self.labels = paths, labels.tolist()
        self.image_size, self.augment, self.seed = image_size, augment, seed
        self.mean, self.std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, epoch = key
        S = self.image_size
        with Image.open(self.paths[index]) as img:
            img = img.convert("RGB")
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
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std, self.labels[index]


class FolderSplit(Split):
    """One search split of a ``FolderImages`` set, loaded by a ``DataLoader`` with ``num_workers`` processes."""

    def __init__(self, dataset: FolderImages, indices, *, num_workers: int, **split_args):
        super().__init__(indices, **split_args)
        self.dataset, self.num_workers = dataset, num_workers

    def _batches(self, order: torch.Tensor, epoch: int, first_batch: int):
        keys = [(i, epoch) for i in order.tolist()]
        return iter(DataLoader(self.dataset, batch_size=self.batch_size, sampler=keys, num_workers=self.num_workers))
