"""matmeta: meta-learned models for materials discovery from a handful of measurements."""

__version__ = "0.1.0"
