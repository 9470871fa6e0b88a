"""PCGrad: project each task gradient off the gradients it conflicts with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import normalize_gramian, pure_weighting, vary_like

__all__ = ["pcgrad", "pcgrad_order"]


def pcgrad_order(num_tasks: int, key: jax.Array | None = None) -> jax.Array:
  """The ``[K, K]`` visiting orders PCGrad uses: row i is a permutation of ``0..K-1``.

  Without a key every row is ``0, 1, ..., K-1``; with a key, row i is
  ``jax.random.permutation(jax.random.split(key, K)[i], K)``, a fresh order
  for every task as in the paper's Algorithm 1 and its PyTorch ports.

  Args:
    num_tasks: K (a Python int).
    key: PRNG key, or ``None`` for the fixed order.

  Returns:
    ``[K, K]`` int array; row i is the order in which task i meets the others.

  Example:
    >>> import weightax as wx
    >>> wx.weightings.pcgrad_order(3).tolist()
    [[0, 1, 2], [0, 1, 2], [0, 1, 2]]

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
  """
  if key is None:
    return jnp.tile(jnp.arange(num_tasks), (num_tasks, 1))
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)


@jax.jit
@pure_weighting
def pcgrad(
    gramian: jax.Array, *, key: jax.Array | None = None, order: jax.Array | None = None
) -> jax.Array:
  """PCGrad weights: the sum of the projected gradients, as a combination of the rows of J.

  For each task i, start from ``g_i' = g_i``; for every other task j in a
  random order, if ``<g_i', g_j> < 0`` then

  .. math:: g_i' \\leftarrow g_i' - \\frac{\\langle g_i', g_j \\rangle}{\\|g_j\\|^2} g_j

  (a projection on the *original* ``g_j``), and the update is ``Σ_i g_i'``.
  Each ``g_i'`` is ``Jᵀc_i`` for a coefficient vector ``c_i`` that starts at
  ``e_i``, and ``<g_i', g_j> = (G c_i)_j``, so the weights ``Σ_i c_i`` follow
  from ``G`` alone. The update is a sum, as in the paper and LibMTL (the
  Nash-MTL code also offers a mean). Zero gradients are never projected on.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    key: PRNG key for the random orders (see :func:`pcgrad_order`); without
      it the order is fixed, ``0, 1, ..., K-1``.
    order: explicit ``[K, K]`` integer orders, row i for task i (entries
      equal to i are skipped); overrides ``key``.

  Returns:
    ``[K]`` weights ``w`` with update ``Jᵀw = Σ_i g_i'``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: <g1, g2> = -1
    >>> w = wx.weightings.pcgrad(J @ J.T)
    >>> w.tolist()  # g1' = g1 + g2/2, g2' = g2 + g1
    [2.0, 1.5]

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  if order is None:
    order = pcgrad_order(k, key)
  order = jnp.asarray(order)
  if order.shape != (k, k):
    raise ValueError(f"pcgrad: order must have shape ({k}, {k}); got {order.shape}.")
  diag = jnp.diagonal(g)

  def one_task(i: jax.Array, row: jax.Array) -> jax.Array:
    def visit(c: jax.Array, j: jax.Array) -> tuple[jax.Array, None]:
      ip = g[j] @ c  # <g_i', g_j>
      project = (j != i) & (ip < 0) & (diag[j] > 0)
      coef = jnp.where(project, -ip / jnp.where(project, diag[j], 1.0), 0.0)
      return c.at[j].add(coef), None

    c, _ = lax.scan(visit, vary_like(jax.nn.one_hot(i, k, dtype=g.dtype), g), row)
    return c

  return jnp.sum(jax.vmap(one_task)(jnp.arange(k), order), axis=0)
