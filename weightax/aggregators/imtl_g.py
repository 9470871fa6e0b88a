"""IMTL-G aggregator: the update with equal projections on every unit task gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["imtl_g", "IMTLGState"]

_NAME = "imtl_g"


class IMTLGState(NamedTuple):
  """IMTL-G keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def imtl_g(
    *, num_tasks: int | None = None, shared: SharedMask = None
) -> optax.GradientTransformationExtraArgs:
  """Impartial MTL (gradient part): every task sees the same projected step.

  .. math:: w \\propto G^{+} \\sqrt{\\operatorname{diag}(G)}, \\quad \\sum_k w_k = 1,
     \\qquad u = \\sum_k w_k g_k

  so that ``<u, g_k/‖g_k‖>`` is the same for every task (the paper's
  condition, for linearly independent gradients). The weights sum to 1 as in
  the paper, LibMTL and the Nash-MTL code. The weights are computed from the
  cosine matrix ``D^-½GD^-½`` (``D = diag(G)``), so they stay exact in
  float32 when the gradient norms differ by ``1e7`` or more; a pseudo-inverse
  of that matrix extends the method to dependent gradients (torchjd's
  ``G⁺√diag(G)`` differs from it only there), and a vanishing ``Σ_k`` of the
  unnormalised weights gives zero weights (torchjd); see
  :func:`weightax.weightings.imtl_g`. IMTL-L, the loss-scale
  half of the paper's IMTL, is not included. Computed on the Gramian of the
  shared leaves; with a ``shared`` mask, task-specific leaves receive
  ``Σ_k g_k``.

  On K identical task gradients ``g`` the update is ``g`` (every ``u`` has equal
  projections, and the weights sum to 1).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  them in a chain.

  Args:
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> u, _ = wx.imtl_g().update(grads, wx.imtl_g().init(None))
    >>> [round(x, 4) for x in u["w"].tolist()]  # equal projections on e1, e2
    [0.6667, 0.6667]
    >>> tx = optax.chain(wx.imtl_g(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
  """

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: IMTLGState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, IMTLGState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.imtl_g(gramian), state

  return gramian_aggregator(
      weight_fn, IMTLGState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
