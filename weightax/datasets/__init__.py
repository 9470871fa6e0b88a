"""Data sets that ship with the dependencies (no downloads) and synthetic problems.

- :mod:`~weightax.datasets.digits`: scikit-learn's bundled 8×8 digits, a
  stratified split and a long-tailed split.
- :mod:`~weightax.datasets.multidigits`: MultiDigits, two overlapping digits per
  image with three tasks (left digit, right digit, their sum), MultiMNIST-style.
- :mod:`~weightax.datasets.toy`: the two-objective toy of CAGrad / Nash-MTL / FAMO.
- :mod:`~weightax.datasets.synthetic`: GradNorm's synthetic multi-task regression.
"""

from weightax.datasets import synthetic, toy
from weightax.datasets.digits import Split, load_digits, long_tailed_split
from weightax.datasets.multidigits import MultiDigits, load_multidigits
from weightax.datasets.synthetic import GradNormProblem, gradnorm_problem, gradnorm_sample
from weightax.datasets.toy import pareto_set, toy_losses

__all__ = [
    "GradNormProblem",
    "MultiDigits",
    "Split",
    "gradnorm_problem",
    "gradnorm_sample",
    "load_digits",
    "load_multidigits",
    "long_tailed_split",
    "pareto_set",
    "synthetic",
    "toy",
    "toy_losses",
]
