"""The measuring harness (``dnas_fast.benchmark``) without timing claims: metadata, the commit fallback for a copy
without ``.git``, result files, tables, the shared flags, and what the memory probes count."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from dnas_fast import benchmark
from dnas_fast.benchmark import (
    META_COLUMNS,
    bench_parser,
    columns_of,
    format_table,
    git_sha,
    run_meta,
    saved_tensor_bytes,
    time_interleaved,
    write_rows,
)


def test_run_meta_has_every_meta_column_and_a_cpu_device_key():
    meta = run_meta(torch.device("cpu"))
    assert tuple(meta) == META_COLUMNS
    assert meta["device"].startswith("cpu:") and meta["device"].endswith(f":threads={torch.get_num_threads()}")
    assert meta["torch"] == torch.__version__ and meta["date"].endswith("Z")


def test_latency_tables_are_keyed_by_the_harness_device_name():
    from dnas_fast.strategies import tf_nas_latency as latency

    assert latency.device_name is benchmark.device_name


def test_git_sha_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("DNAS_FAST_GIT_SHA", "abc1234")
    assert git_sha() == "abc1234"


def test_git_sha_reads_the_commit_file_where_there_is_no_git(monkeypatch, tmp_path):
    monkeypatch.delenv("DNAS_FAST_GIT_SHA", raising=False)
    monkeypatch.setattr(benchmark, "REPO_ROOT", tmp_path)  # a copy of the tree without .git
    monkeypatch.setattr(benchmark, "COMMIT_FILE", tmp_path / "COMMIT")
    assert git_sha() == "unknown"
    (tmp_path / "COMMIT").write_text("def5678\n")
    assert git_sha() == "def5678"


def test_git_sha_of_a_checkout_is_its_head(monkeypatch):
    monkeypatch.delenv("DNAS_FAST_GIT_SHA", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=benchmark.REPO_ROOT)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert git_sha() == head.stdout.strip()


def test_write_rows_round_trips_csv_and_json_with_every_key(tmp_path):
    rows = [
        {"provider": "naive", "median_ms": 1.5, "C": 16, "date": "d", "device": "cpu:x:threads=1", "bench": "edge"},
        {"provider": "fused", "median_ms": 0.5, "note": "extra key", "device": "cpu:x:threads=1", "bench": "edge"},
    ]
    path = tmp_path / "sub" / "out.csv"
    write_rows(rows, path)
    with path.open() as f:
        reader = csv.DictReader(f)
        read = list(reader)
    assert reader.fieldnames == ["bench", "provider", "median_ms", "C", "note", "device", "date"]
    assert read[1]["note"] == "extra key" and read[0]["note"] == "" and float(read[0]["median_ms"]) == 1.5
    assert json.loads(path.with_suffix(".json").read_text()) == rows


def test_columns_put_the_case_first_and_the_metadata_last():
    rows = [{"load_avg_1m": 0.1, "x": 1, "mode": "full", "provider": "p"}, {"y": 2, "git_sha": "s"}]
    assert columns_of(rows) == ["provider", "mode", "x", "y", "git_sha", "load_avg_1m"]


def test_format_table_keeps_present_columns_and_formats_numbers():
    rows = [{"provider": "naive", "median_ms": 12.345, "saved_bytes": 3 * 2**20, "ignored": 1},
            {"provider": "fused", "median_ms": 0.01234, "saved_bytes": 2**20}]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["provider", "median_ms", "saved_bytes"]
    assert lines[1].split() == ["naive", "12.35", "3.000", "MiB"]
    assert lines[2].split() == ["fused", "0.0123", "1.000", "MiB"]
    assert format_table(rows, columns=("provider",)).splitlines() == ["provider", "naive", "fused"]


def test_bench_parser_shared_flags_and_omissions():
    args = bench_parser("doc", quick="one case").parse_args(["--out", "o.csv", "--quick"])
    assert (args.out, args.device, args.threads, args.quick) == ("o.csv", "cpu", 2, True)
    bare = bench_parser("doc", out=None, device=None, threads=None).parse_args([])
    assert vars(bare) == {}


def test_time_interleaved_runs_every_provider_alike():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run_once():
            calls[name] += 1
            return 1e-3

        return run_once

    stats = time_interleaved({n: runner(n) for n in calls}, "cpu", warmup=2, min_reps=4, max_reps=4, budget_s=0)
    assert calls == {"a": 6, "b": 6}
    assert stats["a"] == pytest.approx({"median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "reps": 4})


def test_saved_tensor_bytes_counts_unique_storages_and_skips_excluded():
    w = torch.randn(64, requires_grad=True)
    x = torch.randn(64, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * w) * x) == 3 * 64 * 4  # x, w and x * w, each counted once
    assert saved_tensor_bytes(lambda: x * w, exclude=[w]) == 64 * 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM / clear_refs are Linux's")
def test_child_peak_rss_reports_memory_and_times_of_a_fresh_process():
    task = {"C": 4, "H": 8, "batch": 2, "ops": "nb201", "provider": "naive"}
    res = benchmark.child_peak_rss("dnas_fast.bench_edge:build_edge_step", task, timed_steps=2)
    assert {"baseline_rss_mb", "peak_rss_mb", "step_rss_mb"} <= set(res) and len(res["times_ms"]) == 2
    assert res["peak_rss_mb"] >= res["baseline_rss_mb"] > 0
