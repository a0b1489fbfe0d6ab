"""Registries (ops, spaces, strategies, backends) share one rule set; backend resolution is cached and announced."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnas_fast import MixedEdge, _backend
from dnas_fast.kernels import _ext
from dnas_fast.ops import register_op
from dnas_fast.registry import Registry
from dnas_fast.spaces import SpaceFamily, register_family, register_space
from dnas_fast.strategies import register_strategy

REPO = Path(__file__).resolve().parents[1]


def test_registry_rules():
    reg = Registry("widget")
    assert reg.add("a", 1) == 1 and "a" in reg and reg["a"] == 1 and list(reg) == [1] and reg.names() == ["a"]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 2)
    with pytest.raises(ValueError, match="unknown widget 'b'; known widgets: a"):
        reg["b"]


@pytest.mark.parametrize(
    "register",
    [
        lambda: register_op("skip_connect", lambda *a: None),
        lambda: register_space(type("Dup", (), {"name": "darts"})),
        lambda: register_strategy(type("Dup", (), {"name": "darts"})),
        lambda: _backend.register_backend(_backend.Backend("fused", None, None, None)),
        lambda: register_family(type("Dup", (SpaceFamily,), {"name": "darts"})()),
        lambda: register_family(type("Dup", (SpaceFamily,), {"name": "new", "train_defaults": {"cifar": {}}})()),
    ],
    ids=["op", "space", "strategy", "backend", "space-family", "train-family"],
)
def test_every_registry_rejects_a_second_registration(register):
    with pytest.raises(ValueError, match="already registered"):
        register()


def test_backend_resolved_once_per_edge_device_and_override(monkeypatch):
    edge = MixedEdge(4, 1, ["skip_connect", "avg_pool_3x3"])
    calls = []
    real = _backend._resolve
    monkeypatch.setattr(_backend, "_resolve", lambda *a: calls.append(a[0]) or real(*a))
    cpu = torch.device("cpu")
    for _ in range(3):
        _backend.resolve_backend(None, cpu, edge)
    assert calls == ["auto"]
    with _backend.use_backend("reference"):
        assert _backend.resolve_backend(None, cpu, edge).name == "reference"
        assert _backend.resolve_backend(None, cpu, edge).name == "reference"
    assert calls == ["auto", "reference"]
    assert _backend.resolve_backend(None, cpu, edge).name != "reference"  # the override ends with its block
    assert calls == ["auto", "reference", "auto"]


def test_auto_says_once_which_backend_it_picked_and_warns_without_the_extension(monkeypatch, caplog, backend_override):
    backend_override(None)
    monkeypatch.setattr(_backend, "_ANNOUNCED", set())
    monkeypatch.setattr(_ext, "load", lambda: False)
    caplog.set_level(logging.INFO, logger="dnas_fast")
    for C in (4, 8):  # two edges, one message
        _backend.resolve_backend(None, torch.device("cpu"), MixedEdge(C, 1, ["skip_connect", "avg_pool_3x3"]))
    [record] = [r for r in caplog.records if "backend 'auto'" in r.getMessage()]
    assert record.levelno == logging.WARNING and "dnas_fast._C not built" in record.getMessage()


def test_available_backends_lists_by_priority():
    names = _backend.available_backends("cpu")
    assert "reference" in names and "fused" in names
    priorities = [_backend._BACKENDS[n].priority for n in names]
    assert priorities == sorted(priorities, reverse=True)


def test_setup_says_when_torch_is_hidden_from_the_build():
    """pip's build isolation hides torch: setup.py must say that the extension is not built."""
    code = "import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; exec(open('setup.py').read())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dnas_fast._C is NOT built" in out.stderr and "--no-build-isolation" in out.stderr


def test_auto_choice_is_what_auto_resolves_to():
    edge = MixedEdge(4, 1, ["skip_connect", "avg_pool_3x3"])
    assert _backend.auto_choice("cpu") == _backend.resolve_backend(None, torch.device("cpu"), edge).name == "batched"
