"""Search data: split sizes, determinism per epoch, shards, augmentation, normalisation and bad input."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from dnas_fast.data import build_search_data, known_datasets
from dnas_fast.data.augment import random_resized_crop_box
from dnas_fast.data.splits import generator
from tests.utils import CIFAR_SUBSET

CIFAR_MEAN = torch.tensor([0.49139968, 0.48215827, 0.44653124])[:, None, None]
CIFAR_STD = torch.tensor([0.24703233, 0.24348505, 0.26158768])[:, None, None]
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def batches(split, epoch=0):
    split.set_epoch(epoch)
    return list(split)


def cat(split, epoch=0):
    xs, ys = zip(*batches(split, epoch))
    return torch.cat(xs), torch.cat(ys)


def digits_reference():
    """Pixels of sklearn's digits in [0, 1] as Tensor[1797, 1, 8, 8] float64, labels, and their mean/std."""
    d = load_digits()
    x = torch.from_numpy(d.images / 16)[:, None]
    return x, torch.from_numpy(d.target), x.mean().item(), x.std(unbiased=False).item()


def shifts(img: torch.Tensor, pad: int, flips: bool) -> torch.Tensor:
    """Every zero-padded crop (and mirror) of img (Tensor[C, H, W]) -> Tensor[M, C, H, W]."""
    C, H, W = img.shape
    p = F.pad(img, (pad,) * 4)
    out = [p[:, i : i + H, j : j + W] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    out += [o.flip(-1) for o in out] if flips else []
    return torch.stack(out)


def assert_each_is_one_of(x, candidates, atol=1e-5):
    """x (Tensor[N, ...]) row n must equal one of candidates[n] (Tensor[N, M, ...]); returns matched indices."""
    err = (candidates - x[:, None]).abs().flatten(2).amax(-1)  # [N, M]
    best = err.min(1)
    assert best.values.max() < atol, f"worst image matches no candidate: max err {best.values.max():.3g}"
    return best.indices


# ---------------------------------------------------------------- digits


def test_digits_shapes_split_and_disjointness():
    data = build_search_data("digits", batch_size=100)
    assert (data.in_channels, data.num_classes, data.image_size, data.name) == (1, 10, 8, "digits")
    train, valid = data.train.indices, data.valid.indices
    assert (len(train), len(valid)) == (math.floor(0.5 * 1797), 1797 - math.floor(0.5 * 1797))
    assert len(set(train.tolist()) | set(valid.tolist())) == 1797
    assert (len(data.train), len(data.valid)) == (9, 9)
    got = batches(data.train)
    assert len(got) == len(data.train) and [len(y) for _, y in got] == [100] * 8 + [98]
    x, y = got[0]
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in got]).unique().tolist()) == list(range(10))


def test_digits_normalisation_and_label_alignment():
    ref_x, ref_y, mean, std = digits_reference()
    data = build_search_data("digits", batch_size=64, augment=False)
    xs, ys = zip(*(cat(s) for s in (data.train, data.valid)))
    x = torch.cat(xs).double()
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(unbiased=False).item() - 1) < 1e-5
    order = data.train.shard(0)  # the visiting order of epoch 0
    x0, y0 = batches(data.train)[0]
    torch.testing.assert_close(y0, ref_y[order[:64]])
    torch.testing.assert_close(x0.double(), (ref_x[order[:64]] - mean) / std, atol=1e-5, rtol=0)


def test_digits_augmentation_shifts_by_at_most_one_pixel_without_flip():
    ref_x, ref_y, mean, std = digits_reference()
    data = build_search_data("digits", batch_size=256)
    order = data.train.shard(3)[:256]
    x, y = batches(data.train, 3)[0]
    torch.testing.assert_close(y, ref_y[order])
    candidates = torch.stack([shifts(img, 1, flips=False) for img in ref_x[order]])
    which = assert_each_is_one_of(x.double(), (candidates - mean) / std)
    assert len(which.unique()) == 9, "all nine shifts should occur among 256 images"
    assert (which != 4).float().mean() > 0.5  # index 4 is the unshifted image


def test_image_size_upsamples():
    data = build_search_data("digits", batch_size=16, image_size=16, augment=False)
    x, _ = batches(data.valid)[0]
    assert data.image_size == 16 and x.shape == (16, 1, 16, 16)


# ---------------------------------------------------------------- determinism and shards


def test_set_epoch_is_deterministic_and_leaves_global_rng_alone():
    data = build_search_data("digits", batch_size=128, limit=600)
    first = batches(data.train, 2)
    torch.manual_seed(123)  # must not matter
    again = batches(build_search_data("digits", batch_size=128, limit=600).train, 2)  # a resumed run
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = batches(data.train, 3)
    assert not torch.equal(data.train.shard(2), data.train.shard(3))
    assert not torch.equal(first[0][0], other[0][0])
    assert torch.equal(torch.sort(data.train.shard(2)).values, torch.sort(data.train.shard(3)).values)


def test_iteration_never_touches_global_rng():
    data = build_search_data("digits", batch_size=128, limit=600)
    state = torch.get_rng_state()
    batches(data.train, 1)
    batches(data.valid, 1)
    assert torch.equal(state, torch.get_rng_state())


def test_start_batch_resumes_inside_an_epoch():
    data = build_search_data("digits", batch_size=50, limit=400)
    full = batches(data.train, 5)
    data.train.set_epoch(5, start_batch=2)
    tail = list(data.train)
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seed_changes_the_split():
    a = build_search_data("digits", batch_size=8, seed=0).train.indices
    b = build_search_data("digits", batch_size=8, seed=1).train.indices
    assert not torch.equal(a, b)


@pytest.mark.parametrize("world_size", [2, 3])
def test_distributed_shards_are_disjoint_and_equal(world_size):
    ref_y = torch.from_numpy(load_digits().target)
    ranks = [build_search_data("digits", batch_size=32, rank=r, world_size=world_size) for r in range(world_size)]
    for which in ("train", "valid"):
        splits = [getattr(d, which) for d in ranks]
        shards = [s.shard(4) for s in splits]
        n = len(splits[0].indices)
        assert all(len(s) == n // world_size for s in shards)
        assert len({len(s) for s in splits}) == 1
        union = torch.cat(shards)
        assert len(union.unique()) == len(union) and set(union.tolist()) <= set(splits[0].indices.tolist())
        for split, shard in zip(splits, shards):  # the batches really are the shard
            _, y = cat(split, 4)
            torch.testing.assert_close(y, ref_y[shard])


# ---------------------------------------------------------------- CIFAR pickles


def write_cifar(root: Path, name: str, per_batch: int = 6):
    """A tiny folder in the real python-pickle format; returns (x uint8 [N, 3, 32, 32], y) of its train files."""
    rng = np.random.default_rng(0)
    folder, files, key, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10),
        "cifar100": ("cifar-100-python", ["train"], b"fine_labels", 100),
    }[name]
    (root / folder).mkdir(parents=True)
    xs, ys = [], []
    for file in [*files, "test_batch" if name == "cifar10" else "test"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, per_batch).tolist()
        with open(root / folder / file, "wb") as f:
            pickle.dump({b"batch_label": file.encode(), b"data": x, key: y}, f)
        if file in files:
            xs.append(x.reshape(-1, 3, 32, 32))
            ys += y
    return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys), root / folder


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles_parent_or_folder(tmp_path, name, classes):
    ref_x, ref_y, folder = write_cifar(tmp_path, name)
    for root in (tmp_path, folder):
        data = build_search_data(name, root=root, batch_size=3, augment=False)
        assert (data.in_channels, data.num_classes, data.image_size) == (3, classes, 32)
        assert len(data.train.indices) + len(data.valid.indices) == len(ref_y)
    order = data.valid.shard(0)
    x, y = cat(data.valid)
    torch.testing.assert_close(y, ref_y[order])
    if name == "cifar10":  # the DARTS constants
        torch.testing.assert_close(x, (ref_x[order] / 255 - CIFAR_MEAN) / CIFAR_STD)


def test_cifar_augmentation_is_crop_pad4_and_flip(tmp_path):
    ref_x, ref_y, _ = write_cifar(tmp_path, "cifar10", per_batch=8)
    data = build_search_data("cifar10", root=tmp_path, batch_size=20)
    order = data.train.shard(1)
    x, y = cat(data.train, 1)
    torch.testing.assert_close(y, ref_y[order])
    candidates = torch.stack([shifts(img, 4, flips=True) for img in ref_x[order] / 255])
    which = assert_each_is_one_of(x, (candidates - CIFAR_MEAN) / CIFAR_STD)
    assert (which >= 81).any() and (which < 81).any(), "both flipped and unflipped crops expected"
    assert (which % 81 != 40).float().mean() > 0.5  # 40: the centred crop


# ---------------------------------------------------------------- npz


def test_real_cifar10_subset():
    data = build_search_data("npz", root=CIFAR_SUBSET, batch_size=250, augment=False, limit=2000)
    assert (data.in_channels, data.num_classes, data.image_size) == (3, 10, 32)
    assert (len(data.train.indices), len(data.valid.indices)) == (1000, 1000)
    x, y = cat(data.train)
    assert x.shape == (1000, 3, 32, 32) and len(y.unique()) == 10  # the seeded subset mixes the sorted classes
    mean, std = data.train.data.mean, data.train.data.std  # the README's statistics of this subset
    torch.testing.assert_close(mean, torch.tensor([0.4934, 0.4831, 0.4470]), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.tensor([0.2460, 0.2441, 0.2616]), atol=1e-4, rtol=0)
    aug = build_search_data("npz", root=CIFAR_SUBSET, batch_size=250, limit=2000).train.data
    assert aug.crop_padding == 4 and aug.flip


def write_npz(path: Path, shape, n=12, **override):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8), "y_train": np.arange(n) % 3}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("shape", [(10, 10), (12, 12, 3)], ids=["gray-10x10", "rgb-12x12"])
def test_tiny_npz_is_normalised_and_only_flipped(tmp_path, shape):
    arrays = write_npz(tmp_path / "tiny.npz", shape)
    ref = torch.from_numpy(arrays["x_train"]).reshape(12, *shape[:2], -1).permute(0, 3, 1, 2) / 255
    mean, std = ref.mean((0, 2, 3), keepdim=True)[0], ref.std((0, 2, 3), unbiased=False, keepdim=True)[0]
    data = build_search_data("npz", root=tmp_path / "tiny.npz", batch_size=2, train_portion=0.5)
    assert (data.in_channels, data.num_classes, data.image_size) == (ref.shape[1], 3, shape[0])
    order = data.train.shard(0)
    x, y = cat(data.train)
    torch.testing.assert_close(y, torch.from_numpy(arrays["y_train"])[order])
    candidates = torch.stack([ref[order], ref[order].flip(-1)], 1)
    assert_each_is_one_of(x, (candidates - mean) / std)


# ---------------------------------------------------------------- image folders


def write_folder(root: Path, sizes=((20, 16), (16, 24), (30, 30), (18, 18))):
    """Two classes of solid-colour images (PNG and JPEG, odd sizes); returns the colours by class."""
    colours = {"cat": (200, 40, 10), "dog": (10, 90, 250)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return colours


def test_imagefolder_sampling_shapes_and_values(tmp_path):
    colours = write_folder(tmp_path / "train")
    kw = dict(batch_size=2, image_size=12, imagenet_train_fraction=0.5, imagenet_valid_fraction=0.25)
    data = build_search_data("imagefolder", root=tmp_path, augment=False, **kw)
    assert (data.in_channels, data.num_classes, data.image_size) == (3, 2, 12)
    labels = torch.tensor([0] * 4 + [1] * 4)
    train, valid = data.train.indices, data.valid.indices
    assert sorted(labels[train].tolist()) == [0, 0, 1, 1] and sorted(labels[valid].tolist()) == [0, 1]
    assert not set(train.tolist()) & set(valid.tolist())
    x, y = cat(data.train)
    assert x.shape == (4, 3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    for img, label in zip(x, y):  # a solid image stays solid (JPEG: up to a few levels off)
        colour = torch.tensor(colours[["cat", "dog"][label]])[:, None, None] / 255
        torch.testing.assert_close(img, ((colour - IMAGENET_MEAN) / IMAGENET_STD).expand(3, 12, 12), atol=0.05, rtol=0)
    assert build_search_data("imagefolder", root=tmp_path / "train", augment=False, **kw).num_classes == 2


def test_imagefolder_augmentation_is_deterministic_across_workers(tmp_path):
    root = tmp_path / "imgs"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    kw = dict(batch_size=2, image_size=16, imagenet_train_fraction=0.5, imagenet_valid_fraction=0.5)
    serial = build_search_data("imagefolder", root=root, **kw)
    workers = build_search_data("imagefolder", root=root, num_workers=2, **kw)
    a, b = cat(serial.train, 1), cat(workers.train, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    plain = build_search_data("imagefolder", root=root, augment=False, **kw)
    assert not torch.allclose(a[0], cat(plain.train, 1)[0])  # augmentation changed the images
    assert torch.equal(cat(plain.train, 1)[1], a[1])  # ...but not the labels
    assert not torch.equal(a[0], cat(serial.train, 2)[0])


def test_imagefolder_sends_uint8_and_normalises_where_the_batch_lands(tmp_path):
    colours = write_folder(tmp_path / "train")
    kw = dict(batch_size=2, image_size=12, imagenet_train_fraction=0.5, imagenet_valid_fraction=0.25)
    split = build_search_data("imagefolder", root=tmp_path, augment=False, **kw).train
    raw, y = next(iter(split.raw_batches()))
    assert raw.dtype == torch.uint8 and raw.shape == (2, 12, 12, 3), "a quarter of float32's bytes in the pipe"
    x, y_iter = next(iter(split))
    assert torch.equal(y, y_iter) and x.is_contiguous()
    expected = (raw.permute(0, 3, 1, 2).double() / 255 - IMAGENET_MEAN.double()) / IMAGENET_STD.double()
    torch.testing.assert_close(x, expected.float(), atol=1e-6, rtol=1e-6)
    colour = torch.tensor(colours[["cat", "dog"][y[0]]])[:, None, None] / 255
    torch.testing.assert_close(x[0], ((colour - IMAGENET_MEAN) / IMAGENET_STD).expand(3, 12, 12), atol=0.05, rtol=0)
    x_cl, y_cl = next(iter(split.to_device("cpu", torch.channels_last)))
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(y_cl, y)
    torch.testing.assert_close(x_cl, x, atol=0, rtol=0)


def test_imagefolder_workers_persist_across_epochs(tmp_path):
    write_folder(tmp_path / "train")
    kw = dict(batch_size=2, image_size=12, imagenet_train_fraction=0.5, imagenet_valid_fraction=0.25)
    split = build_search_data("imagefolder", root=tmp_path, num_workers=1, **kw).train
    pids = []
    for epoch in range(2):
        split.set_epoch(epoch)
        batches = cat(split, epoch)
        pids.append([w.pid for w in split._loader._iterator._workers])
    assert pids[0] == pids[1] and len(pids[0]) == 1, "the worker processes must survive the epoch"
    assert batches[0].shape == (4, 3, 12, 12)


def test_device_batches_match_plain_iteration_for_in_memory_sets():
    split = build_search_data("digits", batch_size=64, limit=300).train
    for (a, ya), (b, yb) in zip(split, split.to_device("cpu")):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_random_resized_crop_box_stays_inside():
    for s in range(200):
        W, H = 10 + s % 37, 5 + s % 53
        left, top, w, h = random_resized_crop_box(W, H, generator(s))
        assert 0 <= left and left + w <= W and 0 <= top and top + h <= H and w > 0 and h > 0


# ---------------------------------------------------------------- errors


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'.*'cifar10'.*'digits'.*'imagefolder'.*'npz'"):
        build_search_data("mnist")
    assert known_datasets() == ["cifar10", "cifar100", "digits", "imagefolder", "npz"]
    for portion in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="train_portion"):
            build_search_data("digits", train_portion=portion)
    with pytest.raises(ValueError, match=r"batch_size=1000 is larger than the train split \(898 examples"):
        build_search_data("digits", batch_size=1000)
    with pytest.raises(ValueError, match=r"valid split \(3 examples, 1 per rank with world_size=2"):
        build_search_data("digits", batch_size=3, limit=10, train_portion=0.7, world_size=2)
    for bad in (dict(batch_size=0), dict(limit=0), dict(seed=-1), dict(world_size=0), dict(num_workers=-1)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an int"):
            build_search_data("digits", **bad)
    with pytest.raises(ValueError, match="rank must lie in"):
        build_search_data("digits", rank=2, world_size=2)
    with pytest.raises(ValueError, match="image_size"):
        build_search_data("digits", image_size=0)
    with pytest.raises(ValueError, match="start_batch"):
        build_search_data("digits").train.set_epoch(0, start_batch=100)


def test_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="'cifar10' needs root=.*cifar-10-batches-py"):
        build_search_data("cifar10")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*data_batch_1"):
        build_search_data("cifar10", root=tmp_path / "nowhere")
    ref_x, _, folder = write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="missing training batch .*data_batch_4"):
        build_search_data("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="'npz' needs root="):
        build_search_data("npz")
    with pytest.raises(FileNotFoundError, match="no file at .*absent.npz"):
        build_search_data("npz", root=tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="'imagefolder' needs root="):
        build_search_data("imagefolder")
    with pytest.raises(FileNotFoundError, match="no folder at"):
        build_search_data("imagefolder", root=tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images in .*empty.train/<class>/"):
        build_search_data("imagefolder", root=tmp_path / "empty")
    write_folder(tmp_path / "ok")
    with pytest.raises(ValueError, match="imagenet_train_fraction=0.8 and imagenet_valid_fraction=0.3"):
        build_search_data("imagefolder", root=tmp_path / "ok", imagenet_train_fraction=0.8, imagenet_valid_fraction=0.3)
    with pytest.raises(ValueError, match="larger than the valid split"):
        build_search_data(
            "imagefolder", root=tmp_path / "ok", batch_size=1, imagenet_train_fraction=0.5
        )  # 2.5% of 4: 0


@pytest.mark.parametrize(
    "override,message",
    [
        (dict(y_train=None), r"lacks \['y_train'\]; it holds \['x_train'\]"),
        (dict(x_train=np.zeros((12, 8, 8, 3), np.float32)), "x_train must be uint8"),
        (dict(x_train=np.zeros((12, 8, 8, 2), np.uint8)), r"x_train must be uint8 \[N, H, W, 3\].*\[12, 8, 8, 2\]"),
        (dict(x_train=np.zeros((12, 8, 6), np.uint8)), "must be square"),
        (dict(y_train=np.arange(11)), r"y_train must be integer \[12\] \(one label per image\), got int64 \[11\]"),
        (dict(y_train=np.zeros(12, np.float32)), "y_train must be integer"),
        (dict(y_train=np.arange(12) - 1), "labels >= 0"),
    ],
    ids=["missing-key", "float-x", "two-channels", "not-square", "label-count", "float-y", "negative-label"],
)
def test_malformed_npz(tmp_path, override, message):
    write_npz(tmp_path / "bad.npz", (8, 8, 3), **override)
    with pytest.raises(ValueError, match=message):
        build_search_data("npz", root=tmp_path / "bad.npz", batch_size=2)
