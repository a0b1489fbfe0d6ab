import pytest
import torch

from dnas_fast import build_space, build_strategy
from dnas_fast.interop import export_authors_state, load_authors_state
from tests.authors_layout import AuthorsNetwork
from tests.utils import assert_close


def randomize(module):
    """Non-trivial BN statistics and weights so a key mix-up cannot pass."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)


def test_authors_state_loads_and_gives_same_outputs_and_back():
    torch.manual_seed(0)
    theirs = AuthorsNetwork(C=4, num_classes=10, layers=3).double()
    randomize(theirs)
    theirs.alphas_normal.normal_()
    theirs.alphas_reduce.normal_()
    space = build_space("darts", C=4, layers=3, backend="reference").double()
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    strategy.double()
    load_authors_state(space, strategy, theirs.state_dict(), (theirs.alphas_normal, theirs.alphas_reduce))
    x = torch.randn(2, 3, 12, 12, dtype=torch.double)
    for mode in ("train", "eval"):
        theirs.train(mode == "train")
        space.train(mode == "train")
        assert_close(f"logits ({mode})", space(x, strategy.arch_weights("eval")), theirs(x), atol=1e-10)

    exported = export_authors_state(space, strategy)
    fresh = AuthorsNetwork(C=4, num_classes=10, layers=3).double()
    fresh.alphas_normal = exported.pop("alphas_normal")
    fresh.alphas_reduce = exported.pop("alphas_reduce")
    fresh.load_state_dict(exported)
    fresh.eval()
    space.eval()
    assert_close("round trip", fresh(x), space(x, strategy.arch_weights("eval")), atol=1e-10)


def test_alphas_inside_state_dict_and_mismatches():
    theirs = AuthorsNetwork(C=4, num_classes=10, layers=3)
    space = build_space("darts", C=4, layers=3)
    strategy = build_strategy("darts")
    strategy.setup(space.arch_spec())
    state = {**theirs.state_dict(), "alphas_normal": theirs.alphas_normal, "alphas_reduce": theirs.alphas_reduce}
    load_authors_state(space, strategy, state)
    assert torch.equal(strategy.alphas["normal"].detach(), theirs.alphas_normal)
    with pytest.raises(ValueError, match="lacks"):
        load_authors_state(space, strategy, theirs.state_dict())
    wider = build_space("darts", C=8, layers=3)
    with pytest.raises(ValueError, match="does not match this DARTS space"):
        load_authors_state(wider, strategy, state)
    with pytest.raises(TypeError, match="darts"):
        load_authors_state(build_space("nb201", C=4, N=1), strategy, state)
