"""Drop-in MixedOp / PCMixedOp swapped into cells built like the authors' code (``tests/authors_layout.py``):
same state_dict, same outputs and gradients."""

import pytest
import torch

from dnas_fast import _backend
from dnas_fast.compat import MixedOp, PCMixedOp
from tests.authors_layout import AuthorsCell, AuthorsMixedOp, AuthorsPCMixedOp
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
def test_drop_in_matches_authors_cell(case, monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)  # our MixedOp runs on ``auto``: the fused path
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
