"""MGDA aggregator: descend along the min-norm point of the hull of the task gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["mgda", "MGDAState"]

_NAME = "mgda"


class MGDAState(NamedTuple):
  """MGDA keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def mgda(
    *,
    reg_eps: float | jax.Array = 1e-6,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Multiple-gradient descent: the min-norm convex combination of the task gradients.

  .. math:: \\lambda^* = \\arg\\min_{\\lambda \\in \\Delta} \\|J^\\top \\lambda\\|^2,
     \\qquad u = J^\\top \\lambda^* = \\sum_k \\lambda^*_k g_k

  ``u`` has a non-negative inner product with every task gradient (a common
  descent direction) and vanishes at Pareto-stationary points. The weights
  sum to 1, as in the paper and LibMTL; the Nash-MTL code multiplies them by
  K. No gradient normalisation is applied (LibMTL's ``mgda_gn='none'``);
  divide the task losses beforehand for its ``'l2'``/``'loss'`` variants.
  Solved in pure JAX (closed form for K = 2, exact active set otherwise, see
  :func:`weightax.weightings.mgda`), on the Gramian of the shared leaves; with
  a ``shared`` mask, task-specific leaves receive ``Σ_k g_k``. For MGDA-UB,
  apply :func:`weightax.weightings.mgda` to the Gramian of the gradients with
  respect to the shared representation and scalarize the losses with it.

  On K identical task gradients ``g`` the update is ``g`` (every convex
  combination of ``g`` is ``g``).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``λ*`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  them in a chain.

  Args:
    reg_eps: relative ridge of the K > 2 solver; may be traced.
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}  # K=2 tasks
    >>> u, _ = wx.mgda().update(grads, wx.mgda().init(None))
    >>> [round(x, 4) for x in u["w"].tolist()]  # 0.8 g1 + 0.2 g2
    [0.8, 0.4]
    >>> tx = optax.chain(wx.mgda(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018; Désidéri, C. R. Math. 2012.
  """
  if isinstance(reg_eps, int | float) and not reg_eps > 0:
    raise ValueError(f"{_NAME}: reg_eps must be positive; got {reg_eps}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: MGDAState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, MGDAState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.mgda(gramian, reg_eps=reg_eps), state

  return gramian_aggregator(
      weight_fn, MGDAState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
