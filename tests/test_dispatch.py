"""The dispatch count (ATen ops per forward+backward, each a kernel launch on a GPU) must not regress past the
ratios to the naive supernet committed in bench/results/dispatch-cpu-*.json (bench/bench_dispatch.py). Counts
are deterministic: this is a launch-count test, not a timed one."""

import importlib.util
import json
from pathlib import Path

import pytest

from dnas_fast import _backend

BENCH = Path(__file__).resolve().parents[1] / "bench"
spec = importlib.util.spec_from_file_location("bench_dispatch", BENCH / "bench_dispatch.py")
bench_dispatch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_dispatch)

COMMITTED = max((BENCH / "results").glob("dispatch-cpu-*.json"))  # the newest committed run
ROWS = [r for r in json.loads(COMMITTED.read_text()) if r["case"] == "fwd_bwd" and r["provider"] != "naive"]
SLACK = 1.01  # op counts are exact; this only absorbs a one-op change in a helper


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['network']}-{r['provider']}")
def test_dispatch_ratio_does_not_regress(row, monkeypatch, backend_override):
    backend = "batched" if row["provider"] == bench_dispatch.RECOMPUTE else row["provider"]
    if backend not in _backend.available_backends("cpu"):
        pytest.skip(f"backend {row['provider']} is not built here")
    backend_override(None)
    naive = sum(bench_dispatch.count_case(row["network"], "naive", "fwd_bwd").values())
    ours = sum(bench_dispatch.count_case(row["network"], row["provider"], "fwd_bwd").values())
    assert ours / naive <= row["ratio_vs_naive"] * SLACK, (
        f"{row['provider']} on {row['network']}: {ours} ops = {ours / naive:.3f}x naive, committed "
        f"{row['ratio_vs_naive']}x in {COMMITTED.name}"
    )
