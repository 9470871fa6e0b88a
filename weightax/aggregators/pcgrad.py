"""PCGrad aggregator: gradient surgery, projecting conflicting task gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["pcgrad", "PCGradState"]

_NAME = "pcgrad"


class PCGradState(NamedTuple):
  """PCGrad keeps nothing between steps (its randomness comes from ``key``)."""


def pcgrad(
    *, num_tasks: int | None = None, shared: SharedMask = None
) -> optax.GradientTransformationExtraArgs:
  """Projects each task gradient off the gradients it conflicts with, then sums.

  For each task i, ``g_i' = g_i``; for every other task j in a random order,
  if ``<g_i', g_j> < 0`` then

  .. math:: g_i' \\leftarrow g_i' - \\frac{\\langle g_i', g_j \\rangle}{\\|g_j\\|^2} g_j,
     \\qquad u = \\sum_i g_i'.

  This is the paper's Algorithm 1: projections on the original ``g_j``, a
  fresh order per task, ``j = i`` skipped, and a *sum* (the paper, LibMTL and
  torchjd; the Nash-MTL code also offers a mean). The orders come from the
  ``key`` passed to ``update`` (see :func:`weightax.weightings.pcgrad_order`);
  without a key they are fixed, ``0, ..., K-1``. The projections are computed
  on the Gramian of the shared leaves and applied as weights, so the surgery
  sees all shared parameters as one vector (as in the paper); with a
  ``shared`` mask, task-specific leaves receive ``Σ_k g_k``, as in the
  Nash-MTL code.

  Args:
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters (pytree of bools or callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking an optional ``key=``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # <g1, g2> = -1
    >>> u, _ = wx.pcgrad().update(grads, wx.pcgrad().init(None))
    >>> u["w"].tolist()  # (g1 + g2/2) + (g2 + g1)
    [0.5, 1.5]
    >>> tx = optax.chain(wx.pcgrad(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params, key=jax.random.key(0))

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
  """

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: PCGradState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, PCGradState]:
    del task_losses, scale  # the weights do not depend on the scale of G
    return weightings.pcgrad(gramian, key=key), state

  return gramian_aggregator(
      weight_fn, PCGradState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
