"""Held-out test splits: CIFAR's ``test_batch`` / ``test`` file, an npz's ``x_test`` / ``y_test``, ImageFolder's
``root/val/<class>/`` and, as the digits ship without one, a seeded 20% of the digits.

Test images are normalised with the training set's statistics and never augmented, as in quark0/darts
``train.py`` and SNAS-Series ``SNAS/train_search.py`` (which validates its search on the CIFAR-10 test set).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .imagefolder import FolderImages, scan_folder
from .memory import InMemory
from .sources import CIFAR_FORMATS, _cifar_folder, npz_arrays, open_npz, read_cifar_batch
from .splits import seeded_pool

# The digits ship without a test split: this seeded share of them is held out instead.
DIGITS_TEST_FRACTION = 0.2
CIFAR_TEST_FILES = {"cifar10": "test_batch", "cifar100": "test"}


class NoTestSplit(FileNotFoundError, ValueError):
    """The data set holds no test split; the message names what is missing."""


@dataclass
class InMemoryTest:
    """The test split of an in-memory set and the training examples beside it.

    train (Tensor[n] int64): the seeded pool of training examples, cut to ``limit`` (digits: without the held-out
    share); data, indices (Tensor[m] int64): the test examples; description: what the test split is, for logs.
    """

    train: torch.Tensor
    data: InMemory
    indices: torch.Tensor
    description: str


def _like(train: InMemory, x, y) -> InMemory:
    return InMemory(x, y, train.scale, train.mean, train.std, train.num_classes, train.crop_padding, train.flip)


def _cifar_test(name: str, root, train: InMemory) -> InMemory:
    label_key = CIFAR_FORMATS[name][2]
    path = _cifar_folder(name, root) / CIFAR_TEST_FILES[name]
    if not path.is_file():
        raise NoTestSplit(f"{name}: missing test batch {path}")
    x, y = read_cifar_batch(path, label_key)
    return _like(train, torch.from_numpy(x), torch.from_numpy(y))


def _npz_test(root, train: InMemory) -> InMemory:
    with open_npz(root) as f:
        if not {"x_test", "y_test"} <= set(f.files):
            raise NoTestSplit(f"{root} holds no x_test / y_test test split (it holds {sorted(f.files)})")
    x, y = npz_arrays(Path(root), ("x_test", "y_test"))
    if x.dtype != np.uint8 or x.shape[1:3] != tuple(train.x.shape[2:]) or len(y) != len(x):
        raise ValueError(f"{root}: x_test must be uint8 images shaped like x_train, with one y_test label each")
    in_range = len(y) == 0 or 0 <= y.min() <= y.max() < train.num_classes
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or not in_range:
        raise ValueError(f"{root}: y_test must hold integer labels in [0, {train.num_classes}), y_train's classes")
    x = torch.from_numpy(x.reshape(*x.shape[:3], -1)).permute(0, 3, 1, 2).contiguous()
    return _like(train, x, torch.from_numpy(y.astype(np.int64)))


def in_memory_test(name: str, root, train: InMemory, seed: int, limit: int | None = None) -> InMemoryTest:
    """The test split of in-memory set ``name`` (whole, whatever ``limit``) and its training pool."""
    if name == "digits":
        pool = seeded_pool(len(train.y), seed)
        cut = round(DIGITS_TEST_FRACTION * len(pool))
        held_out = f"digits: a seeded {DIGITS_TEST_FRACTION:.0%} held out ({cut} images)"
        return InMemoryTest(pool[cut:][:limit], train, pool[:cut], held_out)
    if name in CIFAR_TEST_FILES:
        test, what = _cifar_test(name, root, train), f"{name} {CIFAR_TEST_FILES[name]}"
    else:
        test, what = _npz_test(root, train), f"x_test / y_test of {root}"
    return InMemoryTest(seeded_pool(len(train.y), seed, limit), test, torch.arange(len(test.y)),
                        f"{what} ({len(test.y)} images)")  # fmt: skip


def folder_test(root, classes: list[str], image_size: int, seed: int) -> tuple[FolderImages, str]:
    """ImageFolder's ``root/val/<class>/`` (the classes of ``root/train``), unaugmented, and its description."""
    val = Path(root) / "val"
    if not val.is_dir():
        raise NoTestSplit(f"imagefolder: no test split {val}/<class>/*.jpg")
    paths, labels, val_classes = scan_folder(val)
    if val_classes != classes:
        raise ValueError(f"imagefolder: {val} has classes {val_classes[:5]}..., train has {classes[:5]}...")
    return FolderImages(paths, labels, image_size, False, seed), f"{val} ({len(paths)} images)"
