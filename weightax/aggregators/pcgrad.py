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
  """PCGrad keeps only the weights it applied (``num_tasks`` given); its randomness is ``key``."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


_ORDERS = ("random", "fixed")


def pcgrad(
    *,
    order: str = "random",
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Projects each task gradient off the gradients it conflicts with, then sums.

  For each task i, ``g_i' = g_i``; for every other task j in a random order,
  if ``<g_i', g_j> < 0`` then

  .. math:: g_i' \\leftarrow g_i' - \\frac{\\langle g_i', g_j \\rangle}{\\|g_j\\|^2} g_j,
     \\qquad u = \\sum_i g_i'.

  This is the paper's Algorithm 1: projections on the original ``g_j``, a
  fresh order per task, ``j = i`` skipped, and a *sum* (the paper, LibMTL and
  torchjd; the Nash-MTL code also offers a mean). With the default
  ``order="random"`` the orders come from the ``key`` passed to ``update``
  (see :func:`weightax.weightings.pcgrad_order`), as in the paper, and
  ``update`` raises without one (as :func:`random_loss_weighting` does): the
  result depends on the order for K >= 3. ``order="fixed"`` visits
  ``0, ..., K-1`` for every task and ignores ``key`` (deterministic, but not
  the paper's method for K >= 3; for K = 2 both orders agree). The
  projections are computed on the Gramian of the shared leaves and applied as
  weights, so the surgery sees all shared parameters as one vector (as in the
  paper); with a ``shared`` mask, task-specific leaves receive ``Σ_k g_k``, as
  in the Nash-MTL code.

  The update is ``Σ_k w_k g_k`` (a weighting): with ``num_tasks=K`` the state's
  ``task_weights`` holds the equivalent weights ``w`` of the last update. On K
  identical task gradients ``g`` nothing conflicts and ``u = K·g``.

  Args:
    order: ``"random"`` (a fresh order per task and step, drawn from the
      ``key`` that ``update`` then requires) or ``"fixed"`` (``0, ..., K-1``,
      no key needed).
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (pytree of
      bools or a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``key=`` with ``order="random"``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # <g1, g2> = -1
    >>> tx = wx.pcgrad(num_tasks=2)
    >>> u, state = tx.update(grads, tx.init(None), key=jax.random.key(0))
    >>> u["w"].tolist()  # (g1 + g2/2) + (g2 + g1)
    [0.5, 1.5]
    >>> state.task_weights.tolist()  # the same update as weights: u = 2 g1 + 1.5 g2
    [2.0, 1.5]
    >>> u, _ = wx.pcgrad(order="fixed").update(grads, tx.init(None))  # no key needed
    >>> tx = optax.chain(wx.pcgrad(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params, key=jax.random.key(0))

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
  """

  if order not in _ORDERS:
    raise ValueError(f"{_NAME}: order must be one of {_ORDERS}; got {order!r}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: PCGradState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, PCGradState]:
    del task_losses, scale  # the weights do not depend on the scale of G
    if order == "fixed":
      return weightings.pcgrad(gramian), state
    if key is None:
      raise ValueError(
          f"{_NAME} projects in a random order drawn at every step and needs a random key: "
          "call update(..., key=jax.random.key(step_seed)) with a fresh key each step, or "
          'build pcgrad(order="fixed") for the fixed order 0, ..., K-1; got key=None.'
      )
    return weightings.pcgrad(gramian, key=key), state

  return gramian_aggregator(
      weight_fn, PCGradState, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
