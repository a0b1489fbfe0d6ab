"""``--channels-last``: the fused paths give the numbers of the contiguous run, keep the layout, and add no copies."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dnas_fast import build_space, build_strategy
from dnas_fast.kernels import _ext
from dnas_fast.mixed_edge import MixedEdge
from dnas_fast.ops import DARTS_OPS
from tests.utils import assert_close

CL = torch.channels_last
BACKENDS = ["reference", "fused"] + (["cpu"] if _ext.available("cpu") else [])
COPIES = {torch.ops.aten.clone.default, torch.ops.aten.contiguous.default, torch.ops.aten._to_copy.default,
          torch.ops.aten.copy_.default}  # fmt: skip


class CountCopies(TorchDispatchMode):
    """Counts copies of at least ``min_numel`` elements (BN statistics and scalars are not layout copies)."""

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel, self.count = min_numel, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in COPIES and out.numel() >= self.min_numel:
            self.count[str(func)] += 1
        return out


def edge_run(backend, stride, pc, layout, count_min=None):
    torch.manual_seed(0)
    edge = MixedEdge(8, stride, DARTS_OPS, pool_bn=True, partial_channels=pc, backend=backend).double()
    edge.to(memory_format=layout)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    x = torch.randn(4, 8, 9, 9, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    g = torch.randn(edge.output_shape(x), dtype=torch.float64).contiguous(memory_format=layout)
    counter = CountCopies(count_min or x.numel() + 1)
    with counter:
        out = edge(x, w)
        out.backward(g)
    grads = {"out": out.detach(), "dx": x.grad, "dw": w.grad}
    grads.update({n: p.grad for n, p in edge.named_parameters() if p.grad is not None})
    return grads, counter.count


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,pc", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_edge_channels_last_equals_contiguous_and_stays_channels_last(backend, stride, pc):
    dense, _ = edge_run(backend, stride, pc, torch.contiguous_format)
    cl, _ = edge_run(backend, stride, pc, CL)
    for name in dense:
        assert_close(name, cl[name], dense[name], atol=1e-10, rtol=1e-9)
    if backend != "reference" or pc == 1:  # the authors' cat + shuffle of partial channels is NCHW
        for name in ("out", "dx"):
            assert cl[name].is_contiguous(memory_format=CL), f"{backend}: {name} left channels_last"


@pytest.mark.parametrize("stride,pc", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_fused_edge_makes_no_layout_copies(stride, pc):
    # copies of a quarter of x or more: the partial-channel gathers exist in both layouts, layout copies would not
    _, dense = edge_run("fused", stride, pc, torch.contiguous_format, count_min=4 * 8 * 9 * 9 // 4)
    _, cl = edge_run("fused", stride, pc, CL, count_min=4 * 8 * 9 * 9 // 4)
    assert cl == dense, f"channels_last adds copies: {dict(cl)} vs contiguous {dict(dense)}"


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_imagenet_network_channels_last(backend):
    torch.manual_seed(0)
    space = build_space("darts", C=8, layers=3, imagenet=True, backend=backend).double()
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    strategy.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    logits = space(x, strategy.arch_weights("weights"))
    logits.sum().backward()
    dense_grads = [p.grad.clone() for p in space.parameters()]
    space.zero_grad()
    space.to(memory_format=CL)
    layouts = []
    hooks = [c.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=CL)))
             for c in space.cells]  # fmt: skip
    logits_cl = space(x.contiguous(memory_format=CL), strategy.arch_weights("weights"))
    logits_cl.sum().backward()
    for h in hooks:
        h.remove()
    assert layouts == [True] * len(space.cells), "every cell output stays channels_last"
    assert_close("logits", logits_cl, logits, atol=1e-10, rtol=1e-9)
    for i, (p, g) in enumerate(zip(space.parameters(), dense_grads)):
        assert_close(f"param {i}", p.grad, g, atol=1e-10, rtol=1e-8)
