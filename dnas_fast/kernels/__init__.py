"""Fused MixedEdge backends. Each module registers itself with ``dnas_fast._backend`` when its
runtime (compiled extension, triton + GPU) is importable."""
