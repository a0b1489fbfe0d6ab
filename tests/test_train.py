"""Training from scratch (``dnas-fast train``), the evaluation networks, and the child of a search (``eval-child``)."""

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnas_fast.cli import main
from dnas_fast.data.evaluation import build_eval_data
from dnas_fast.data.sources import CIFAR_STATS
from dnas_fast.data.splits import generator
from dnas_fast.genotype import NAMED_GENOTYPES, genotype_to_json
from dnas_fast.guard import DivergedError
from dnas_fast.interop import load_authors_eval_state
from dnas_fast.networks import NetworkCIFAR, NetworkImageNet, count_macs_m, count_parameters_mb
from dnas_fast.search import SearchConfig, run_search
from dnas_fast.spaces.mbconv import MBConvSpace
from dnas_fast.train import (
    Architecture,
    TrainConfig,
    Trainer,
    child_arch_weights,
    cutout,
    eval_child,
    recalibrate_bn,
    resolve_architecture,
    run_train,
)
from tests.authors_eval_layout import AuthorsNetworkEval
from tests.test_data import write_cifar, write_folder, write_npz
from tests.test_distributed import free_port
from tests.test_interop import randomize
from tests.utils import assert_close

NB201_ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
TINY = dict(data="digits", C=4, layers=3, epochs=2, batch_size=32, auxiliary=False, cutout_length=3,
            drop_path_prob=0.2, max_steps_per_epoch=4, deterministic=True)  # fmt: skip
quiet = dict(log=lambda *_: None)


def tiny_mbconv_config():
    space = MBConvSpace(stages=[[8, 1, 1, "relu"], [16, 2, 2, "swish"]], stem=[8, 8], stem_stride=1, head=32,
                        resolution=8, in_channels=1, num_classes=10)  # fmt: skip
    return space.derived_config([1, 4, 6], [1, 2], space.widths())


# ---- published counts ------------------------------------------------------------------------------------
def test_darts_v2_cifar10_has_the_published_3_3m_parameters_without_the_auxiliary_head():
    net = NetworkCIFAR(36, 10, 20, True, NAMED_GENOTYPES["DARTS_V2"])
    params = count_parameters_mb(net)
    assert round(params, 1) == 3.3  # DARTS paper, Table 1
    assert sum(p.numel() for p in net.parameters()) / 1e6 > params + 0.4  # the auxiliary head is left out
    assert 500 < count_macs_m(net, (1, 3, 32, 32)) < 560  # conv + linear multiply-adds of one 32x32 image


@pytest.mark.parametrize(
    "name,imagenet,published",
    [("PC_DARTS_cifar", False, 3.6), ("PDARTS", False, 3.4), ("DARTS_V2", True, 4.7), ("PC_DARTS_image", True, 5.3),
     ("PDARTS", True, 4.9)],
)  # fmt: skip
def test_published_parameter_counts(name, imagenet, published):
    """PC-DARTS Tables 1 and 3, P-DARTS Tables 1 and 3, DARTS Table 3 (M parameters, auxiliary head excluded)."""
    network, C, classes, layers = (NetworkImageNet, 48, 1000, 14) if imagenet else (NetworkCIFAR, 36, 10, 20)
    assert round(count_parameters_mb(network(C, classes, layers, True, NAMED_GENOTYPES[name])), 1) == published


# ---- architectures ---------------------------------------------------------------------------------------
def test_every_accepted_architecture_form_parses(tmp_path):
    v2 = NAMED_GENOTYPES["DARTS_V2"]
    assert resolve_architecture("DARTS_V2").value == v2
    assert resolve_architecture("DARTS").value == v2
    assert resolve_architecture(repr(v2)).value == v2
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "genotype.json").write_text(genotype_to_json(v2))
    assert resolve_architecture(str(tmp_path / "run")).value == v2
    assert resolve_architecture(str(tmp_path / "run" / "genotype.json")).value == v2
    nb = resolve_architecture(NB201_ARCH)
    assert (nb.kind, nb.value) == ("nb201", NB201_ARCH)
    (tmp_path / "nb.json").write_text(json.dumps(NB201_ARCH))
    assert resolve_architecture(str(tmp_path / "nb.json")).kind == "nb201"
    config = tiny_mbconv_config()
    (tmp_path / "tfnas.json").write_text(json.dumps({"config": config, "mflops": 1.0}))  # TFNASArch.to_json
    assert resolve_architecture(str(tmp_path / "tfnas.json")).value == config
    for name in NAMED_GENOTYPES:
        NetworkCIFAR(4, 10, 3, False, NAMED_GENOTYPES[name])(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="known name"):
        resolve_architecture("DARTS_V9")
    with pytest.raises(ValueError, match="must read inputs"):
        resolve_architecture("|nor_conv_3x3~1|")


def test_a_new_space_family_is_one_registry_entry(monkeypatch):
    """Reading an architecture, the authors' defaults, the family check and the network ask the families only."""
    import dnas_fast.spaces.family as families
    from dnas_fast.registry import Registry
    from dnas_fast.spaces import SpaceFamily
    from dnas_fast.train import build_network

    class Toy(SpaceFamily):
        name, label, text_forms = "toy", "toy network", ("a toy string (toy:WIDTH)",)
        train_defaults = {"toy-cifar": dict(epochs=3, batch_size=8, lr=0.5, lr_schedule="cosine", weight_decay=0.0,
                                            C=4, layers=1)}  # fmt: skip

        def from_text(self, text):
            return int(text[4:]) if text.startswith("toy:") else None

        def build_network(self, width, config, in_channels, num_classes):
            return torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.LazyLinear(width), torch.nn.Linear(width, num_classes)
            )

    registry = Registry("space family", "space families")
    for family in families.space_families():
        registry.add(family.name, family)
    monkeypatch.setattr(families, "_FAMILIES", registry)  # the toy leaves with the test
    families.register_family(Toy())
    arch = resolve_architecture("toy:7")
    assert (arch.kind, arch.value, arch.to_json(), arch.describe()) == ("toy", 7, 7, "7")
    config, sources = TrainConfig().resolved(arch)
    assert (config.family, config.lr, config.momentum, sources["lr"]) == ("toy-cifar", 0.5, 0.9, "authors")
    assert build_network(arch, config, 1, 10)[-1].out_features == 10
    with pytest.raises(ValueError, match="cannot be trained as family 'cifar'"):
        TrainConfig(family="cifar").resolved(arch)
    with pytest.raises(ValueError, match="cannot be trained as family 'toy-cifar'"):
        TrainConfig(family="toy-cifar").resolved(resolve_architecture("DARTS_V2"))
    with pytest.raises(ValueError, match=r"a toy string \(toy:WIDTH\)"):
        resolve_architecture("resnet50")


# ---- interop with the authors' evaluation networks --------------------------------------------------------
@pytest.mark.parametrize("imagenet", [False, True])
def test_authors_eval_checkpoint_loads_and_gives_their_forward_in_float64(imagenet):
    torch.manual_seed(0)
    genotype = NAMED_GENOTYPES["PDARTS"]  # every op kind but max pool, and nodes reading nodes
    theirs = AuthorsNetworkEval(8, 10, 5, True, genotype, imagenet=imagenet).double()
    randomize(theirs)
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}  # PyTorch 0.3
    if imagenet:
        state = {"module." + k: v for k, v in state.items()}  # their nn.DataParallel checkpoint
    ours = (NetworkImageNet if imagenet else NetworkCIFAR)(8, 10, 5, True, genotype).double()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    load_authors_eval_state(ours, state)
    side = 224 if imagenet else 32  # the smallest inputs the auxiliary heads take
    x = torch.randn(2, 3, side, side, dtype=torch.double)
    for mode in ("eval", "train"):
        theirs.train(mode == "train"), ours.train(mode == "train")
        (a, a_aux), (b, b_aux) = theirs(x), ours(x)
        assert_close(f"{mode} logits", b, a, atol=1e-10, rtol=1e-10)
        if mode == "train":
            assert_close("aux logits", b_aux, a_aux, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="does not match"):
        load_authors_eval_state(NetworkCIFAR(8, 10, 5, True, NAMED_GENOTYPES["DARTS_V1"]).double(), state)


# ---- pieces of the loop ----------------------------------------------------------------------------------
def test_cutout_zeroes_the_authors_clipped_square():
    x = torch.ones(4, 2, 9, 9)
    out = cutout(x, 4, generator(5))
    gen = generator(5)
    cy, cx = torch.randint(0, 9, (4,), generator=gen), torch.randint(0, 9, (4,), generator=gen)
    for n in range(4):  # quark0/darts utils.Cutout
        mask = np.ones((9, 9), np.float32)
        y1, y2 = np.clip(cy[n].item() - 2, 0, 9), np.clip(cy[n].item() + 2, 0, 9)
        x1, x2 = np.clip(cx[n].item() - 2, 0, 9), np.clip(cx[n].item() + 2, 0, 9)
        mask[y1:y2, x1:x2] = 0.0
        assert torch.equal(out[n], torch.from_numpy(mask).expand(2, 9, 9))


def test_schedules_follow_the_authors():
    cifar, _ = TrainConfig(epochs=10).resolved(resolve_architecture("DARTS_V2"))
    assert [cifar.lr_at(e) for e in (0, 5)] == [0.025, pytest.approx(0.0125)]
    imagenet, sources = TrainConfig(data="imagefolder", lr=0.2).resolved(resolve_architecture("DARTS_V2"))
    assert imagenet.family == "imagenet" and imagenet.lr_at(3) == pytest.approx(0.2 * 0.97**3)
    assert sources["lr"] == "user" and sources["label_smoothing"] == "authors" and imagenet.label_smoothing == 0.1
    mbconv, _ = TrainConfig(epochs=250).resolved(Architecture("mbconv", {}))
    assert mbconv.lr_at(0) == pytest.approx(0.2 / 5)  # TF-NAS warm-up of batches above 256
    assert TrainConfig(batch_size=256).resolved(Architecture("mbconv", {}))[0].warmup_epochs == 0
    assert mbconv.lr_at(125) == pytest.approx(0.2 * (1 + math.cos(math.pi / 2)) / 2)


# ---- the loop end to end ---------------------------------------------------------------------------------
def test_a_derived_genotype_trains_on_digits_well_above_chance(tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(arch="DARTS_V2", data="digits", C=8, layers=5, epochs=3, batch_size=64, lr=0.05,
                         auxiliary=False, cutout_length=0, drop_path_prob=0.1)  # fmt: skip
    result = run_train(config, tmp_path, **quiet)
    assert result["test_acc"] > 0.8  # chance is 0.1; 3 epochs reach ~0.92
    header = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert header["settings"]["weight_decay"] == {"value": 3e-4, "source": "authors"}
    assert header["settings"]["C"] == {"value": 8, "source": "user"}
    assert header["settings"]["channels_last"] == {"value": True, "source": "default on cpu"}


def test_resume_is_bitwise_identical_to_a_straight_run(tmp_path):
    config = TrainConfig(arch="DARTS_V2", **TINY)
    straight = run_train(config, tmp_path / "straight", **quiet)
    run_train(config, tmp_path / "killed", stop_after=1, **quiet)
    resumed = run_train(config, tmp_path / "killed", resume=True, **quiet)
    assert resumed == straight
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError):
        run_train(config, tmp_path / "straight", **quiet)


@pytest.mark.parametrize("kind", ["nb201", "mbconv"])
def test_nb201_and_mbconv_networks_train(tmp_path, kind):
    if kind == "nb201":
        arch = NB201_ARCH
    else:
        arch = str(tmp_path / "tfnas.json")
        (tmp_path / "tfnas.json").write_text(json.dumps({"config": tiny_mbconv_config()}))
    config = TrainConfig(arch=arch, data="digits", C=4, layers=1, epochs=1, batch_size=32, max_steps_per_epoch=3)
    result = run_train(config, tmp_path / "run", **quiet)
    assert result["family"] == kind and 0 <= result["test_acc"] <= 1 and result["params_mb"] > 0


def test_cli_train_writes_the_run_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "DARTS_V1", "--data", "digits", "--C", "4", "--layers", "3", "--epochs", "2",
            "--stop-after", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--auxiliary", "false",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(["train", "--resume", "--out", str(out)]) == 0  # the stored settings, no GENOTYPE needed
    assert json.loads((out / "result.json").read_text())["epochs"] == 2
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.5"]) == 2
    assert "settings differ" in capsys.readouterr().err
    assert {"log.jsonl", "checkpoint.pt", "result.json", "curves.png", "genotype.png"} <= {
        p.name for p in out.iterdir()
    }
    assert main(["train", "DARTS_V1", "--data", "digits", "--out", str(tmp_path / "aux")]) == 2
    assert "auxiliary head" in capsys.readouterr().err
    assert main(["train", "nonsense", "--out", str(tmp_path / "x")]) == 2


# ---- the child network of a search -----------------------------------------------------------------------
@pytest.mark.parametrize("space,space_args,family", [("darts", {"C": 4, "layers": 3}, "cifar"),
                                                     ("nb201", {"C": 4, "N": 1}, "nb201")])  # fmt: skip
def test_eval_child_reports_supernet_child_and_recalibrated_child(tmp_path, space, space_args, family):
    search = SearchConfig(space=space, space_args=space_args, data="digits", data_args={"limit": 256}, epochs=1,
                          batch_size=32, max_steps_per_epoch=2, backend="reference")  # fmt: skip
    run_search(search, tmp_path, **quiet)
    result = eval_child(tmp_path, recal_batches=2, **quiet)
    for key in ("supernet_acc", "child_acc", "child_recalibrated_acc"):
        assert 0 <= result[key] <= 1
    assert result["recal_batches"] == 2
    assert json.loads((tmp_path / "eval_child.json").read_text()) == result
    # search -> train: the run directory is a GENOTYPE
    trained = run_train(TrainConfig(arch=str(tmp_path), **{**TINY, "epochs": 1}), tmp_path / "t", **quiet)
    assert trained["family"] == family


def test_bn_recalibration_is_the_exact_average_over_the_batches():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x, arch):
            return self.bn(x)

    net, batches = Net(), [(torch.randn(4, 3, 2, 2) + k, None) for k in range(3)]
    net.bn.running_mean.fill_(7.0)
    assert recalibrate_bn(net, batches, "cpu", None) == 3
    torch.testing.assert_close(net.bn.running_mean, torch.stack([x.mean((0, 2, 3)) for x, _ in batches]).mean(0))
    assert net.bn.momentum == 0.1


def test_child_weights_run_only_the_derived_ops():
    from dnas_fast import build_space, build_strategy

    space = build_space("darts", C=4, layers=3, backend="reference")
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    child = child_arch_weights(space, strategy)
    genotype = strategy.derive(space)
    for group, gene in (("normal", genotype.normal), ("reduce", genotype.reduce)):
        mask = child[group].mask
        assert mask.sum() == len(gene) and mask.sum(1).max() == 1  # one op on each of the 2 edges per node
        assert torch.equal(child[group].weights.bool().cpu(), mask)


def hand_set_child(strategy_name: str, scores: dict) -> dict:
    """The child masks of ``strategy_name`` on a tiny DARTS space whose alphas are set to ``scores[group]``."""
    from dnas_fast import build_space, build_strategy

    space = build_space("darts", C=4, layers=3, backend="reference")
    strategy = build_strategy(strategy_name)
    strategy.setup(space.arch_spec())
    with torch.no_grad():
        for group, alpha in strategy.alphas.items():
            alpha.copy_(scores[group])
    return {group: a.mask for group, a in child_arch_weights(space, strategy).items()}


def test_the_child_follows_the_strategy_derivation_snas_all_edges_pr_darts_top_pairs():
    from dnas_fast.ops import DARTS_OPS

    none, sep, pool = (DARTS_OPS.index(op) for op in ("none", "sep_conv_3x3", "max_pool_3x3"))
    alphas = torch.zeros(14, len(DARTS_OPS))
    alphas[:, sep] = 3.0
    alphas[0, none] = 5.0  # node 0, input 0: argmax none
    alphas[4, sep] = 1.0  # node 1's weakest input: DARTS's two-inputs rule drops it
    alphas[1, pool] = 2.5  # node 0, input 1: sep then max_pool, PR-DARTS's top two pairs of node 0
    scores = {"normal": alphas, "reduce": alphas}
    snas, darts, pr_darts = (hand_set_child(name, scores)["normal"] for name in ("snas", "darts", "pr-darts"))
    assert not snas[0].any() and darts[0, sep]  # SNAS drops the edge whose argmax is none
    assert snas[4, sep] and not darts[4].any()  # and keeps every other edge, with its argmax op
    assert snas.sum(1).tolist() == [0] + [1] * 13
    assert darts.sum(1)[:5].tolist() == [1, 1, 1, 1, 0]
    assert pr_darts[1, sep] and pr_darts[1, pool] and not pr_darts[0].any()  # both of node 0's pairs on edge 1


def test_eval_child_of_a_snas_run_uses_its_strategy_and_the_test_split(tmp_path):
    search = SearchConfig(space="darts", space_args={"C": 4, "layers": 3}, strategy="snas", data="digits",
                          data_args={"limit": 256}, epochs=1, batch_size=32, max_steps_per_epoch=2,
                          backend="reference")  # fmt: skip
    run_search(search, tmp_path, **quiet)
    result = eval_child(tmp_path, recal_batches=1, **quiet)
    assert result["architecture"].startswith("EdgeAllGenotype(")
    assert result["validation"].startswith("test split: digits")
    assert 0 <= result["child_acc"] <= 1


def test_divergence_stops_before_a_checkpoint_is_written(tmp_path):
    config = TrainConfig(arch="DARTS_V2", **{**TINY, "lr": 1e38, "grad_clip": 0.0})
    with pytest.raises(DivergedError, match="diverged: non-finite training loss in epoch 1"):
        run_train(config, tmp_path, **quiet)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_bf16_and_channels_last_train(tmp_path):
    config = TrainConfig(arch="DARTS_V2", **{**TINY, "epochs": 1, "precision": "bf16", "channels_last": True})
    result = run_train(config, tmp_path, **quiet)
    assert math.isfinite(result["test_loss"])


def ddp_worker(rank, world_size, port, run_dir, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = TrainConfig(arch="DARTS_V2", **{**TINY, "batch_size": 16})
        run_train(config, run_dir, rank=rank, world_size=world_size, stop_after=1, **quiet)
        result = run_train(config, run_dir, resume=True, rank=rank, world_size=world_size, **quiet)
        trainer = Trainer(config, run_dir, rank, world_size)
        trainer.load(torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False))
        torch.save({"result": result, "model": trainer.net.state_dict()}, os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_train_the_same_network_and_only_rank0_writes(tmp_path):
    run_dir, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port(), str(run_dir), str(results)), nprocs=2, join=True)
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["result"] == r1["result"]
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # header + one line per epoch across the resume, rank 0 only


# ---- test sets -------------------------------------------------------------------------------------------
def test_test_sets_are_whole_unaugmented_and_normalised_with_the_training_statistics(tmp_path):
    _, _, folder = write_cifar(tmp_path, "cifar10", per_batch=6)
    data = build_eval_data("cifar10", root=tmp_path, batch_size=4)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    ref = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    mean, std = (torch.tensor(s)[:, None, None] for s in CIFAR_STATS["cifar10"])
    order = data.test.shard(0)
    x, y = (torch.cat(t) for t in zip(*data.test))
    torch.testing.assert_close(x, ((ref - mean) / std)[order])
    assert torch.equal(y, torch.tensor(batch[b"labels"])[order]) and len(data.train.indices) == 30
    write_npz(tmp_path / "no_test.npz", (8, 8))
    with pytest.raises(ValueError, match="x_test"):
        build_eval_data("npz", root=tmp_path / "no_test.npz", batch_size=2)
    digits = build_eval_data("digits", batch_size=64)
    assert set(digits.train.indices.tolist()).isdisjoint(digits.test.indices.tolist())


def test_imagefolder_trains_the_imagenet_network_on_its_val_folder(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val")
    config = TrainConfig(
        arch="PC_DARTS_image",
        data="imagefolder",
        data_root=str(tmp_path),
        data_args={"image_size": 32},
        C=8,
        layers=3,
        epochs=1,
        batch_size=4,
        auxiliary=False,
    )
    result = run_train(config, tmp_path / "run", **quiet)
    header = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert result["family"] == "imagenet" and header["settings"]["label_smoothing"]["value"] == 0.1
    (tmp_path / "noval").mkdir()
    write_folder(tmp_path / "noval" / "train")
    with pytest.raises(FileNotFoundError, match="val"):
        build_eval_data("imagefolder", root=tmp_path / "noval", batch_size=2)
