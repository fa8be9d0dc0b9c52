"""JMAK kinetics app: data and TTT cleaning, synthetic corpora, batched fits, uncertainty, the meta-prior.

Submodules are imported directly (``matmeta.kinetics.fit`` …); this package imports nothing heavy.
"""
