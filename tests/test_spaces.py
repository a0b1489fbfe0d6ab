import pytest
import torch

from dnas_fast import ArchWeights, build_space, build_strategy
from dnas_fast.genotype import Genotype, parse_nb201_arch_string
from dnas_fast.spaces import known_spaces, space_class, space_families


def uniform_arch(space):
    return {
        g: ArchWeights(torch.full((s.num_edges, len(s.op_names)), 1 / len(s.op_names)))
        for g, s in space.arch_spec().items()
    }


@pytest.mark.parametrize("hw", [16, 15], ids=["16x16", "15x15"])
def test_darts_space_shapes_and_layout(hw):
    space = build_space("darts", C=4, layers=5, num_classes=7)
    spec = space.arch_spec()
    assert {g: (s.num_edges, len(s.op_names)) for g, s in spec.items()} == {"normal": (14, 8), "reduce": (14, 8)}
    assert [c.reduction for c in space.cells] == [False, True, False, True, False]
    out = space(torch.randn(2, 3, hw, hw), uniform_arch(space))
    assert out.shape == (2, 7)
    strides = [e.stride for e in space.cells[1]._ops]
    assert strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]


def test_darts_space_default_matches_paper_channels():
    space = build_space("darts")
    assert space.stem[0].out_channels == 48 and len(space.cells) == 8
    assert space.classifier.in_features == 4 * 64


def test_darts_imagenet_stem_reduces_8x():
    space = build_space("darts", C=4, layers=3, imagenet=True)
    out = space(torch.randn(1, 3, 64, 64), uniform_arch(space))
    assert out.shape == (1, 10)
    assert space.stem0(torch.randn(1, 3, 64, 64)).shape[-1] == 16


def test_nb201_space_shapes():
    space = build_space("nb201", C=4, N=1, num_classes=5)
    spec = space.arch_spec()["cell"]
    assert spec.num_edges == 6 and spec.node_of_edge == [1, 2, 2, 3, 3, 3]
    assert spec.source_of_edge == [0, 0, 1, 0, 1, 2]
    assert space(torch.randn(2, 3, 9, 9), uniform_arch(space)).shape == (2, 5)


def test_nb201_derive_roundtrip():
    space = build_space("nb201", C=4, N=1)
    scores = torch.zeros(6, 5)
    chosen = [3, 1, 4, 2, 0, 3]
    scores[range(6), chosen] = 1
    arch = space.derive({"cell": scores})
    ops = space.config["op_names"]
    assert arch == f"|{ops[3]}~0|+|{ops[1]}~0|{ops[4]}~1|+|{ops[2]}~0|{ops[0]}~1|{ops[3]}~2|"
    assert [op for node in parse_nb201_arch_string(arch) for op, _ in node] == [ops[k] for k in chosen]


def test_space_configurable_op_set_and_cells():
    space = build_space("darts", C=4, layers=4, steps=2, multiplier=2, op_names=["skip_connect", "sep_conv_3x3"])
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    assert strategy.alphas["normal"].shape == (5, 2)
    genotype = strategy.derive(space)
    assert isinstance(genotype, Genotype) and len(genotype.normal) == 4
    assert list(genotype.normal_concat) == [2, 3]


def test_allowed_subsets_zero_disallowed_ops():
    allowed = {g: [["skip_connect", "sep_conv_3x3"]] * 14 for g in ("normal", "reduce")}
    space = build_space("darts", C=4, layers=3, allowed=allowed)
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    arch = strategy.arch_weights("weights")["normal"]
    assert arch.mask[:, [3, 4]].all() and not arch.mask[:, [0, 1, 2, 5, 6, 7]].any()
    assert torch.allclose(arch.weights.sum(-1), torch.ones(14)) and (arch.weights[:, 0] == 0).all()
    ops = {op for op, _ in strategy.derive(space).normal}
    assert ops <= {"skip_connect", "sep_conv_3x3"}


def test_bad_space_inputs():
    with pytest.raises(ValueError, match="known spaces"):
        build_space("resnet")
    space = build_space("nb201", C=4, N=1)
    with pytest.raises(ValueError, match=r"input \[N, 3, H, W\]"):
        space(torch.randn(1, 1, 8, 8), uniform_arch(space))
    bad = {"cell": ArchWeights(torch.ones(6, 4))}
    with pytest.raises(ValueError, match=r"must have shape \[6, 5\]"):
        space(torch.randn(1, 3, 8, 8), bad)
    with pytest.raises(ValueError, match="groups"):
        space(torch.randn(1, 3, 8, 8), {"normal": bad["cell"]})
    with pytest.raises(ValueError, match="at least 3 layers"):
        build_space("darts", layers=2)


def test_every_space_belongs_to_one_family():
    for name in known_spaces():
        owners = [f.name for f in space_families() if issubclass(space_class(name), f.spaces)]
        assert len(owners) == 1, f"space {name!r} belongs to families {owners}"
