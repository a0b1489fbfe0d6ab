"""Derived architectures, re-exported from their families: DARTS genotypes in the authors' format
(``spaces/darts/genotype.py``) and NAS-Bench-201 arch strings (``spaces/nb201/genotype.py``)."""

from .spaces.darts.genotype import (
    MAX_CELL_NODES,
    NAMED_GENOTYPES,
    EdgeAllGenotype,
    Genotype,
    cell_mask,
    cell_nodes,
    checked_genotype,
    darts_genotype,
    genotype_from_json,
    genotype_from_string,
    genotype_to_json,
    parse_all_edges_cell,
    parse_darts_cell,
    parse_top_pairs_cell,
)
from .spaces.nb201.genotype import nb201_arch_string, parse_nb201_arch_string

__all__ = [
    "MAX_CELL_NODES", "NAMED_GENOTYPES", "EdgeAllGenotype", "Genotype", "cell_mask", "cell_nodes", "checked_genotype",
    "darts_genotype", "genotype_from_json", "genotype_from_string", "genotype_to_json", "nb201_arch_string",
    "parse_all_edges_cell", "parse_darts_cell", "parse_nb201_arch_string", "parse_top_pairs_cell",
]  # fmt: skip
