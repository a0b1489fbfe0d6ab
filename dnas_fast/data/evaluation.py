"""Training-from-scratch data: the whole training set (augmented) for the weights and the test set for accuracy.

The same readers, splits and augmentation as the search data (``build_search_data``); the test splits are
:mod:`.testsets`'s, normalised with the training set's statistics and never augmented, as in quark0/darts ``train.py``.
"""

from dataclasses import dataclass

import torch

from . import _IN_MEMORY, _check, check_image_size, known_datasets
from .imagefolder import FolderImages, FolderSplit, scan_folder
from .memory import TensorSplit
from .splits import Split, seeded_pool
from .testsets import folder_test, in_memory_test


@dataclass
class EvalData:
    """``train`` iterates this rank's augmented shard; ``test`` the whole test set (every rank, unaugmented)."""

    train: Split
    test: Split
    in_channels: int
    num_classes: int
    image_size: int
    name: str


def build_eval_data(
    name: str = "digits", root=None, batch_size: int = 96, seed: int = 0, rank: int = 0, world_size: int = 1,
    num_workers: int = 0, image_size: int | None = None, limit: int | None = None, test_batch_size: int | None = None,
) -> EvalData:  # fmt: skip
    """Train and test splits of data set ``name`` (see ``known_datasets()``).

    Test sets: :mod:`.testsets` (CIFAR's test file, the npz's ``x_test``, ImageFolder's ``val/``, 20% of the digits).
    limit: use at most ``limit`` training examples (a seeded subset); the test set is always whole.
    """
    if name not in known_datasets():
        raise ValueError(f"unknown data set {name!r}; known: {known_datasets()}")
    _check(batch_size=batch_size, seed=seed, world_size=world_size, num_workers=num_workers, limit=limit)
    check_image_size(image_size, batch_size)
    common = dict(seed=seed, stream=0)
    test_batch = test_batch_size or batch_size
    if name == "imagefolder":
        paths, labels, classes = scan_folder(root)
        image_size = image_size or 224
        val_images, _ = folder_test(root, classes, image_size, seed)
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
            val_images,
            torch.arange(len(val_images)),
            num_workers=num_workers,
            batch_size=min(test_batch, len(val_images)),
            rank=0,
            world_size=1,
            what="test",
            **common,
        )
        return EvalData(train, test, 3, len(classes), image_size, name)
    data = _IN_MEMORY[name](root)
    held_out = in_memory_test(name, root, data, seed, limit)
    train_idx, test_data, test_idx = held_out.train, held_out.data, held_out.indices
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
