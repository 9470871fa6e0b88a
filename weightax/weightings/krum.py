"""Krum: the task gradient(s) closest to their neighbours, as in Byzantine-robust SGD."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import normalize_gramian, pure_weighting

__all__ = ["krum", "KRUM_DISTANCES", "check_krum"]

KRUM_DISTANCES = ("squared", "euclidean")


def _concrete_int(x: Any) -> int | None:
  """``x`` as a Python int when its value is known now (not a tracer), else None."""
  if isinstance(x, jax.core.Tracer):
    return None
  return int(x)


def check_krum(k: int | None, n_byzantine: Any, n_selected: Any, *, name: str = "krum") -> None:
  """Raises a clear error when K tasks cannot carry Krum with these (concrete) settings.

  The paper's condition is ``2f + 2 < K``: every gradient's score sums the
  ``K − f − 2`` distances to its nearest neighbours, and more of them must be
  honest than could be Byzantine. Traced values cannot be checked; without K
  (``None``) only the signs are.
  """
  f, n = _concrete_int(n_byzantine), _concrete_int(n_selected)
  if f is not None and f < 0:
    raise ValueError(f"{name}: n_byzantine must be a non-negative integer; got {f}.")
  if n is not None and n < 1:
    raise ValueError(f"{name}: n_selected must be a positive integer; got {n}.")
  if k is None:
    return
  if f is not None and not 2 * f + 2 < k:
    raise ValueError(
        f"{name} needs more than 2·n_byzantine + 2 = {2 * f + 2} tasks (the paper's "
        f"condition 2f + 2 < K); got K = {k} tasks with n_byzantine = {f}."
    )
  if n is not None and n > k:
    raise ValueError(f"{name}: n_selected = {n} is more than the K = {k} tasks.")


@functools.partial(jax.jit, static_argnames=("distance",))
@pure_weighting
def _krum(gramian: jax.Array, n_byzantine: Any, n_selected: Any, distance: str) -> jax.Array:
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  diag = jnp.diagonal(g)
  d2 = jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)  # ‖g_i − g_j‖², clamped
  d = d2 if distance == "squared" else jnp.sqrt(d2)
  # Each row's distances to the other tasks, nearest first (itself, at +inf, last).
  nearest = jnp.sort(jnp.where(jnp.eye(k, dtype=bool), jnp.inf, d), axis=1)
  n_closest = k - jnp.asarray(n_byzantine) - 2
  score = jnp.sum(jnp.where(jnp.arange(k) < n_closest, nearest, 0.0), axis=1)
  # Tasks with equal scores share their slots: a tie group occupying ranks
  # [less, less + eq) gets the part of [0, m) it overlaps, split equally, so the weights
  # do not depend on the tasks' order (the closest pair always ties when K = 3).
  less = jnp.sum(score[None, :] < score[:, None], axis=1).astype(dtype)
  eq = jnp.sum(score[None, :] == score[:, None], axis=1).astype(dtype)
  m = jnp.asarray(n_selected).astype(dtype)
  overlap = jnp.clip(jnp.minimum(m, less + eq) - less, 0.0, eq)
  return overlap / (eq * m)


def krum(
    gramian: jax.Array,
    *,
    n_byzantine: int | jax.Array = 0,
    n_selected: int | jax.Array = 1,
    distance: str = "squared",
) -> jax.Array:
  """(Multi-)Krum weights: ``1/m`` on the ``m`` gradients with the lowest Krum score.

  .. math:: s_i = \\sum_{j \\in N_i} \\|g_i - g_j\\|^2, \\qquad
     w_i = \\frac{1}{m}[\\,i \\text{ among the } m \\text{ lowest } s\\,]

  where ``N_i`` holds the ``K − f − 2`` tasks nearest to task i (``f =
  n_byzantine``, ``m = n_selected``). The distances come from the Gramian,
  ``‖g_i − g_j‖² = G_ii + G_jj − 2G_ij`` (clamped at 0 against rounding), on
  ``G/tr(G)`` since the selection does not depend on the scale. Tasks with
  equal scores share the places they compete for equally (with K = 3 the
  closest pair always ties, and Krum returns its mean), where torchjd leaves
  ties to ``topk``: the weights do not depend on the tasks' order.
  ``distance="squared"`` is the paper's score; ``"euclidean"`` sums the
  distances themselves, as torchjd's ``Krum``. The paper needs
  ``2f + 2 < K`` (torchjd only ``K >= f + 3``); a concrete ``n_byzantine``
  that breaks it raises a ``ValueError``.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    n_byzantine: ``f``, the number of gradients that may be adversarial
      (an integer; may be traced, and then goes unchecked).
    n_selected: ``m``, how many gradients are averaged (1: Krum; more:
      Multi-Krum); may be traced.
    distance: ``"squared"`` (the paper's) or ``"euclidean"`` (torchjd's); a
      Python string.

  Returns:
    ``[K]`` weights: ``1/m`` on the selected tasks, 0 elsewhere (tied tasks
    share), summing to 1.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [9.0, -9.0]])  # one outlier
    >>> wx.weightings.krum(J @ J.T, n_byzantine=0, n_selected=2).tolist()
    [0.5, 0.0, 0.5, 0.0]

  References:
    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent", NeurIPS 2017; torchjd (https://github.com/TorchJD/torchjd).
  """
  if distance not in KRUM_DISTANCES:
    raise ValueError(f"krum: distance must be one of {KRUM_DISTANCES}; got {distance!r}.")
  check_krum(gramian.shape[0], n_byzantine, n_selected)
  return _krum(gramian, n_byzantine, n_selected, distance)
