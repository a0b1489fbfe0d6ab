"""Issue 19, faithful to the authors: each check computes the authors' numbers from their code (transcribed in the
test) and fails on the loop and strategies before it: SNAS costs op by op, presets that set space and strategy
arguments, lr per epoch, the DARTS- beta, per-epoch optimizers, ASAP as UniNAS, per-strategy step order,
clipping set and validation sampling."""

import json
import math

import pytest
import torch
from torch import nn

from dnas_fast.search import RANDOM_VALID, SearchConfig, Searcher, run_search
from dnas_fast.strategies import Strategy, build_strategy
from dnas_fast.strategies.asap import Asap
from tests.test_strategies import batch, tiny
from tests.utils import assert_close

TINY = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=3,
    batch_size=16, max_steps_per_epoch=3, deterministic=True, backend="reference",
)  # fmt: skip


# ---- SNAS costs ------------------------------------------------------------------------------------


def snas_series_cost(name, C, H, stride):
    """(size, flops, mac) of op ``name`` on C channels, H x H input, as SNAS-Series ``SNAS/operations.py``."""
    y = H if stride == 1 else H // 2
    if name == "none":
        return 0, 0, 0
    if name in ("max_pool_3x3", "avg_pool_3x3"):  # AvgPool / MaxPool
        return 0, 3 * 3 * y**2 * C, (2 if stride == 1 else 5) * y**2 * C
    if name == "skip_connect":
        if stride == 1:  # Identity.forward
            return 0, 0, 2 * C * H**2
        size = 2 * C * (C // 2)  # FactorizedReduce
        return size, size * y**2, 2 * y**2 * (4 * C + C // 2) + size
    k = int(name[-1])
    if name.startswith("sep_conv"):
        size = 2 * C * k**2 + (C + C) * C
        return size, size * y**2, y**2 * ((7 if stride == 1 else 10) * C + C) + size
    size = C * k * k + C * C  # DilConv
    return size, size * y**2, y**2 * ((3 if stride == 1 else 6) * C + C) + size


def test_snas_costs_are_the_authors_op_by_op_skip_connect_included():
    """DARTS space C=4, 3 cells on 8x8: cell 0 normal (C 4, 8x8), cells 1-2 reduce (C 8 on 8x8, C 16 on 4x4)."""
    strategy, model, ctx = tiny("snas", space="darts", dtype=torch.float64)
    strategy.loss(ctx, *batch(dtype=torch.float64), "weights")
    names = model.config["op_names"]
    for group, cells in (("normal", [(4, 8)]), ("reduce", [(8, 8), (16, 4)])):
        expected = []
        for C, H in cells:
            rows = []
            for i in range(4):
                for j in range(2 + i):
                    stride = 2 if group == "reduce" and j < 2 else 1
                    h = H if stride == 2 or group == "normal" else H // 2
                    rows.append([snas_series_cost(n, C, h, stride) for n in names])
            expected.append(rows)
        assert_close(f"{group} costs", strategy.costs[group], torch.tensor(expected, dtype=torch.float64), 0, 0)
    skip = names.index("skip_connect")
    assert strategy.costs["normal"][0, 0, skip, 2] == 2 * 4 * 8 * 8  # identity: read and written once
    assert strategy.costs["reduce"][0, 0, skip, 0] == 8 * 8  # FactorizedReduce's two 1x1 convs


# ---- presets ---------------------------------------------------------------------------------------


def test_pr_darts_preset_sets_the_authors_network_with_sources_and_the_user_wins(tmp_path):
    base = dict(space="darts", strategy="pr-darts", data="digits", data_args={"limit": 64}, batch_size=8,
                backend="reference")  # fmt: skip
    searcher = Searcher(SearchConfig(**base), tmp_path)
    assert len(searcher.space.cells) == 6 and searcher.space.config["C"] == 16  # N=2: 3 stages of 2 cells
    assert [c.reduction for c in searcher.space.cells] == [False, False, True, False, True, False]
    setting = searcher.header()["settings"]["space_args"]
    assert setting == {"value": {"C": 16, "layers": 6}, "source": {"C": "preset:pr-darts", "layers": "preset:pr-darts"}}
    mine = Searcher(SearchConfig(**base, space_args={"C": 8}), tmp_path)
    assert mine.space.config["C"] == 8 and mine.space.config["layers"] == 6
    assert mine.header()["settings"]["space_args"]["source"] == {"C": "user", "layers": "preset:pr-darts"}
    other = Searcher(SearchConfig(**{**base, "space": "nb201", "space_args": {"C": 4, "N": 1}}), tmp_path)
    assert other.header()["settings"]["space_args"]["source"] == "user"  # no preset for another space


@pytest.mark.parametrize("batch_size,warmup", [(300, 5), (16, 0)])
def test_pc_darts_imagenet_preset_follows_train_search_imagenet(tmp_path, batch_size, warmup):
    config = SearchConfig(space="darts", space_args={"imagenet": True, "C": 8, "layers": 3}, strategy="pc-darts",
                          data="digits", batch_size=batch_size, backend="reference")  # fmt: skip
    searcher = Searcher(config, tmp_path)
    settings = searcher.header()["settings"]
    want = {"epochs": 50, "lr": 0.5, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
            "scheduler_step": "before"}  # fmt: skip
    for key, value in want.items():
        assert settings[key] == {"value": value, "source": "preset:pc-darts"}, key
    source = "preset:pc-darts" if warmup else "preset:pc-darts, off at batch 16 <= 256"
    assert settings["lr_warmup_epochs"] == {"value": warmup, "source": source}
    strategy = searcher.strategy
    assert (strategy.arch_lr, strategy.arch_weight_decay, strategy.warmup_epochs) == (6e-3, 1e-3, 35)
    assert (strategy.arch_grad_clip, strategy.valid_sampling, strategy.order) == (5.0, "sequential", 1)
    assert all(e.partial_channels == 2 for e in searcher.space.edges())
    assert settings["strategy_args"]["source"] == dict.fromkeys(
        ["arch_lr", "warmup_epochs", "arch_grad_clip", "valid_sampling"], "preset:pc-darts"
    )
    cifar = Searcher(SearchConfig(strategy="pc-darts", data="digits", batch_size=16, backend="reference"), tmp_path)
    assert cifar.strategy.valid_sampling == "random" and cifar.config.lr_warmup_epochs == 0


# ---- lr per epoch ----------------------------------------------------------------------------------


def recorded_lrs(monkeypatch, tmp_path, name="run", resume_after=None, **config):
    """The weight lr of every weight step of a tiny search, by epoch (``resume_after``: stop, then resume)."""
    lrs = {}
    real = Strategy.weight_step

    def record(self, ctx, train_batch):
        lrs.setdefault(self.epoch, set()).add(ctx.w_optimizer.param_groups[0]["lr"])
        return real(self, ctx, train_batch)

    monkeypatch.setattr(Strategy, "weight_step", record)
    config = SearchConfig(**{**TINY, **config})
    if resume_after is None:
        run_search(config, tmp_path / name, log=lambda *a: None)
    else:
        run_search(config, tmp_path / name, log=lambda *a: None, stop_after=resume_after)
        run_search(config, tmp_path / name, resume=True, log=lambda *a: None)
    assert all(len(v) == 1 for v in lrs.values())
    return [lrs[e].pop() for e in sorted(lrs)]


def cosine(lr, lr_min, t, T):  # CosineAnnealingLR's closed form (PyTorch 0.4's get_lr)
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / T)) / 2


@pytest.mark.parametrize("name,lr,lr_min", [("snas", 0.025, 0.001), ("pc-darts", 0.1, 0.0), ("darts", 0.025, 0.001)])
def test_lr_per_epoch_steps_the_scheduler_where_the_authors_do(monkeypatch, tmp_path, name, lr, lr_min):
    """SNAS and PC-DARTS call scheduler.step() before each epoch (epoch e at t = e + 1, PC-DARTS's last at 0);
    DARTS after it (t = e)."""
    got = recorded_lrs(monkeypatch, tmp_path, strategy=name)
    ahead = name != "darts"
    assert got == pytest.approx([cosine(lr, lr_min, e + ahead, 3) for e in range(3)], rel=1e-12, abs=1e-15)
    if name == "pc-darts":
        assert got[-1] == 0.0


def test_linear_lr_warmup_as_pc_darts_imagenet_and_it_resumes(monkeypatch, tmp_path):
    """train_search_imagenet.py: lr = scheduler.get_lr() after its step; epochs < 5 run at lr * (e + 1) / 5."""
    config = dict(strategy="darts", epochs=4, lr=0.5, lr_min=0.0, scheduler_step="before", lr_warmup_epochs=3)
    straight = recorded_lrs(monkeypatch, tmp_path, **config)
    want = [cosine(0.5, 0.0, e + 1, 4) * ((e + 1) / 3 if e < 3 else 1) for e in range(4)]
    assert straight == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert recorded_lrs(monkeypatch, tmp_path, name="resumed", resume_after=2, **config) == straight


# ---- DARTS- ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_darts_minus_beta_decays_over_the_authors_fixed_50_epochs(schedule):
    """Meituan-AutoML/DARTS- DecayScheduler(T_max=50): a 2-epoch run goes 1 -> 0.98 (ours was 1 -> 0.5)."""

    def decay_scheduler(epoch, T_max=50):  # src/utils.py, T_start 0, T_stop 50
        if schedule == "linear":
            return (T_max - epoch) / T_max
        return (1 + math.cos(math.pi * epoch / T_max)) / 2

    strategy = build_strategy("darts-minus", aux_skip=schedule)
    betas = []
    for epoch in (0, 1, 2):
        strategy.on_epoch_start(epoch, 2)
        betas.append(strategy.aux_beta())
    assert betas == pytest.approx([decay_scheduler(e) for e in (0, 1, 2)], rel=1e-15)
    own = build_strategy("darts-minus", aux_skip=schedule, skip_beta_epochs=None)
    own.on_epoch_start(2, 2)
    assert own.aux_beta() == 0.0


# ---- step order, arch-step pattern, validation sampling, optimizer state ----------------------------


def record_steps(monkeypatch, cls, calls):
    """Record ``("w" | "a", epoch, valid batch)`` for every weight and architecture step of ``cls``."""
    real_w, real_a = cls.weight_step, cls.arch_step

    def weight_step(self, ctx, train_batch):
        calls.append(("w", self.epoch, None, len(ctx.w_optimizer.state),
                      0 if ctx.a_optimizer is None else len(ctx.a_optimizer.state)))  # fmt: skip
        return real_w(self, ctx, train_batch)

    def arch_step(self, ctx, train_batch, valid_batch):
        calls.append(("a", self.epoch, valid_batch[1].clone(), 0, 0))
        return real_a(self, ctx, train_batch, valid_batch)

    monkeypatch.setattr(cls, "weight_step", weight_step)
    monkeypatch.setattr(cls, "arch_step", arch_step)


def tf_nas_config(tmp_path, **strategy_args):
    from tests.test_tfnas import TINY as MB
    from tests.test_tfnas import synthetic_table

    space_args = {k: v for k, v in MB.items() if k not in ("in_channels", "num_classes")}
    space_args["stages"] = [[8, 1, 1, "relu"], [16, 1, 2, "swish"]]
    from dnas_fast.spaces import build_space

    synthetic_table(build_space("mbconv", in_channels=1, num_classes=10, **space_args)).save(tmp_path / "lut.json")
    args = {"latency_target": 0.5, "latency_table": str(tmp_path / "lut.json"), "warmup_epochs": 1,
            "latency_device": "test-device", **strategy_args}  # fmt: skip
    return SearchConfig(space="mbconv", strategy="tf-nas", space_args=space_args, strategy_args=args, data="digits",
                        data_args={"limit": 256}, epochs=3, batch_size=16, max_steps_per_epoch=3, device="cpu",
                        deterministic=True)  # fmt: skip


@pytest.mark.parametrize("keep", [False, True])
def test_tf_nas_weight_then_arch_on_even_steps_of_each_epoch_and_fresh_optimizers(monkeypatch, tmp_path, keep):
    """AberHu/TF-NAS train_w_arch: weight step, then ``if step % 2 == 0`` an arch step on a validation batch drawn
    only then; ``step`` restarts each epoch (3 steps: arch at 0 and 2 in every epoch after the 1-epoch warm-up);
    SGD and Adam built anew every epoch (empty state at its first step) unless ``keep_optimizer_state``."""
    from dnas_fast.strategies.tf_nas import TFNAS

    calls = []
    record_steps(monkeypatch, TFNAS, calls)
    config = tf_nas_config(tmp_path, **({"keep_optimizer_state": True} if keep else {}))
    run_search(config, tmp_path / "run", log=lambda *a: None)
    assert [c[0] for c in calls] == list("www") + list("wawwa") * 2
    first_w = [c for c in calls if c[0] == "w"][::3]  # the first weight step of each epoch
    assert [(c[3] > 0, c[4] > 0) for c in first_w] == [(False, False), (keep, False), (keep, keep)]
    searcher = Searcher(config, tmp_path / "x")
    data = searcher.data
    for epoch in (1, 2):  # arch steps take this epoch's validation batches 0 and 1 (none skipped)
        data.valid.set_epoch(epoch)
        want = [y for _, y in list(data.valid)[:2]]
        got = [c[2] for c in calls if c[0] == "a" and c[1] == epoch]
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == 2


def test_pr_darts_weight_step_before_arch_step(monkeypatch, tmp_path):
    from dnas_fast.strategies.pr_darts import PrDarts

    calls = []
    record_steps(monkeypatch, PrDarts, calls)
    run_search(SearchConfig(**{**TINY, "strategy": "pr-darts", "epochs": 1}), tmp_path / "run", log=lambda *a: None)
    assert [c[0] for c in calls] == list("wawawa")


def test_pr_darts_clips_weights_with_the_alphas_carrying_the_last_arch_gradient(monkeypatch):
    """test_PRDARTS.py search_func: ``clip_grad_norm_(network.parameters(), 5)`` after the weight backward, when the
    alphas' gradients hold the previous architecture step's plus the training loss's."""
    strategy, model, ctx = tiny("pr-darts", dtype=torch.float64)
    ctx.grad_clip = 1e-3  # every step clips
    train, valid = batch(seed=1, dtype=torch.float64), batch(seed=2, dtype=torch.float64)
    strategy.weight_step(ctx, train)
    strategy.arch_step(ctx, train, valid)
    arch_grads = [a.grad.clone() for a in strategy.arch_parameters()]
    rng = torch.get_rng_state()
    loss, _ = strategy.loss(ctx, *train, "weights")  # the same gates as the weight step below draws
    params = list(model.parameters()) + strategy.arch_parameters()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    for i, g in enumerate(arch_grads):
        grads[len(grads) - len(arch_grads) + i] = grads[len(grads) - len(arch_grads) + i] + g
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    torch.set_rng_state(rng)
    seen = []
    real = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda p, *a, **k: seen.append(list(p)) or real(p, *a, **k))
    ctx.w_optimizer.step = lambda: None  # keep the clipped gradients to compare
    strategy.weight_step(ctx, train)
    (clipped,) = seen
    assert len(clipped) == len(params) and all(a is b for a, b in zip(clipped, params))
    coef = 1e-3 / (total + 1e-6)
    for p, g in zip(model.parameters(), grads):
        got = torch.zeros_like(p) if p.grad is None else p.grad  # a closed op gets no gradient
        assert_close("clipped weight gradient", got, g * coef, atol=1e-18, rtol=1e-10)


def test_pc_darts_draws_a_fresh_random_validation_batch_every_step(monkeypatch, tmp_path):
    """PC-DARTS train_search.py: ``next(iter(valid_queue))`` every step (a new shuffle each time); ours is keyed
    by (seed, epoch, step) so a resumed search draws the same batches."""
    from dnas_fast.data.splits import derive_seed
    from dnas_fast.strategies.pc_darts import PcDarts

    calls = []
    record_steps(monkeypatch, PcDarts, calls)
    config = SearchConfig(**{**TINY, "strategy": "pc-darts", "strategy_args": {"warmup_epochs": 1}})
    run_search(config, tmp_path / "run", log=lambda *a: None)
    got = [(c[1], c[2]) for c in calls if c[0] == "a"]
    assert len(got) == 6
    valid = Searcher(config, tmp_path / "x").data.valid
    for i, (epoch, y) in enumerate(got):
        valid.set_epoch(derive_seed(RANDOM_VALID, 0, epoch, i % 3))
        assert torch.equal(y, next(iter(valid))[1])
    valid.set_epoch(0)
    sequential = [y for _, y in list(valid)[:3]]
    assert not all(torch.equal(a, b) for (_, a), b in zip(got, sequential))  # not one pass over the split


def ramp_loss(arch, phase):
    """A large loss whose alpha gradient is far above norm 5."""
    return 1e4 * sum(
        (a.weights * torch.arange(a.weights.shape[-1], dtype=a.weights.dtype)).sum() for a in arch.values()
    )


def test_arch_grad_clip_in_the_architecture_step():
    """ASAP (d1_asap.run_config: the alphas' Adam clips at norm 5) and PC-DARTS ImageNet (clip_grad_norm_ on the
    architecture parameters) clip the alpha gradients of the architecture step."""
    for name, args in (("asap", {}), ("pc-darts", {"arch_grad_clip": 5.0, "warmup_epochs": 0})):
        strategy, model, ctx = tiny(name, dtype=torch.float64, **args)
        strategy.extra_loss = ramp_loss
        ctx.a_optimizer.step = lambda: None
        strategy.arch_step(ctx, batch(dtype=torch.float64), batch(seed=2, dtype=torch.float64))
        norm = torch.linalg.vector_norm(torch.cat([a.grad.flatten() for a in strategy.arch_parameters()]))
        assert norm == pytest.approx(5.0, rel=1e-6), name


# ---- ASAP as UniNAS --------------------------------------------------------------------------------


def uninas_mask_all_weights_below(weights_sm, masks, p=0.4):
    """uninas/methods/darts.py ``mask_all_weights_below(p, div_by_numel=True)`` over the edges in order."""
    for w_sm, m in zip(weights_sm, masks):
        p /= w_sm.numel()
        m[w_sm < p] = 0


def test_asap_prunes_at_epoch_start_edge_by_edge_as_uninas_and_stops_when_every_edge_holds_one_op():
    strategy, model, ctx = tiny("asap")
    K = len(strategy.spec["cell"].op_names)
    hand = torch.zeros(6, K)
    hand[:, 0] = torch.tensor([6.0, 8.0, 2.0, 6.0, 6.0, 12.0])  # op 0 ahead by this much on each edge
    with torch.no_grad():
        strategy.alphas["cell"].copy_(hand)
    strategy.on_epoch_start(1, 50)  # epoch 1 prunes with the softmax of epoch 0's temperature (UniNAS's cache)
    masks = torch.ones(6, K)
    uninas_mask_all_weights_below(torch.softmax(hand / 1.6, -1), masks)
    assert torch.equal(~strategy.pruned_cell, masks.bool())
    assert 0 < int(strategy.pruned_cell.sum()) < 6 * (K - 1)  # the running threshold spares the later edges
    strategy.on_epoch_start(1, 50)  # a resumed epoch does not prune again
    assert torch.equal(~strategy.pruned_cell, masks.bool())
    assert not strategy.search_done()
    paper = Asap(threshold_rule="paper", theta=0.4)
    paper.setup(model.arch_spec())
    with torch.no_grad():
        paper.alphas["cell"].copy_(hand)
    paper.on_epoch_start(1, 50)
    assert torch.equal(paper.pruned_cell, torch.softmax(hand / 1.6, -1) < 0.4 / K)


def test_asap_search_stops_once_every_edge_holds_one_op(tmp_path):
    out = tmp_path / "run"
    logged = []
    config = SearchConfig(**{**TINY, "strategy": "asap", "strategy_args": {"threshold_rule": "paper", "theta": 5.0}})
    run_search(config, out, log=logged.append)  # theta / K = 1: all but the strongest op go at epoch 0's start
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines] == [None, 1]
    assert lines[1]["converged"] and lines[1]["active_ops_per_edge"] == 1.0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert any("search done after epoch 1 of 3" in line for line in logged)
    run_search(config, out, resume=True, log=lambda *a: None)  # a resumed finished search stays finished
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
