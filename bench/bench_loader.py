"""Images/s per worker of the imagefolder search loader against torchvision's ImageFolder with the same transforms,
on the same JPEG files, side by side in one run (rounds interleaved, medians).

Both decode with PIL and draw RandomResizedCrop(S) + RandomHorizontalFlip. torchvision then converts to float
(ToTensor) and normalises in the worker, sending float32 through the pipe; ours sends uint8 [B, S, S, 3] and
normalises after the pipe (on the GPU in a search: ``Split.to_device``), as the search loop consumes it here.
torchvision is only needed by this script (its own venv: ``pip install torch torchvision``); the product never
imports it.

    python -m venv /work/venv-imagenet && /work/venv-imagenet/bin/pip install torch torchvision pillow
    PYTHONPATH=. DNAS_FAST_NO_EXT=1 /work/venv-imagenet/bin/python bench/bench_loader.py --out loader.json
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dnas_fast.data import build_search_data
from dnas_fast.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from tests.utils import write_jpeg_folder


def ours(root, workers, batch, size, normalise):
    """Our train split; ``normalise``: also normalise in this process (what the CPU device does; on a GPU that
    runs on the device, after the pipe), else the uint8 batches as the workers deliver them."""
    data = build_search_data("imagefolder", root=root, batch_size=batch, num_workers=workers, image_size=size,
                             imagenet_train_fraction=0.5, imagenet_valid_fraction=0.5)  # fmt: skip
    split = data.train

    def epoch(e):
        split.set_epoch(e)
        batches = split.to_device("cpu") if normalise else split.raw_batches()
        return sum(len(y) for _, y in batches)

    return epoch


def torchvision_loader(root, workers, batch, size):
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    ds = datasets.ImageFolder(Path(root) / "train", tf)
    n = len(ds) // 2  # the same number of images per epoch as our train split (half of each class)
    sub = torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n])
    loader = torch.utils.data.DataLoader(sub, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=False)  # fmt: skip

    def epoch(e):
        return sum(len(y) for _, y in loader)

    return epoch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--per-class", type=int, default=100, help="JPEGs per class (10 classes of CIFAR-10 photos)")
    p.add_argument("--side", type=int, default=320, help="side the 32x32 photos are upscaled to before JPEG")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_folder(Path(tmp), args.per_class, args.side)
        for workers in args.workers:
            loaders = {
                "dnas_fast uint8 (normalised on the device)": ours(root, workers, args.batch, args.size, False),
                "dnas_fast + normalised on the CPU": ours(root, workers, args.batch, args.size, True),
                "torchvision": torchvision_loader(root, workers, args.batch, args.size),
            }
            for epoch in loaders.values():
                epoch(0)  # warm-up: workers start, files enter the page cache
            times = {name: [] for name in loaders}
            for r in range(args.rounds):
                for name, epoch in loaders.items():
                    start = time.perf_counter()
                    n = epoch(r + 1)
                    times[name].append(time.perf_counter() - start)
            for name in loaders:
                med = statistics.median(times[name])
                rows.append({"loader": name, "workers": workers, "images": n, "median_s": med,
                             "img_per_s": n / med, "img_per_s_per_worker": n / med / max(workers, 1)})  # fmt: skip
            tv = rows[-1]["img_per_s"]
            for row in rows[-len(loaders) :]:
                row["vs_torchvision"] = row["img_per_s"] / tv
                print(
                    f"workers={workers}  {row['loader']:45s} {row['img_per_s']:6.0f} img/s  "
                    f"{row['img_per_s_per_worker']:6.0f} img/s/worker  {row['vs_torchvision']:.2f}x",
                    flush=True,
                )
    meta = {"machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "args": vars(args)}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
