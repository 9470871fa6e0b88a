"""Krum aggregator: follow the task gradient(s) closest to their neighbours."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator
from weightax.weightings.krum import check_krum

__all__ = ["krum", "KrumState"]

_NAME = "krum"


class KrumState(NamedTuple):
  """Krum keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def krum(
    *,
    n_byzantine: int | jax.Array = 0,
    n_selected: int | jax.Array = 1,
    distance: str = "squared",
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """(Multi-)Krum: the mean of the ``n_selected`` task gradients with the lowest Krum score.

  .. math:: s_i = \\sum_{j \\in N_i} \\|g_i - g_j\\|^2, \\qquad
     u = \\frac{1}{m} \\sum_{i \\in S} g_i

  ``N_i`` are the ``K − f − 2`` tasks nearest to task i and ``S`` the ``m``
  tasks of lowest score (``f = n_byzantine``, ``m = n_selected``): a
  Byzantine-robust rule that ignores up to ``f`` outlying gradients. It needs
  more tasks than twice what it may discard, ``K > 2f + 2`` (the paper's
  condition; the default ``f = 0`` needs ``K >= 3``): ``update`` raises a
  ``ValueError`` below that, and at ``init`` when ``num_tasks`` is given.
  ``distance="squared"`` is the paper's score, ``"euclidean"`` torchjd's.
  See :func:`weightax.weightings.krum`. Computed on the Gramian of the shared
  leaves; with a ``shared`` mask, task-specific leaves receive ``Σ_k g_k``.
  On K identical gradients ``g`` the update is ``g``. With ``num_tasks=K`` the
  state's ``task_weights`` holds the ``[K]`` weights of the last update.

  Args:
    n_byzantine: ``f``, how many gradients may be adversarial; an integer
      (may be injected; a traced value goes unchecked).
    n_selected: ``m``, how many gradients are averaged (1: Krum, more:
      Multi-Krum).
    distance: ``"squared"`` (the paper's) or ``"euclidean"`` (torchjd's); a
      Python string.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [9.0, -9.0]])}
    >>> tx = wx.krum(n_selected=2)
    >>> u, _ = tx.update(grads, tx.init(None))  # the outlier is ignored
    >>> [round(x, 4) for x in u["w"].tolist()]
    [0.95, 1.0]
    >>> wx.krum(n_byzantine=1).update(grads, tx.init(None))  # 4 tasks: 2f + 2 < K fails
    Traceback (most recent call last):
    ...
    ValueError: krum needs more than 2·n_byzantine + 2 = 4 tasks ...

  References:
    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017.
  """
  if distance not in weightings.KRUM_DISTANCES:
    raise ValueError(
        f"{_NAME}: distance must be one of {weightings.KRUM_DISTANCES}; got {distance!r}.")
  check_krum(num_tasks, n_byzantine, n_selected, name=_NAME)

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: KrumState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, KrumState]:
    del task_losses, key, scale  # the selection does not depend on the scale of G
    w = weightings.krum(
        gramian, n_byzantine=n_byzantine, n_selected=n_selected, distance=distance)
    return w, state

  return gramian_aggregator(
      weight_fn, KrumState, num_tasks=num_tasks, shared=shared, name=_NAME,
      normalize_gramian=True,
  )
