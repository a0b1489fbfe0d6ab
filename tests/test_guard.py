"""A diverging search stops with a clear message and never overwrites its last good state; bad arguments and
untrusted checkpoints are one-line errors."""

import os

import numpy as np
import pytest
import torch

from dnas_fast.checkpoint import CheckpointError, load_checkpoint
from dnas_fast.cli import main
from dnas_fast.guard import DivergedError, DivergenceGuard
from dnas_fast.search import SearchConfig, run_search
from dnas_fast.strategies.base import Strategy

TINY = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=3,
    batch_size=32, max_steps_per_epoch=3, deterministic=True, backend="reference",
)  # fmt: skip
QUIET = dict(log=lambda *_: None)


def files(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("checkpoint.pt", "genotype.txt", "genotype.json")}


def test_guard_names_the_first_bad_quantity_and_step_without_reading_back_per_step():
    guard = DivergenceGuard("cpu")
    for value in (1.0, 2.0):
        guard.watch("loss", torch.tensor(value))
        guard.step()
    guard.check(0)
    guard.start_epoch()
    guard.watch("loss", torch.tensor(3.0))
    guard.step()
    guard.watch("gradient norm", torch.tensor(float("inf")))
    guard.step()
    guard.watch("loss", torch.tensor(float("nan")))  # later: the message names the first
    with pytest.raises(DivergedError, match=r"non-finite gradient norm at step 2 of epoch 2 \(global step 4\)"):
        guard.check(1)


def test_a_huge_lr_stops_the_cli_search_with_a_clear_message_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--space", "nb201", "--space-args", '{"C": 4, "N": 1}', "--data", "digits",
                 "--epochs", "2", "--max-steps-per-epoch", "3", "--batch-size", "32", "--lr", "1e30",
                 "--out", str(out)])  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged: non-finite loss at step 2 of epoch 1" in err[0]
    assert not (out / "checkpoint.pt").exists() and not (out / "genotype.txt").exists()


@pytest.mark.parametrize("where", ["loss", "alpha"])
def test_divergence_after_a_good_epoch_keeps_the_last_good_checkpoint_and_genotype(tmp_path, monkeypatch, where):
    config = SearchConfig(**TINY)
    run_search(config, tmp_path, stop_after=1, **QUIET)
    good = files(tmp_path)
    calls = {"n": 0}
    original = Strategy.weight_step

    def poisoned(self, ctx, batch):
        loss, logits = original(self, ctx, batch)
        calls["n"] += 1
        if calls["n"] == 2:  # the second step of epoch 2
            if where == "loss":
                loss = loss + float("inf")
            else:
                with torch.no_grad():
                    next(iter(self.alphas.values()))[0, 0] = float("inf")
        return loss, logits

    monkeypatch.setattr(Strategy, "weight_step", poisoned)
    message = "non-finite loss" if where == "loss" else "non-finite architecture parameters"
    with pytest.raises(DivergedError, match=f"{message} at step 2 of epoch 2"):
        run_search(config, tmp_path, resume=True, **QUIET)
    assert files(tmp_path) == good
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_non_finite_gradient_norm_is_caught_before_it_reaches_the_weights(tmp_path, monkeypatch):
    config = SearchConfig(**{**TINY, "epochs": 1})
    original = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c, **kw: original(p, c, **kw) * float("nan"))
    with pytest.raises(DivergedError, match="non-finite gradient norm at step 1 of epoch 1"):
        run_search(config, tmp_path, **QUIET)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--space-args", '{"C": "x"}', "space 'nb201' cannot be built with --space-args {'C': 'x'}"),
        ("--space-args", '{"in_channels": 3}', "--space-args may not set ['in_channels']: the data set 'digits'"),
        ("--space-args", '{"num_classes": 3}', "--space-args may not set ['num_classes']"),
        ("--strategy-args", '{"arch_lr": "x"}', "strategy 'darts' cannot be built with --strategy-args"),
        ("--strategy-args", '{"bogus": 1}', "strategy 'darts' cannot be built with --strategy-args {'bogus': 1}"),
    ],
)
def test_bad_space_and_strategy_args_are_one_line_errors(tmp_path, capsys, flag, value, expected):
    argv = ["search", "--space", "nb201", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r")]
    if flag != "--space-args":
        argv += ["--space-args", '{"C": 4, "N": 1}']
    assert main([*argv, flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_npz_with_object_arrays_says_what_the_loader_expects(tmp_path, capsys):
    path = tmp_path / "objects.npz"
    x = np.empty(4, dtype=object)
    x[:] = [np.zeros((8, 8, 3), np.uint8)] * 4
    np.savez(path, x_train=x, y_train=np.arange(4))
    code = main(["search", "--data", "npz", "--data-root", str(path), "--epochs", "1", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "must be plain numeric arrays (uint8 images, integer labels), not object arrays" in err


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["derive", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, command):
    config = SearchConfig(**{**TINY, "epochs": 1})
    run_search(config, tmp_path, **QUIET)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    marker = tmp_path / "code-ran"
    torch.save({**ckpt, "payload": RunsCode(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="outside the checkpoint allow-list"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    argv = (
        ["derive", str(tmp_path / "checkpoint.pt")]
        if command == "derive"
        else ["search", "--resume", "--out", str(tmp_path)]
    )
    assert main(argv) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()
