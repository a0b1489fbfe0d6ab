"""Readers of in-memory training sets: built-in digits, CIFAR python pickles, and npz arrays."""

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from .memory import InMemory, channel_stats

# quark0/darts utils.py (CIFAR-10 train-set statistics).
CIFAR10_MEAN, CIFAR10_STD = [0.49139968, 0.48215827, 0.44653124], [0.24703233, 0.24348505, 0.26158768]
# D-X-Y/AutoDL-Projects xautodl/datasets/get_dataset_with_transform.py (CIFAR-100 train-set statistics).
CIFAR100_MEAN, CIFAR100_STD = [x / 255 for x in (129.3, 124.1, 112.4)], [x / 255 for x in (68.2, 65.4, 70.4)]

# name -> (folder, training files, label key, classes)
CIFAR_FORMATS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], b"fine_labels", 100),
}
CIFAR_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


# What CIFAR's python batches hold besides builtins: numpy arrays (pickled by numpy 1.x or 2.x).
CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}  # fmt: skip


class _CifarUnpickler(pickle.Unpickler):
    """Builds only :data:`CIFAR_PICKLE_GLOBALS` (and builtin containers, strings, numbers): a crafted file cannot
    name a function to call."""

    def find_class(self, module, name):
        if (module, name) in CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``[N, 3, 32, 32]``, labels int64 ``[N]``) of one CIFAR python batch, read without running code:
    a file that names any other type is refused in one line."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to read {path}: it needs {err}, not part of a CIFAR batch (reading it could "
                         "run code)") from None  # fmt: skip
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise ValueError(f"{path} is not a CIFAR python batch: {err}") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path} is not a CIFAR batch: expected a dict with keys b'data' and {label_key!r}")
    try:
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{path}: b'data' must hold 3x32x32 uint8 images, {label_key!r} integer labels: {err}"
        ) from None
    if len(y) != len(x):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def load_digits() -> InMemory:
    """scikit-learn's ``load_digits``: 1797 real handwritten 8x8 digits, pixels 0..16, 10 classes.

    The data (UCI Optical Recognition of Handwritten Digits test set) ships with scikit-learn (BSD-3-Clause),
    so no download or path is needed. Normalised by the whole set's mean/std; augmentation is a shift of up to
    one pixel (pad 1 + random crop), never a flip (digits are not mirror-invariant).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    x = torch.from_numpy(d.images.astype(np.uint8))[:, None]
    mean, std = channel_stats(x, 1 / 16)
    return InMemory(x, torch.from_numpy(d.target).long(), 1 / 16, mean, std, 10, crop_padding=1, flip=False)


def _cifar_folder(name: str, root) -> Path:
    folder, files = CIFAR_FORMATS[name][:2]
    if root is None:
        raise ValueError(f"data set {name!r} needs root=: the {folder!r} folder or its parent")
    root = Path(root)
    for candidate in (root, root / folder):
        if (candidate / files[0]).is_file():
            return candidate
    raise FileNotFoundError(f"{name}: expected {root / files[0]} or {root / folder / files[0]} (python pickle format)")


def load_cifar(name: str, root) -> InMemory:
    """CIFAR-10/100 training set from the python pickle folder (``cifar-10-batches-py`` / ``cifar-100-python``).

    ``root`` is that folder or its parent. The batches are pickles, read by :func:`read_cifar_batch`, which builds
    nothing but numpy arrays and builtins.
    Augmentation as quark0/darts' search: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, CIFAR mean/std.
    """
    _, files, label_key, num_classes = CIFAR_FORMATS[name]
    folder = _cifar_folder(name, root)
    xs, ys = [], []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{name}: missing training batch {path}")
        x, y = read_cifar_batch(path, label_key)
        xs.append(x)
        ys.append(y)
    mean, std = (torch.tensor(s) for s in CIFAR_STATS[name])
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    return InMemory(x, y, 1 / 255, mean, std, num_classes, crop_padding=4, flip=True)


def open_npz(path):
    """``np.load`` of an .npz without pickle; a file that is no zip archive of arrays is refused in one line."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (a zip of .npy arrays, as np.savez writes)")
    return np.load(path, allow_pickle=False)


def npz_arrays(path, keys) -> list[np.ndarray]:
    """The arrays ``keys`` of an .npz, numeric only (object arrays would need pickle, which may run code)."""
    with open_npz(path) as f:
        missing = set(keys) - set(f.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; it holds {sorted(f.files)}")
        try:
            return [f[key] for key in keys]
        except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise ValueError(
                f"{path}: {list(keys)} must be plain numeric arrays (uint8 images, integer labels), not object "
                f"arrays: save them with np.savez(path, x_train=np.asarray(x, np.uint8), ...) ({err})"
            ) from err


def load_npz(root) -> InMemory:
    """Training arrays of an ``.npz``: ``x_train`` uint8 ``[N, H, W, 3]`` or ``[N, H, W]``, ``y_train`` int ``[N]``.

    Other keys (``x_test``, ``y_test``, ...) are ignored by the search. Normalised by the per-channel mean/std of
    ``x_train``; CIFAR augmentation (crop 32 pad 4 + flip) for 3x32x32 images, otherwise a flip only.
    """
    if root is None:
        raise ValueError("data set 'npz' needs root=: the path of the .npz file")
    path = Path(root)
    if not path.is_file():
        raise FileNotFoundError(f"npz: no file at {path} (expected an .npz with x_train and y_train)")
    x, y = npz_arrays(path, ("x_train", "y_train"))
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
        raise ValueError(f"{path}: x_train must be uint8 [N, H, W, 3] or [N, H, W], got {x.dtype} {list(x.shape)}")
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"{path}: x_train images must be square, got H x W = {x.shape[1]} x {x.shape[2]}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{path}: y_train must be integer [{len(x)}] (one label per image), got {y.dtype} {list(y.shape)}"
        )
    if len(y) == 0 or y.min() < 0:
        raise ValueError(f"{path}: y_train must be non-empty with labels >= 0")
    num_classes = npz_class_count(path, y)
    x = torch.from_numpy(x.reshape(*x.shape[:3], -1)).permute(0, 3, 1, 2).contiguous()
    mean, std = channel_stats(x, 1 / 255)
    cifar_like = tuple(x.shape[1:]) == (3, 32, 32)
    return InMemory(x, torch.from_numpy(y).long(), 1 / 255, mean, std, num_classes, 4 * cifar_like, True)


def npz_class_count(path, y_train: np.ndarray) -> int:
    """The number of classes: the length of the npz's ``classes`` (class names) when it holds one, which every
    label must then lie below; else the largest training label + 1."""
    with open_npz(path) as f:
        has_names = "classes" in f.files
    if not has_names:
        return int(y_train.max()) + 1
    (names,) = npz_arrays(path, ("classes",))
    if names.ndim != 1 or len(names) == 0:
        raise ValueError(f"{path}: classes must list the class names, got shape {list(names.shape)}")
    if y_train.max() >= len(names):
        raise ValueError(f"{path}: y_train has label {int(y_train.max())}, but classes names only {len(names)}")
    return len(names)
