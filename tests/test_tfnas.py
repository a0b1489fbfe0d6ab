"""TF-NAS: MBConv candidates, mbconv space, bi-sampling, sink depth, elastic width, latency tables, search."""

import json

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from dnas_fast.arch import ArchWeights
from dnas_fast.ops import build_op
from dnas_fast.ops.mbconv import MBCONV_OPS, build_mbconv, parse_mbconv_name
from dnas_fast.spaces import build_space
from dnas_fast.spaces.mbconv import MBConvNet
from dnas_fast.strategies import StepContext, build_strategy
from dnas_fast.strategies.tf_nas_latency import (
    LatencyTable,
    SupernetLatency,
    base_key,
    block_key,
    build_table,
)
from tests.utils import assert_close

TINY = dict(stages=[[8, 2, 1, "relu"], [16, 2, 2, "swish"]], stem=[8, 8], stem_stride=1, head=16, resolution=8,
            in_channels=1, num_classes=10)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """CPU timings on a shared 2-core machine are far steadier on one thread (the table key records it), and
    tiny ops run faster without OpenMP hand-offs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_space(**kw):
    torch.manual_seed(0)
    return build_space("mbconv", **{**TINY, **kw})


def uniform_arch(space, dtype=torch.float32):
    return {
        g: ArchWeights(torch.softmax(torch.zeros(s.num_edges, len(s.op_names), dtype=dtype), -1))
        for g, s in space.arch_spec().items()
    }


def synthetic_table(space, per_channel=0.01, scale=1.0):
    """A table where a block costs ``0.1 + per_channel * width`` ms (+0.05 with SE); base 0.2 ms."""
    entries = {}
    for shape, edge in zip(space.flat_shapes(), space.block_edges()):
        for name, op in zip(edge.op_names, edge._ops):
            se = 0.05 if parse_mbconv_name(name)["se"] else 0.0
            widths = [op.max_mid // 2, op.max_mid]
            entries[block_key(name, shape)] = {"widths": widths, "ms": [0.1 + se + per_channel * w for w in widths]}
    return LatencyTable("test-device", 1, entries, {base_key(space.config): 0.2}, {"scale": scale})


# ---- candidate ops ---------------------------------------------------------------------------------------
def plain_mbconv(op, x, idx):
    """Functional MBConv over the expanded channels ``idx`` only (the authors' sliced block)."""
    act = F.relu if op.act_name == "relu" else F.silu
    bn = lambda h: F.batch_norm(h, None, None, training=True)  # affine-free, batch statistics (search BN)
    h = act(bn(F.conv2d(x, op.expand[0].weight[idx])))
    dw = op.depthwise[0]
    h = act(bn(F.conv2d(h, dw.weight[idx], stride=op.stride, padding=op.kernel_size // 2, groups=len(idx))))
    if op.se_channels:
        s = F.adaptive_avg_pool2d(h, 1)
        s = act(F.conv2d(s, op.se_reduce.weight[:, idx], op.se_reduce.bias))
        h = h * torch.sigmoid(F.conv2d(s, op.se_expand.weight[idx], op.se_expand.bias[idx]))
    out = bn(F.conv2d(h, op.project[0].weight[:, idx]))
    return out + x if op.has_residual else out


@pytest.mark.parametrize("name", MBCONV_OPS + [n + "_swish" for n in MBCONV_OPS[:2]])
@pytest.mark.parametrize("C_in,C_out,stride", [(4, 4, 1), (4, 6, 2)], ids=["res", "s2"])
def test_candidate_matches_plain_implementation_with_any_channel_mask(name, C_in, C_out, stride):
    torch.manual_seed(0)
    op = build_op(name, C_in, C_out, stride, False).double()
    p = parse_mbconv_name(name)
    assert op.max_mid == round(p["expansion"] * C_in * 4 / 3) and op.mid == p["expansion"] * C_in
    x = torch.randn(3, C_in, 7, 7, dtype=torch.double, requires_grad=True)
    for mask in (op.channel_mask.clone(), torch.rand(op.max_mid) < 0.6):
        op.set_channel_mask(mask)
        idx = mask.nonzero().flatten()
        out = op(x)
        ref = plain_mbconv(op, x, idx)
        assert out.shape == (3, C_out, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
        assert_close("out", out, ref, atol=1e-10)
        g = torch.randn_like(out)
        params = [op.expand[0].weight, op.depthwise[0].weight, op.project[0].weight]
        grads = torch.autograd.grad(out, [x, *params], g)
        ref_grads = torch.autograd.grad(ref, [x, *params], g)
        for n, a, b in zip(["x", "expand", "depthwise", "project"], grads, ref_grads):
            assert_close(f"grad {n}", a, b, atol=1e-9)
        # inactive channels get exactly zero gradient, so their weights stay put under plain SGD
        assert grads[2][~mask].abs().max() == 0


def test_mbconv_gradcheck_float64():
    torch.manual_seed(0)
    op = build_mbconv("mbconv_k3_e3_se", 2, 2, 1, False).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))


def test_bad_mbconv_names_and_masks_raise():
    with pytest.raises(ValueError, match="not an MBConv"):
        parse_mbconv_name("sep_conv_3x3")
    op = build_mbconv("mbconv_k3_e3", 4, 4, 1, False)
    with pytest.raises(ValueError, match="channel mask"):
        op.set_channel_mask(torch.zeros(op.max_mid, dtype=torch.bool))


# ---- space ------------------------------------------------------------------------------------------------
def test_space_builds_runs_and_derives_at_small_resolution():
    space = tiny_space()
    spec = space.arch_spec()
    assert spec["ops"].num_edges == 4 and len(spec["ops"].op_names) == 8
    # stage 1 keeps the shape (exit 0 allowed), stage 2 starts with a stride-2 block (exit 0 not allowed)
    assert spec["depth"].allowed.tolist() == [[True, True, True], [False, True, True]]
    for side in (8, 9):
        assert space(torch.randn(2, 1, side, side), uniform_arch(space)).shape == (2, 10)
    config = space.derive({"ops": torch.eye(8)[[1, 2, 3, 4]], "depth": torch.tensor([[0.0, 0.9, 0.1], [0, 0, 1]])})
    # block 1 is cut by stage 1's exit 1; ops 3 (k5_e6) and 4 (k3_e3_se) run in the swish stage
    assert [b["op"] for b in config["blocks"]] == ["mbconv_k3_e6", "mbconv_k5_e6_swish", "mbconv_k3_e3_se_swish"]
    assert [b["mid"] for b in config["blocks"]] == [48, 48, 48]
    assert MBConvNet(config)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_default_space_is_the_tfnas_imagenet_network():
    space = build_space("mbconv")
    shapes = space.flat_shapes()
    assert len(shapes) == 18 and shapes[0].H == 112 and shapes[-1].C_out == 320 and shapes[-1].H == 7
    assert [s.act for s in shapes[:3]] == ["relu", "relu", "swish"]


def test_sink_connecting_depth_equals_truncated_chain():
    space = tiny_space().double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.double)
    arch = uniform_arch(space, torch.double)
    ops = F.one_hot(torch.tensor([0, 5, 2, 7]), 8).double()
    arch["ops"] = ArchWeights(ops)
    for d1 in range(3):
        depth = torch.zeros(2, 3, dtype=torch.double)
        depth[0, d1], depth[1, 2] = 1.0, 1.0
        arch["depth"] = ArchWeights(depth)
        h = space.stem(x)
        chain = [space.stages[0][0]._ops[0], space.stages[0][1]._ops[5]][:d1]
        for op in chain + [space.stages[1][0]._ops[2], space.stages[1][1]._ops[7]]:
            h = op(h)
        assert_close(f"depth {d1}", space(x, arch), space.head(h), atol=1e-10)
    # mixed depth weights: the stage output is the weighted sum of exits
    w = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.4, 0.6]], dtype=torch.double)
    arch["depth"] = ArchWeights(w)
    s0 = space.stem(x)
    e1 = space.stages[0][0]._ops[0](s0)
    e2 = space.stages[0][1]._ops[5](e1)
    t = 0.2 * s0 + 0.5 * e1 + 0.3 * e2
    f1 = space.stages[1][0]._ops[2](t)
    expected = space.head(0.4 * f1 + 0.6 * space.stages[1][1]._ops[7](f1))
    assert_close("mixed depth", space(x, arch), expected, atol=1e-10)


# ---- strategy: bi-sampling ---------------------------------------------------------------------------------
def make_strategy(space, **kw):
    strategy = build_strategy("tf-nas", **{"latency_target": 0.5, "warmup_epochs": 0, **kw})
    strategy.setup(space.arch_spec())
    return strategy


def test_bisampling_statistics_distinct_paths_and_uniform_rest():
    space = tiny_space()
    strategy = make_strategy(space)
    probs = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    with torch.no_grad():
        strategy.alphas["ops"].copy_(probs.log().expand(4, 8))
    torch.manual_seed(0)
    n = 4000
    first, second = torch.zeros(8, dtype=torch.long), torch.zeros(8, 8, dtype=torch.long)
    for _ in range(n):
        g, r = strategy.sample_paths(bi=True)
        assert (g != r).all()
        first += torch.bincount(g[:1], minlength=8)
        second[g[0], r[0]] += 1
    assert chisquare(first.numpy(), (probs * n).numpy()).pvalue > 1e-3
    for k in range(8):  # given the Gumbel op k, the random op is uniform over the other 7
        rest = torch.cat([second[k, :k], second[k, k + 1 :]])
        assert chisquare(rest.numpy()).pvalue > 1e-3, (k, rest)


def test_weight_step_runs_only_the_two_sampled_ops_per_block():
    space = tiny_space()
    strategy = make_strategy(space)
    strategy.table = synthetic_table(space)
    calls = {}
    for e, edge in enumerate(space.block_edges()):
        for k, op in enumerate(edge._ops):
            op.register_forward_hook(lambda *a, key=(e, k): calls.__setitem__(key, calls.get(key, 0) + 1))
    opt = torch.optim.SGD(space.parameters(), 0.1, momentum=0.9)
    ctx = StepContext(space, space, torch.nn.CrossEntropyLoss(), opt, None, 0.1)
    torch.manual_seed(1)
    loss, logits = strategy.weight_step(ctx, (torch.randn(4, 1, 8, 8), torch.randint(10, (4,))))
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    for e in range(4):
        ran = sorted(k for (b, k) in calls if b == e)
        assert len(ran) == 2 and all(calls[(e, k)] == 1 for k in ran), calls
    strategy.warmup_epochs, calls = 1, {}  # warm-up: the Gumbel path only
    strategy.weight_step(ctx, (torch.randn(4, 1, 8, 8), torch.randint(10, (4,))))
    assert len(calls) == 4


def test_strategy_state_roundtrip_keeps_table_and_schedule(tmp_path):
    space = tiny_space()
    strategy = make_strategy(space, warmup_epochs=2)
    strategy.table = synthetic_table(space)
    strategy.on_epoch_start(5, 10)
    assert abs(float(strategy.tau) - 5.0 * 0.96**3) < 1e-12
    torch.save(strategy.state_dict(), tmp_path / "s.pt")
    fresh = make_strategy(space, warmup_epochs=2)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=False))
    assert fresh.table.entries == strategy.table.entries and float(fresh.tau) == float(strategy.tau)
    assert fresh.table.meta["scale"] == 1.0


def test_strategy_bad_inputs_raise():
    with pytest.raises(ValueError, match="latency_target"):
        build_strategy("tf-nas")
    strategy = build_strategy("tf-nas", latency_target=1.0)
    with pytest.raises(ValueError, match="mbconv space"):
        strategy.setup(build_space("nb201", C=4, N=1).arch_spec())
    space = tiny_space()
    strategy.setup(space.arch_spec())
    strategy.table = synthetic_table(space)
    ctx = StepContext(space, space, torch.nn.CrossEntropyLoss(), torch.optim.SGD(space.parameters(), 0.1), None, 0.1)
    with pytest.raises(ValueError, match="resolution"):
        strategy.weight_step(ctx, (torch.randn(2, 1, 16, 16), torch.randint(10, (2,))))


# ---- latency model and elastic width -----------------------------------------------------------------------
def test_expected_latency_is_differentiable_and_matches_derived():
    space = tiny_space()
    model = SupernetLatency(synthetic_table(space, scale=1.1), space)
    lat = model.block_table(space.widths()).double()
    w = torch.softmax(torch.randn(4, 8, dtype=torch.double), -1).requires_grad_()
    d = torch.softmax(torch.randn(2, 3, dtype=torch.double), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, d: model.expected(w, d, lat), (w, d))
    ops, depths = [3, 1, 6, 0], [1, 2]
    onehot_d = F.one_hot(torch.tensor(depths), 3).double()
    got = model.expected(F.one_hot(torch.tensor(ops), 8).double(), onehot_d, lat)
    by_hand = 1.1 * (0.2 + sum(float(lat[e, ops[e]]) for e in (0, 2, 3)))
    assert abs(float(got) - by_hand) < 1e-12 and abs(model.derived(ops, depths, space.widths()) - by_hand) < 1e-12


@pytest.mark.parametrize("target,direction", [(0.5, -1), (5.0, 1)], ids=["shrink", "expand"])
def test_elastic_width_keeps_optimizer_state_and_moves_latency_toward_target(target, direction):
    space = tiny_space()
    strategy = make_strategy(space, latency_target=target)
    strategy.table = synthetic_table(space)
    opt = torch.optim.SGD(space.parameters(), 0.1, momentum=0.9)
    ctx = StepContext(space, space, torch.nn.CrossEntropyLoss(), opt, None, 0.1)
    strategy.on_epoch_start(0, 2)
    strategy.weight_step(ctx, (torch.randn(4, 1, 8, 8), torch.randint(10, (4,))))
    params = {n: p for n, p in space.named_parameters()}
    momenta = {n: opt.state[p]["momentum_buffer"].clone() for n, p in params.items() if p in opt.state}
    ops, depths = strategy.parse()
    model = strategy.latency_model(space)
    widths_before = space.widths()
    before = model.derived(ops, depths, widths_before)
    strategy.on_epoch_start(1, 2)  # an architecture epoch has finished: fit the widths
    strategy._prepare(space)
    after = model.derived(ops, depths, space.widths())
    assert (after - before) * direction > 0, (before, after, target)
    assert (space.widths() != widths_before).any()
    if direction < 0:
        assert after <= target or (space.widths() == space.max_widths() // 2).any()
    else:
        assert after <= target
    for n, p in space.named_parameters():  # same objects, momentum buffers untouched
        assert p is params[n]
        if n in momenta:
            assert torch.equal(opt.state[p]["momentum_buffer"], momenta[n])


# ---- latency table -------------------------------------------------------------------------------------------
def test_lut_measures_every_width_by_default_and_roundtrips(tmp_path):
    space = tiny_space(stages=[[8, 1, 1, "relu"], [16, 1, 2, "swish"]], stem=[8, 8], head=16)
    table = build_table(space, "cpu", repeats=1, warmup=0)
    assert len(table.entries) == 16 and "scale" not in table.meta and table.meta["widths"] == "every"
    for edge, shape in zip(space.block_edges(), space.flat_shapes()):
        for name, op in zip(edge.op_names, edge._ops):  # the authors' table: every selectable width timed
            assert table.entries[block_key(name, shape)]["widths"] == list(range(op.max_mid // 2, op.max_mid + 1))
    path = tmp_path / "lut.json"
    table.save(path)
    LatencyTable("other-device", 32, {}, {}).save(path)  # a second device merges into the same file
    loaded = LatencyTable.load(path, table.device)
    assert loaded.entries == table.entries and loaded.base == table.base
    assert sorted(json.loads(path.read_text())["devices"]) == sorted([table.device, "other-device"])
    with pytest.raises(ValueError, match="no latency table for device"):
        LatencyTable.load(path, "cpu:nope")


def test_lut_interpolates_only_when_asked_for_sampled_widths():
    space = tiny_space(stages=[[8, 1, 1, "relu"]], stem=[8, 8], head=16)
    logged = []
    table = build_table(space, "cpu", fractions=(0.5, 1.0), repeats=1, warmup=0, log=logged.append)
    assert any("interpolated" in line for line in logged)
    key, entry = next(iter(table.entries.items()))
    (lo, hi), (ms_lo, ms_hi) = entry["widths"], entry["ms"]
    assert table.latency(key, (lo + hi) / 2) == pytest.approx((ms_lo + ms_hi) / 2)


def test_latency_cli_build(tmp_path):
    from dnas_fast.cli import main

    out = tmp_path / "t.json"
    space_args = json.dumps({**TINY, "stages": [[8, 1, 1, "relu"]]})
    argv = ["latency", "build", "--space-args", space_args, "--out", str(out), "--widths", "0.5,1", "--repeats", "5"]
    assert main([*argv, "--calibrate", "1"]) == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "dnas_fast.latency" and doc["version"] == 1
    (device,) = doc["devices"]
    assert len(doc["devices"][device]["entries"]) == 8 and "threads=1" in device


def test_search_resume_is_bitwise_exact(tmp_path):
    """N epochs straight == k epochs, stop, resume (alphas, widths, weights, temperature)."""
    from dnas_fast.search import SearchConfig, Searcher, run_search

    space_args = {**TINY, "stages": [[8, 1, 1, "relu"], [16, 1, 2, "swish"]]}
    del space_args["in_channels"], space_args["num_classes"]
    table = synthetic_table(build_space("mbconv", in_channels=1, num_classes=10, **space_args))
    table.save(tmp_path / "lut.json")
    strategy_args = {"latency_target": 0.5, "latency_table": str(tmp_path / "lut.json"), "warmup_epochs": 1,
                     "latency_device": "test-device"}  # fmt: skip
    config = dict(space="mbconv", strategy="tf-nas", space_args=space_args, strategy_args=strategy_args,
                  data="digits", epochs=3, batch_size=16, max_steps_per_epoch=4, device="cpu",
                  deterministic=True)  # fmt: skip
    run_search(SearchConfig.from_dict(config), tmp_path / "straight", log=lambda *a: None)
    stopped = Searcher(SearchConfig.from_dict(config), tmp_path / "resumed")
    stopped.run_dir.mkdir()
    for _ in range(2):  # two epochs, then the process "dies" after its checkpoint
        stopped.train_epoch()
        stopped.evaluate()
        stopped.epoch += 1
        stopped.save()
    run_search(SearchConfig.from_dict(config), tmp_path / "resumed", resume=True, log=lambda *a: None)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for key in ("model", "strategy_state"):
        for name, value in a[key].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"


def test_search_log_keeps_the_base_fields_and_times_every_step(tmp_path):
    """TF-NAS overrides arch_step, weight_step and its log hook: the loop still logs step time, the DARTS-
    beta and the Hessian eigenvalue."""
    from dnas_fast.search import SearchConfig, run_search

    space_args = {k: v for k, v in TINY.items() if k not in ("in_channels", "num_classes")}
    synthetic_table(build_space("mbconv", **TINY)).save(tmp_path / "lut.json")
    strategy_args = {"latency_target": 0.5, "latency_table": str(tmp_path / "lut.json"), "warmup_epochs": 0,
                     "latency_device": "test-device", "aux_skip": "linear", "hessian_eigenvalue": True,
                     "hessian_iters": 2}  # fmt: skip
    config = SearchConfig(space="mbconv", strategy="tf-nas", space_args=space_args, strategy_args=strategy_args,
                          data="digits", epochs=1, batch_size=8, max_steps_per_epoch=2, device="cpu")  # fmt: skip
    run_search(config, tmp_path / "run", log=lambda *a: None)
    (log,) = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()[1:]]  # header
    assert 0 < 2 * log["step_time"] <= log["epoch_time"]
    assert log["aux_beta"] == 1.0 and isinstance(log["hessian_eigenvalue"], float)
    assert log["tau"] == 5.0 and log["expected_latency_ms"] > 0


def test_cli_search_measures_its_own_table_and_logs(tmp_path, capsys):
    from dnas_fast.cli import main

    space_args = json.dumps({k: v for k, v in TINY.items() if k not in ("in_channels", "num_classes")})
    argv = ["search", "--space", "mbconv", "--strategy", "tf-nas", "--latency-target", "0.5", "--space-args",
            space_args, "--strategy-args", '{"warmup_epochs": 1, "lut_repeats": 2}', "--data", "digits",
            "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "run"), "--device", "cpu",
            "--max-steps-per-epoch", "3"]  # fmt: skip
    assert main(argv) == 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()[1:]]
    assert logs[0]["tau"] == 5.0 and "expected_latency_ms" not in logs[0]  # warm-up: no arch step
    assert logs[1]["expected_latency_ms"] > 0
    derived = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert derived["predicted_latency_ms"] > 0 and derived["config"]["blocks"]
    assert main(["latency", "measure", str(tmp_path / "run" / "genotype.json"), "--repeats", "5"]) == 0
    assert "measured" in capsys.readouterr().out


# ---- end to end --------------------------------------------------------------------------------------------
E2E_SPACE = {"stages": [[32, 2, 1, "relu"], [48, 3, 2, "swish"]], "stem": [16, 32], "stem_stride": 1, "head": 64,
             "resolution": 8}  # fmt: skip


@pytest.mark.slow
def test_cli_search_hits_the_latency_target_of_its_table(tmp_path):
    """The mechanism: the derived network's table latency lands within 10% of the target (no wall clock; the
    measured latency on a real device is bench/bench_tfnas_latency.py's claim)."""
    from dnas_fast.cli import main

    space = build_space("mbconv", in_channels=1, num_classes=10, **E2E_SPACE)
    synthetic_table(space).save(tmp_path / "lut.json")
    model = SupernetLatency(synthetic_table(space), space)
    E = len(space.flat_shapes())
    lo = model.derived([0] * E, [0, 1], space.max_widths() // 2)
    hi = model.derived([7] * E, [2, 3], space.max_widths())
    target = lo + 0.55 * (hi - lo)  # inside the achievable range of this space
    run = tmp_path / "run"
    args = {"warmup_epochs": 1, "arch_lr": 0.1, "lambda_lat": 1.0, "latency_device": "test-device"}
    argv = ["search", "--space", "mbconv", "--strategy", "tf-nas", "--latency-target", f"{target:.4f}",
            "--latency-table", str(tmp_path / "lut.json"), "--space-args", json.dumps(E2E_SPACE),
            "--strategy-args", json.dumps(args), "--data", "digits", "--epochs", "6", "--batch-size", "16",
            "--out", str(run), "--device", "cpu", "--max-steps-per-epoch", "30"]  # fmt: skip
    assert main(argv) == 0
    predicted = json.loads((run / "genotype.json").read_text())["predicted_latency_ms"]
    print(f"target {target:.4f} ms (range {lo:.4f}-{hi:.4f}), predicted {predicted:.4f} ms")
    assert abs(predicted / target - 1) < 0.10
