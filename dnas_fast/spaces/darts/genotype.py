"""The DARTS family's genotype codec: genotypes in the authors' format (``Genotype``, as quark0/darts
``genotypes.py``), their derivation rules, JSON and string forms, and the authors' published cells by name."""

import ast
import json
from collections import namedtuple

import torch

# Same field names and repr as quark0/darts genotypes.py, so a printed genotype pastes into it.
Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")


class EdgeAllGenotype(Genotype):
    """A cell with EVERY edge, node by node (node ``i`` lists its ``i + 2`` inputs), ``none`` included, so an edge
    can vanish: SNAS-Series ``SNAS/model_search.py`` ``genotype_edge_all`` (lines 726-756), the format of their
    ``SNAS_*_edge_all`` genotypes. Renamed ``Genotype(...)`` it pastes into their ``genotypes.py``."""

    __slots__ = ()


def cell_nodes(gene, edge_all: bool) -> list[list[tuple[str, int]]]:
    """Per intermediate node, its ``(op, input)`` pairs: two each, or ``i + 2`` for node ``i`` when ``edge_all``."""
    nodes, start = [], 0
    while start < len(gene):
        size = len(nodes) + 2 if edge_all else 2
        nodes.append([(op, int(j)) for op, j in gene[start : start + size]])
        start += size
    if start != len(gene) or any(len(n) != (i + 2 if edge_all else 2) for i, n in enumerate(nodes)):
        per_node = "i + 2" if edge_all else "two"
        raise ValueError(f"{len(gene)} (op, input) pairs do not fill whole nodes of {per_node} pairs")
    return nodes


def cell_mask(gene, op_names: list[str], edge_all: bool) -> torch.Tensor:
    """Bool ``Tensor[E, K]`` of a cell's ``(op, input)`` pairs in the DARTS edge order (node ``i``'s inputs start at
    edge ``i (i + 3) / 2``); a ``none`` pair sets nothing, so its edge is dropped."""
    nodes = cell_nodes(gene, edge_all)
    mask = torch.zeros(sum(i + 2 for i in range(len(nodes))), len(op_names), dtype=torch.bool)
    start = 0
    for i, pairs in enumerate(nodes):
        for op, j in pairs:
            if op != "none":
                mask[start + j, op_names.index(op)] = True
        start += i + 2
    return mask


def parse_darts_cell(scores: torch.Tensor, op_names: list[str], steps: int) -> list[tuple[str, int]]:
    """The authors' ``_parse``: per node, the two inputs with the strongest non-``none`` op, and that op.

    scores (Tensor[E, K]): op strengths per edge (softmaxed alphas, or alphas times edge weights).
    """
    scores = scores.detach().cpu().double()
    candidates = [k for k, name in enumerate(op_names) if name != "none"]
    if not candidates:
        raise ValueError("cannot derive a cell from an op set with only 'none'")
    gene, start = [], 0
    for i in range(steps):
        W = scores[start : start + i + 2][:, candidates]
        best = sorted(range(i + 2), key=lambda j: -W[j].max().item())[:2]
        gene += [(op_names[candidates[int(W[j].argmax())]], j) for j in best]
        start += i + 2
    return gene


def parse_top_pairs_cell(scores: torch.Tensor, op_names: list[str], steps: int) -> list[tuple[str, int]]:
    """salesforce/PR-DARTS ``genotype._parse`` (``PRDARTS_search/search_model_prdarts_nasnet.py``, lines 139-153):
    per node, the two strongest (op, input) pairs over all of its edges, ``none`` excluded, so both may read
    the same input. Ties keep the authors' order (inputs, then ops)."""
    scores = scores.detach().cpu().double()
    candidates = [k for k, name in enumerate(op_names) if name != "none"]
    if not candidates:
        raise ValueError("cannot derive a cell from an op set with only 'none'")
    gene, start = [], 0
    for i in range(steps):
        pairs = [(op_names[k], j, scores[start + j, k].item()) for j in range(i + 2) for k in candidates]
        gene += [(op, j) for op, j, _ in sorted(pairs, key=lambda p: -p[2])[:2]]
        start += i + 2
    return gene


def parse_all_edges_cell(scores: torch.Tensor, op_names: list[str], steps: int) -> list[tuple[str, int]]:
    """SNAS-Series ``genotype_edge_all._parse``: per node, every input, strongest first (max over all ops,
    ``none`` included; ties keep input order), each with its argmax op (``none`` included, first on ties)."""
    scores = scores.detach().cpu().double()
    gene, start = [], 0
    for i in range(steps):
        W = scores[start : start + i + 2]
        for j in sorted(range(i + 2), key=lambda j: -W[j].max().item()):
            gene.append((op_names[int(W[j].argmax())], j))
        start += i + 2
    return gene


def darts_genotype(normal, reduce, op_names, steps=4, multiplier=4, parse=parse_darts_cell) -> Genotype:
    """``parse``: the per-cell rule, :func:`parse_darts_cell` (DARTS) or :func:`parse_top_pairs_cell` (PR-DARTS)."""
    concat = range(2 + steps - multiplier, steps + 2)
    return Genotype(
        normal=parse(normal, op_names, steps),
        normal_concat=concat,
        reduce=parse(reduce, op_names, steps),
        reduce_concat=concat,
    )


def genotype_to_json(genotype: Genotype) -> str:
    fields = {
        "normal": [list(p) for p in genotype.normal],
        "normal_concat": list(genotype.normal_concat),
        "reduce": [list(p) for p in genotype.reduce],
        "reduce_concat": list(genotype.reduce_concat),
    }
    if isinstance(genotype, EdgeAllGenotype):
        fields["edges"] = "all"
    return json.dumps(fields)


# The most intermediate nodes a cell read from a file may have (the authors' cells have 4; NASNet's 5).
MAX_CELL_NODES = 64


def checked_genotype(kind: type, fields: dict) -> Genotype:
    """``kind(**fields)`` once every part is checked: ``normal`` and ``reduce`` non-empty lists of (known op,
    input) pairs filling whole nodes, each input an earlier node, at most ``MAX_CELL_NODES`` nodes, each
    ``*_concat`` a non-empty list of the cell's nodes. A bad or oversized file fails here in one line, not in a
    traceback or a MemoryError while building the network."""
    from ...ops.registry import check_op_names

    missing = sorted({"normal", "normal_concat", "reduce", "reduce_concat"} - set(fields))
    if missing:
        raise ValueError(f"genotype lacks {missing}")
    for cell in ("normal", "reduce"):
        gene = fields[cell]
        if not isinstance(gene, list | tuple) or not gene or len(gene) > MAX_CELL_NODES * (MAX_CELL_NODES + 1):
            raise ValueError(f"genotype {cell} must be a non-empty list of (op, input) pairs, got {gene!r:.80}")
        if not all(isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in gene):
            raise ValueError(f"genotype {cell} must hold (op name, input index) pairs, got {gene!r:.80}")
        if not all(isinstance(j, int) and not isinstance(j, bool) for _, j in gene):
            raise ValueError(f"genotype {cell}: input indices must be integers, got {gene!r:.80}")
        check_op_names(sorted({op for op, _ in gene}))
        nodes = cell_nodes(gene, kind is EdgeAllGenotype)
        if len(nodes) > MAX_CELL_NODES:
            raise ValueError(f"genotype {cell} has {len(nodes)} nodes, more than {MAX_CELL_NODES}")
        for i, pairs in enumerate(nodes):
            if not all(0 <= j < i + 2 for _, j in pairs):
                raise ValueError(f"genotype {cell}: node {i + 2} may read nodes 0..{i + 1}, got {pairs}")
        concat = fields[cell + "_concat"]
        if (
            not isinstance(concat, range | list | tuple)
            or not concat
            or not all(isinstance(n, int) and 2 <= n < len(nodes) + 2 for n in concat)
        ):
            raise ValueError(
                f"genotype {cell}_concat must list nodes of the cell (2..{len(nodes) + 1}), got {concat!r:.80}"
            )
    return kind(**fields)


def genotype_from_json(text: str) -> Genotype:
    d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError(f"a genotype must be a JSON object, got {type(d).__name__}")
    if d.get("edges", "two") not in ("two", "all"):
        raise ValueError(f"genotype 'edges' must be 'two' or 'all', got {d['edges']!r}")
    kind = EdgeAllGenotype if d.get("edges") == "all" else Genotype
    fields = {k: d[k] for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k in d}
    checked_genotype(kind, fields)  # before a concat range is built from its ends
    return kind(
        normal=[(op, j) for op, j in d["normal"]],
        normal_concat=range(d["normal_concat"][0], d["normal_concat"][-1] + 1),
        reduce=[(op, j) for op, j in d["reduce"]],
        reduce_concat=range(d["reduce_concat"][0], d["reduce_concat"][-1] + 1),
    )


def genotype_from_string(text: str) -> Genotype:
    """Parse ``Genotype(normal=[...], normal_concat=range(2, 6), ...)`` (or ``EdgeAllGenotype(...)``) without
    ``eval``."""
    kinds = {"Genotype": Genotype, "EdgeAllGenotype": EdgeAllGenotype}
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) in kinds):
            raise ValueError("not a Genotype(...) or EdgeAllGenotype(...) call")
        fields = {}
        for kw in call.keywords:
            if isinstance(kw.value, ast.Call):  # range(a, b)
                ends = [ast.literal_eval(a) for a in kw.value.args]
                if not all(isinstance(n, int) and abs(n) <= MAX_CELL_NODES + 2 for n in ends):
                    raise ValueError(f"{kw.arg} must be a small range of cell nodes, got range{tuple(ends)}")
                fields[kw.arg] = range(*ends)
            elif kw.arg.endswith("_concat"):  # the published genotypes write [2, 3, 4, 5]
                nodes = ast.literal_eval(kw.value)
                fields[kw.arg] = (
                    range(nodes[0], nodes[-1] + 1) if nodes == list(range(nodes[0], nodes[-1] + 1)) else nodes
                )
            else:
                fields[kw.arg] = [tuple(p) for p in ast.literal_eval(kw.value)]
        return checked_genotype(kinds[call.func.id], fields)
    except (SyntaxError, ValueError, TypeError) as err:
        raise ValueError(f"cannot parse genotype string {text[:80]!r}: {err}") from err


def _cell(pairs: str) -> list[tuple[str, int]]:
    """``"sep_conv_3x3 0, skip_connect 1, ..."`` -> ``[("sep_conv_3x3", 0), ("skip_connect", 1), ...]``."""
    return [(op, int(j)) for op, j in (item.split() for item in pairs.split(","))]


def _named(normal: str, reduce: str, normal_concat=range(2, 6), reduce_concat=range(2, 6)) -> Genotype:
    return Genotype(_cell(normal), normal_concat, _cell(reduce), reduce_concat)


# The authors' published cells, by the names their genotypes.py files give them.
NAMED_GENOTYPES = {
    # quark0/darts cnn/genotypes.py
    "NASNet": _named(
        "sep_conv_5x5 1, sep_conv_3x3 0, sep_conv_5x5 0, sep_conv_3x3 0, avg_pool_3x3 1, skip_connect 0, "
        "avg_pool_3x3 0, avg_pool_3x3 0, sep_conv_3x3 1, skip_connect 1",
        "sep_conv_5x5 1, sep_conv_7x7 0, max_pool_3x3 1, sep_conv_7x7 0, avg_pool_3x3 1, sep_conv_5x5 0, "
        "skip_connect 3, avg_pool_3x3 2, sep_conv_3x3 2, max_pool_3x3 1",
        range(2, 7),
        range(4, 7),
    ),
    "DARTS_V1": _named(
        "sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 0, sep_conv_3x3 1, skip_connect 0, sep_conv_3x3 1, "
        "sep_conv_3x3 0, skip_connect 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 0, max_pool_3x3 0, skip_connect 2, "
        "skip_connect 2, avg_pool_3x3 0",
    ),
    "DARTS_V2": _named(
        "sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 1, skip_connect 0, "
        "skip_connect 0, dil_conv_3x3 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 1, max_pool_3x3 0, skip_connect 2, "
        "skip_connect 2, max_pool_3x3 1",
    ),
    # yuhuixu1993/PC-DARTS genotypes.py
    "PC_DARTS_cifar": _named(
        "sep_conv_3x3 1, skip_connect 0, sep_conv_3x3 0, dil_conv_3x3 1, sep_conv_5x5 0, sep_conv_3x3 1, "
        "avg_pool_3x3 0, dil_conv_3x3 1",
        "sep_conv_5x5 1, max_pool_3x3 0, sep_conv_5x5 1, sep_conv_5x5 2, sep_conv_3x3 0, sep_conv_3x3 3, "
        "sep_conv_3x3 1, sep_conv_3x3 2",
    ),
    "PC_DARTS_image": _named(
        "skip_connect 1, sep_conv_3x3 0, sep_conv_3x3 0, skip_connect 1, sep_conv_3x3 1, sep_conv_3x3 3, "
        "sep_conv_3x3 1, dil_conv_5x5 4",
        "sep_conv_3x3 0, skip_connect 1, dil_conv_5x5 2, max_pool_3x3 1, sep_conv_3x3 2, sep_conv_3x3 1, "
        "sep_conv_5x5 0, sep_conv_3x3 3",
    ),
    # chenxin061/pdarts genotypes.py
    "PDARTS": _named(
        "skip_connect 0, dil_conv_3x3 1, skip_connect 0, sep_conv_3x3 1, sep_conv_3x3 1, sep_conv_3x3 3, "
        "sep_conv_3x3 0, dil_conv_5x5 4",
        "avg_pool_3x3 0, sep_conv_5x5 1, sep_conv_3x3 0, dil_conv_5x5 2, max_pool_3x3 0, dil_conv_3x3 1, "
        "dil_conv_3x3 1, dil_conv_5x5 3",
    ),
}
NAMED_GENOTYPES["DARTS"] = NAMED_GENOTYPES["DARTS_V2"]  # the authors' alias
NAMED_GENOTYPES["PCDARTS"] = NAMED_GENOTYPES["PC_DARTS_cifar"]
