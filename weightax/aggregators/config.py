"""ConFIG aggregator: equal cosines to every task gradient, the length of their projections."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["config", "ConFIGState"]

_NAME = "config"


class ConFIGState(NamedTuple):
  """ConFIG keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def config(
    *,
    pref_vector: jax.Array | None = None,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """ConFIG (conflict-free inverse gradients): one direction at equal angles to every task.

  .. math:: d = \\hat U^{+} \\mathbf{1}, \\quad \\hat d = d/\\|d\\|, \\qquad
     u = \\Big(\\sum_i \\langle g_i, \\hat d \\rangle\\Big) \\hat d

  ``Û`` stacks the unit task gradients, so ``d`` has the same projection on
  each of them (``p = 1``; ``pref_vector`` sets others): when the gradients
  are linearly independent every task's gain ``<g_k, u>`` is positive. The
  length is the sum of the gradients' projections on ``d̂``, as the paper,
  the official code and torchjd. Computed from the Gramian (``d`` lies in the
  span of the gradients: see :func:`weightax.weightings.config`, which also
  says where small singular values are cut); the official code's closed
  form for two tasks and its momentum variant are not provided. Computed on
  the Gramian of the shared leaves; with a ``shared`` mask, task-specific
  leaves receive ``Σ_k g_k``. On K identical gradients ``g`` the update is
  ``K·g``. With ``num_tasks=K`` the state's ``task_weights`` holds the
  ``[K]`` weights of the last update.

  Args:
    pref_vector: ``[K]`` target projections ``p`` on the unit gradients;
      ``None`` means ones. May be traced.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
    >>> u, _ = wx.config().update(grads, wx.config().init(None))
    >>> [round(x, 4) for x in u["w"].tolist()]  # (2/√2 + 1/√2)·(1, 1)/√2
    [1.5, 1.5]

  References:
    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025.
  """

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: ConFIGState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, ConFIGState]:
    del task_losses, key, scale  # the weights do not depend on the scale of G
    return weightings.config(gramian, pref_vector=pref_vector), state

  return gramian_aggregator(
      weight_fn, ConFIGState, num_tasks=num_tasks, shared=shared, name=_NAME,
      normalize_gramian=True,
  )
