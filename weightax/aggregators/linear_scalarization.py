"""Linear scalarization: a fixed weighted sum of the task gradients."""

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

__all__ = ["linear_scalarization", "LinearScalarizationState"]

_NAME = "linear_scalarization"


class LinearScalarizationState(NamedTuple):
  """Linear scalarization keeps only the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def linear_scalarization(
    *,
    weights: Any = None,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Sums the task gradients with fixed weights (equal weighting by default).

  .. math:: u = \\sum_k w_k g_k, \\qquad w = \\mathbf{1} \\text{ by default,}

  which is the gradient of the scalarized loss :math:`\\sum_k w_k L_k`. The
  default ``w = 1`` is the *sum* (LibMTL's EW, torchjd's ``Sum``), so that a
  shared leaf and a task-specific leaf see the same scale; pass
  ``weights=jnp.full(K, 1 / K)`` for the mean (torchjd's ``Mean``). With K = 1
  and default weights the update is the gradient itself.

  With a ``shared`` mask the weights apply to shared leaves only and a
  task-specific leaf receives ``Σ_k g_k`` (the aggregator contract). Leave
  ``shared=None`` to reproduce ``jax.grad`` of ``Σ_k w_k L_k`` on every leaf.

  On K identical task gradients ``g`` the update is ``(Σ_k w_k)·g``: ``K·g``
  with the default weights.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  them in a chain.

  Args:
    weights: the ``[K]`` task weights; a traced array is fine, e.g. under
      ``optax.inject_hyperparams``. ``None`` means ``w_k = 1``.
    num_tasks: K, checked against the data (and against ``weights``) when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``task_losses`` and ``key``
    are not needed (``task_losses`` is still checked against K when given).

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> tx = wx.linear_scalarization(weights=jnp.array([1.0, 0.5]))
    >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 4.0]])}
    >>> u, _ = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
    >>> u["w"].tolist()
    [2.0, 2.0]

  References:
    The standard multi-task baseline; see Xin et al., "Do Current Multi-Task
    Optimization Methods in Deep Learning Even Help?", NeurIPS 2022.
  """
  if weights is not None:
    w_shape = jnp.shape(weights)
    if len(w_shape) != 1 or (num_tasks is not None and w_shape[0] != num_tasks):
      expected = f"({num_tasks},)" if num_tasks is not None else "(K,)"
      raise ValueError(f"{_NAME}: weights must have shape {expected}; got {w_shape}.")

  def init(params: Any) -> LinearScalarizationState:
    del params
    return LinearScalarizationState(task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: LinearScalarizationState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, LinearScalarizationState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    if weights is None:
      w = jnp.ones((k,), jnp.float32)
    else:
      w = jnp.asarray(weights, jnp.float32)
      if w.shape != (k,):
        raise ValueError(
            f"{_NAME}: weights has shape {w.shape} but task_grads has {k} tasks; "
            f"expected ({k},)."
        )
    mask, _ = split_shared(task_grads, params, shared)
    return apply_weights(task_grads, w, mask), with_task_weights(state, w, num_tasks)

  return make_aggregator(init, update, shared)
