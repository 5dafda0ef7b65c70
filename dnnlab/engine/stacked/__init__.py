"""Stacked sweeps' numerical core: K same-architecture MLPs trained as one batched model (HFTA)."""
