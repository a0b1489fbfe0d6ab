"""Checkpoints for long epochs: mid-epoch checkpoints resume bitwise, SIGTERM writes one and exits cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnas_fast.checkpoint import load_checkpoint
from dnas_fast.preemption import PREEMPTED_EXIT_CODE, CheckpointCadence, Preempted
from dnas_fast.search import SearchConfig, run_search
from dnas_fast.strategies.base import Strategy
from tests.test_search import assert_states_equal, final_state

TINY = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 320}, epochs=2,
    batch_size=32, deterministic=True, backend="reference",
)  # fmt: skip
QUIET = dict(log=lambda *_: None)
REPO = Path(__file__).resolve().parents[1]


def interrupt_at(monkeypatch, call: int, action):
    """Run ``action()`` right after the ``call``-th weight step (1-based)."""
    original, calls = Strategy.weight_step, {"n": 0}

    def step(self, ctx, batch):
        out = original(self, ctx, batch)
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return out

    monkeypatch.setattr(Strategy, "weight_step", step)


def strip_times(run_dir):
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith(("_time", "peak_memory_mb"))} for r in lines]


def test_sigterm_mid_epoch_checkpoints_and_resume_is_bitwise(tmp_path, monkeypatch):
    config = SearchConfig(**TINY)
    straight = run_search(config, tmp_path / "straight", **QUIET)
    interrupt_at(monkeypatch, 7, lambda: os.kill(os.getpid(), signal.SIGTERM))  # step 2 of epoch 2 (5 per epoch)
    with pytest.raises(Preempted, match=r"SIGTERM at step 2 of epoch 2; checkpoint written .* --resume"):
        run_search(config, tmp_path / "stopped", **QUIET)
    ckpt = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)
    monkeypatch.undo()
    assert run_search(config, tmp_path / "stopped", resume=True, **QUIET) == straight
    assert_states_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))
    assert strip_times(tmp_path / "straight") == strip_times(tmp_path / "stopped")


def test_crash_after_a_step_cadence_checkpoint_resumes_bitwise(tmp_path, monkeypatch):
    """A kill -9 between checkpoints: the run resumes from the last mid-epoch one, as if never stopped."""
    config = SearchConfig(**{**TINY, "checkpoint_every": "2"})
    straight = run_search(config, tmp_path / "straight", **QUIET)

    def die():
        raise SystemExit("killed")

    interrupt_at(monkeypatch, 4, die)  # the cadence saved after step 2; steps 3-4 are lost
    with pytest.raises(SystemExit):
        run_search(config, tmp_path / "crashed", **QUIET)
    ckpt = load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 2)
    monkeypatch.undo()
    assert run_search(config, tmp_path / "crashed", resume=True, **QUIET) == straight
    assert_states_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "crashed"))


def test_cli_sigterm_exits_with_the_preempted_code_and_leaves_a_resumable_run(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "dnas_fast", "search", "--space", "nb201", "--space-args", '{"C": 4, "N": 1}',
            "--data", "digits", "--data-args", '{"limit": 320}', "--batch-size", "32", "--epochs", "1000",
            "--checkpoint-every", "1", "--backend", "reference", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err
    assert "stopped by SIGTERM" in err and "continue with --resume" in err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] < 1000 and (ckpt["epoch"], ckpt["step_in_epoch"]) != (0, 0)


@pytest.mark.parametrize("every", ["0", "-3", "5x", "m", "abc"])
def test_bad_checkpoint_cadence_is_a_clear_error(every):
    with pytest.raises(ValueError, match="checkpoint_every must be a number of steps"):
        SearchConfig(checkpoint_every=every).validate()


def test_cadence_counts_steps_or_minutes():
    assert CheckpointCadence.parse("3").due(6) and not CheckpointCadence.parse("3").due(7)
    assert CheckpointCadence.parse("10m").seconds == 600
    cadence = CheckpointCadence.parse("0.01s")
    time.sleep(0.02)
    assert cadence.due(1)
    assert not CheckpointCadence.parse("1m").due(1)


def test_single_level_run_on_the_test_split_resumes_mid_epoch_bitwise(tmp_path, monkeypatch):
    config = SearchConfig(**{**TINY, "strategy": "snas", "checkpoint_every": "2"})
    straight = run_search(config, tmp_path / "straight", **QUIET)
    interrupt_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Preempted, match="at step 3 of epoch 1"):
        run_search(config, tmp_path / "stopped", **QUIET)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["config"]["valid_split"]) == (0, 3, "test")
    assert run_search(config, tmp_path / "stopped", resume=True, **QUIET) == straight
    assert_states_equal(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))
    assert strip_times(tmp_path / "straight") == strip_times(tmp_path / "stopped")
