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


def pytest_collection_modifyitems(config, items):
    """``--fast``: keep the first collected case of each test function, so every module and every behaviour it
    tests still runs once; the other parametrizations (backends, shapes, dtypes) and the slow searches wait for
    the full suite."""
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
