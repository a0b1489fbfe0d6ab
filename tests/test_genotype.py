import pytest
import torch

from dnas_fast.genotype import (
    Genotype,
    darts_genotype,
    genotype_from_json,
    genotype_from_string,
    genotype_to_json,
    nb201_arch_string,
    parse_darts_cell,
    parse_nb201_arch_string,
)
from dnas_fast.ops import DARTS_OPS


def test_parse_ignores_none_and_picks_two_strongest_inputs():
    scores = torch.full((14, 8), 0.01)
    scores[:, 0] = 0.9  # 'none' dominates everywhere and must be ignored
    scores[0, 4] = 0.5  # node 0: edges 0 and 1
    scores[1, 6] = 0.3
    scores[2, 3] = 0.2  # node 1: inputs 0, 1, 2 -> pick 0 and 2
    scores[4, 1] = 0.4
    gene = parse_darts_cell(scores, DARTS_OPS, 4)
    assert gene[:4] == [("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 2), ("skip_connect", 0)]
    assert all(op != "none" for op, _ in gene)


def test_genotype_repr_is_authors_format_and_parses_back():
    g = darts_genotype(torch.rand(14, 8), torch.rand(14, 8), DARTS_OPS)
    text = repr(g)
    assert text.startswith("Genotype(normal=[('") and "normal_concat=range(2, 6)" in text
    assert genotype_from_string(text) == g
    assert genotype_from_json(genotype_to_json(g)) == g


def test_authors_published_darts_v2_string_parses():
    text = (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
        "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
    )
    g = genotype_from_string(text)
    assert isinstance(g, Genotype) and g.reduce[2] == ("skip_connect", 2) and list(g.normal_concat) == [2, 3, 4, 5]


def test_bad_genotype_strings():
    for text in ["print('x')", "Genotype(normal=[", "Genotype(normal=open('f'))"]:
        with pytest.raises(ValueError, match="cannot parse genotype"):
            genotype_from_string(text)


def test_nb201_string_roundtrip_and_errors():
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    scores = torch.eye(5)[[1, 2, 3, 4, 0, 2]]
    text = nb201_arch_string(scores, ops)
    assert text == "|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"
    nodes = parse_nb201_arch_string(text)
    assert [len(n) for n in nodes] == [1, 2, 3]
    with pytest.raises(ValueError):
        parse_nb201_arch_string("|skip_connect~1|")
    with pytest.raises(ValueError):
        parse_nb201_arch_string("|skip_connect|")
