"""Images/s per worker of the imagefolder search loader against torchvision's ImageFolder with the same transforms,
on the same JPEG files, side by side in one run (rounds interleaved, medians).

Both decode with PIL and draw RandomResizedCrop(S) + RandomHorizontalFlip. torchvision then converts to float
(ToTensor) and normalises in the worker, sending float32 through the pipe; ours sends uint8 [B, S, S, 3] and
normalises after the pipe (on the GPU in a search: ``Split.to_device``); ours is measured both without and
with that normalisation done on the CPU.
torchvision is only needed by this script, in a venv of its own (``./dev.sh bench-loader`` makes one and runs
it); the product never imports it. The loader needs no compiled extension, so a ``dnas_fast._C`` built for
another torch is simply not loaded there.

    ./dev.sh bench-loader --workers 1 2 --out bench/results/loader.csv     # and a .json twin
"""

import tempfile
import time
from pathlib import Path

import torch

from dnas_fast.benchmark import bench_parser, run_meta, time_interleaved, write_rows
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


def epoch_timer(epoch, images: dict, name: str):
    """``run_once() -> seconds`` of the next epoch of ``epoch(e) -> images``, for ``time_interleaved``; the
    image count goes to ``images[name]``."""
    count = iter(range(1 << 30))

    def run_once():
        start = time.perf_counter()
        images[name] = epoch(next(count))
        return time.perf_counter() - start

    return run_once


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
    p = bench_parser(__doc__, device=None, threads=None)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--per-class", type=int, default=100, help="JPEGs per class (10 classes of CIFAR-10 photos)")
    p.add_argument("--side", type=int, default=320, help="side the 32x32 photos are upscaled to before JPEG")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    meta, rows = run_meta("cpu"), []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_folder(Path(tmp), args.per_class, args.side)
        for workers in args.workers:
            loaders = {
                "dnas_fast uint8 (normalised on the device)": ours(root, workers, args.batch, args.size, False),
                "dnas_fast + normalised on the CPU": ours(root, workers, args.batch, args.size, True),
                "torchvision": torchvision_loader(root, workers, args.batch, args.size),
            }
            images = {}
            runners = {name: epoch_timer(epoch, images, name) for name, epoch in loaders.items()}
            # warm-up epoch: workers start, files enter the page cache
            stats = time_interleaved(runners, "cpu", warmup=1, min_reps=args.rounds, max_reps=args.rounds, budget_s=0)
            for name, s in stats.items():
                per_s = images[name] / (s["median_ms"] / 1e3)
                rows.append({"loader": name, "workers": workers, "batch": args.batch, "size": args.size,
                             "images": images[name], "median_s": s["median_ms"] / 1e3, "img_per_s": per_s,
                             "img_per_s_per_worker": per_s / max(workers, 1), **meta})  # fmt: skip
            tv = rows[-1]["img_per_s"]
            for row in rows[-len(loaders) :]:
                row["vs_torchvision"] = row["img_per_s"] / tv
                print(
                    f"workers={workers}  {row['loader']:45s} {row['img_per_s']:6.0f} img/s  "
                    f"{row['img_per_s_per_worker']:6.0f} img/s/worker  {row['vs_torchvision']:.2f}x",
                    flush=True,
                )
    if args.out:
        write_rows(rows, args.out)


if __name__ == "__main__":
    main()
