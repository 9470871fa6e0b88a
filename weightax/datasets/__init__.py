"""Data sets that ship with the dependencies (no downloads) and synthetic problems."""

from weightax.datasets.digits import load_digits, long_tailed_split

__all__ = ["load_digits", "long_tailed_split"]
