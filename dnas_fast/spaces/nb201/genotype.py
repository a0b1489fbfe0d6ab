"""The NAS-Bench-201 family's genotype codec: arch strings ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""

import torch


def nb201_arch_string(scores: torch.Tensor, op_names: list[str], max_nodes: int = 4) -> str:
    """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` from per-edge scores (Tensor[E, K]) by argmax per edge."""
    best = scores.detach().argmax(dim=-1).tolist()
    nodes, e = [], 0
    for i in range(1, max_nodes):
        nodes.append("|" + "|".join(f"{op_names[best[e + j]]}~{j}" for j in range(i)) + "|")
        e += i
    return "+".join(nodes)


def parse_nb201_arch_string(text: str) -> list[list[tuple[str, int]]]:
    """Inverse of :func:`nb201_arch_string`: per node, its (op, input) pairs."""
    nodes = []
    for i, node in enumerate(text.split("+"), start=1):
        parts = [p for p in node.split("|") if p]
        pairs = []
        for p in parts:
            op, _, src = p.partition("~")
            if not src.isdigit():
                raise ValueError(f"malformed NAS-Bench-201 arch string {text!r} at {p!r}")
            pairs.append((op, int(src)))
        if [s for _, s in pairs] != list(range(i)):
            raise ValueError(f"node {i} of {text!r} must read inputs 0..{i - 1}")
        nodes.append(pairs)
    return nodes
