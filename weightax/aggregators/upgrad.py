"""UPGrad aggregator: project every task gradient onto the dual cone, then sum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["upgrad", "UPGradState"]

_NAME = "upgrad"


class UPGradState(NamedTuple):
  """UPGrad keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def upgrad(
    *,
    pref_vector: jax.Array | None = None,
    reg_eps: float | jax.Array = 1e-4,
    ridge: str = "trace",
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Unconflicting projection of gradients: an update that conflicts with no task.

  .. math:: u = \\sum_i \\pi_J(u_i g_i), \\qquad
     \\pi_J(x) = \\arg\\min_{d:\\ \\langle g_k, d \\rangle \\ge 0\\ \\forall k} \\|d - x\\|

  Each ``u_i g_i`` is projected onto the dual cone of the task gradients, so
  ``<u, g_k> >= 0`` for every k, and ``u = Σ u_i g_i`` when nothing conflicts
  -- up to the ridge: with the default ``ridge="trace"`` (torchjd's),
  ``<g_k, u> >= −reg_eps·tr(G)·w_k``, so a task whose squared gradient norm is
  small against ``reg_eps·Σ_j ‖g_j‖²`` is not protected (the update can point
  straight against it); ``ridge="relative"`` gives
  ``<g_k, u> >= −reg_eps·‖g_k‖²·w_k`` for every task, whatever the norms down
  to ``‖g_k‖ = 1.1e-19·max_j‖g_j‖`` (a smaller one counts as zero). See
  :func:`weightax.weightings.upgrad` for the bounds and measured violations.
  The weights follow torchjd's ``UPGrad`` (preference vector ``1/K``, i.e.
  the mean, Gramian normalised by its trace plus ``reg_eps·I`` with
  ``reg_eps = 1e-4``), except that torchjd's ``norm_eps`` cut-off (which
  treats a Gramian of trace below 1e-4 as zero) is dropped, so the weights do
  not depend on the gradients' scale; see :func:`weightax.weightings.upgrad`.
  Computed on the Gramian of the shared leaves; with a ``shared`` mask,
  task-specific leaves receive ``Σ_k g_k``.

  On K identical task gradients ``g`` nothing conflicts: each ``u_i g`` already
  lies in the dual cone, and the update is ``(Σ_i u_i)·g``, ``g`` with the
  default preference ``1/K``.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of ``u = Σ_k w_k g_k`` of the last update (NaN before the first;
  ``None`` without ``num_tasks``), so ``optax.tree_utils.tree_get(state,
  "task_weights")`` finds them in a chain.

  Args:
    pref_vector: ``[K]`` preference vector; ``None`` means ``1/K``. May be traced.
    reg_eps: the ridge ε; may be traced.
    ridge: ``"trace"`` (``ε·I`` on ``G/tr(G)``, torchjd's) or ``"relative"``
      (``ε·G_kk`` on each task, which keeps the no-conflict guarantee for
      small tasks); a Python string.
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # no conflict
    >>> u, _ = wx.upgrad().update(grads, wx.upgrad().init(None))
    >>> u["w"].tolist()  # the mean
    [0.5, 0.5]
    >>> tx = optax.chain(wx.upgrad(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024.
  """
  if isinstance(reg_eps, int | float) and not reg_eps > 0:
    raise ValueError(f"{_NAME}: reg_eps must be positive; got {reg_eps}.")
  if ridge not in weightings.UPGRAD_RIDGES:
    raise ValueError(f"{_NAME}: ridge must be one of {weightings.UPGRAD_RIDGES}; got {ridge!r}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: UPGradState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, UPGradState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.upgrad(
        gramian, pref_vector=pref_vector, reg_eps=reg_eps, ridge=ridge
    ), state

  return gramian_aggregator(
      weight_fn, UPGradState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
