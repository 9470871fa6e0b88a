"""Random loss weighting (RLW): fresh random simplex weights at every step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import (
    SharedMask,
    apply_weights,
    check_task_grads,
    check_task_losses,
    init_task_weights,
    make_aggregator,
    split_shared,
    with_task_weights,
)

__all__ = ["random_loss_weighting", "RandomLossWeightingState"]

_NAME = "random_loss_weighting"


class RandomLossWeightingState(NamedTuple):
  """RLW keeps only the weights it drew (``num_tasks`` given); the randomness is ``key``."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def random_loss_weighting(
    *,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Weights the task gradients with a fresh random point of the simplex.

  .. math::
     z \\sim \\mathcal N(0, I_K), \\qquad w = \\operatorname{softmax}(z),
     \\qquad u = \\sum_k w_k g_k .

  The weights sum to 1 (as in the paper, LibMTL and Nash-MTL's code), so the
  update is on the scale of the *mean* task gradient, a factor K below
  :func:`linear_scalarization`'s default sum. The draw comes from the ``key``
  passed to ``update``; pass a new key at every step (e.g. split inside a
  ``lax.scan``) — the same key gives the same weights. With K = 1, ``w = 1``.

  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the
  aggregator contract); ``shared=None`` is ``jax.grad`` of ``Σ_k w_k L_k``.

  On K identical task gradients ``g`` the update is ``g`` (the weights sum to
  1).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` it drew of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  them in a chain.

  Args:
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``key=`` (a ``jax.random`` key) and raises ``ValueError`` without it.

  Example:
    >>> import jax, jax.numpy as jnp, weightax as wx
    >>> tx = wx.random_loss_weighting()
    >>> grads = {"w": jnp.eye(3)}  # row k is task k's gradient
    >>> u, _ = tx.update(grads, tx.init(None), key=jax.random.key(0))
    >>> bool(jnp.isclose(u["w"].sum(), 1.0)) and bool((u["w"] > 0).all())
    True

  References:
    Lin, Ye, Xu, Shi, Zhang, Kwok, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022.
  """

  def init(params: Any) -> RandomLossWeightingState:
    del params
    return RandomLossWeightingState(task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: RandomLossWeightingState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, RandomLossWeightingState]:
    del extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    if key is None:
      raise ValueError(
          f"{_NAME} draws new weights at every step and needs a random key: call "
          "update(..., key=jax.random.key(step_seed)) with a fresh key each step; got key=None."
      )
    w = jax.nn.softmax(jax.random.normal(key, (k,), jnp.float32))
    mask, _ = split_shared(task_grads, params, shared)
    return apply_weights(task_grads, w, mask), with_task_weights(state, w, num_tasks)

  return make_aggregator(init, update, shared)
