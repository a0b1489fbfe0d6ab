"""Whole-step CUDA graphs (``--cuda-graphs``, :mod:`dnas_fast.cuda_graphs`).

On the CPU: the config and device checks, the fallback decision per strategy and setup with its log line, the
optimizer settings of a capture, and the whole replay plumbing through the search loop with an emulated graph
(a "replay" re-runs the captured function on the static buffers under the capture's settings; the CPU cannot
capture). On a GPU (``cuda`` marker): eager and captured searches reach the same alphas and weights, and a
replayed step issues no host sync.
"""

import json
import logging
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from dnas_fast import cuda_graphs
from dnas_fast.cli import main
from dnas_fast.cuda_graphs import CapturedStep, captured_step, device_lr_sgd, fallback_reason
from dnas_fast.search import SearchConfig, Searcher
from dnas_fast.strategies import build_strategy, known_strategies, strategy_class
from dnas_fast.strategies.darts import Darts

TINY = dict(
    space="nb201", space_args={"C": 4, "N": 1}, data="digits", data_args={"limit": 256}, epochs=3,
    batch_size=48, deterministic=True, backend="reference", device="cpu",
)  # fmt: skip  # 128 training images: batches of 48, 48, 32 (an epoch's last batch is partial)


def test_cuda_graphs_on_a_cpu_device_is_refused_by_the_config_and_the_searcher(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        SearchConfig(cuda_graphs=True, device="cpu").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" resolves to the CPU
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device; this search runs on cpu"):
        Searcher(SearchConfig(**{**TINY, "device": "auto", "cuda_graphs": True}), tmp_path)


def test_cli_flag_sets_the_field_and_a_cpu_run_exits_2(tmp_path, capsys):
    assert main(["search", "--out", str(tmp_path / "r"), "--device", "cpu", "--cuda-graphs"]) == 2
    assert "cuda_graphs needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("name", [*known_strategies(), "a-users-own"])
def test_only_strategies_without_host_work_in_the_step_are_captured(name):
    aux_skip = "linear" if name == "darts-minus" else None  # darts-minus always has one
    # a user's subclass of DARTS does not inherit DARTS's capture_safe: it may add host work to the step
    cls = strategy_class(name) if name != "a-users-own" else type("Own", (Darts,), {"name": name})
    strategy = SimpleNamespace(name=name, aux_skip=aux_skip, capture_safe=cls.capture_safe)
    reason = fallback_reason(strategy, "fp32", world_size=1)
    expected = {"darts": None, "pc-darts": None, "darts-minus": "aux_skip", "a-users-own": "not known"}
    why = expected.get(name, "host")
    assert reason is None if why is None else why in reason


@pytest.mark.parametrize(
    "strategy_args, precision, world_size, why",
    [
        ({"aux_skip": "linear"}, "fp32", 1, "aux_skip"),
        ({}, "fp16", 1, "GradScaler"),
        ({}, "fp32", 2, "multi-process"),
        ({"order": 2}, "bf16", 1, None),
    ],
    ids=["aux-skip", "fp16", "torchrun", "second-order-bf16"],
)
def test_setups_that_sync_or_change_per_epoch_fall_back(strategy_args, precision, world_size, why):
    reason = fallback_reason(build_strategy("darts", **strategy_args), precision, world_size)
    assert reason is None if why is None else why in reason


def fake_searcher(strategy: str):
    """What :func:`captured_step` reads of a Searcher, on a CUDA device that is never touched."""
    return SimpleNamespace(
        device=torch.device("cuda"), strategy=build_strategy(strategy), world_size=1, device_step=None,
        config=SimpleNamespace(precision="fp32", batch_size=8), w_optimizer=None, a_optimizer=None,
    )  # fmt: skip


def test_a_fallback_says_why_in_one_log_line_and_a_safe_strategy_is_captured(caplog):
    with caplog.at_level(logging.INFO, logger="dnas_fast.cuda_graphs"):
        assert captured_step(fake_searcher("snas")) is None
        assert isinstance(captured_step(fake_searcher("darts")), CapturedStep)
    assert [r.getMessage() for r in caplog.records] == [
        "cuda_graphs: strategy 'snas' runs eagerly: it reads its sampled masks to the host every step (masks_to_cpu)"
    ]


def test_the_lr_tensor_is_written_in_place_and_only_when_the_schedule_moves():
    step = CapturedStep(None, None, None, batch_size=8)
    step.set_lr(0.025, torch.device("cpu"))
    lr, version = step.lr, step.lr._version
    step.set_lr(0.025, torch.device("cpu"))
    assert step.lr._version == version  # unchanged: no write
    step.set_lr(0.01, torch.device("cpu"))
    assert step.lr is lr and step.lr.item() == pytest.approx(0.01)  # same tensor: a graph keeps reading it


def test_fused_sgd_with_a_device_lr_takes_the_foreach_steps_and_restores_the_settings():
    params = [torch.randn(5, 3, requires_grad=True) for _ in range(2)]
    copies = [p.detach().clone().requires_grad_() for p in params]
    run, ref = (torch.optim.SGD(ps, 0.1, momentum=0.9, weight_decay=3e-4, foreach=True) for ps in (params, copies))
    lr = torch.tensor(0.1)
    for i in range(3):
        for p, c in zip(params, copies):
            p.grad, c.grad = torch.full_like(p, i + 1.0), torch.full_like(c, i + 1.0)
        with device_lr_sgd(run, lr):
            assert run.param_groups[0]["fused"] and run.param_groups[0]["lr"] is lr
            run.step()
        ref.step()
    assert run.param_groups[0]["lr"] == 0.1 and run.param_groups[0]["foreach"] and not run.param_groups[0]["fused"]
    for p, c in zip(params, copies):
        torch.testing.assert_close(p, c)


class EmulatedGraph(CapturedStep):
    """A CapturedStep whose graph is emulated on the CPU: capturing runs the step (standing in for the replay
    that follows it), each later replay re-runs it on the static buffers under the capture's optimizer settings
    and writes its results into the static outputs."""

    captures = replays = 0

    def capture(self, run):
        self.captures += 1
        outputs, pending = run(), [True]

        def replay():
            if pending:  # the capture ran this step
                pending.clear()
                return
            self.replays += 1
            with device_lr_sgd(self.w_optimizer, self.lr):
                for static, new in zip(outputs, run()):
                    static.copy_(new)

        return replay, outputs


def trained(searcher) -> dict:
    searcher.run(log=lambda *_: None)
    state = {f"alpha.{k}": v for k, v in searcher.strategy.state_dict().items()}
    return {**state, **searcher.space.state_dict(), "guard steps": torch.tensor(searcher.guard.host_steps)}


def test_an_emulated_capture_follows_the_eager_search_through_partial_batches_and_lr_changes(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(cuda_graphs, "capturable_adam", lambda optimizer: nullcontext())  # CUDA-only Adam mode
    eager = trained(Searcher(SearchConfig(**TINY), tmp_path / "eager"))
    searcher = Searcher(SearchConfig(**TINY), tmp_path / "graph")
    searcher.captured = EmulatedGraph(
        searcher.device_step, searcher.w_optimizer, searcher.a_optimizer, batch_size=48, warmup=1
    )
    with caplog.at_level(logging.INFO, logger="dnas_fast.cuda_graphs"):
        graph = trained(searcher)
    # 3 epochs x (2 full steps + 1 partial): 1 warm-up, 1 capture, 4 replays, 3 eager partial steps
    assert (searcher.captured.captures, searcher.captured.replays) == (1, 4)
    assert sum("captured the search step" in r.getMessage() for r in caplog.records) == 1
    assert eager.keys() == graph.keys()
    for key in eager:
        torch.testing.assert_close(graph[key], eager[key], msg=key)
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines()[1:] for d in ("eager", "graph")]
    losses = [[json.loads(line)["train_loss"] for line in log] for log in logs]  # from the static outputs
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


# ---- on a GPU ----------------------------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_BATCH = 8


def gpu_searcher(tmp_path, cuda_graphs: bool, order: int = 1) -> Searcher:
    config = SearchConfig(
        space="darts", space_args={"C": 8, "layers": 5}, strategy_args={"order": order}, epochs=2,
        batch_size=GPU_BATCH, device="cuda", cuda_graphs=cuda_graphs,
    )  # fmt: skip
    return Searcher(config, tmp_path, data=SimpleNamespace(in_channels=3, num_classes=10))


def gpu_batches(n: int, size: int = GPU_BATCH) -> list:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 16, 16, generator=gen).cuda(), torch.randint(10, (size,), generator=gen).cuda())
            for _ in range(n)]  # fmt: skip


def ten_steps(searcher: Searcher) -> list:
    """10 steps over an epoch boundary: epoch 1 has 5 full steps and a partial one, epoch 2 four full steps at
    the next lr. Returns the per-step losses."""
    full, partial = gpu_batches(20), gpu_batches(2, size=GPU_BATCH // 2)
    losses, ctx = [], searcher.context()
    for step in range(10):
        if step == 6:
            searcher.scheduler.step()
            ctx = searcher.context()
        train, valid = (partial[0], partial[1]) if step == 5 else (full[2 * step], full[2 * step + 1])
        loss, _ = searcher.search_step(ctx, train, valid)
        losses.append(loss.clone())  # a replay overwrites its static loss
    return losses


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("order", [1, 2])
def test_gpu_captured_search_matches_eager(tmp_path, order):
    results = []
    for cuda_graphs_on in (False, True):
        torch.manual_seed(0)
        searcher = gpu_searcher(tmp_path, cuda_graphs_on, order)
        losses = ten_steps(searcher)
        torch.cuda.synchronize()
        assert (searcher.captured is not None) == cuda_graphs_on
        results.append((searcher, torch.stack(losses)))
    (eager, eager_losses), (graph, graph_losses) = results
    assert graph.captured.replay is not None  # the last steps were replays
    # fused SGD and capturable Adam round differently from the eager foreach ones: float32 noise, not drift
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.strategy.named_parameters(), graph.strategy.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=name)
    for (name, a), b in zip(eager.space.state_dict().items(), graph.space.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=name)
    assert graph.guard.host_steps == eager.guard.host_steps == 10
    assert graph.guard.steps.item() == 10


@pytest.mark.cuda
@needs_gpu
def test_gpu_a_replayed_step_issues_no_host_sync(tmp_path):
    searcher = gpu_searcher(tmp_path, cuda_graphs=True)
    ctx, batches = searcher.context(), gpu_batches(2)
    for _ in range(cuda_graphs.WARMUP_STEPS + 1):  # warm-ups, then the capture
        searcher.search_step(ctx, *batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        searcher.search_step(ctx, *batches)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
