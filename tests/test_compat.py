"""Drop-in MixedOp / PCMixedOp swapped into cells built like the authors' code (``tests/authors_layout.py``):
same state_dict, same outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dnas_fast import _backend
from dnas_fast.compat import Cell, MixedOp, PCCell, PCMixedOp
from tests.authors_layout import AuthorsCell, AuthorsMixedOp, AuthorsNetwork, AuthorsPCMixedOp, authors_search_step
from tests.utils import assert_close

# ---- tests ------------------------------------------------------------------------------------------------------

CASES = {
    "darts-normal": (AuthorsMixedOp, MixedOp, False, False),
    "darts-reduce": (AuthorsMixedOp, MixedOp, True, False),
    "pcdarts-normal": (AuthorsPCMixedOp, PCMixedOp, False, True),
    "pcdarts-reduce": (AuthorsPCMixedOp, PCMixedOp, True, True),
}


def cell_grads(cell, s0, s1, alphas, betas):
    s0, s1 = s0.clone().requires_grad_(), s1.clone().requires_grad_()
    alphas, betas = alphas.clone().requires_grad_(), betas.clone().requires_grad_()
    weights = torch.softmax(alphas, dim=-1)
    weights2 = torch.softmax(betas, dim=-1) if cell._pc else None
    out = cell(s0, s1, weights, weights2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    params = list(cell.parameters())
    grads = torch.autograd.grad(out, [s0, s1, alphas, betas, *params], g, allow_unused=True)
    names = ["s0", "s1", "alphas", "betas", *(n for n, _ in cell.named_parameters())]
    return out.detach(), {n: d for n, d in zip(names, grads) if d is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_drop_in_matches_authors_cell(case, monkeypatch, backend_override):
    backend_override(None)  # our MixedOp runs on ``auto``: the fused path
    authors_op, our_op, reduction, pc = CASES[case]
    torch.manual_seed(0)
    C, steps = 8, 2
    ref = AuthorsCell(steps, 12, 12, C, reduction, False, authors_op, multiplier=2)
    ours = AuthorsCell(steps, 12, 12, C, reduction, False, our_op, multiplier=2)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    assert _backend.resolve_backend(None, torch.device("cpu"), ours._ops[0]).name in ("batched", "cpu", "fused")
    ref._pc = ours._pc = pc
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    alphas, betas = 1e-1 * torch.randn(5, 8), torch.randn(5)
    out_r, grads_r = cell_grads(ref, s0, s1, alphas, betas)
    out_o, grads_o = cell_grads(ours, s0, s1, alphas, betas)
    assert_close("out", out_o, out_r, atol=1e-5, rtol=1e-4)
    assert set(grads_o) == set(grads_r)
    for name in grads_r:
        scale = grads_r[name].abs().max().item() + 1e-3
        assert_close(f"d{name}", grads_o[name], grads_r[name], atol=1e-4 * scale, rtol=1e-3)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert_close(f"state {name}", a.double(), b.double(), atol=1e-5, rtol=1e-4)


def test_state_dict_keys_are_the_authors():
    assert list(MixedOp(8, 2).state_dict()) == list(AuthorsMixedOp(8, 2).state_dict())
    assert list(PCMixedOp(8, 2).state_dict()) == list(AuthorsPCMixedOp(8, 2).state_dict())


def test_bad_partial_channel_k():
    with pytest.raises(ValueError, match="partial_channels=3"):
        PCMixedOp(8, 1, k=3)


# ---- compat.Cell: the authors' search loop with the batched cell swapped in ------------------------------------
@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("pc", [False, True], ids=["darts", "pc-darts"])
def test_the_authors_loop_with_compat_cell_gives_their_numbers_in_float64(unrolled, pc):
    authors_op = AuthorsPCMixedOp if pc else AuthorsMixedOp
    drop_in = PCCell if pc else Cell
    theirs_cell = lambda st, cpp, cp, c, red, red_prev: AuthorsCell(st, cpp, cp, c, red, red_prev, authors_op)  # noqa: E731
    ours_cell = lambda st, cpp, cp, c, red, red_prev: drop_in(st, 4, cpp, cp, c, red, red_prev)  # noqa: E731
    torch.manual_seed(0)
    nets = [AuthorsNetwork(8, 10, 3, make_cell=make).double() for make in (theirs_cell, ours_cell)]
    nets[1].load_state_dict(nets[0].state_dict())
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(10, (4,), generator=gen))
               for _ in range(6)]  # fmt: skip
    results = []
    for net in nets:
        alphas = [(1e-3 * torch.randn(14, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
                  .requires_grad_() for _ in range(2)]  # fmt: skip
        betas = [torch.zeros(14, dtype=torch.float64, requires_grad=True) for _ in range(2)] if pc else []
        net.alphas_normal, net.alphas_reduce = alphas
        if pc:
            for cell in net.cells:  # PC-DARTS Network.forward: weights2 from the betas, node by node (l. 197-210)
                cell._pc_betas = betas[1 if cell.reduction else 0]
            patch_edge_normalisation(net)
        w_opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(alphas + betas, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        for step in range(3):
            authors_search_step(
                net, alphas + betas, w_opt, a_opt, batches[2 * step], batches[2 * step + 1], 0.025, unrolled
            )
        results.append(([a.detach() for a in alphas + betas], {k: v.clone() for k, v in net.state_dict().items()}))
    (alphas_t, state_t), (alphas_o, state_o) = results
    for i, (a, b) in enumerate(zip(alphas_o, alphas_t)):
        assert_close(f"alphas {i}", a, b, atol=1e-12, rtol=1e-10)
    for name in state_t:
        assert_close(name, state_o[name].double(), state_t[name].double(), atol=1e-10, rtol=1e-8)
    assert [a.argmax(-1).tolist() for a in alphas_o] == [a.argmax(-1).tolist() for a in alphas_t]


def patch_edge_normalisation(net):
    """PC-DARTS passes each cell ``weights2``: per node, softmax of its edges' betas (``Network.forward``)."""

    def forward(x):
        s0 = s1 = net.stem(x)
        for cell in net.cells:
            alphas = net.alphas_reduce if cell.reduction else net.alphas_normal
            betas, n, start, parts = cell._pc_betas, 3, 2, [F.softmax(cell._pc_betas[0:2], dim=-1)]
            for _ in range(1, 4):  # steps = 4
                parts.append(F.softmax(betas[start : start + n], dim=-1))
                start, n = start + n, n + 1
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1), torch.cat(parts))
        return net.classifier(net.global_pooling(s1).flatten(1))

    net.forward = forward


def test_compat_cell_state_dict_keys_are_the_authors():
    assert list(Cell(4, 4, 48, 48, 16, True, False).state_dict()) == list(
        AuthorsCell(4, 48, 48, 16, True, False).state_dict()
    )
    assert list(PCCell(4, 4, 48, 48, 16, False, True).state_dict()) == list(
        AuthorsCell(4, 48, 48, 16, False, True, AuthorsPCMixedOp).state_dict()
    )
