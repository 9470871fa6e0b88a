"""CAGrad aggregator: conflict-averse descent around the mean gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["cagrad", "CAGradState"]

_NAME = "cagrad"


class CAGradState(NamedTuple):
  """CAGrad keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def cagrad(
    *,
    c: float | jax.Array = 0.4,
    rescale: bool = True,
    reg_eps: float | jax.Array = 1e-6,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Conflict-averse gradient descent: the best worst-case task gain near the mean gradient.

  .. math:: d = \\arg\\max_{\\|d - g_0\\| \\le c\\|g_0\\|} \\min_k \\langle g_k, d \\rangle
     = g_0 + \\frac{\\sqrt{\\phi}}{\\|g_{w^*}\\|} g_{w^*}, \\qquad
     u = d / (1 + c^2) \\text{ if rescale}

  with ``g0`` the mean gradient, ``φ = c²‖g0‖²`` and ``w*`` the minimiser over
  the simplex of ``<g_w, g0> + √φ‖g_w‖``. Conventions: the update is on the
  scale of the mean gradient (the paper, LibMTL); the Nash-MTL code
  multiplies it by K. ``rescale=True`` divides by ``1 + c²`` (the default of
  the official code, LibMTL and the Nash-MTL code). ``c = 0.4`` is the
  Nash-MTL code's default (LibMTL: 0.5); ``c = 0`` is the mean gradient. The
  solver is an exact homotopy in pure JAX instead of SciPy's SLSQP (see
  :func:`weightax.weightings.cagrad`); it runs on the Gramian of the shared
  leaves, and with a ``shared`` mask task-specific leaves receive
  ``Σ_k g_k`` (the Nash-MTL code only handles shared parameters).

  On K identical task gradients ``g``, ``g_w = g0 = g`` and ``d = g +
  c‖g‖·g/‖g‖``, so the update is ``(1+c)/(1+c²)·g`` (``(1+c)·g`` with
  ``rescale=False``).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of ``u = Σ_k w_k g_k`` of the last update (NaN before the first;
  ``None`` without ``num_tasks``), so ``optax.tree_utils.tree_get(state,
  "task_weights")`` finds them in a chain.

  Args:
    c: radius of the ball around ``g0``, relative to ``‖g0‖``; may be traced.
    rescale: divide the update by ``1 + c²`` (a Python bool).
    reg_eps: relative ridge of the dual QP; may be traced.
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, _ = wx.cagrad(c=0.0).update(grads, wx.cagrad(c=0.0).init(None))
    >>> u["w"].tolist()  # c = 0: the mean gradient
    [0.5, 0.5]
    >>> tx = optax.chain(wx.cagrad(c=0.4), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021.
  """
  if isinstance(c, int | float) and not c >= 0:
    raise ValueError(f"{_NAME}: c must be non-negative; got {c}.")
  if isinstance(reg_eps, int | float) and not reg_eps > 0:
    raise ValueError(f"{_NAME}: reg_eps must be positive; got {reg_eps}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: CAGradState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, CAGradState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.cagrad(gramian, c=c, rescale=rescale, reg_eps=reg_eps), state

  return gramian_aggregator(
      weight_fn, CAGradState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
