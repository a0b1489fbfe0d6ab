"""Fused MixedEdge backends and their primitives. Each backend module registers itself with
``dnas_fast._backend`` when its runtime (compiled extension, triton + GPU) is importable."""

from .._autoload import import_submodules

import_submodules(__name__, __path__)
