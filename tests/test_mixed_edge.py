import pytest
import torch
import torch.nn.functional as F

from dnas_fast import MixedEdge
from dnas_fast.mixed_edge import channel_shuffle
from dnas_fast.ops import DARTS_OPS, NB201_OPS
from tests.utils import assert_close


def count_calls(edge):
    calls = [0] * len(edge._ops)
    for k, op in enumerate(edge._ops):
        op.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
    return calls


@pytest.mark.parametrize("ops", [DARTS_OPS, NB201_OPS], ids=["darts", "nb201"])
@pytest.mark.parametrize("stride", [1, 2])
def test_reference_equals_explicit_weighted_sum(ops, stride):
    torch.manual_seed(0)
    edge = MixedEdge(6, stride, ops, pool_bn=True, backend="reference").double()
    x = torch.randn(3, 6, 9, 9, dtype=torch.double)
    w = torch.softmax(torch.randn(len(ops), dtype=torch.double), 0)
    expected = sum(w[k] * op(x) for k, op in enumerate(edge._ops))
    assert_close("out", edge(x, w), expected, atol=1e-12)


def test_pool_bn_wraps_pools_like_authors_mixed_op():
    edge = MixedEdge(4, 1, DARTS_OPS, pool_bn=True)
    keys = set(edge.state_dict())
    assert "_ops.1.1.running_mean" in keys and "_ops.2.1.running_var" in keys
    assert "_ops.4.op.1.weight" in keys  # sep_conv_3x3 first depthwise conv


def test_masked_ops_are_not_executed_and_result_is_active_sum():
    torch.manual_seed(0)
    edge = MixedEdge(4, 1, DARTS_OPS, pool_bn=True, backend="reference").double()
    calls = count_calls(edge)
    x = torch.randn(2, 4, 8, 8, dtype=torch.double)
    w = torch.rand(8, dtype=torch.double, requires_grad=True)
    mask = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    out = edge(x, w, mask)
    assert calls == [0, 1, 0, 1, 1, 0, 0, 0]
    expected = sum(w[k] * edge._ops[k](x) for k in (1, 3, 4))
    assert_close("out", out, expected, atol=1e-12)
    out.sum().backward()
    assert w.grad[[0, 2, 5, 6, 7]].abs().sum() == 0


def test_all_masked_gives_zeros_connected_to_weights():
    edge = MixedEdge(4, 2, NB201_OPS)
    w = torch.rand(5, requires_grad=True)
    out = edge(torch.randn(1, 4, 5, 5), w, torch.zeros(5, dtype=torch.bool))
    assert out.shape == (1, 4, 3, 3) and (out == 0).all()
    out.sum().backward()
    assert w.grad is not None and (w.grad == 0).all()


def test_straight_through_gives_inactive_weights_a_gradient():
    edge = MixedEdge(4, 1, NB201_OPS)
    w = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], requires_grad=True)
    mask = torch.tensor([False, True, False, False, False])
    x = torch.randn(1, 4, 4, 4)
    out = edge(x, w, mask, straight_through=True)
    assert torch.equal(out, x)  # value: only the selected op (inactive weights are 0)
    out.sum().backward()
    assert (w.grad[[0, 2, 3, 4]] == out.numel()).all()


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_follow_pc_darts(k, stride):
    torch.manual_seed(0)
    C = 8
    edge = MixedEdge(C, stride, DARTS_OPS, pool_bn=True, partial_channels=k).double()
    x = torch.randn(2, C, 8, 8, dtype=torch.double)
    w = torch.softmax(torch.randn(8, dtype=torch.double), 0)
    part = sum(w[j] * op(x[:, : C // k]) for j, op in enumerate(edge._ops))
    rest = x[:, C // k :]
    if stride == 2:
        rest = F.max_pool2d(rest, 2, 2)
    expected = channel_shuffle(torch.cat([part, rest], 1), k)
    assert_close("out", edge(x, w), expected, atol=1e-12)


def test_channel_shuffle_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_aux_skip_adds_weighted_identity():
    edge = MixedEdge(4, 1, ["none"], aux_skip=True)
    x = torch.randn(1, 4, 4, 4)
    assert_close("aux", edge(x, torch.ones(1), aux_weight=torch.tensor(0.5)), 0.5 * x)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (dict(x=torch.randn(2, 5, 4, 4)), ValueError, r"shape \[N, 4, H, W\]"),
        (dict(x=torch.randn(4, 4, 4)), ValueError, "shape"),
        (dict(x=torch.randint(0, 3, (1, 4, 4, 4))), TypeError, "floating"),
        (dict(w=torch.ones(3)), ValueError, r"weights must have shape \[5\]"),
        (dict(mask=torch.ones(5)), ValueError, "bool"),
        (dict(aux=torch.tensor(1.0)), ValueError, "aux_skip"),
    ],
    ids=["channels", "3d", "int-dtype", "weights-K", "mask-dtype", "aux-without-skip"],
)
def test_bad_inputs_raise_clear_errors(args, error, match):
    edge = MixedEdge(4, 1, NB201_OPS)
    x = args.get("x", torch.randn(1, 4, 4, 4))
    with pytest.raises(error, match=match):
        edge(x, args.get("w", torch.ones(5)), args.get("mask"), args.get("aux"))


def test_bad_construction():
    with pytest.raises(ValueError, match="known ops"):
        MixedEdge(4, 1, ["conv_9x9"])
    with pytest.raises(ValueError, match="partial_channels=3"):
        MixedEdge(4, 1, NB201_OPS, partial_channels=3)


def test_forced_unknown_backend_is_a_clear_error(backend_override):
    backend_override("no-such-backend")
    edge = MixedEdge(4, 1, NB201_OPS)
    with pytest.raises(ValueError, match="unknown backend 'no-such-backend'"):
        edge(torch.randn(1, 4, 4, 4), torch.ones(5))
