"""pytest-benchmark view of the per-edge benchmark (not part of the main test run, which collects tests/ only):

    pytest bench/test_bench_edge.py --benchmark-enable [--benchmark-json out.json]

Same cases as bench/bench_edge.py (dnas_fast.bench_edge) and the harness's saved bytes (dnas_fast.benchmark), which
go to ``extra_info``.
"""

import pytest
import torch

from dnas_fast.bench_edge import build_edge_step, edge_forward_fn, fused_backends, make_edge_case
from dnas_fast.benchmark import saved_tensor_bytes

SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
PROVIDERS = ["naive", "checkpoint", *fused_backends("cpu")]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"C{c}-H{h}" for c, h, _ in SHAPES])
def test_edge_forward_backward(benchmark, provider, batch, shape):
    torch.set_num_threads(2)
    C, H, W = shape
    cfg = {"C": C, "H": H, "W": W, "batch": batch, "ops": "darts", "provider": provider}
    edge, x, w, mask = make_edge_case(cfg)
    fn = edge_forward_fn(provider)
    exclude = [*edge.parameters(), *edge.buffers()]
    benchmark.extra_info["saved_bytes"] = saved_tensor_bytes(lambda: fn(edge, x, w, mask), exclude=exclude)
    benchmark(build_edge_step(cfg))
