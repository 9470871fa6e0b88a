"""weightax: loss weighting for JAX, in Optax's style.

The whole public API is re-exported here; read this file to see the library.

- Per-task gradients: :func:`value_and_jacobian`, :func:`gramian`.
- Multi-task aggregators (``optax.GradientTransformationExtraArgs``, put first in
  an ``optax.chain``): loss-based :func:`linear_scalarization`,
  :func:`random_loss_weighting`, :func:`dwa`, :func:`uncertainty_weighting`,
  :func:`gradnorm`; Gramian-based :func:`mgda`, :func:`pcgrad`, :func:`cagrad`,
  :func:`imtl_g`, :func:`upgrad`, :func:`nash_mtl`. Their pure weightings
  ``G -> w`` live in :mod:`weightax.weightings`; :func:`gramian_aggregator`
  turns a new weighting into an aggregator.
- Sample-weighting losses: :mod:`weightax.losses`; meta-learned example and task
  weights (a clean validation loss through one inner step): :mod:`weightax.meta`.
- Shared-parameter and representation-level helpers: :mod:`weightax.mtl`.
- Studies: :func:`sweep` (a grid × seeds as one compiled program), :func:`fit`
  (a ``lax.scan`` training loop), :mod:`weightax.datasets`.
"""

from weightax import aggregators, datasets, losses, meta, mtl, weightings
from weightax.aggregators import (
    AlignedMTLState,
    CAGradState,
    ConFIGState,
    DBMTLState,
    DualProjState,
    DWAState,
    ExcessMTLState,
    FairGradState,
    FAMOState,
    GeometricLossState,
    GradDropState,
    GradNormState,
    GradVacState,
    IMTLGState,
    IMTLState,
    KrumState,
    LinearScalarizationState,
    MGDAState,
    MoCoState,
    NashMTLState,
    PCGradState,
    RandomLossWeightingState,
    STCHState,
    TrimmedMeanState,
    UncertaintyWeightingState,
    UPGradState,
    aligned_mtl,
    cagrad,
    config,
    db_mtl,
    dualproj,
    dwa,
    excess_mtl,
    fairgrad,
    famo,
    geometric_loss,
    graddrop,
    gradnorm,
    gradvac,
    gramian_aggregator,
    imtl,
    imtl_g,
    krum,
    linear_scalarization,
    mgda,
    moco,
    nash_mtl,
    pcgrad,
    random_loss_weighting,
    stch,
    trimmed_mean,
    uncertainty_weighting,
    upgrad,
)
from weightax.gramian_free import value_and_gramian
from weightax.jacobian import gramian, num_tasks, value_and_jacobian
from weightax.sweep import Stepwise, SweepResult, sweep
from weightax.train import FitResult, fit, sample_batch

__version__ = "0.1.0"

__all__ = [
    # per-task gradients
    "gramian",
    "num_tasks",
    "value_and_jacobian",
    "value_and_gramian",
    # aggregators
    "cagrad",
    "dwa",
    "gradnorm",
    "gramian_aggregator",
    "imtl_g",
    "linear_scalarization",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "random_loss_weighting",
    "uncertainty_weighting",
    "upgrad",
    "aligned_mtl",
    "dualproj",
    "geometric_loss",
    "GeometricLossState",
    "imtl",
    "IMTLState",
    "famo",
    "FAMOState",
    "stch",
    "STCHState",
    "gradvac",
    "GradVacState",
    "excess_mtl",
    "ExcessMTLState",
    "db_mtl",
    "DBMTLState",
    "moco",
    "MoCoState",
    "AlignedMTLState",
    "DualProjState",
    "krum",
    "trimmed_mean",
    "KrumState",
    "TrimmedMeanState",
    "fairgrad",
    "FairGradState",
    "config",
    "ConFIGState",
    "graddrop",
    "GradDropState",
    "CAGradState",
    "DWAState",
    "GradNormState",
    "IMTLGState",
    "LinearScalarizationState",
    "MGDAState",
    "NashMTLState",
    "PCGradState",
    "RandomLossWeightingState",
    "UncertaintyWeightingState",
    "UPGradState",
    # studies
    "FitResult",
    "Stepwise",
    "SweepResult",
    "fit",
    "sample_batch",
    "sweep",
    # subpackages
    "aggregators",
    "datasets",
    "losses",
    "meta",
    "mtl",
    "weightings",
]
