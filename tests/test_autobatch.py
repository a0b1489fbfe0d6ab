"""batch_size auto: memory sizes, the batch search on a memory model, the CPU and CUDA measurements, the CLI."""

import pytest
import torch

from dnas_fast import autobatch
from dnas_fast.autobatch import largest_fitting_batch, parse_memory
from dnas_fast.cli import main
from dnas_fast.cuda_graphs import WARMUP_STEPS
from dnas_fast.search import SearchConfig, Searcher

MB = 2**20
TINY = dict(space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=1,
            max_steps_per_epoch=1, backend="reference")  # fmt: skip


@pytest.mark.parametrize(
    "text, expected", [("8G", 8 * 2**30), ("512M", 512 * MB), ("1.5G", 3 * 2**29), ("64k", 64 * 2**10),
                       ("8GiB", 8 * 2**30), ("100", 100)],
)  # fmt: skip
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["8X", "-1G", "0", "", "G"])
def test_bad_memory_size_is_a_value_error(text):
    with pytest.raises(ValueError, match="memory_limit"):
        parse_memory(text)


def affine(a, b, oom_above=None):
    calls = []

    def measure(n):
        calls.append(n)
        return None if oom_above is not None and n > oom_above else int(a + b * n)

    return measure, calls


def test_affine_memory_is_found_in_three_trials():
    measure, calls = affine(100 * MB, 3 * MB)
    result = largest_fitting_batch(measure, 400 * MB, cap=10_000)
    assert result.batch == 100 and result.trials[100] <= 400 * MB
    assert result.intercept + result.per_sample * (result.batch + 1) > 400 * MB  # the model puts batch + 1 over
    assert calls == [1, 2, 100]


def test_small_batches_off_the_line_cost_two_more_trials_not_the_answer():
    """Batched blocks keep their intermediates below a size (batch 1 and 2 here: 4 MB more per sample) and
    recompute above it: the line through batches 1 and 2 is too steep; the slope is taken near the largest fit."""
    calls = []

    def measure(n):
        calls.append(n)
        return int(100 * MB + 3 * MB * n + (4 * MB * n if n < 4 else 0))

    result = largest_fitting_batch(measure, 400 * MB, cap=10_000)
    assert result.batch == 100
    assert len(calls) <= 5, calls


def test_an_optimistic_model_is_bisected_down_to_a_measured_fit():
    measure, _ = affine(100 * MB, 3 * MB, oom_above=70)  # e.g. allocator fragmentation past batch 70
    result = largest_fitting_batch(measure, 400 * MB, cap=10_000)
    assert result.batch == 70 and result.trials[71] is None  # batch + 1 measured not to fit


def test_cap_and_too_small_limit():
    measure, _ = affine(MB, MB)
    assert largest_fitting_batch(measure, 10**12, cap=37).batch == 37  # a batch fits in one split at most
    with pytest.raises(ValueError, match="batch 1 needs 101 MB, over the 50 MB limit"):
        largest_fitting_batch(affine(100 * MB, MB)[0], 50 * MB, cap=100)


def test_cpu_auto_needs_a_memory_limit(tmp_path):
    with pytest.raises(ValueError, match="needs memory_limit"):
        Searcher(SearchConfig(**TINY, batch_size="auto", device="cpu"), tmp_path)


@pytest.mark.slow
def test_cpu_auto_batch_fits_the_measured_limit_and_is_logged(tmp_path):
    """The real CPU path (fresh processes, peak RSS), with a limit that a real step at batch 1 fits and one at
    a large batch does not: the chosen batch is a measured fit and the next one is over (measured or modelled)."""
    limit = 48 * MB
    config = SearchConfig(**{**TINY, "data_args": {"limit": 128, "image_size": 32}, "space_args": {"C": 8, "N": 1}},
                          batch_size="auto", memory_limit="48M", device="cpu")  # fmt: skip
    searcher = Searcher(config, tmp_path)
    found = searcher.auto_batch
    assert searcher.config.batch_size == found.batch and searcher.sources["batch_size"] == "auto"
    assert found.trials[found.batch] <= limit
    over = found.trials.get(found.batch + 1)
    modelled = found.intercept + found.per_sample * (found.batch + 1)
    assert (over is None or over > limit) if found.batch + 1 in found.trials else modelled > limit
    assert searcher.header()["auto_batch"]["batch"] == found.batch


@pytest.mark.parametrize("cuda_graphs, steps", [(False, 2), (True, WARMUP_STEPS + 2)])
def test_a_cuda_trial_of_a_captured_step_measures_past_the_capture(cuda_graphs, steps, monkeypatch):
    """With --cuda-graphs the run holds the graph's memory pool: the trial runs its warm-ups, its capture and a
    replay before it reads the allocator's peak (the allocator calls are stubbed: this checks the count)."""
    calls = []
    monkeypatch.setattr(autobatch, "trial_step", lambda task, batch: lambda: calls.append(batch))
    for name in ("empty_cache", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 123)
    task = {"config": {"cuda_graphs": cuda_graphs}, "device": "cuda"}
    assert autobatch.measure_cuda(task, 4) == 123
    assert calls == [4] * steps


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_batch_fits_the_allocator(tmp_path):
    config = SearchConfig(**TINY, batch_size="auto", memory_limit="256M", device="cuda")
    searcher = Searcher(config, tmp_path)
    found = searcher.auto_batch
    assert found.trials[found.batch] <= 256 * MB and found.measure.startswith("CUDA")
    assert found.intercept + found.per_sample * (found.batch + 1) > 256 * MB or found.batch + 1 in found.trials


@pytest.mark.parametrize(
    "args, message",
    [(["--batch-size", "big"], "batch_size must be a positive integer or 'auto', got 'big'"),
     (["--batch-size", "auto", "--memory-limit", "12Q"], "memory_limit must be a positive size")],
    ids=["batch-size", "memory-limit"],
)  # fmt: skip
def test_cli_bad_auto_values_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["search", "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_parses_auto_and_memory_sizes():
    from dnas_fast.cli import build_parser, search_config

    args = build_parser().parse_args(["search", "--batch-size", "auto", "--memory-limit", "512M", "--scale-lr"])
    config = search_config(args)
    assert (config.batch_size, config.memory_limit, config.scale_lr) == ("auto", "512M", True)
    assert search_config(build_parser().parse_args(["search", "--batch-size", "24"])).batch_size == 24
