"""Search data: a train split for the weights and a valid split for the architecture (or, single-level, a test
split for the validation numbers), deterministic per epoch.

Example::

    data = build_search_data("digits", batch_size=32)
    for epoch in range(2):
        data.train.set_epoch(epoch)
        data.valid.set_epoch(epoch)
        for (x, y), (x_arch, y_arch) in zip(data.train, data.valid):
            ...  # x (Tensor[32, 1, 8, 8]) float32, y (Tensor[32]) int64
"""

from dataclasses import dataclass
from functools import partial

import torch

from ..settings import check_fits
from .imagefolder import FolderImages, FolderSplit, sample_per_class, scan_folder
from .memory import TensorSplit
from .sources import CIFAR_FORMATS, load_cifar, load_digits, load_npz
from .splits import Split, split_indices
from .testsets import NoTestSplit, folder_test, in_memory_test

__all__ = ["VALID_SPLITS", "SearchData", "build_search_data", "known_datasets"]

# "train": DARTS's split of the training set by train_portion; "test": the weights get the whole training set
# and the data set's test split gives the validation numbers (SNAS-Series SNAS/train_search.py), never gradients.
VALID_SPLITS = ("train", "test")

_IN_MEMORY = {"digits": lambda root: load_digits(), "npz": load_npz}
_IN_MEMORY.update({name: (lambda root, name=name: load_cifar(name, root)) for name in CIFAR_FORMATS})


def known_datasets() -> list[str]:
    return sorted([*_IN_MEMORY, "imagefolder"])


@dataclass
class SearchData:
    """``train`` feeds weight updates, ``valid`` architecture updates and the validation numbers; ``validation``
    says in words what ``valid`` holds (it goes to the run's log).

    Both iterate ``(x Tensor[N, C, S, S] float32 normalised, y Tensor[N] int64)``; ``len()`` is the number of
    batches on this rank; ``set_epoch(e)`` selects epoch ``e``'s shuffle and augmentation.
    """

    train: Split
    valid: Split
    in_channels: int
    num_classes: int
    image_size: int
    name: str
    validation: str


def build_search_data(
    name: str = "digits",
    root=None,
    batch_size: int = 64,
    train_portion: float = 0.5,
    valid_split: str = "train",
    seed: int = 0,
    augment: bool = True,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    imagenet_train_fraction: float = 0.1,
    imagenet_valid_fraction: float = 0.025,
    image_size: int | None = None,
    limit: int | None = None,
) -> SearchData:
    """Search splits of the TRAINING set of data set ``name`` (see ``known_datasets()``).

    Args:
        name: ``digits`` (scikit-learn's built-in 8x8 digits, BSD-3-Clause; ``root`` unused), ``cifar10`` /
            ``cifar100`` (python pickle folder or its parent), ``npz`` (path of an .npz with ``x_train`` /
            ``y_train``) or ``imagefolder`` (``root/train/<class>/*.jpg`` or ``root/<class>/*.jpg``).
        train_portion: share of the training set for the weights; the rest goes to the architecture
            (DARTS: 0.5). Not used by ``imagefolder``, which draws ``imagenet_train_fraction`` /
            ``imagenet_valid_fraction`` of each class (PC-DARTS: 10% / 2.5%).
        seed: fixes the split; epoch ``e``'s shuffle and augmentation depend only on ``(seed, e, rank)``.
        augment: the authors' search augmentation (digits: 1-pixel shift; CIFAR: crop pad 4 + flip;
            imagefolder: random resized crop + flip), applied to both splits as in their search scripts (never
            to a test split).
        rank, world_size: each rank gets a disjoint, equally long shard of every epoch (remainder dropped).
        num_workers: ``DataLoader`` workers (``imagefolder`` only; the other sets are batched in memory).
        image_size: output side; in-memory sets are resized from their native side, ``imagefolder`` defaults to 224.
        limit: use at most ``limit`` examples of the training set (a seeded random subset) before splitting.
    """
    if name not in known_datasets():
        raise ValueError(f"unknown data set {name!r}; known: {known_datasets()}")
    _check(batch_size=batch_size, seed=seed, world_size=world_size, num_workers=num_workers, limit=limit)
    if not 0 < train_portion < 1:
        raise ValueError(f"train_portion must lie in (0, 1), got {train_portion}")
    if valid_split not in VALID_SPLITS:
        raise ValueError(f"valid_split must be one of {VALID_SPLITS}, got {valid_split!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    check_image_size(image_size, batch_size)
    common = dict(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)

    if name == "imagefolder":
        if not (0 < imagenet_train_fraction and 0 < imagenet_valid_fraction <= 1 - imagenet_train_fraction):
            raise ValueError(
                f"imagenet_train_fraction={imagenet_train_fraction} and imagenet_valid_fraction="
                f"{imagenet_valid_fraction} must be > 0 and sum to at most 1"
            )
        paths, labels, classes = scan_folder(root)
        image_size = image_size or 224
        make = partial(FolderSplit, FolderImages(paths, labels, image_size, augment, seed), num_workers=num_workers)
        indices = sample_per_class(labels, imagenet_train_fraction, imagenet_valid_fraction, seed, limit)
        in_channels, num_classes = 3, len(classes)
    else:
        data = _IN_MEMORY[name](root)
        image_size = image_size or data.x.shape[-1]
        make = partial(TensorSplit, data, augment=augment, image_size=image_size)
        indices = split_indices(len(data.y), train_portion, seed, limit)
        in_channels, num_classes = data.x.shape[1], data.num_classes
    train_idx, valid_idx = indices
    make_valid, valid_args = make, {"what": "valid"}
    validation = f"{len(valid_idx)} training images kept from the weights' {len(train_idx)}"
    if valid_split == "test":
        try:
            if name == "imagefolder":  # the weights keep the search's share of each class (the same draw)
                images, what = folder_test(root, classes, image_size, seed)
                make_valid, valid_idx = partial(FolderSplit, images, num_workers=num_workers), torch.arange(len(images))
            else:
                held_out = in_memory_test(name, root, data, seed, limit)
                make_valid = partial(TensorSplit, held_out.data, augment=False, image_size=image_size)
                train_idx, valid_idx, what = held_out.train, held_out.indices, held_out.description
        except NoTestSplit as err:
            validation = f"no test split ({err}); fallback: {validation} (train_portion)"
        else:
            validation = f"test split: {what}; the weights get all {len(train_idx)} training images"
            valid_args = {"what": "test", "batch_size": max(1, min(batch_size, len(valid_idx) // world_size))}
    train = make(train_idx, stream=0, what="train", **common)
    valid = make_valid(valid_idx, stream=1, **{**common, **valid_args})
    return SearchData(train, valid, in_channels, num_classes, image_size, name, validation)


def check_image_size(image_size: int | None, batch_size: int) -> None:
    """A positive side whose batches of 3-channel float32 images can fit in this machine's memory."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    check_fits(f"image_size {image_size} (a batch of {batch_size})", 4 * 3 * batch_size * image_size**2,
               torch.device("cpu"))  # fmt: skip


def _check(**ints) -> None:
    """Each named value must be an int >= its minimum (``limit`` may be None)."""
    minimum = {"batch_size": 1, "seed": 0, "world_size": 1, "num_workers": 0, "limit": 1}
    for key, value in ints.items():
        if value is None and key == "limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum[key]:
            raise ValueError(f"{key} must be an int >= {minimum[key]}, got {value!r}")
