import pytest
import torch

from dnas_fast.ops import DARTS_OPS, NB201_OPS, build_op, known_ops, register_op


@pytest.mark.parametrize("name", sorted(set(DARTS_OPS + NB201_OPS)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)], ids=["8x8", "7x9"])
def test_op_output_shape(name, stride, hw):
    op = build_op(name, 6, 6, stride)
    x = torch.randn(2, 6, *hw)
    y = op(x)
    assert y.shape == (2, 6, -(-hw[0] // stride), -(-hw[1] // stride))


def test_zero_op_is_zero_and_propagates_nan_like_authors():
    x = torch.randn(1, 4, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    y = build_op("none", 4, 4, 1)(x)
    assert torch.isnan(y[0, 0, 0, 0]) and (y.flatten()[1:] == 0).all()


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_2():
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(build_op("skip_connect", 4, 4, 1)(x), x)
    fr = build_op("skip_connect", 4, 4, 2)
    assert [n for n, _ in fr.named_children()] == ["relu", "conv_1", "conv_2", "bn"]


def test_factorized_reduce_matches_authors_formula_on_even_sizes():
    fr = build_op("skip_connect", 4, 8, 2).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.double)
    r = torch.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], 1))
    assert torch.allclose(fr(x), expected)


def test_sep_conv_layout_and_padding():
    op = build_op("sep_conv_5x5", 4, 4, 2)
    convs = [m for m in op.op if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (1, 1), (5, 5), (1, 1)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert all(not m.affine for m in op.op if isinstance(m, torch.nn.BatchNorm2d))
    dil = build_op("dil_conv_5x5", 4, 4, 1)
    assert dil.op[1].dilation == (2, 2) and dil.op[1].padding == (4, 4)


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 3, 3)
    assert torch.allclose(build_op("avg_pool_3x3", 1, 1, 1)(x), x)


def test_unknown_op_lists_known_names():
    with pytest.raises(ValueError, match="known ops:.*sep_conv_3x3"):
        build_op("sep_conv_9x9", 4, 4, 1)


def test_bad_stride_and_channel_mismatch():
    with pytest.raises(ValueError, match="stride"):
        build_op("sep_conv_3x3", 4, 4, 3)
    with pytest.raises(ValueError, match="C_in=4, C_out=8"):
        build_op("max_pool_3x3", 4, 8, 1)


def test_register_op_rejects_duplicates_and_new_ops_build():
    with pytest.raises(ValueError, match="already registered"):
        register_op("none", lambda *a: None)
    assert "nor_conv_3x3" in known_ops()
