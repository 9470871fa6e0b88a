"""Multi-task aggregators: per-task gradients (leading K axis) -> one update.

Each factory returns an ``optax.GradientTransformationExtraArgs``; put it first
in an ``optax.chain``. The aggregator contract is in ``docs/contract.md``.
"""

from weightax.aggregators._base import (
    EmptyAggregatorState,
    apply_weights,
    check_task_grads,
    check_task_losses,
    combine,
    gramian_aggregator,
    resolve_shared,
    split_shared,
)
from weightax.aggregators.aligned_mtl import AlignedMTLState, aligned_mtl
from weightax.aggregators.cagrad import CAGradState, cagrad
from weightax.aggregators.config import ConFIGState, config
from weightax.aggregators.db_mtl import DBMTLState, db_mtl
from weightax.aggregators.dualproj import DualProjState, dualproj
from weightax.aggregators.dwa import DWAState, dwa
from weightax.aggregators.excess_mtl import ExcessMTLState, excess_mtl
from weightax.aggregators.fairgrad import FairGradState, fairgrad
from weightax.aggregators.famo import FAMOState, famo
from weightax.aggregators.geometric_loss import GeometricLossState, geometric_loss
from weightax.aggregators.graddrop import GradDropState, graddrop
from weightax.aggregators.gradnorm import GradNormState, gradnorm
from weightax.aggregators.gradvac import GradVacState, gradvac
from weightax.aggregators.imtl import IMTLState, imtl
from weightax.aggregators.imtl_g import IMTLGState, imtl_g
from weightax.aggregators.krum import KrumState, krum
from weightax.aggregators.linear_scalarization import (
    LinearScalarizationState,
    linear_scalarization,
)
from weightax.aggregators.mgda import MGDAState, mgda
from weightax.aggregators.moco import MoCoState, moco
from weightax.aggregators.modo import MoDoState, modo
from weightax.aggregators.nash_mtl import NashMTLState, nash_mtl
from weightax.aggregators.pcgrad import PCGradState, pcgrad
from weightax.aggregators.random_loss_weighting import (
    RandomLossWeightingState,
    random_loss_weighting,
)
from weightax.aggregators.sdmgrad import SDMGradState, sdmgrad
from weightax.aggregators.stch import STCHState, stch
from weightax.aggregators.trimmed_mean import TrimmedMeanState, trimmed_mean
from weightax.aggregators.uncertainty_weighting import (
    UncertaintyWeightingState,
    uncertainty_weighting,
)
from weightax.aggregators.upgrad import UPGradState, upgrad

__all__ = [
    "EmptyAggregatorState",
    "apply_weights",
    "check_task_grads",
    "check_task_losses",
    "combine",
    "gramian_aggregator",
    "resolve_shared",
    "split_shared",
    "DWAState",
    "GradNormState",
    "LinearScalarizationState",
    "RandomLossWeightingState",
    "UncertaintyWeightingState",
    "dwa",
    "gradnorm",
    "linear_scalarization",
    "random_loss_weighting",
    "uncertainty_weighting",
    "CAGradState",
    "IMTLGState",
    "MGDAState",
    "NashMTLState",
    "PCGradState",
    "UPGradState",
    "cagrad",
    "imtl_g",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "upgrad",
    "AlignedMTLState",
    "DualProjState",
    "aligned_mtl",
    "dualproj",
    "KrumState",
    "TrimmedMeanState",
    "krum",
    "trimmed_mean",
    "FairGradState",
    "fairgrad",
    "ConFIGState",
    "config",
    "GradDropState",
    "graddrop",
    "GeometricLossState",
    "geometric_loss",
    "IMTLState",
    "imtl",
    "FAMOState",
    "famo",
    "STCHState",
    "stch",
    "GradVacState",
    "gradvac",
    "ExcessMTLState",
    "excess_mtl",
    "DBMTLState",
    "db_mtl",
    "MoCoState",
    "moco",
    "SDMGradState",
    "sdmgrad",
    "MoDoState",
    "modo",
]
