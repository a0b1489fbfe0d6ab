"""The ImageNet search job end to end through the CLI: real photos (CIFAR-10, upscaled and written as JPEG class
folders), the ImageNet stem at 224 x 224, PC-DARTS per-class sampling and partial channels K=2, bf16 autocast,
channels_last."""

import json

import pytest
import torch

from dnas_fast.checkpoint import load_checkpoint
from dnas_fast.cli import main
from dnas_fast.data import build_search_data
from tests.utils import CIFAR_SUBSET, write_jpeg_folder

pytestmark = pytest.mark.slow


def test_imagenet_search_job_via_cli(tmp_path, capsys):
    assert CIFAR_SUBSET.is_file(), f"the CIFAR-10 subset is missing at {CIFAR_SUBSET}"
    root = write_jpeg_folder(tmp_path / "photos", per_class=20, side=256)
    out = tmp_path / "run"
    args = [
        "search", "--data", "imagefolder", "--data-root", str(root), "--space", "darts",
        "--space-args", json.dumps({"imagenet": True, "C": 8, "layers": 3}),
        "--strategy", "pc-darts", "--strategy-args", json.dumps({"warmup_epochs": 0}),
        "--data-args", json.dumps({"imagenet_train_fraction": 0.2, "imagenet_valid_fraction": 0.1}),
        "--precision", "bf16", "--channels-last", "--batch-size", "4", "--epochs", "2",
        "--max-steps-per-epoch", "2", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    # PC-DARTS sampling: 20% / 10% of each class's 20 photos -> 40 / 20 images; batch 4: 10 train batches
    data_args = {"imagenet_train_fraction": 0.2, "imagenet_valid_fraction": 0.1}
    data = build_search_data("imagefolder", root=root, batch_size=4, **data_args)
    assert (len(data.train.indices), len(data.valid.indices), data.image_size) == (40, 20, 224)
    assert "Genotype(normal=" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[1:]]  # after the header
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("train_loss", "valid_loss"))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["precision"] == "bf16" and ckpt["config"]["channels_last"]
    assert ckpt["space_config"]["imagenet"] and ckpt["space_config"]["partial_channels"] == 2
    assert all(v.dtype == torch.float32 for v in ckpt["strategy_state"].values()), "alphas stay fp32"
    steps = {int(s["step"]) for s in ckpt["a_optimizer"]["state"].values()}
    assert steps == {4}, f"two architecture steps per epoch (warm-up off), got Adam steps {steps}"
    assert (out / "genotype.txt").read_text().startswith("Genotype(")


def test_imagenet_bench_step_runs_every_variant_and_the_fused_one_saves_less():
    from dnas_fast.bench_edge import build_search_step, search_step_saved_bytes

    saved = {}
    for provider in ("naive", "fused"):
        cfg = dict(provider=provider, imagenet=True, H=64, batch=2, pc=2, layers=3, C=8, precision="bf16",
                   channels_last=True)  # fmt: skip
        step = build_search_step(cfg)
        step()
        assert step.train[0].is_contiguous(memory_format=torch.channels_last)
        saved[provider] = search_step_saved_bytes(step)
    assert saved["fused"] < 0.5 * saved["naive"], saved


def test_pcdarts_protocol_projection():
    from bench.bench_imagenet_step import protocol_hours

    # 10% of 1,281,167 images in batches of 256: 501 steps per epoch, 50 epochs, at 1 s per step
    assert protocol_hours(1.0, 256) == pytest.approx(50 * 501 / 3600)
