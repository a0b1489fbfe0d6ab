"""Cell pictures: inputs left, nodes in order, output right, every op label on its own edge, none overlapping."""

import matplotlib.pyplot as plt
import pytest

from dnas_fast.genotype import NAMED_GENOTYPES, cell_nodes
from dnas_fast.plots import _draw_cell, plot_genotype, plot_mbconv, plot_nb201
from dnas_fast.spaces.mbconv import MBConvSpace

NB201 = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"


def drawn(inputs, nodes, output, concat):
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * (len(nodes) + 3), 3.8))
    _draw_cell(ax, inputs, nodes, output, concat, "cell")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    names = {*inputs, *(str(n) for n in range(len(nodes))), output}
    labels = [t for t in ax.texts if t.get_text() and t.get_text() not in names]  # annotations are empty texts
    node_x = {t.get_text(): t.get_position()[0] for t in ax.texts if t.get_text() in names}
    boxes = [t.get_window_extent(renderer) for t in labels]
    plt.close(fig)
    return labels, boxes, node_x


@pytest.mark.parametrize("name", ["DARTS_V2", "PDARTS", "PC_DARTS_cifar", "NASNet"])
def test_darts_cells_read_left_to_right_with_one_clear_label_per_edge(name):
    genotype = NAMED_GENOTYPES[name]
    for cell in ("normal", "reduce"):
        gene = getattr(genotype, cell)
        nodes = cell_nodes(gene, edge_all=False)
        labels, boxes, x = drawn(["c_{k-2}", "c_{k-1}"], nodes, "c_{k}", list(getattr(genotype, f"{cell}_concat")))
        assert [t.get_text() for t in labels] == [op for op, _ in gene]  # one label per edge
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), f"{name} {cell}"
        order = ["c_{k-2}", "c_{k-1}", *(str(n) for n in range(len(nodes))), "c_{k}"]
        assert [x[k] for k in order] == sorted(x[k] for k in order)


def test_pictures_are_written(tmp_path):
    assert plot_genotype(NAMED_GENOTYPES["DARTS_V2"], tmp_path / "new" / "dir").stat().st_size > 10_000  # made
    assert plot_nb201(NB201, tmp_path).stat().st_size > 5_000
    space = MBConvSpace(stages=[[8, 1, 1, "relu"], [16, 2, 2, "swish"]], stem=[8, 8], stem_stride=1, head=32,
                        resolution=8, in_channels=1, num_classes=10)  # fmt: skip
    assert plot_mbconv(space.derived_config([1, 4, 6], [1, 2], space.widths()), tmp_path).stat().st_size > 5_000
