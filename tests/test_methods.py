"""Issue 22: GDAS and P-DARTS against their authors' formulas (D-X-Y/AutoDL-Projects, chenxin061/pdarts),
transcribed here module by module, in float64 on CPU."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnas_fast import ArchWeights
from dnas_fast._backend import available_backends
from dnas_fast.search import SearchConfig, Searcher, run_search
from dnas_fast.strategies import build_strategy
from dnas_fast.strategies.p_darts import drop_lowest, final_cell, skip_dropout_rate
from tests.test_strategies import batch, count_calls, tiny
from tests.utils import assert_close

BACKENDS = [b for b in available_backends("cpu") if b != "auto"]

# ---- GDAS ------------------------------------------------------------------------------------------


def authors_gdas_weights(alpha, gumbels, tau):
    """``search_model_gdas.py`` ``forward`` lines 85-90: (hardwts, index)."""
    probs = F.softmax((alpha.log_softmax(dim=1) + gumbels) / tau, dim=1)
    index = probs.max(-1, keepdim=True)[1]
    one_h = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return one_h - probs.detach() + probs, index


def authors_nb201_forward(model, x, hardwts, index):
    """``TinyNetworkGDAS.forward`` with ``NAS201SearchCell.forward_gdas`` (``search_cells.py``): the sampled op
    times its weight, the others' plain weight (value 0, gradient sum(g))."""
    from dnas_fast.spaces.nb201 import SearchCell

    h = model.stem(x)
    for cell in model.cells:
        if not isinstance(cell, SearchCell):
            h = cell(h)
            continue
        nodes, e = [h], 0
        for i in range(1, cell.max_nodes):
            inter = []
            for j in range(i):
                w, k_star = hardwts[e + j], int(index[e + j])
                ops = cell.edges[e + j]._ops
                inter.append(sum(w[k] * op(nodes[j]) if k == k_star else w[k] for k, op in enumerate(ops)))
            nodes.append(sum(inter))
            e += i
        h = nodes[-1]
    return model.classifier(model.global_pooling(model.lastact(h)).flatten(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdas_forward_and_straight_through_gradients_are_the_authors(backend):
    strategy, model, _ = tiny("gdas", "nb201", {"backend": backend}, dtype=torch.float64)
    with torch.no_grad():
        strategy.alphas["cell"].normal_(0, 1)
    strategy.on_epoch_start(3, 10)
    gumbels = -torch.empty_like(strategy.alphas["cell"]).exponential_().log()  # fixed for both
    x, y = batch(dtype=torch.float64)
    hardwts, chosen, finite = strategy.sample("cell", gumbels)
    assert bool(finite) and chosen.sum(-1).eq(1).all()
    arch = {"cell": ArchWeights(hardwts, mask=chosen, straight_through=True)}
    loss = F.cross_entropy(model(x, arch), y)
    params = [strategy.alphas["cell"], *model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    ref_model = copy.deepcopy(model)
    alpha = strategy.alphas["cell"].detach().clone().requires_grad_(True)
    ref_w, index = authors_gdas_weights(alpha, gumbels, strategy.tau())
    assert torch.equal(index[:, 0], chosen.int().argmax(-1))
    ref_loss = F.cross_entropy(authors_nb201_forward(ref_model, x, ref_w, index), y)
    ref_grads = torch.autograd.grad(ref_loss, [alpha, *ref_model.parameters()], allow_unused=True)
    assert_close("loss", loss.detach(), ref_loss.detach(), 1e-10, 1e-9)
    assert_close("dL/dalpha", grads[0], ref_grads[0], 1e-10, 1e-8)
    assert grads[0].abs().sum() > 0
    for (name, _), g, r in zip(model.named_parameters(), grads[1:], ref_grads[1:]):
        if r is None:  # an unsampled op: no gradient in theirs, none (or zeros) in ours
            assert g is None or not g.any(), name
        else:
            assert_close(f"dL/d{name}", g, r, 1e-10, 1e-8)


def test_gdas_unsampled_ops_are_never_called():
    strategy, model, ctx = tiny("gdas", "nb201", dtype=torch.float64)
    edges = [e for cell in model.cells if hasattr(cell, "edges") for e in cell.edges]
    ops = [op for e in edges for op in e._ops]
    calls, handles = count_calls(ops)
    arch = strategy.arch_weights("weights")
    F.cross_entropy(model(batch(dtype=torch.float64)[0], arch), batch()[1]).backward()
    for h in handles:
        h.remove()
    picked = arch["cell"].mask
    for e, edge in enumerate(edges):
        row = picked[e % picked.shape[0]]
        got = [calls[id(op)] for op in edge._ops]
        assert got == row.int().tolist(), (e, got, row)
    assert strategy.alphas["cell"].grad.ne(0).all()  # every op's alpha learns (straight-through)


def test_gdas_redraws_a_non_finite_sample(monkeypatch):
    strategy, _, _ = tiny("gdas", "nb201", dtype=torch.float64)
    real, draws = strategy.sample, []

    def sample(group, gumbels=None):
        hard, chosen, finite = real(group)
        draws.append(group)
        return hard, chosen, finite & torch.tensor(len(draws) > 1)

    monkeypatch.setattr(strategy, "sample", sample)
    strategy.arch_weights("weights")
    assert draws == ["cell", "cell"]


@pytest.mark.parametrize("epoch,num_epochs", [(0, 240), (1, 240), (120, 240), (239, 240), (0, 250), (249, 250)])
def test_gdas_temperature_is_the_authors_linear_schedule(epoch, num_epochs):
    """``GDAS.py`` line 139: ``tau_max - (tau_max - tau_min) * epoch / (total_epoch - 1)``."""
    strategy = build_strategy("gdas")
    strategy.on_epoch_start(epoch, num_epochs)
    assert strategy.tau() == pytest.approx(10 - (10 - 0.1) * epoch / (num_epochs - 1), abs=1e-12)


def test_gdas_presets_are_the_authors(tmp_path):
    base = dict(strategy="gdas", data="digits", backend="reference")
    nb = Searcher(SearchConfig(space="nb201", space_args={"C": 4, "N": 1}, **base), tmp_path).config
    assert (nb.epochs, nb.batch_size, nb.lr, nb.lr_min, nb.weight_decay, nb.nesterov) == (240, 64, 0.025, 0.001,
                                                                                          5e-4, True)  # fmt: skip
    darts = Searcher(SearchConfig(space="darts", **base), tmp_path)
    assert (darts.config.epochs, darts.config.batch_size) == (250, 256)
    assert len(darts.space.cells) == 6 and darts.space.config["C"] == 16


# ---- P-DARTS ---------------------------------------------------------------------------------------

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]  # fmt: skip


def get_min_k(input_in, k):  # train_search.py 321-329
    input = copy.deepcopy(input_in)
    index = []
    for _ in range(k):
        idx = np.argmin(input)
        index.append(idx)
        input[idx] = 1
    return index


def get_min_k_no_zero(w_in, idxs, k):  # 330-346
    w = copy.deepcopy(w_in)
    index = []
    zf = 0 in idxs
    if zf:
        w = w[1:]
        index.append(0)
        k = k - 1
    for _ in range(k):
        idx = np.argmin(w)
        w[idx] = 1
        if zf:
            idx = idx + 1
        index.append(idx)
    return index


def authors_drop(switches, prob, k, last):  # train_search.py 160-170
    for i in range(len(switches)):
        idxs = [j for j in range(len(PRIMITIVES)) if switches[i][j]]
        drop = get_min_k_no_zero(prob[i, :], idxs, k) if last else get_min_k(prob[i, :], k)
        for idx in drop:
            switches[i][idxs[idx]] = False
    return switches


def keep_2_branches(switches_in, probs):  # 395-414
    switches = copy.deepcopy(switches_in)
    final_prob = [max(probs[i]) for i in range(len(switches))]
    keep, n, start = [0, 1], 3, 2
    for _ in range(3):
        end = start + n
        tb = final_prob[start:end]
        edge = sorted(range(n), key=lambda x: tb[x])
        keep += [edge[-1] + start, edge[-2] + start]
        start, n = end, n + 1
    for i in range(len(switches)):
        if i not in keep:
            switches[i] = [False] * len(PRIMITIVES)
    return switches


def delete_min_sk_prob(switches_in, switches_bk, probs_in):  # 362-381
    def sk_idx(k):
        return -1 if not switches_in[k][3] else sum(1 for i in range(3) if switches_bk[k][i])

    probs_out = copy.deepcopy(probs_in)
    sk_prob = [1.0] * len(switches_bk)
    for i in range(len(switches_in)):
        if sk_idx(i) != -1:
            sk_prob[i] = probs_out[i][sk_idx(i)]
    d_idx = int(np.argmin(sk_prob))
    probs_out[d_idx][sk_idx(d_idx)] = 0.0
    return probs_out


def keep_1_on(switches_in, probs):  # 383-393
    switches = copy.deepcopy(switches_in)
    for i in range(len(switches)):
        idxs = [j for j in range(len(PRIMITIVES)) if switches[i][j]]
        for idx in get_min_k_no_zero(probs[i, :], idxs, 2):
            switches[i][idxs[idx]] = False
    return switches


def parse(switches):  # parse_network._parse_switches, 301-315
    gene, start, n = [], 0, 2
    for _ in range(4):
        for j in range(start, start + n):
            gene += [(PRIMITIVES[k], j - start) for k in range(len(PRIMITIVES)) if switches[j][k]]
        start, n = start + n, n + 1
    return gene


def authors_final(switches3, alphas3, max_sk, restrict):
    """Lines 160-240 for the last stage of one cell: ``alphas3`` the [14, 3] alphas over ``switches3``."""
    prob = F.softmax(alphas3, dim=-1).numpy()
    switches = authors_drop(copy.deepcopy(switches3), prob, 2, last=True)
    for i in range(14):
        if switches3[i][0]:
            prob[i][0] = 0
    switches = keep_2_branches(switches, prob)
    if restrict:
        while sum(1 for s in switches if s[3]) > max_sk:
            prob = delete_min_sk_prob(switches, switches3, prob)
            switches = keep_1_on(switches3, prob)
            switches = keep_2_branches(switches, prob)
    return parse(switches)


def full_alphas(alphas_on, switches):
    """Our [14, 8] logits: the authors' alphas over the switched-on ops, -inf (masked) elsewhere."""
    out = torch.full((14, 8), -1e9, dtype=torch.float64)
    for i in range(14):
        out[i, [j for j in range(8) if switches[i][j]]] = alphas_on[i]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_p_darts_drops_the_authors_ops_between_stages(seed):
    g = torch.Generator().manual_seed(seed)
    switches = [[True] * 8 for _ in range(14)]
    alphas = torch.randn(14, 8, generator=g, dtype=torch.float64).round(decimals=1)  # ties included
    for keep, k in ((5, 3), (3, 2)):
        allowed = torch.tensor(switches)
        prob = F.softmax(alphas.masked_fill(~allowed, float("-inf")), dim=-1)  # over the remaining ops
        ours = drop_lowest(prob, allowed, k)
        switches = authors_drop(switches, prob[allowed].view(14, -1).numpy(), k, last=False)
        assert ours.tolist() == switches and ours.sum(-1).eq(keep).all()
        alphas = torch.randn(14, 8, generator=g, dtype=torch.float64).round(decimals=1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_skip", [0, 1, 2, None])
def test_p_darts_final_cell_and_skip_limit_are_the_authors(seed, max_skip):
    g = torch.Generator().manual_seed(seed)
    switches3 = []
    for _ in range(14):  # 3 ops per edge, skip_connect among them, 'none' often
        pool = [3] + [int(k) for k in torch.randperm(8, generator=g)[:4] if k != 3]
        switches3.append([k in pool[:3] for k in range(8)])
    alphas3 = torch.randn(14, 3, generator=g, dtype=torch.float64)
    for i in range(14):
        on = [j for j in range(8) if switches3[i][j]]
        alphas3[i, on.index(3)] += 1.0  # skip_connect strong, so the limit bites
    expected = authors_final(switches3, alphas3, max_skip if max_skip is not None else 8, max_skip is not None)
    probs = F.softmax(full_alphas(alphas3, switches3), dim=-1)
    ours = final_cell(probs, torch.tensor(switches3), PRIMITIVES, 4, max_skip)
    assert ours == expected
    if max_skip is not None:
        assert sum(op == "skip_connect" for op, _ in ours) <= max_skip


@pytest.mark.parametrize(
    "epoch,expected", [(0, 0.7 * 24 / 25), (9, 0.7 * 15 / 25), (10, 0.7), (12, 0.7 * math.exp(-0.4))]
)
def test_p_darts_skip_dropout_rate_is_the_authors(epoch, expected):
    assert skip_dropout_rate(0.7, epoch, 25, 10) == pytest.approx(expected, abs=1e-12)


PD = dict(
    space="darts", space_args={"C": 4, "layers": 3}, strategy="p-darts",
    strategy_args={"add_layers": [0, 1, 2], "warmup_epochs": 1}, data="digits", data_args={"limit": 64},
    epochs=6, batch_size=16, max_steps_per_epoch=1, deterministic=True, backend="reference",
)  # fmt: skip


def test_p_darts_stage_transitions_rebuild_space_alphas_optimizers_and_schedule(tmp_path):
    searcher = Searcher(SearchConfig(**PD), tmp_path)
    assert searcher.config.lr_min == 0.0 and searcher.config.scheduler_step == "before"
    assert len(searcher.space.cells) == 3 and searcher.space.config["allowed"] is None
    assert searcher.scheduler.T_max == 2  # 6 epochs, 3 stages of 2
    searcher.run(log=lambda *_: None, stop_after=2)
    assert searcher.strategy.arch_frozen() is False  # epoch 1 of stage 0: past its 1 arch-free epoch
    probs = {g: searcher.strategy.probabilities(g).detach() for g in ("normal", "reduce")}
    old_alphas = searcher.strategy.alphas["normal"].detach().clone()
    searcher.enter_stage()
    spec = searcher.space.arch_spec()
    assert len(searcher.space.cells) == 4
    for g in ("normal", "reduce"):
        kept = torch.tensor([[n in ops for n in PRIMITIVES] for ops in searcher.space.config["allowed"][g]])
        expected = torch.zeros_like(kept)
        expected.scatter_(-1, probs[g].topk(5, dim=-1).indices, True)
        assert torch.equal(kept, expected) and torch.equal(spec[g].allowed, kept)
    assert not torch.equal(searcher.strategy.alphas["normal"].detach(), old_alphas)
    assert searcher.strategy.alphas["normal"].abs().max() < 0.01  # 1e-3 randn anew
    assert not searcher.w_optimizer.state and not searcher.a_optimizer.state
    assert searcher.scheduler.T_max == 2 and searcher.scheduler.last_epoch == 1  # stepped once before the stage
    searcher.strategy.on_epoch_start(2, 6)
    assert searcher.strategy.arch_frozen()  # the stage's first epoch: no architecture step
    assert searcher.strategy.probabilities("normal").gt(0).sum(-1).eq(5).all()


def test_p_darts_resumes_bitwise_across_stage_boundaries(tmp_path):
    straight = run_search(SearchConfig(**PD), tmp_path / "straight", log=lambda *_: None)
    run_search(SearchConfig(**PD), tmp_path / "killed", log=lambda *_: None, stop_after=2)  # end of stage 0
    run_search(SearchConfig(**PD), tmp_path / "killed", resume=True, log=lambda *_: None, stop_after=1)
    resumed = run_search(SearchConfig(**PD), tmp_path / "killed", resume=True, log=lambda *_: None)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    assert a["space_config"] == b["space_config"] and a["space_config"]["layers"] == 5
    assert all(len(ops) == 3 for ops in a["space_config"]["allowed"]["normal"])
    for part in ("model", "strategy_state"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert straight == resumed
    assert sum(op == "skip_connect" for op, _ in straight.normal) <= 2


# ---- eval-child and train ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gdas", "p-darts"])
def test_eval_child_and_train_take_the_strategys_child(name, tmp_path):
    from dnas_fast.genotype import Genotype
    from dnas_fast.search import restore_search
    from dnas_fast.train import TrainConfig, child_arch_weights, eval_child, run_train
    from tests.test_train import TINY, quiet

    config = {**PD, "epochs": 3, "strategy": name}
    if name == "gdas":
        config["strategy_args"] = {}
    derived = run_search(SearchConfig(**config), tmp_path, **quiet)
    assert isinstance(derived, Genotype)
    space, strategy = restore_search(torch.load(tmp_path / "checkpoint.pt", weights_only=False))
    child = child_arch_weights(space, strategy)
    for g, gene in (("normal", derived.normal), ("reduce", derived.reduce)):
        assert child[g].mask.sum() == len(gene)  # one op on each kept edge, nothing else runs
        assert {op for op, _ in gene} <= set(space.arch_spec()[g].op_names)
    result = eval_child(tmp_path, recal_batches=1, **quiet)
    assert 0 <= result["child_acc"] <= 1 and result["architecture"] == repr(derived)
    trained = run_train(TrainConfig(arch=str(tmp_path), **{**TINY, "epochs": 1}), tmp_path / "t", **quiet)
    assert trained["family"] == "cifar"
