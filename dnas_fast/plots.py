"""PNG pictures of a run: alpha trajectories, learning curves and cell diagrams (matplotlib, no display)."""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .genotype import Genotype, genotype_from_json, parse_nb201_arch_string  # noqa: E402


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}: is it a dnas-fast run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        fig.tight_layout()
        path = Path(out_dir) / f"alphas_{group}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_curves(records: list[dict], out_dir) -> Path:
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for split in ("train", "valid"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in records], marker="o", label=split)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy", xlabel="epoch")
    ax_loss.legend()
    fig.tight_layout()
    path = Path(out_dir) / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _draw_dag(ax, inputs: list[str], nodes: list[list[tuple[str, int]]], output: str | None, title: str):
    """Inputs on the left, intermediate nodes in a column, labelled edges (op name) between them."""
    pos = {i: (0.0, 1.0 - i * (1.0 / max(len(inputs) - 1, 1))) for i in range(len(inputs))}
    for n in range(len(nodes)):
        pos[len(inputs) + n] = (1.0 + n, 0.5 + 0.35 * (-1) ** n)
    labels = {**dict(enumerate(inputs)), **{len(inputs) + n: str(n) for n in range(len(nodes))}}
    for n, edges in enumerate(nodes):
        dst = len(inputs) + n
        for op, src in edges:
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="0.4"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, op, fontsize=6, ha="center", color="tab:blue")
    if output is not None:
        pos["out"] = (len(nodes) + 1.0, 0.5)
        labels["out"] = output
        for n in range(len(nodes)):
            (x0, y0), (x1, y1) = pos[len(inputs) + n], pos["out"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="0.8"))
    for key, (x, y) in pos.items():
        ax.text(x, y, labels[key], ha="center", va="center", bbox=dict(boxstyle="round", fc="wheat"), fontsize=8)
    ax.set_xlim(-0.5, len(nodes) + 1.5)
    ax.set_ylim(-0.2, 1.2)
    ax.set_title(title)
    ax.axis("off")


def plot_genotype(genotype: Genotype, out_dir) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    for ax, cell in zip(axes, ("normal", "reduce")):
        gene = getattr(genotype, cell)
        nodes = [[gene[2 * i], gene[2 * i + 1]] for i in range(len(gene) // 2)]
        _draw_dag(ax, ["c_{k-2}", "c_{k-1}"], nodes, "c_{k}", f"{cell} cell")
    fig.tight_layout()
    path = Path(out_dir) / "genotype.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_nb201(arch: str, out_dir) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    _draw_dag(ax, ["0"], parse_nb201_arch_string(arch), None, arch)
    fig.tight_layout()
    path = Path(out_dir) / "cell.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run(run_dir) -> list[Path]:
    """All pictures of a run directory; returns the PNG paths written."""
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/log.jsonl holds no epoch yet")
    spec_file = run_dir / "arch_spec.json"
    op_names = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    paths = [plot_curves(records, run_dir), *plot_alpha_trajectories(records, op_names, run_dir)]
    genotype_file = run_dir / "genotype.json"
    if genotype_file.exists():
        text = genotype_file.read_text()
        data = json.loads(text)
        if isinstance(data, dict) and "normal" in data:
            paths.append(plot_genotype(genotype_from_json(text), run_dir))
        elif isinstance(data, str) and data.startswith("|"):
            paths.append(plot_nb201(data, run_dir))
    return paths
