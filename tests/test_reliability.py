"""Nothing a file or flag says can run code, hang or lose a run: safe readers, one validation of every setting,
the state guard before every write, whole log lines, the run-directory lock, preemption for train and torchrun.

``BAD_INPUTS`` is the table of hostile and careless inputs tried so far: add one line per new case."""

import dataclasses
import json
import os
import pickle
import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnas_fast.checkpoint import load_checkpoint
from dnas_fast.cli import main
from dnas_fast.data.sources import read_cifar_batch
from dnas_fast.guard import DivergedError
from dnas_fast.preemption import Preempted
from dnas_fast.rundir import RunLock, read_log
from dnas_fast.search import SearchConfig, run_search
from dnas_fast.strategies.base import Strategy
from dnas_fast.train import TrainConfig, Trainer, run_train
from tests.test_data import write_cifar
from tests.test_distributed import free_port
from tests.test_search import assert_states_equal, final_state

SEARCH = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=2,
    batch_size=32, max_steps_per_epoch=3, deterministic=True, backend="reference",
)  # fmt: skip
TRAIN = dict(data="digits", C=4, layers=3, epochs=2, batch_size=32, auxiliary=False, max_steps_per_epoch=3,
             deterministic=True)  # fmt: skip
QUIET = dict(log=lambda *_: None)
SEARCH_ARGV = [
    "search",
    "--space",
    "nb201",
    "--space-args",
    '{"C": 4, "N": 1}',
    "--data",
    "digits",
    "--data-args",
    '{"limit": 256}',
    "--epochs",
    "1",
    "--max-steps-per-epoch",
    "2",
    "--batch-size",
    "32",
]
TRAIN_ARGV = ["train", "DARTS_V2", "--data", "digits", "--C", "4", "--layers", "3", "--epochs", "1",
              "--max-steps-per-epoch", "2", "--batch-size", "32", "--auxiliary", "false"]  # fmt: skip


class RunsCode:
    """Pickles to a call of ``touch marker``: it must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---- 1. data files cannot run code ----------------------------------------------------------------------
def crafted_cifar(root: Path, marker: Path) -> Path:
    write_cifar(root, "cifar10")
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsCode(marker), b"labels": [0]}, f)
    return folder


def test_a_real_cifar_batch_reads_and_a_crafted_one_is_refused_without_running(tmp_path):
    x, y, folder = write_cifar(tmp_path / "real", "cifar10")
    images, labels = read_cifar_batch(folder / "data_batch_1", b"labels")
    assert images.shape == (6, 3, 32, 32) and labels.dtype == np.int64
    marker = tmp_path / "code-ran"
    crafted = crafted_cifar(tmp_path / "crafted", marker)
    with pytest.raises(ValueError, match=r"refusing to read .*data_batch_1: it needs posix.system"):
        read_cifar_batch(crafted / "data_batch_1", b"labels")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval-child", "resume", "config"])
def test_a_checkpoint_or_config_pointing_at_a_crafted_cifar_folder_runs_no_code(tmp_path, capsys, command):
    marker = tmp_path / "code-ran"
    folder = crafted_cifar(tmp_path / "data", marker)
    run = tmp_path / "run"
    if command == "config":
        cfg = tmp_path / "evil.toml"
        cfg.write_text(f'data = "cifar10"\ndata_root = "{folder}"\nepochs = 1\n')
        argv = ["search", "--config", str(cfg), "--out", str(run)]
    else:
        run_search(SearchConfig(**{**SEARCH, "epochs": 1}), run, **QUIET)
        ckpt = load_checkpoint(run / "checkpoint.pt")
        ckpt["config"].update(data="cifar10", data_root=str(folder), data_args={})
        torch.save(ckpt, run / "checkpoint.pt")
        argv = ["eval-child", str(run)] if command == "eval-child" else ["search", "--resume", "--out", str(run)]
    assert main(argv) == 2
    assert "it needs posix.system" in one_line_error(capsys)
    assert not marker.exists()


# ---- 2, 9. every setting validated in one place ---------------------------------------------------------
BAD_SEARCH_FIELDS = {
    "space": 3, "space_args": [], "strategy": None, "strategy_args": "x", "data": 1, "data_root": 2,
    "data_args": {"augment": "no"}, "epochs": -1, "batch_size": "big", "train_portion": 1.5, "valid_split": "all",
    "lr": float("nan"), "lr_min": -1.0, "momentum": 1.0, "nesterov": "yes", "weight_decay": float("inf"),
    "grad_clip": -1.0, "scheduler_step": "sideways", "lr_warmup_epochs": -1,
    "memory_limit": "lots", "scale_lr": 1, "seed": -3, "deterministic": "no",
    "device": "banana", "backend": 5, "max_steps_per_epoch": -2, "num_workers": -1, "precision": "fp8",
    "channels_last": "yes", "checkpoint_every": "0", "cuda_graphs": "x",
}  # fmt: skip
BAD_TRAIN_FIELDS = {
    "arch": 1, "family": "resnet", "data": [], "data_root": 0, "data_args": {"limit": "x"}, "epochs": 0,
    "batch_size": 2.5, "lr": -0.1, "lr_schedule": "linear", "lr_min": -1.0, "lr_gamma": 0.0,
    "lr_decay_period": 0, "warmup_epochs": -1, "momentum": -0.5, "nesterov": 0, "weight_decay": -1.0,
    "grad_clip": -1.0, "label_smoothing": 1.0, "auxiliary": "no", "auxiliary_weight": float("nan"),
    "drop_path_prob": 1.0, "cutout_length": -1, "dropout": 2.0, "C": -4, "layers": -1, "seed": 2**64,
    "device": "banana", "precision": "int8", "channels_last": 2, "deterministic": None, "max_steps_per_epoch": 0,
    "num_workers": -1,
}  # fmt: skip


def test_the_tables_cover_every_field():
    assert set(BAD_SEARCH_FIELDS) == {f.name for f in dataclasses.fields(SearchConfig)}
    assert set(BAD_TRAIN_FIELDS) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("field, value", BAD_SEARCH_FIELDS.items(), ids=list(BAD_SEARCH_FIELDS))
def test_every_search_field_is_checked_through_the_api_and_a_config_file(tmp_path, capsys, field, value):
    named = field.replace("_", "[_-]")  # --data-args or data_args
    with pytest.raises(ValueError, match=named):
        SearchConfig.from_dict({field: value})
    with pytest.raises(ValueError, match=named):
        SearchConfig(**{field: value}).validate()
    if isinstance(value, float) and not np.isfinite(value):
        return  # JSON has no NaN / inf
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({field: value}))
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert re.search(named, one_line_error(capsys))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field, value", BAD_TRAIN_FIELDS.items(), ids=list(BAD_TRAIN_FIELDS))
def test_every_train_field_is_checked_through_the_api(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "[_-]")):
        TrainConfig.from_dict({field: value})


def test_a_resumed_checkpoints_stored_config_is_checked_like_any_other(tmp_path, capsys):
    run = tmp_path / "run"
    run_search(SearchConfig(**{**SEARCH, "epochs": 2}), run, stop_after=1, **QUIET)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    ckpt["config"]["grad_clip"] = -1.0
    torch.save(ckpt, run / "checkpoint.pt")
    assert main(["search", "--resume", "--out", str(run)]) == 2
    assert "grad_clip must be >= 0, got -1.0" in one_line_error(capsys)


def write_npz(path: Path, y_train, y_test=None, classes=None) -> Path:
    arrays = {"x_train": np.zeros((len(y_train), 8, 8, 3), np.uint8), "y_train": np.asarray(y_train)}
    if y_test is not None:
        arrays.update(x_test=np.zeros((len(y_test), 8, 8, 3), np.uint8), y_test=np.asarray(y_test))
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
    np.savez(path, **arrays)
    return path


def genotype_file(tmp_path: Path, **change) -> Path:
    from dnas_fast.genotype import NAMED_GENOTYPES, genotype_to_json

    doc = {**json.loads(genotype_to_json(NAMED_GENOTYPES["DARTS_V2"])), **change}
    doc = {k: v for k, v in doc.items() if v is not None}
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(doc))
    return path


# (argv builder, expected words in the one-line error): the bad inputs tried so far; all exit 2, in one line.
BAD_INPUTS = {
    "grad-clip": (lambda t: [*SEARCH_ARGV, "--grad-clip", "-1"], "grad_clip must be >= 0"),
    "lr-nan": (lambda t: [*SEARCH_ARGV, "--lr", "nan"], "lr must be a finite number"),
    "max-steps": (lambda t: [*SEARCH_ARGV, "--max-steps-per-epoch", "-2"], "max_steps_per_epoch must be >= 1"),
    "threads-0": (lambda t: [*SEARCH_ARGV, "--threads", "0"], "expected a positive integer"),
    "threads-neg": (lambda t: [*SEARCH_ARGV, "--threads", "-1"], "expected a positive integer"),
    "augment": (lambda t: [*SEARCH_ARGV, "--data-args", '{"augment": "no"}'], "augment must be true or false"),
    "data-args-key": (lambda t: [*SEARCH_ARGV, "--data-args", '{"foo": 1}'], "unknown ['foo']"),
    "data-args-seed": (lambda t: [*SEARCH_ARGV, "--data-args", '{"seed": 1}'], "['seed'] are set by other"),
    "space-C-neg": (lambda t: [*SEARCH_ARGV, "--space-args", '{"C": -4}'], "C must be >= 1, got -4"),
    "space-N-zero": (lambda t: [*SEARCH_ARGV, "--space-args", '{"N": 0}'], "N must be >= 1, got 0"),
    "space-C-str": (lambda t: [*SEARCH_ARGV, "--space-args", '{"C": "x"}'], "C must be an integer, got 'x'"),
    "space-steps": (lambda t: [*SEARCH_ARGV, "--space", "darts", "--space-args", '{"steps": 0}'],
                    "steps must be >= 1, got 0"),
    "space-multiplier": (lambda t: [*SEARCH_ARGV, "--space", "darts", "--space-args", '{"multiplier": 6}'],
                         "multiplier=6 of steps=4"),
    "space-C-huge": (lambda t: [*SEARCH_ARGV, "--space-args", '{"C": 100000}'], "refused before allocating"),
    "image-size-huge": (lambda t: [*SEARCH_ARGV, "--data-args", '{"image_size": 100000}'],
                        "image_size 100000 (a batch of 32) needs"),
    "device": (lambda t: [*SEARCH_ARGV, "--device", "banana"], "device must be auto, cpu, cuda or cuda:N"),
    "config-list": (lambda t: [*SEARCH_ARGV, "--config", str(write(t / "c.json", "[1, 2]"))],
                    "a search config must be a mapping"),
    "config-dir": (lambda t: [*SEARCH_ARGV, "--config", str(t)], "is a directory"),
    "npz-text": (lambda t: ["search", "--data", "npz", "--data-root", str(write(t / "d.npz", "text"))],
                 "is not an .npz archive"),
    "npz-label-past-classes": (
        lambda t: ["search", "--data", "npz", "--data-root", str(write_npz(t / "d.npz", [0, 1, 5], None, ["a", "b"]))],
        "y_train has label 5, but classes names only 2"),
    "npz-y-test-range": (
        lambda t: [*TRAIN_ARGV, "--data", "npz", "--data-root", str(write_npz(t / "d.npz", [0, 1, 1, 0], [0, 7]))],
        "y_test must hold integer labels in [0, 2)"),
    "imagefolder-not-images": (
        lambda t: [*SEARCH_ARGV, "--data", "imagefolder", "--data-root", str(fake_images(t)), "--data-args",
                   '{"image_size": 16, "imagenet_train_fraction": 0.5, "imagenet_valid_fraction": 0.5}',
                   "--batch-size", "1"],
        ".jpg is not a readable image"),
    "genotype-no-reduce": (lambda t: [*TRAIN_ARGV[:1], str(genotype_file(t, reduce=None)), *TRAIN_ARGV[2:]],
                           "genotype lacks ['reduce']"),
    "genotype-empty-normal": (lambda t: [*TRAIN_ARGV[:1], str(genotype_file(t, normal=[])), *TRAIN_ARGV[2:]],
                              "genotype normal must be a non-empty list"),
    "genotype-concat-huge": (
        lambda t: [*TRAIN_ARGV[:1], str(genotype_file(t, normal_concat=[2, 3000000000])), *TRAIN_ARGV[2:]],
        "normal_concat must list nodes of the cell (2..5)"),
    "train-warmup": (lambda t: [*TRAIN_ARGV, "--warmup-epochs", "-1"], "warmup_epochs must be >= 0"),
    "train-grad-clip": (lambda t: [*TRAIN_ARGV, "--grad-clip", "-1"], "grad_clip must be >= 0"),
    "train-C-huge": (lambda t: [*TRAIN_ARGV, "--C", "100000"], "refused before allocating"),
    "recal-batches": (lambda t: ["eval-child", str(t), "--recal-batches", "-1"], "expected a positive integer"),
}  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fake_images(root: Path) -> Path:
    for c in ("a", "b"):
        (root / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            (root / "imgs" / c / f"{c}{i}.jpg").write_text("not a jpeg")
    return root / "imgs"


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, case):
    build, expected = BAD_INPUTS[case]
    argv = build(tmp_path)
    out = [] if argv[0] == "eval-child" else ["--out", str(tmp_path / "run")]
    try:
        code = main([*argv, *out])
    except SystemExit as exit:  # argparse refuses a malformed flag itself
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1], err


def test_a_checkpoint_refusal_is_one_line_naming_the_type(tmp_path, capsys):
    run_search(SearchConfig(**{**SEARCH, "epochs": 1}), tmp_path, **QUIET)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({**ckpt, "payload": RunsCode(tmp_path / "ran")}, tmp_path / "checkpoint.pt")
    assert main(["derive", str(tmp_path / "checkpoint.pt")]) == 2
    assert "it needs type posix.system" in one_line_error(capsys)


# ---- 3. the guard covers everything a checkpoint holds --------------------------------------------------
def poison_after(monkeypatch, call: int, where: str):
    original, calls = Strategy.weight_step, {"n": 0}

    def step(self, ctx, batch):
        out = original(self, ctx, batch)
        calls["n"] += 1
        if calls["n"] == call:
            with torch.no_grad():
                if where == "weight":
                    next(ctx.module.parameters()).view(-1)[0] = float("nan")
                elif where == "alpha":
                    next(iter(self.alphas.values()))[0, 0] = float("nan")
                else:
                    state = ctx.w_optimizer.state[next(ctx.module.parameters())]
                    state["momentum_buffer"].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Strategy, "weight_step", step)


@pytest.mark.parametrize("where", ["weight", "alpha", "optimizer"])
def test_no_checkpoint_is_written_with_a_non_finite_tensor(tmp_path, monkeypatch, where):
    config = SearchConfig(**{**SEARCH, "checkpoint_every": "1"})
    poison_after(monkeypatch, 2, where)
    with pytest.raises(DivergedError, match="diverged: non-finite"):
        run_search(config, tmp_path, **QUIET)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # the last good one, after step 1
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 1)
    tensors = [*ckpt["model"].values(), *ckpt["strategy_state"].values()]
    assert all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def test_train_divergence_exits_3_in_one_line(tmp_path, capsys):
    assert main([*TRAIN_ARGV, "--lr", "1e38", "--grad-clip", "0", "--out", str(tmp_path / "run")]) == 3
    assert "diverged: non-finite training loss in epoch 1" in one_line_error(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---- 4, 11. whole log lines; a torn last one and orphaned temporaries do not block a resume --------------
def test_a_torn_last_log_line_is_dropped_with_a_warning_and_resume_and_plot_work(tmp_path, caplog):
    config = SearchConfig(**SEARCH)
    run_search(config, tmp_path, stop_after=1, **QUIET)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a disk-full append
    (tmp_path / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    assert main(["plot", str(tmp_path)]) == 0
    assert "log.jsonl: dropped a torn last line" in caplog.text
    run_search(config, tmp_path, resume=True, **QUIET)
    assert [r.get("epoch") for r in read_log(tmp_path)] == [None, 1, 2]
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_corrupt_middle_log_line_is_a_clear_error(tmp_path):
    run_search(SearchConfig(**SEARCH), tmp_path, **QUIET)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl line 2 is not JSON"):
        read_log(tmp_path)


def test_a_runs_files_share_one_mode(tmp_path):
    run_search(SearchConfig(**{**SEARCH, "epochs": 1}), tmp_path, **QUIET)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert len(set(modes.values())) == 1, modes


# ---- 5. one run per directory ---------------------------------------------------------------------------
def test_a_second_run_on_a_locked_directory_is_refused_and_the_first_is_unharmed(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    original, answers = Strategy.weight_step, []

    def step(self, ctx, batch):  # while the first run holds the directory, try a second and a resume
        if not answers:
            answers.append(main([*SEARCH_ARGV, "--out", str(run)]))
            answers.append(main(["search", "--resume", "--out", str(run)]))
        return original(self, ctx, batch)

    monkeypatch.setattr(Strategy, "weight_step", step)
    run_search(SearchConfig(**SEARCH), run, **QUIET)
    assert answers == [2, 2]
    err = capsys.readouterr().err
    assert f"is in use by another dnas-fast run (PID {os.getpid()})" in err
    assert [r.get("epoch") for r in read_log(run)] == [None, 1, 2]
    with RunLock(run):  # released at the end: a lock can be taken again
        pass


# ---- 7. small files cannot hang a run -------------------------------------------------------------------
def test_a_self_sharing_nested_config_is_refused_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    run_search(SearchConfig(**{**SEARCH, "epochs": 2}), run, stop_after=1, **QUIET)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    nest = []
    for _ in range(60):  # 2**60 leaves when expanded
        nest = [nest, nest]
    ckpt["config"]["strategy_args"] = {"x": nest}
    torch.save(ckpt, run / "checkpoint.pt")
    assert main(["search", "--resume", "--out", str(run)]) == 2
    assert "strategy_args is too large or too deeply nested" in one_line_error(capsys)


# ---- 8. train --resume does not depend on the working directory -----------------------------------------
def test_train_resume_uses_the_stored_architecture_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    genotype_file(tmp_path / "a")
    config = TrainConfig(arch="genotype.json", **TRAIN)
    straight = run_train(config, tmp_path / "straight", **QUIET)
    run_train(config, tmp_path / "stopped", stop_after=1, **QUIET)
    (tmp_path / "a" / "genotype.json").unlink()
    monkeypatch.chdir(tmp_path)
    assert run_train(config, tmp_path / "stopped", resume=True, **QUIET) == straight
    assert json.loads((tmp_path / "stopped" / "architecture.json").read_text())["normal"][0] == ["sep_conv_3x3", 0]


# ---- 10. preemption: train and torchrun -----------------------------------------------------------------
def test_sigterm_during_train_checkpoints_mid_epoch_and_resume_is_bitwise(tmp_path, monkeypatch):
    config = TrainConfig(arch="DARTS_V2", **TRAIN)
    straight = run_train(config, tmp_path / "straight", **QUIET)
    original, calls = Trainer.train_step, {"n": 0}

    def step(self, b, x, y):
        out = original(self, b, x, y)
        calls["n"] += 1
        if calls["n"] == 5:  # step 2 of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(Preempted, match="SIGTERM at step 2 of epoch 2"):
        run_train(config, tmp_path / "stopped", **QUIET)
    monkeypatch.undo()
    assert run_train(config, tmp_path / "stopped", resume=True, **QUIET) == straight
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("straight", "stopped"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def preempted_rank(rank, world_size, port, run_dir, results, stop_rank):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        original, calls = Strategy.weight_step, {"n": 0}

        def step(self, ctx, batch):
            out = original(self, ctx, batch)
            calls["n"] += 1
            if rank == stop_rank and calls["n"] == 3:  # step 1 of epoch 2 (2 per rank), on one rank only
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        Strategy.weight_step = step
        config = SearchConfig(**SEARCH)
        outcome = "finished"
        try:
            run_search(config, run_dir, rank=rank, world_size=world_size, **QUIET)
        except Preempted as err:
            outcome = str(err)
        Strategy.weight_step = original
        if outcome != "finished":
            run_search(config, run_dir, resume=True, rank=rank, world_size=world_size, **QUIET)
        Path(results, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_sigterm_to_one_torchrun_rank_stops_every_rank_at_one_step_and_resume_is_bitwise(tmp_path):
    for name, stop_rank in (("straight", -1), ("stopped", 1)):
        (tmp_path / f"{name}-results").mkdir()
        mp.spawn(preempted_rank, args=(2, free_port(), str(tmp_path / name), str(tmp_path / f"{name}-results"),
                                       stop_rank), nprocs=2, join=True)  # fmt: skip
    outcomes = [(tmp_path / "stopped-results" / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert "stopped by SIGTERM at step 1 of epoch 2" in outcomes[1]
    assert "stopped by a signal to another rank at step 1 of epoch 2" in outcomes[0]
    assert_states_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))
