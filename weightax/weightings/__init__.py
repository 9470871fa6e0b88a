"""Pure weightings: a Gramian ``G = J Jᵀ`` ``[K, K]`` in, task weights ``[K]`` out.

The update of each method is ``Σ_k w_k g_k = Jᵀw``. Every function is pure JAX
with fixed iteration budgets (no SciPy, cvxpy or host callbacks), so it runs
under ``jit``, ``vmap``, ``lax.scan`` and ``shard_map``; hyperparameters are
keyword-only and may be traced arrays. The aggregators in
:mod:`weightax.aggregators` wrap these for Optax.

============  ==============================================  ===========================
weighting     update                                          ``<Jᵀw, g_k> >= 0`` ∀k
============  ==============================================  ===========================
``mgda``      min-norm point of the convex hull               yes (κ <= reg_eps)
``pcgrad``    sum of gradients projected off conflicts        K = 2 only
``cagrad``    best worst-case gain in a ball around the mean  no
``imtl_g``    equal projection on every unit task gradient    no
``upgrad``    sum of projections onto the dual cone           up to the ridge (below)
``nash_mtl``  Nash bargaining solution ``Gα = 1/α``, clipped  yes (``∝ 1/α_k``)
============  ==============================================  ===========================

``κ_k = −<g_k, Jᵀw> / (‖g_k‖·Σ_j |w_j|‖g_j‖)`` measures a conflict (at most 1; the
cosine when no contributions cancel). ``upgrad``'s default ``ridge="trace"``
(torchjd's ``ε·I`` on ``G/tr(G)``) only bounds it by ``ε·tr(G)/‖g_k‖²``: a task
with a small gradient can be conflicted outright (κ = 1); ``ridge="relative"``
gives κ <= ε for every task. These bounds are tested on adversarial float32
Gramians (norms over e^±8, rank-deficient, nearly opposite pairs, K <= 10) in
``tests/test_weighting_properties.py``.
"""

from weightax.weightings.aligned_mtl import ALIGNED_MTL_SCALE_MODES, aligned_mtl
from weightax.weightings.cagrad import cagrad
from weightax.weightings.config import config
from weightax.weightings.dualproj import DUALPROJ_RIDGES, dualproj
from weightax.weightings.fairgrad import FAIRGRAD_ITERS, fairgrad
from weightax.weightings.gradvac import gradvac
from weightax.weightings.imtl import imtl
from weightax.weightings.imtl_g import imtl_g
from weightax.weightings.krum import KRUM_DISTANCES, krum
from weightax.weightings.mgda import mgda
from weightax.weightings.modo import modo
from weightax.weightings.nash_mtl import nash_mtl
from weightax.weightings.pcgrad import pcgrad, pcgrad_order
from weightax.weightings.sdmgrad import sdmgrad
from weightax.weightings.upgrad import UPGRAD_RIDGES, upgrad

__all__ = [
    "UPGRAD_RIDGES",
    "cagrad",
    "gradvac",
    "imtl",
    "imtl_g",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "pcgrad_order",
    "upgrad",
    "ALIGNED_MTL_SCALE_MODES",
    "DUALPROJ_RIDGES",
    "aligned_mtl",
    "dualproj",
    "KRUM_DISTANCES",
    "krum",
    "FAIRGRAD_ITERS",
    "fairgrad",
    "config",
    "sdmgrad",
    "modo",
]
