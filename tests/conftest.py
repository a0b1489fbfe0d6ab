"""Suite-wide settings and the fast tier (``--fast``).

The tests run tiny tensors, where intra-op threads buy nothing and, on a shared 2-core machine, OpenMP spin-waiting
made the suite several times slower (measured: a DARTS C=8 step took 0.8 s on 1 thread vs 5.8 s on 2 threads with
another process busy)."""

import contextlib

import pytest
import torch

from dnas_fast import use_backend

torch.set_num_threads(1)


@pytest.fixture
def backend_override():
    """``backend_override(name)`` forces backend ``name`` on every edge until the test ends; None lifts any
    override (a ``DNAS_FAST_BACKEND`` the suite was started with too), so the edges' own choice holds."""
    with contextlib.ExitStack() as stack:
        yield lambda name: stack.enter_context(use_backend(name))


def pytest_addoption(parser):
    parser.addoption(
        "--fast",
        action="store_true",
        help="the fast tier: every test function once (its first parametrization), tests marked slow left out",
    )


# Test functions whose first case takes 5 s or more on the 2-core machine (whole searches, subprocesses, torchrun
# ranks): marked slow here, in one list, so ``--fast`` (or ``-m "not slow"``) leaves them out. Their modules keep
# faster tests in the fast tier, except test_distributed (distributed.py runs in the fast tier's searches as one
# rank) and test_imagenet (all slow).
SLOW_TESTS = {
    "test_benchmark.py::test_child_peak_rss_reports_memory_and_times_of_a_fresh_process",
    "test_distributed.py::test_two_gloo_ranks_agree_and_only_rank0_writes",
    "test_precision.py::test_fp16_search_checkpoints_and_resumes_the_loss_scales",
    "test_precision.py::test_second_order_darts_under_autocast",
    "test_preemption.py::test_cli_sigterm_exits_with_the_preempted_code_and_leaves_a_resumable_run",
    "test_preemption.py::test_single_level_run_on_the_test_split_resumes_mid_epoch_bitwise",
    "test_reliability.py::test_sigterm_to_one_torchrun_rank_stops_every_rank_at_one_step_and_resume_is_bitwise",
    "test_search.py::test_cli_search_writes_run_directory_and_derive_and_plot",
    "test_search.py::test_fused_backend_follows_the_reference_genotype_trajectory",
    "test_search.py::test_short_search_on_builtin_data_learns",
    "test_strategies.py::test_snas_child_keeps_parent_accuracy_on_digits",
    "test_strategies.py::test_snas_derives_every_edge_with_none_and_round_trips",
    "test_tfnas.py::test_cli_search_measures_its_own_table_and_logs",
    "test_train.py::test_a_derived_genotype_trains_on_digits_well_above_chance",
    "test_train.py::test_eval_child_of_a_snas_run_uses_its_strategy_and_the_test_split",
    "test_train.py::test_two_gloo_ranks_train_the_same_network_and_only_rank0_writes",
    "test_triton.py::test_kernels_compile_for_h100",
}


def pytest_collection_modifyitems(config, items):
    """Marks ``SLOW_TESTS``; with ``--fast``, keeps the first collected case of each test function that is not
    slow, so every module and every behaviour it tests still runs once; the other parametrizations (backends,
    shapes, dtypes) and the slow tests wait for the full suite."""
    for item in items:
        if f"{item.path.name}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    if not config.getoption("--fast"):
        return
    seen, keep, drop = set(), [], []
    for item in items:
        key = (item.path, item.cls, getattr(item, "originalname", item.name))
        if key in seen or item.get_closest_marker("slow"):
            drop.append(item)
        else:
            seen.add(key)
            keep.append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
