"""PNG pictures of a run: alpha trajectories, learning curves and cell diagrams (matplotlib, no display)."""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .genotype import EdgeAllGenotype, Genotype, cell_nodes, genotype_from_json, parse_nb201_arch_string  # noqa: E402
from .rundir import read_log  # noqa: E402


def plot_alpha_trajectories(records: list[dict], op_names: dict[str, list[str]], out_dir) -> list[Path]:
    """One PNG per edge group: a panel per edge, a line per op (its relaxed weight per epoch)."""
    paths = []
    epochs = [r["epoch"] for r in records]
    for group in records[0]["alphas"]:
        weights = [r["alphas"][group] for r in records]  # [T][E][K]
        E = len(weights[0])
        cols = min(E, 5)
        rows = math.ceil(E / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False, sharey=True)
        names = op_names.get(group) or [f"op{k}" for k in range(len(weights[0][0]))]
        for e in range(rows * cols):
            ax = axes[e // cols][e % cols]
            if e >= E:
                ax.axis("off")
                continue
            for k, name in enumerate(names):
                ax.plot(epochs, [w[e][k] for w in weights], label=name)
            ax.set_title(f"{group} edge {e}", fontsize=8)
        axes[0][0].legend(fontsize=6, loc="upper left")
        fig.supxlabel("epoch")
        paths.append(_save(fig, out_dir, f"alphas_{group}.png", dpi=90))
    return paths


def _save(fig, out_dir, name: str, dpi: int) -> Path:
    """Write ``fig`` to ``out_dir/name`` (making the folder) and close it."""
    fig.tight_layout()
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _loss_and_accuracy(records: list[dict], splits, accuracy: str, out_dir) -> Path:
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for split in splits:
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in records], marker="o", label=split)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title=accuracy, xlabel="epoch")
    ax_loss.legend()
    return _save(fig, out_dir, "curves.png", dpi=90)


def plot_curves(records: list[dict], out_dir) -> Path:
    """Loss and accuracy per epoch of a search (train and valid)."""
    return _loss_and_accuracy(records, ("train", "valid"), "accuracy", out_dir)


NODE_STYLE = dict(ha="center", va="center", fontsize=10, zorder=3)
OP_COLORS = {"none": "0.6", "skip_connect": "tab:green", "max_pool_3x3": "tab:purple", "avg_pool_3x3": "tab:purple"}


def _arc(ax, x0, x1, height, color, dashed=False):
    """A half-ellipse from ``x0`` to ``x1`` (apex at ``height``), arrowhead at ``x1``; returns the apex."""
    t = [math.pi * i / 40 for i in range(41)]
    mid, half = (x0 + x1) / 2, (x1 - x0) / 2
    xs = [mid - half * math.cos(a) for a in t]
    ys = [height * math.sin(a) for a in t]
    ax.plot(xs, ys, color=color, lw=1.4, ls="--" if dashed else "-", zorder=1)
    ax.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-3], ys[-3]),
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, mutation_scale=16), zorder=2)  # fmt: skip
    return mid, height


def _draw_cell(ax, inputs, nodes: list[list[tuple[str, int]]], output: str | None, concat, title: str, first=0):
    """The authors' graphviz layout flattened to one row: inputs on the left, intermediate nodes in order,
    the output on the right. Every edge is an arc (a node's inputs alternate above and below the row, longer
    edges arc higher), so no edge runs through a node and each op label sits alone at its arc's apex.
    Intermediate nodes are named from ``first``; ``concat`` lists the nodes the output concatenates."""
    spacing = 2.0
    names = [*inputs, *(str(first + n) for n in range(len(nodes)))]
    xs = [spacing * i for i in range(len(names))]
    top = 0.0
    for n, edges in enumerate(nodes):
        dst = len(inputs) + n
        for k, (op, src) in enumerate(edges):
            span = xs[dst] - xs[src]
            sign = 1 if k % 2 == 0 else -1
            height = sign * (0.35 + 0.22 * span)
            top = max(top, abs(height))
            color = OP_COLORS.get(op, "tab:blue")
            x, y = _arc(ax, xs[src], xs[dst], height, color, dashed=op == "none")
            ax.text(x, y, op, fontsize=8, ha="center", va="center", color=color, zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none"))  # fmt: skip
    if output is not None:
        x_out = xs[-1] + spacing
        for n in concat:
            ax.annotate("", xy=(x_out - 0.3, -0.08), xytext=(xs[n], -0.08),
                        arrowprops=dict(arrowstyle="-|>", color="0.75", lw=0.8,
                                        connectionstyle=f"arc3,rad={0.15 + 0.02 * (x_out - xs[n])}"))  # fmt: skip
        ax.text(x_out, 0, output, bbox=dict(boxstyle="round", fc="palegoldenrod"), **NODE_STYLE)
        xs.append(x_out)
    for i, (x, name) in enumerate(zip(xs, names)):
        fc = "lightskyblue" if i < len(inputs) else "lightgray"
        ax.text(x, 0, name, bbox=dict(boxstyle="round", fc=fc), **NODE_STYLE)
    ax.set_xlim(-1, xs[-1] + 1)
    ax.set_ylim(-top - 0.4, top + 0.4)
    ax.set_title(title)
    ax.axis("off")


def plot_genotype(genotype: Genotype, out_dir, name="genotype.png") -> Path:
    """Normal and reduction cell of a DARTS genotype (two or all edges per node), one above the other."""
    edge_all = isinstance(genotype, EdgeAllGenotype)
    steps = max(len(cell_nodes(genotype.normal, edge_all)), len(cell_nodes(genotype.reduce, edge_all)))
    fig, axes = plt.subplots(2, 1, figsize=(2.0 + 1.9 * (steps + 3), 7.5))
    for ax, cell in zip(axes, ("normal", "reduce")):
        concat = list(getattr(genotype, f"{cell}_concat"))
        nodes = cell_nodes(getattr(genotype, cell), edge_all)
        _draw_cell(ax, ["c_{k-2}", "c_{k-1}"], nodes, "c_{k}", concat, f"{cell} cell")
    return _save(fig, out_dir, name, dpi=110)


def plot_nb201(arch: str, out_dir, name="cell.png") -> Path:
    """A NAS-Bench-201 cell: node 0 (input) on the left, node 3 (output) on the right."""
    nodes = parse_nb201_arch_string(arch)
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * (len(nodes) + 1), 4.2))
    _draw_cell(ax, ["0"], nodes, None, [], arch, first=1)
    ax.title.set_fontsize(9)
    return _save(fig, out_dir, name, dpi=110)


def plot_mbconv(config: dict, out_dir, name="network.png", per_row: int = 8) -> Path:
    """The MBConv chain of a derived TF-NAS network as rows of blocks: kernel, expansion, SE, width, stride."""
    boxes = [("stem", f"{config['in_channels']}->{config['stem'][1]}\ns{config['stem_stride']}")]
    for b in config["blocks"]:
        p = b["op"].replace("mbconv_", "").replace("_swish", " swish").split("_")
        label = " ".join(p)
        boxes.append((label, f"{b['C_in']}->{b['C_out']}  mid {b['mid']}\ns{b['stride']}"))
    boxes.append(("head", f"{config['last_channels']}->{config['head']}\n->{config['num_classes']}"))
    rows = math.ceil(len(boxes) / per_row)
    fig, ax = plt.subplots(figsize=(1.9 * min(per_row, len(boxes)) + 0.6, 1.5 * rows + 0.4))
    for i, (title, detail) in enumerate(boxes):
        r, c = divmod(i, per_row)
        x, y = 1.9 * c, -1.5 * r
        fc = "lightskyblue" if title in ("stem", "head") else ("wheat" if "se" in title.split() else "lightgray")
        ax.add_patch(plt.Rectangle((x - 0.8, y - 0.5), 1.6, 1.0, fc=fc, ec="0.3", zorder=2))
        ax.text(x, y + 0.2, title, ha="center", va="center", fontsize=8.5, weight="bold", zorder=3)
        ax.text(x, y - 0.2, detail, ha="center", va="center", fontsize=7, zorder=3)
        if i + 1 < len(boxes) and c + 1 < per_row:
            ax.annotate("", xy=(x + 1.1, y), xytext=(x + 0.8, y), arrowprops=dict(arrowstyle="-|>", color="0.3"))
    ax.set_xlim(-1, 1.9 * min(per_row, len(boxes)) - 0.9)
    ax.set_ylim(-1.5 * rows + 0.9, 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    return _save(fig, out_dir, name, dpi=110)


def plot_architecture(data, out_dir) -> list[Path]:
    """The picture of a genotype.json value: DARTS cells, an NB201 cell or an MBConv chain."""
    if isinstance(data, dict) and "normal" in data:
        return [plot_genotype(genotype_from_json(json.dumps(data)), out_dir)]
    if isinstance(data, str) and data.startswith("|"):
        return [plot_nb201(data, out_dir)]
    config = data.get("config", data) if isinstance(data, dict) else None
    if isinstance(config, dict) and "blocks" in config:
        return [plot_mbconv(config, out_dir)]
    return []


def plot_train_curves(records: list[dict], out_dir) -> Path:
    """Loss and accuracy per epoch of a training-from-scratch run (train and test)."""
    return _loss_and_accuracy(records, ("train", "test"), "top-1 accuracy", out_dir)


def plot_run(run_dir) -> list[Path]:
    """All pictures of a run directory (search or train); returns the PNG paths written."""
    run_dir = Path(run_dir)
    records = [r for r in read_log(run_dir) if "epoch" in r]  # a train log opens with a settings header
    if not records:
        raise ValueError(f"{run_dir}/log.jsonl holds no epoch yet")
    if "test_acc" in records[0]:  # dnas-fast train
        paths = [plot_train_curves(records, run_dir)]
        arch_file = run_dir / "architecture.json"
        if arch_file.exists():
            paths += plot_architecture(json.loads(arch_file.read_text()), run_dir)
        return paths
    spec_file = run_dir / "arch_spec.json"
    op_names = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    paths = [plot_curves(records, run_dir), *plot_alpha_trajectories(records, op_names, run_dir)]
    genotype_file = run_dir / "genotype.json"
    if genotype_file.exists():
        paths += plot_architecture(json.loads(genotype_file.read_text()), run_dir)
    return paths
