"""Training-from-scratch data: the whole training set (augmented) for the weights and the test set for accuracy.

The same readers, splits and augmentation as the search data (``build_search_data``); test images are
normalised with the training set's statistics and never augmented, as in quark0/darts ``train.py``.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import _IN_MEMORY, _check, known_datasets
from .imagefolder import FolderImages, FolderSplit, scan_folder
from .memory import InMemory, TensorSplit
from .sources import CIFAR_FORMATS, _cifar_folder, npz_arrays
from .splits import Split, seeded_pool

# The digits ship without a test split: this seeded share of them is held out instead.
DIGITS_TEST_FRACTION = 0.2
CIFAR_TEST_FILES = {"cifar10": "test_batch", "cifar100": "test"}


@dataclass
class EvalData:
    """``train`` iterates this rank's augmented shard; ``test`` the whole test set (every rank, unaugmented)."""

    train: Split
    test: Split
    in_channels: int
    num_classes: int
    image_size: int
    name: str


def _like(train: InMemory, x, y) -> InMemory:
    return InMemory(x, y, train.scale, train.mean, train.std, train.num_classes, train.crop_padding, train.flip)


def _cifar_test(name: str, root, train: InMemory) -> InMemory:
    label_key = CIFAR_FORMATS[name][2]
    path = _cifar_folder(name, root) / CIFAR_TEST_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{name}: missing test batch {path}")
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = torch.from_numpy(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return _like(train, x, torch.from_numpy(np.asarray(batch[label_key], dtype=np.int64)))


def _npz_test(root, train: InMemory) -> InMemory:
    x, y = npz_arrays(Path(root), ("x_test", "y_test"))
    if x.dtype != np.uint8 or x.shape[1:3] != tuple(train.x.shape[2:]) or len(y) != len(x):
        raise ValueError(f"{root}: x_test must be uint8 images shaped like x_train, with one y_test label each")
    x = torch.from_numpy(x.reshape(*x.shape[:3], -1)).permute(0, 3, 1, 2).contiguous()
    return _like(train, x, torch.from_numpy(y.astype(np.int64)))


def build_eval_data(
    name: str = "digits", root=None, batch_size: int = 96, seed: int = 0, rank: int = 0, world_size: int = 1,
    num_workers: int = 0, image_size: int | None = None, limit: int | None = None, test_batch_size: int | None = None,
) -> EvalData:  # fmt: skip
    """Train and test splits of data set ``name`` (see ``known_datasets()``).

    Test sets: CIFAR's ``test_batch`` / ``test`` file, the npz's ``x_test`` / ``y_test``, ImageFolder's
    ``root/val/<class>/`` (same class folders as ``root/train``), and for the digits a seeded 20% held out.
    limit: use at most ``limit`` training examples (a seeded subset); the test set is always whole.
    """
    if name not in known_datasets():
        raise ValueError(f"unknown data set {name!r}; known: {known_datasets()}")
    _check(batch_size=batch_size, seed=seed, world_size=world_size, num_workers=num_workers, limit=limit)
    common = dict(seed=seed, stream=0)
    test_batch = test_batch_size or batch_size
    if name == "imagefolder":
        paths, labels, classes = scan_folder(root)
        val = Path(root) / "val"
        if not val.is_dir():
            raise FileNotFoundError(f"imagefolder: training from scratch evaluates on {val}/<class>/*.jpg")
        val_paths, val_labels, val_classes = scan_folder(val)
        if val_classes != classes:
            raise ValueError(f"imagefolder: {val} has classes {val_classes[:5]}..., train has {classes[:5]}...")
        image_size = image_size or 224
        train = FolderSplit(
            FolderImages(paths, labels, image_size, True, seed),
            seeded_pool(len(labels), seed, limit),
            num_workers=num_workers,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            what="train",
            **common,
        )
        test = FolderSplit(
            FolderImages(val_paths, val_labels, image_size, False, seed),
            torch.arange(len(val_labels)),
            num_workers=num_workers,
            batch_size=min(test_batch, len(val_labels)),
            rank=0,
            world_size=1,
            what="test",
            **common,
        )
        return EvalData(train, test, 3, len(classes), image_size, name)
    data = _IN_MEMORY[name](root)
    if name == "digits":
        pool = seeded_pool(len(data.y), seed)
        cut = round(DIGITS_TEST_FRACTION * len(pool))
        test_data, train_idx = data, pool[cut:][:limit]
        test_idx = pool[:cut]
    else:
        test_data = _cifar_test(name, root, data) if name in CIFAR_TEST_FILES else _npz_test(root, data)
        train_idx, test_idx = seeded_pool(len(data.y), seed, limit), torch.arange(len(test_data.y))
    image_size = image_size or data.x.shape[-1]
    train = TensorSplit(
        data,
        train_idx,
        augment=True,
        image_size=image_size,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        what="train",
        **common,
    )
    test_batch = min(test_batch, len(test_idx))
    test = TensorSplit(
        test_data,
        test_idx,
        augment=False,
        image_size=image_size,
        batch_size=test_batch,
        rank=0,
        world_size=1,
        what="test",
        **common,
    )
    return EvalData(train, test, data.x.shape[1], data.num_classes, image_size, name)
