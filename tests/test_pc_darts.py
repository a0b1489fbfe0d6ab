"""PC-DARTS edge normalisation as yuhuixu1993/PC-DARTS ``model_search.py`` ``Cell.forward`` computes it:
``s = sum_e weights2[e] * MixedOp_e(h_e, weights[e])``, the beta scaling the whole edge output, bypass included."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest  # noqa: E402
import torch  # noqa: E402

from dnas_fast import _backend  # noqa: E402
from dnas_fast.mixed_edge import reference_forward  # noqa: E402
from dnas_fast.spaces import DartsSpace  # noqa: E402
from dnas_fast.strategies import build_strategy  # noqa: E402
from tests.utils import assert_close  # noqa: E402

BACKENDS = ["reference", "fused"] + [b for b in ("cpu",) if b in _backend.available_backends("cpu")]


def authors_cell(cell, s0, s1, weights, weights2, aux=None):
    """Module by module, as their Cell.forward: every edge is their MixedOp (our reference loop of it; DARTS-
    adds its auxiliary skip inside the MixedOp, so beta scales it too)."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for _ in range(cell._steps):
        s = sum(
            weights2[offset + j] * reference_forward(cell._ops[offset + j], h, weights[offset + j], None, aux)
            for j, h in enumerate(states)
        )
        offset += len(states)
        states.append(s)
    return torch.cat(states[-cell._multiplier :], dim=1)


def setup(aux_skip):
    torch.manual_seed(0)
    strategy = build_strategy("pc-darts", init_std=0.5, **({"aux_skip": "linear"} if aux_skip else {}))
    config = strategy.adapt_space_config(dict(C=8, layers=3, in_channels=3, backend="reference"))
    space = DartsSpace(**config).double()
    strategy.setup(space.arch_spec())
    strategy.double()
    with torch.no_grad():  # betas far from uniform so a missing scale shows
        for b in strategy.betas.values():
            b.copy_(torch.randn_like(b))
    return strategy, space


@pytest.mark.parametrize("aux_skip", [False, True], ids=["plain", "aux-skip"])
@pytest.mark.parametrize("cell_index", [0, 1], ids=["normal", "reduce"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_output_is_the_beta_weighted_sum_of_whole_edge_outputs(monkeypatch, backend, cell_index, aux_skip):
    strategy, space = setup(aux_skip)
    cell = space.cells[cell_index]
    group = "reduce" if cell.reduction else "normal"
    with torch.no_grad():  # the cell's real inputs: the stem, then the cells before it
        s0 = s1 = space.stem(torch.randn(2, 3, 8, 8, dtype=torch.float64))
        for before in space.cells[:cell_index]:
            s0, s1 = s1, before(s0, s1, strategy.arch_weights("weights")["normal"])
    g = None
    results = {}
    for who in ("authors", "ours"):
        strategy.zero_grad(set_to_none=True)
        space.zero_grad(set_to_none=True)
        arch = strategy.arch_weights("weights")[group]
        if who == "authors":
            w2 = strategy.edge_weights(group)
            out = authors_cell(cell, s0, s1, arch.weights, w2, arch.aux)
        else:
            with _backend.use_backend(backend):
                out = cell(s0, s1, arch)
        g = torch.randn_like(out) if g is None else g
        (out * g).sum().backward()
        params = {n: p.grad.clone() for n, p in cell.named_parameters() if p.grad is not None}
        results[who] = (out.detach(), strategy.alphas[group].grad.clone(), strategy.betas[group].grad.clone(), params)
    (out_a, da_a, db_a, dp_a), (out_o, da_o, db_o, dp_o) = results["authors"], results["ours"]
    tol = dict(atol=1e-10, rtol=1e-9)
    assert_close("cell output", out_o, out_a, **tol)
    assert_close("d alphas", da_o, da_a, **tol)
    assert_close("d betas", db_o, db_a, **tol)
    assert dp_o.keys() == dp_a.keys()
    for name in dp_a:
        assert_close(f"d {name}", dp_o[name], dp_a[name], **tol)
    assert db_a.abs().max() > 1e-6  # the betas do get a gradient
