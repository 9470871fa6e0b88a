"""DualProj aggregator: project the mean gradient onto the dual cone of the task gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["dualproj", "DualProjState"]

_NAME = "dualproj"


class DualProjState(NamedTuple):
  """DualProj keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def dualproj(
    *,
    pref_vector: jax.Array | None = None,
    reg_eps: float | jax.Array = 1e-4,
    ridge: str = "trace",
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Dual projection: the mean gradient projected onto the dual cone of the task gradients.

  .. math:: u = \\arg\\min_{d:\\ \\langle g_k, d \\rangle \\ge 0\\ \\forall k}
     \\Big\\|d - \\sum_k u_k g_k\\Big\\|

  solved in its dual form ``w = argmin_{v >= u} vᵀG̃v``, ``u = Jᵀw`` (GEM's
  projection, as torchjd's ``DualProj``): the update conflicts with no task
  (up to the ridge), and equals ``Σ_k u_k g_k`` when that conflicts with none.
  UPGrad (:func:`weightax.upgrad`) projects each ``u_k g_k`` separately and
  sums; DualProj projects the sum once. The weights follow torchjd
  (preference ``1/K``, ``G/tr(G) + reg_eps·I`` with ``reg_eps = 1e-4``)
  without its ``norm_eps`` cut-off, so they do not depend on the gradients'
  scale. With the default ``ridge="trace"``, ``<g_k, u> >= −reg_eps·tr(G)·w_k``
  (a task whose squared norm is small against ``reg_eps·Σ_j‖g_j‖²`` is not
  protected); ``ridge="relative"`` gives ``<g_k, u> >= −reg_eps·‖g_k‖²·w_k``
  for every task down to ``‖g_k‖ = 1.1e-19·max_j‖g_j‖`` (a smaller one counts
  as zero). See :func:`weightax.weightings.dualproj`. Computed on the
  Gramian of the shared leaves; with a ``shared`` mask, task-specific leaves
  receive ``Σ_k g_k``. On K identical gradients ``g`` the update is
  ``(Σ_k u_k)·g``, ``g`` with the default preference.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  of the last update (NaN before the first; ``None`` without ``num_tasks``).

  Args:
    pref_vector: ``[K]`` preference vector; ``None`` means ``1/K``. May be traced.
    reg_eps: the ridge ε; may be traced.
    ridge: ``"trace"`` (``ε·I`` on ``G/tr(G)``, torchjd's) or ``"relative"``
      (``ε·G_kk`` on each task); a Python string.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # no conflict
    >>> u, _ = wx.dualproj().update(grads, wx.dualproj().init(None))
    >>> u["w"].tolist()  # the mean
    [0.5, 0.5]
    >>> tx = optax.chain(wx.dualproj(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017; Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024 (torchjd).
  """
  if isinstance(reg_eps, int | float) and not reg_eps > 0:
    raise ValueError(f"{_NAME}: reg_eps must be positive; got {reg_eps}.")
  if ridge not in weightings.DUALPROJ_RIDGES:
    raise ValueError(
        f"{_NAME}: ridge must be one of {weightings.DUALPROJ_RIDGES}; got {ridge!r}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: DualProjState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, DualProjState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.dualproj(
        gramian, pref_vector=pref_vector, reg_eps=reg_eps, ridge=ridge
    ), state

  return gramian_aggregator(
      weight_fn, DualProjState, num_tasks=num_tasks, shared=shared, name=_NAME,
      normalize_gramian=True,
  )
