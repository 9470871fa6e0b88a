"""weightax: loss weighting for JAX, in Optax's style.

The whole public API is re-exported here.
"""

from weightax import aggregators, datasets, losses
from weightax.aggregators import *  # noqa: F403  (every aggregator factory, e.g. wx.pcgrad)
from weightax.jacobian import gramian, num_tasks, value_and_jacobian
from weightax.sweep import SweepResult, sweep
from weightax.train import FitResult, fit, sample_batch

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "SweepResult",
    "aggregators",
    "datasets",
    "losses",
    "fit",
    "sample_batch",
    "sweep",
    "gramian",
    "num_tasks",
    "value_and_jacobian",
    *aggregators.__all__,
]
