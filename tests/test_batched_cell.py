"""Cell-level batched execution vs the naive per-edge reference, float64: logits, every parameter gradient, the
alpha (and beta) gradients and every BN buffer, for the DARTS and NB-201 networks with masks, partial channels,
stride-2 reduction edges, the DARTS- aux skip, straight-through and second-order DARTS (functional_call)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from dnas_fast.arch import ArchWeights
from dnas_fast.kernels import batched_cell
from dnas_fast.kernels.batched_cell import block, plan
from dnas_fast.spaces import build_space
from tests.utils import assert_close

TOL = dict(atol=1e-10, rtol=1e-8)
NETS = {
    "darts": dict(C=4, layers=3),
    "darts-pc": dict(C=8, layers=3, partial_channels=4),
    "darts-aux": dict(C=4, layers=3, aux_skip=True),
    "nb201": dict(C=4, N=1),
}


@pytest.fixture(autouse=True, params=["recompute", "keep"])
def block_memory(request, backend_override):
    """Every test runs both ways a block runs: recomputed in its backward (``BlockFunction``, large inputs) and
    under autograd with its intermediates kept (small inputs); no backend override (the edges choose)."""
    backend_override(None)
    with batched_cell.recompute_min_numel(0 if request.param == "recompute" else 2**62):
        yield request.param


def make(net, **kw):
    torch.manual_seed(0)
    space = build_space(net.split("-")[0], backend="reference", **{**NETS[net], **kw}).double()
    return space, copy.deepcopy(space)


def arch_of(space, seed=1, mask_p=None, aux=False, straight_through=False, drop_path=0.0):
    g = torch.Generator().manual_seed(seed)
    arch = {}
    for name, group in space.arch_spec().items():
        shape = (group.num_edges, len(group.op_names))
        w = torch.randn(shape, generator=g, dtype=torch.float64).softmax(-1).requires_grad_()
        mask = None if mask_p is None else torch.rand(shape, generator=g) > mask_p
        beta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True) if aux else None
        arch[name] = ArchWeights(w, mask, beta, straight_through, drop_path=drop_path)
    return arch


def set_backend(space, name):
    for m in space.modules():
        if hasattr(m, "op_names"):
            m.backend = name


def step(space, arch, x, y):
    """Logits, named gradients (parameters, alphas, betas) and buffers after one forward + backward."""
    logits = space(x, arch)
    leaves = {n: p for n, p in space.named_parameters()}
    for g, a in arch.items():
        leaves[f"alpha.{g}"] = a.weights
        if a.aux is not None:
            leaves[f"beta.{g}"] = a.aux
    grads = torch.autograd.grad(F.cross_entropy(logits, y), list(leaves.values()), allow_unused=True)
    grads = {n: torch.zeros_like(t) if d is None else d for (n, t), d in zip(leaves.items(), grads)}
    return logits.detach(), grads, {n: b.clone() for n, b in space.named_buffers()}


def check_same(net, monkeypatch, layout=torch.contiguous_format, **arch_kw):
    """The batched network (in ``layout``) against the contiguous reference; with channels_last every block reads
    channels_last states and writes its [N, E, C, H, W] output in memory order N, H, W, E, C."""
    ref, bat = make(net)
    set_backend(bat, "batched")
    bat.to(memory_format=layout)
    calls = []
    real = block.block_forward

    def block_forward(plan, x, *args):
        out = real(plan, x, *args)
        cl = layout == torch.channels_last
        calls.append(
            [x.is_contiguous(memory_format=layout), (out.permute(0, 3, 4, 1, 2) if cl else out).is_contiguous()]
        )
        return out

    monkeypatch.setattr(block, "block_forward", block_forward)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 5])
    for seed in (1, 2):  # two steps: running statistics build on each other
        arch_r = arch_of(ref, seed, **arch_kw)
        arch_b = arch_of(bat, seed, **arch_kw)
        torch.manual_seed(seed)  # the same drop-path draws (when asked for) on both paths
        out_r, g_r, b_r = step(ref, arch_r, x, y)
        torch.manual_seed(seed)
        out_b, g_b, b_b = step(bat, arch_b, x.contiguous(memory_format=layout), y)
        assert_close("logits", out_b, out_r, **TOL)
        for n in g_r:
            assert_close(n, g_b[n], g_r[n], **TOL)
        for n in b_r:
            assert_close(n, b_b[n], b_r[n], **TOL)
    assert calls, "the batched path did not run"
    assert all(all(c) for c in calls), f"a block read or wrote a tensor not in {layout}"
    return bat


@pytest.mark.parametrize("net", list(NETS))
def test_batched_equals_reference(net, monkeypatch):
    aux = net.endswith("aux")
    check_same(net, monkeypatch, aux=aux)


@pytest.mark.parametrize("net", ["darts", "darts-pc", "nb201"])
@pytest.mark.parametrize("mask_p", [None, 0.5], ids=["all", "masked"])
def test_batched_channels_last_equals_reference_and_stays_channels_last(net, mask_p, monkeypatch):
    check_same(net, monkeypatch, layout=torch.channels_last, mask_p=mask_p)


def test_batched_drop_path_drops_what_the_per_edge_cell_drops(monkeypatch):
    """SNAS's search drop-path on every edge runs batched: one draw per cell, so the per-edge and the batched cell
    drop the same examples of the same edges."""
    check_same("darts", monkeypatch, drop_path=0.5)


@pytest.mark.parametrize("net", ["darts", "nb201", "darts-pc"])
@pytest.mark.parametrize("straight_through", [False, True], ids=["plain", "st"])
def test_batched_masks_and_straight_through(net, straight_through, monkeypatch):
    check_same(net, monkeypatch, mask_p=0.5, straight_through=straight_through)


def test_masked_family_never_runs(monkeypatch):
    """A conv op masked on every edge of the net is not run: NaN weights in it leave no trace."""
    _, bat = make("darts")
    set_backend(bat, "batched")
    k = bat.config["op_names"].index("sep_conv_5x5")
    for cell in bat.cells:
        for edge in cell._ops:
            for p in edge._ops[k].parameters():
                p.data.fill_(float("nan"))
    arch = arch_of(bat)
    for a in arch.values():
        a.mask = torch.ones_like(a.weights, dtype=torch.bool)
        a.mask[:, k] = False
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _, grads, _ = step(bat, arch, x, torch.tensor([0, 1]))
    assert all(torch.isfinite(g).all() for n, g in grads.items() if "_ops.5." not in n)


def test_block_plans_are_built_once_per_mask_and_their_cache_is_bounded(monkeypatch):
    _, bat = make("nb201")
    set_backend(bat, "batched")
    built = []
    real = plan.make_block_plan
    monkeypatch.setattr(plan, "make_block_plan", lambda *a: built.append(a) or real(*a))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    arch = arch_of(bat)
    bat(x, arch)
    first = len(built)
    assert first > 0
    bat(x, arch)
    assert len(built) == first, "an unchanged arch rebuilt its block plans"
    monkeypatch.setattr(plan, "_MAX_PLANS", 4)
    for seed in range(6):  # a new mask each step (sampling strategies): new plans, at most _MAX_PLANS kept
        bat(x, arch_of(bat, seed, mask_p=0.5))
    assert len(built) > first
    cells = [plan._CELLS[m] for m in bat.modules() if m in plan._CELLS]
    assert cells and all(len(c.plans) <= 4 for c in cells)


def test_small_blocks_keep_intermediates_and_large_ones_recompute_with_less_saved(monkeypatch):
    from dnas_fast.benchmark import saved_tensor_bytes

    _, bat = make("darts")
    set_backend(bat, "batched")
    x, y = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    arch = arch_of(bat)
    exclude = [*bat.parameters(), *bat.buffers(), *(a.weights for a in arch.values())]
    seen, recomputed = [], []
    real_forward, real_apply = block.block_forward, batched_cell.BlockFunction.apply

    def block_forward(plan, x, *args):
        seen.append(x.numel())
        return real_forward(plan, x, *args)

    def apply(*args):
        recomputed.append(args[1].numel())
        return real_apply(*args)

    monkeypatch.setattr(block, "block_forward", block_forward)
    monkeypatch.setattr(batched_cell.BlockFunction, "apply", apply)

    def saved_with(threshold):
        seen.clear(), recomputed.clear()
        with batched_cell.recompute_min_numel(threshold):
            saved = saved_tensor_bytes(lambda: F.cross_entropy(bat(x, arch), y), exclude)
        assert recomputed == [n for n in seen if n >= threshold], threshold
        return saved

    recompute_all = saved_with(0)
    sizes = sorted(set(seen))
    assert len(sizes) > 1, "the network's blocks read inputs of more than one size"
    keep_all = saved_with(2**62)
    saved_with(sizes[len(sizes) // 2])  # the smaller blocks keep, the larger recompute
    assert recompute_all < 0.5 * keep_all, (recompute_all, keep_all)  # what the recompute is for


def test_eval_mode_falls_back_to_per_edge(monkeypatch):
    ref, bat = make("darts")
    set_backend(bat, "batched")
    ref.eval(), bat.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    arch = arch_of(ref)
    with torch.no_grad():
        assert_close("eval logits", bat(x, arch), ref(x, arch), **TOL)


@pytest.mark.parametrize("threshold", [0, 2**62], ids=["recompute", "keep"])
def test_a_bench_step_picks_the_block_path_and_leaves_the_threshold(threshold, monkeypatch):
    from dnas_fast.bench_edge import build_search_step

    before = batched_cell.recompute_threshold()
    recomputed = []
    real = batched_cell.BlockFunction.apply
    monkeypatch.setattr(batched_cell.BlockFunction, "apply", lambda *a: recomputed.append(1) or real(*a))
    step = build_search_step({"C": 4, "layers": 3, "H": 8, "batch": 2, "provider": "batched",
                              "recompute_min_numel": threshold})  # fmt: skip
    step()
    assert bool(recomputed) == (threshold == 0)
    assert batched_cell.recompute_threshold() == before
