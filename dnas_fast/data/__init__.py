"""Search data: a train split for the weights and a valid split for the architecture, deterministic per epoch.

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

from .imagefolder import FolderImages, FolderSplit, sample_per_class, scan_folder
from .memory import TensorSplit
from .sources import CIFAR_FORMATS, load_cifar, load_digits, load_npz
from .splits import Split, split_indices

__all__ = ["SearchData", "build_search_data", "known_datasets"]

SPLITS = ("train", "valid")

_IN_MEMORY = {"digits": lambda root: load_digits(), "npz": load_npz}
_IN_MEMORY.update({name: (lambda root, name=name: load_cifar(name, root)) for name in CIFAR_FORMATS})


def known_datasets() -> list[str]:
    return sorted([*_IN_MEMORY, "imagefolder"])


@dataclass
class SearchData:
    """``train`` feeds weight updates, ``valid`` architecture updates.

    Both iterate ``(x Tensor[N, C, S, S] float32 normalised, y Tensor[N] int64)``; ``len()`` is the number of
    batches on this rank; ``set_epoch(e)`` selects epoch ``e``'s shuffle and augmentation.
    """

    train: Split
    valid: Split
    in_channels: int
    num_classes: int
    image_size: int
    name: str


def build_search_data(
    name: str = "digits",
    root=None,
    batch_size: int = 64,
    train_portion: float = 0.5,
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
            imagefolder: random resized crop + flip), applied to both splits as in their search scripts.
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
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
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
    train, valid = (make(idx, stream=s, what=what, **common) for s, (idx, what) in enumerate(zip(indices, SPLITS)))
    return SearchData(train, valid, in_channels, num_classes, image_size, name)


def _check(**ints) -> None:
    """Each named value must be an int >= its minimum (``limit`` may be None)."""
    minimum = {"batch_size": 1, "seed": 0, "world_size": 1, "num_workers": 0, "limit": 1}
    for key, value in ints.items():
        if value is None and key == "limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum[key]:
            raise ValueError(f"{key} must be an int >= {minimum[key]}, got {value!r}")
