"""FairGrad aggregator: α-fair weights, every task's gain ``w_k^(−1/α)``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["fairgrad", "FairGradState"]

_NAME = "fairgrad"


class FairGradState(NamedTuple):
  """FairGrad keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def fairgrad(
    *,
    alpha: float | jax.Array = 1.0,
    reg_eps: float | jax.Array = 1e-6,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """FairGrad: α-fair resource allocation between the tasks' gains.

  .. math:: G w = w^{-1/\\alpha},\\quad w > 0, \\qquad u = J^\\top w

  Every task's first-order gain ``<g_k, u> = w_k^{−1/α}`` is positive, and
  ``w`` maximises the α-fair utility of the gains: α = 1 (LibMTL's default)
  is proportional fairness, α → ∞ max-min fairness. The weights are not
  normalised (LibMTL, torchjd); rescaling all gradients by ``c`` scales the
  update by ``c^{(1−α)/(1+α)}``. At α = 1 the equation is Nash-MTL's
  ``Gα = 1/α`` and the update does not change when each task's loss is
  rescaled (``g_k → c_k g_k`` gives ``w_k → w_k / c_k``); for other α it
  does. The equation is solved in pure JAX by a damped Newton method on its
  convex potential with a fixed budget, on ``G/tr(G)`` plus a ridge
  ``reg_eps`` relative to each task's squared norm (see
  :func:`weightax.weightings.fairgrad`; it keeps the weights finite for zero
  or exactly opposite gradients, and the gains positive).
  LibMTL backpropagates ``Σ_k w_k L_k``, so its task heads are scaled by
  ``w`` too; here, with a ``shared`` mask, task-specific leaves receive
  ``Σ_k g_k`` as for every aggregator. On K identical gradients ``g`` (α = 1)
  ``K‖g‖²w_k = 1/w_k``, so ``w_k = 1/(√K‖g‖)`` and ``u = √K·g/‖g‖``. With
  ``num_tasks=K`` the state's
  ``task_weights`` holds the ``[K]`` weights of the last update.

  Args:
    alpha: α > 0; may be traced.
    reg_eps: the relative ridge on ``G/tr(G)``; may be traced.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}  # orthogonal: w_k = 1/‖g_k‖
    >>> u, _ = wx.fairgrad().update(grads, wx.fairgrad().init(None))
    >>> [round(x, 3) for x in u["w"].tolist()]
    [1.0, 1.0]

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
  """
  if isinstance(alpha, int | float) and not alpha > 0:
    raise ValueError(f"{_NAME}: alpha must be positive; got {alpha}.")
  if isinstance(reg_eps, int | float) and not reg_eps >= 0:
    raise ValueError(f"{_NAME}: reg_eps must be non-negative; got {reg_eps}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: FairGradState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, FairGradState]:
    del task_losses, key
    w = weightings.fairgrad(gramian, alpha=alpha, reg_eps=reg_eps)
    # The aggregator passed G/s²: w(s²G) = (s²)^(−α/(1+α)) w(G).
    a = jnp.asarray(alpha, jnp.float32)
    return w * jnp.exp(-2.0 * a / (1.0 + a) * jnp.log(scale)), state

  return gramian_aggregator(
      weight_fn, FairGradState, num_tasks=num_tasks, shared=shared, name=_NAME,
      normalize_gramian=True,
  )
