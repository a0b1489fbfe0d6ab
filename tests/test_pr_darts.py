"""PR-DARTS against salesforce/PR-DARTS (``PRDARTS_search/search_model_prdarts_nasnet.py`` run by
``test_PRDARTS.py``): gates and gate dropout, no gradient for closed ops, the regulariser over the sampled ops,
the temperature schedule and the genotype rule, each computed the authors' way in float64."""

import math

import numpy as np
import pytest
import torch

from dnas_fast.genotype import Genotype
from dnas_fast.strategies.pr_darts import PrDarts
from tests.test_strategies import batch, count_calls, tiny
from tests.utils import assert_close

# The authors' DARTS space order (cell_operations.DARTS_SPACE; their dua_sepc / dil_sepc are our sep / dil
# convs) as indices into ours (dnas_fast.ops.DARTS_OPS): none, skip, sep3, sep5, dil3, dil5, avg, max.
AUTHORS_COLUMNS = [0, 3, 4, 5, 6, 7, 2, 1]
GAMMA, ZETA = -0.1, 1.1


def authors_gumbel_prob(alpha, tau, dropout_pro, k):
    """``NASNetworkPRDARTS.forward.get_gumbel_prob``, dropout branch: ``(hardwts_idx, hardwts)``."""
    gumbels = torch.rand_like(alpha)
    gumbels = torch.log(gumbels) - torch.log(1 - gumbels)
    probs = torch.sigmoid((alpha + gumbels) / tau) * (ZETA - GAMMA) + GAMMA
    idx = probs.clamp_(min=0.0, max=1.0)
    ber_drop = -torch.bernoulli(torch.zeros_like(idx), dropout_pro)
    idx = idx + ber_drop
    rand_idx = torch.randperm(idx.shape[1])
    idx = idx[:, rand_idx]
    _, top_idx = torch.topk(idx, dim=1, k=k)
    rand_idx = rand_idx.repeat(idx.shape[0], 1)
    top_idx = rand_idx.gather(dim=1, index=top_idx)
    hardwts_idx = torch.zeros_like(idx).scatter_(-1, top_idx, 1.0)
    return hardwts_idx, hardwts_idx - probs.detach() + probs


def authors_regularization(normal_alpha, reduce_alpha, normal_idx, reduce_idx, tau, lambdas, threshold):
    """``NASNetworkPRDARTS.get_regularization`` on tensors in the authors' op order, edges in ``edge2index``."""
    edge2index = {key: i for i, key in enumerate(sorted(f"{i}<-{j}" for i in range(4) for j in range(2 + i)))}
    para = tau * np.log(-GAMMA / ZETA)
    acts = [(normal_alpha - para).sigmoid().mul(normal_idx), (reduce_alpha - para).sigmoid().mul(reduce_idx)]
    idxs = [normal_idx, reduce_idx]

    def group(cols):
        total = 0.0
        for act, idx in zip(acts, idxs):
            n = idx[:, cols].sum()
            total += 0.5 * act[:, cols].sum() / n if n > 0 else 0.0
        return total

    skip, pooling = group([1]), group([6, 7])
    nonskip = 0.0
    for act, idx in zip(acts, idxs):
        n = idx.sum() - idx[:, 1].sum() - idx[:, 6:8].sum()
        nonskip += (0.5 / n) * (act[:, 0].sum() + act[:, 2:6].sum()) if n else 0.0
    path_idx = torch.tensor([edge2index["0<-1"], edge2index["1<-2"], edge2index["2<-3"], edge2index["3<-4"]])
    path = 0.0
    for act, idx in zip(acts, idxs):
        select_idx = path_idx[idx[path_idx, 2:6].sum(dim=1).nonzero().squeeze()]
        if select_idx.numel() == 1:
            path += 0.5 * act[select_idx, 2:6].sum().mul(1.0 / idx[select_idx, 2:6].sum())
        if select_idx.numel() > 1:
            path += 0.5 * act[select_idx, 2:6].sum(dim=1).mul(1.0 / idx[select_idx, 2:6].sum(dim=1)).prod()
    skip = skip - threshold if skip > threshold else 0.0
    nonskip = nonskip - threshold if nonskip > threshold else 0.0
    pooling = pooling - threshold if pooling > threshold else 0.0
    return lambdas[0] * skip + lambdas[1] * (nonskip + pooling) - lambdas[2] * path


def authors_parse(weights, op_names, steps=4):
    """``NASNetworkPRDARTS.genotype._parse`` on softmaxed alphas (edges in ``edge2index`` order)."""
    edge2index = {key: i for i, key in enumerate(sorted(f"{i}<-{j}" for i in range(steps) for j in range(2 + i)))}
    gene = []
    for i in range(steps):
        edges = []
        for j in range(2 + i):
            ws = weights[edge2index[f"{i}<-{j}"]]
            for k, op_name in enumerate(op_names):
                if op_name == "none":
                    continue
                edges.append((op_name, j, ws[k]))
        edges = sorted(edges, key=lambda x: -x[-1])
        gene += [(op, j) for op, j, _ in edges[:2]]
    return gene


def darts_strategy(**hparams):
    return tiny("pr-darts", space="darts", dtype=torch.float64, **hparams)


# ---- schedule and settings -------------------------------------------------------------------------


def test_temperature_follows_the_authors_schedule():
    strategy, _, _ = tiny("pr-darts")
    for epoch, expected in [(0, 1.0), (1, 1 - 0.9 / 199), (100, 1 - 0.9 * 100 / 199), (199, 0.1)]:
        strategy.on_epoch_start(epoch, 200)
        assert strategy.tau() == pytest.approx(expected, rel=1e-12), epoch
    strategy.on_epoch_start(5, 10)
    assert strategy.epoch_log()["tau"] == pytest.approx(1 - 0.9 * 5 / 9)


def test_bad_hyperparameters_are_one_line_errors():
    for kwargs in [{"gate_dropout": 1.0}, {"top_k": 0}, {"stretch": (0.1, 1.1)}]:
        with pytest.raises(ValueError):
            PrDarts(**kwargs)


# ---- gates -----------------------------------------------------------------------------------------


def test_gate_distribution_and_clamp():
    strategy, _, _ = tiny("pr-darts", dtype=torch.float64)
    with torch.no_grad():
        strategy.alphas["cell"].copy_(torch.linspace(-2, 2, 30, dtype=torch.float64).view(6, 5))
    strategy.on_epoch_start(5, 10)
    tau, alpha = strategy.tau(), strategy.alphas["cell"].detach()
    torch.manual_seed(0)
    with torch.no_grad():
        g = torch.stack([strategy.gates("cell", noise=True) for _ in range(2000)])
    assert g.min() >= 0 and g.max() <= 1
    # hard-concrete: P(g = 0) = sigmoid(tau * logit(-gamma / (zeta - gamma)) - alpha), P(g = 1) likewise
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    p0 = torch.sigmoid(tau * logit(0.1 / 1.2) - alpha)
    p1 = 1 - torch.sigmoid(tau * logit(1.1 / 1.2) - alpha)
    for name, emp, p in [("P(g=0)", (g == 0).double().mean(0), p0), ("P(g=1)", (g == 1).double().mean(0), p1)]:
        assert ((emp - p).abs() < 4 * (p * (1 - p) / 2000).sqrt() + 1e-3).all(), name
    assert_close("activation probability", strategy.activation_probability("cell").detach(), 1 - p0, atol=1e-12)


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_sampled_gates_and_open_ops_equal_the_authors(space):
    strategy, _, _ = tiny("pr-darts", space=space, dtype=torch.float64)
    with torch.no_grad():
        for alpha in strategy.alphas.values():
            alpha.copy_(torch.randn_like(alpha) * 2)
    strategy.on_epoch_start(3, 10)
    for seed in range(5):
        torch.manual_seed(seed)
        ours = strategy.arch_weights("arch")
        torch.manual_seed(seed)
        for g, alpha in strategy.alphas.items():  # the authors draw group by group, normal then reduce
            idx, hardwts = authors_gumbel_prob(alpha.detach(), strategy.tau(), 0.4, 2)
            assert torch.equal(ours[g].mask, idx.bool()), (g, seed)
            assert_close(f"{g} weights", ours[g].weights.detach(), hardwts, atol=1e-15)
            assert not ours[g].straight_through


def test_gate_dropout_keeps_exactly_k_ops_open_even_when_gates_are_zero():
    strategy, _, _ = tiny("pr-darts", dtype=torch.float64)
    with torch.no_grad():
        strategy.alphas["cell"].fill_(-50.0)  # every gate clamps to 0
    strategy.on_epoch_start(0, 10)
    torch.manual_seed(0)
    opened = torch.stack([strategy.arch_weights("weights")["cell"].mask for _ in range(300)])
    assert (opened.sum(-1) == 2).all()
    assert (opened.double().mean(0) > 0.2).all()  # ties at 0 are broken at random: every op gets its turn
    assert (strategy.arch_weights("eval")["cell"].mask.sum(-1) == 2).all()
    with torch.no_grad():  # two gates at 1: without dropout they would open every time
        strategy.alphas["cell"][:, :2] = 50.0
    opened = torch.stack([strategy.arch_weights("weights")["cell"].mask for _ in range(2000)])
    assert (opened.sum(-1) == 2).all()
    # Both open: none dropped; or a dropped one (score 0) wins the tie against the m undropped zero gates
    # (a uniform permutation: 1 / (1 + m)); or both dropped win both slots (2 / ((2 + m)(1 + m))).
    keep, binom = 0.6, [math.comb(3, m) * 0.6**m * 0.4 ** (3 - m) for m in range(4)]
    expected = keep**2 + 2 * keep * 0.4 * sum(b / (1 + m) for m, b in enumerate(binom))
    expected += 0.4**2 * sum(b * 2 / ((2 + m) * (1 + m)) for m, b in enumerate(binom))
    both = opened[..., :2].all(-1).double().mean().item()
    assert both == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / 2000))
    assert (strategy.arch_weights("eval")["cell"].mask[:, :2]).all()


def test_closed_ops_do_not_run_and_get_no_gradient():
    strategy, model, _ = darts_strategy()
    strategy.on_epoch_start(0, 10)
    with torch.no_grad():
        for alpha in strategy.alphas.values():
            alpha.copy_(torch.randn_like(alpha))
    x, y = batch(dtype=torch.float64)
    ops = [op for e in model.edges() for op in e._ops]
    calls, handles = count_calls(ops)
    arch = strategy.arch_weights("arch")
    loss = torch.nn.functional.cross_entropy(model(x, arch), y) + strategy.extra_loss(arch, "arch")
    loss.backward()
    for h in handles:
        h.remove()
    for g, a in arch.items():
        mask, grad = a.mask, strategy.alphas[g].grad
        assert (mask.sum(-1) == 2).all()
        assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask])), g
        assert (grad[mask] != 0).any(), g
    groups = [cell.reduction for cell in model.cells for _ in cell._ops]
    for edge, reduce, e in zip(model.edges(), groups, [e for cell in model.cells for e in range(len(cell._ops))]):
        mask = arch["reduce" if reduce else "normal"].mask[e]
        for k, op in enumerate(edge._ops):
            assert calls[id(op)] == int(mask[k])
            if not mask[k]:
                assert all(p.grad is None for p in op.parameters())


# ---- regulariser -----------------------------------------------------------------------------------


CHAIN = [1, 4, 8, 13]  # edges 0<-1, 1<-2, 2<-3, 3<-4 (node <- previous node) of a 4-node DARTS cell


def hand_masks(gen):
    """Open ops in our op order: random top-2 per edge in the normal cell; in the reduce cell no skip or
    pooling op at all and one chain edge (0<-1) with an open conv op (the authors' ``numel() == 1`` case)."""
    normal = torch.zeros(14, 8, dtype=torch.bool)
    for e in range(14):
        normal[e, torch.randperm(8, generator=gen)[:2]] = True
    reduce = torch.zeros(14, 8, dtype=torch.bool)
    reduce[:, 0] = reduce[:, 4] = True  # none, sep_conv_3x3
    reduce[CHAIN, 4] = False
    reduce[1, 6] = True  # dil_conv_3x3 on 0<-1
    return {"normal": normal, "reduce": reduce}


def authors_value(strategy, opened):
    a = {g: strategy.alphas[g].detach()[:, AUTHORS_COLUMNS] for g in ("normal", "reduce")}
    idx = {g: opened[g][:, AUTHORS_COLUMNS].double() for g in ("normal", "reduce")}
    value = authors_regularization(
        a["normal"], a["reduce"], idx["normal"], idx["reduce"], strategy.tau(), (0.01, 0.005, 0.005), 0.2
    )
    return float(value)


@pytest.mark.parametrize("epoch, shift", [(0, 0.0), (4, 0.0), (9, 0.0), (0, -4.0), (9, -2.0)])
def test_regulariser_equals_the_authors_on_hand_made_gates(epoch, shift):
    strategy, _, _ = darts_strategy()
    gen = torch.Generator().manual_seed(epoch)
    with torch.no_grad():  # shift < 0: group activations near or under the 0.2 threshold
        for alpha in strategy.alphas.values():
            alpha.copy_(torch.randn(14, 8, generator=gen, dtype=torch.float64) * 2 + shift)
    strategy.on_epoch_start(epoch, 10)
    opened = hand_masks(gen)
    assert strategy.regularizer(opened).item() == pytest.approx(authors_value(strategy, opened), rel=1e-12, abs=1e-15)
    for m in opened.values():  # no conv op open on the chain at all: the path term is 0
        m[CHAIN] = False
        m[CHAIN, 0] = m[CHAIN, 3] = True
    assert strategy.regularizer_terms(opened)["path"] == 0
    assert strategy.regularizer(opened).item() == pytest.approx(authors_value(strategy, opened), rel=1e-12, abs=1e-15)


def test_architecture_loss_adds_the_regulariser_of_the_sampled_ops():
    strategy, _, _ = darts_strategy()
    with torch.no_grad():
        for alpha in strategy.alphas.values():
            alpha.copy_(torch.randn_like(alpha) * 2)
    strategy.on_epoch_start(2, 10)
    arch = strategy.arch_weights("arch")
    expected = authors_value(strategy, {g: a.mask for g, a in arch.items()})
    assert strategy.extra_loss(arch, "arch").item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert strategy.extra_loss(strategy.arch_weights("weights"), "weights") is None
    assert strategy.epoch_log()["regularizer"] == pytest.approx(expected, rel=1e-12, abs=1e-15)


# ---- genotype --------------------------------------------------------------------------------------


def test_genotype_takes_the_top_two_op_input_pairs_per_node():
    strategy, model, _ = darts_strategy()
    names = strategy.spec["normal"].op_names
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for alpha in strategy.alphas.values():
            alpha.copy_(torch.randn(14, 8, generator=gen, dtype=torch.float64))
        normal = strategy.alphas["normal"]
        normal[0:2] = 0.0
        normal[0, names.index("sep_conv_3x3")] = 3.0  # node 2: both picks from input 0 ...
        normal[0, names.index("dil_conv_3x3")] = 2.5
        normal[1, names.index("none")] = 9.0  # ... since 'none' does not count
        normal[1, names.index("skip_connect")] = 2.0
    genotype = strategy.derive(model)
    assert genotype.normal[:2] == [("sep_conv_3x3", 0), ("dil_conv_3x3", 0)]
    softmax = {g: torch.softmax(strategy.alphas[g].detach(), -1).numpy() for g in ("normal", "reduce")}
    normal, reduce = (authors_parse(softmax[g], names) for g in ("normal", "reduce"))
    expected = Genotype(normal, range(2, 6), reduce, range(2, 6))
    assert genotype == expected


def test_genotype_on_other_spaces_is_the_space_rule():
    strategy, model, _ = tiny("pr-darts")
    assert strategy.derive(model) == model.derive(strategy.scores())
