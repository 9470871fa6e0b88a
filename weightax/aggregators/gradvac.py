"""GradVac aggregator: PCGrad-like corrections towards running cosine targets (Wang et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import SharedMask, gramian_aggregator, requires_num_tasks
from weightax.weightings._solvers import full_precision
from weightax.weightings.gradvac import gradvac_step

__all__ = ["gradvac", "GradVacState"]

_NAME = "gradvac"
_ORDERS = ("random", "fixed")


class GradVacState(NamedTuple):
  """The ``[K, K]`` running cosine targets ``φ̂`` (row i: task i's targets)."""

  targets: jax.Array  # [K, K]
  task_weights: jax.Array | None = None  # [K] weights of the last update


@requires_num_tasks("its state keeps the K x K running cosine targets.")
def gradvac(
    *,
    beta: float | jax.Array = 0.5,
    order: str = "random",
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradient Vaccine: correct each task gradient up to a running target cosine.

  For each task i and every other task j (in a random order), when the cosine
  ``φ`` of the corrected ``g_i'`` with ``g_j`` is below the target ``φ̂_ij``,
  ``g_i'`` gets the multiple of ``g_j`` that brings the cosine to exactly
  ``φ̂_ij``; the targets follow ``φ̂_ij ← (1−β)φ̂_ij + βφ`` and the update is
  ``Σ_i g_i'`` (:func:`weightax.weightings.gradvac` has the formula). With
  ``φ̂ = 0`` (the first step) this is PCGrad.

  Convention: one target per task pair for the whole shared model, ``β = 0.5``
  and ``φ̂₀ = 0``, as LibMTL (its default group) and torchjd; the sum of the
  corrected gradients, as both. The paper's per-layer targets are reached by
  one aggregator per group of parameters. The order is drawn from ``key`` at
  every step (``order="fixed"``: ``0, ..., K-1``, no key). Computed on the
  Gramian of the shared leaves; with a ``shared`` mask, task-specific leaves
  receive ``Σ_k g_k``.

  On K identical task gradients ``g`` every cosine is 1, nothing is corrected
  and the update is ``K·g``.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of the last update (``u = Σ_k w_k g_k``; NaN before the first), so
  ``optax.tree_utils.tree_get(state, "task_weights")`` finds them in a chain.

  Args:
    beta: the targets' EMA rate ``β``; may be traced.
    order: ``"random"`` (a fresh order per task from ``key`` at every update,
      the paper's) or ``"fixed"`` (``0, ..., K-1``; no key needed).
    num_tasks: K, which fixes the shape of the targets.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``key=`` with ``order="random"``.

  Example:
    >>> import jax, jax.numpy as jnp, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> tx = wx.gradvac(num_tasks=2)
    >>> u, state = tx.update(grads, tx.init(None), key=jax.random.key(0))
    >>> [round(x, 4) for x in u["w"].tolist()]  # φ̂ = 0: PCGrad's (g1 + g2/2) + (g2 + g1)
    [0.5, 1.5]
    >>> [round(x, 4) for x in state.targets[0].tolist()]  # ½ cos(g1, g2) = -1/(2√2)
    [0.0, -0.3536]

  References:
    Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models", ICLR 2021.
  """
  if order not in _ORDERS:
    raise ValueError(f"{_NAME}: order must be one of {_ORDERS}; got {order!r}.")

  def init_fn() -> GradVacState:
    return GradVacState(targets=jnp.zeros((num_tasks, num_tasks), jnp.float32))

  @full_precision
  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: GradVacState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, GradVacState]:
    del task_losses, scale  # cosines and norm ratios do not depend on the scale of G
    if order == "random" and key is None:
      raise ValueError(
          f"{_NAME} visits the other tasks in a random order drawn at every step and needs a "
          "random key: call update(..., key=jax.random.key(step_seed)) with a fresh key each "
          'step, or build gradvac(order="fixed") for the order 0, ..., K-1; got key=None.'
      )
    w, targets = gradvac_step(gramian.astype(jnp.float32), state.targets, beta=beta,
                              key=key if order == "random" else None)
    return w, GradVacState(targets=targets.astype(jnp.float32))

  return gramian_aggregator(
      weight_fn, init_fn, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
