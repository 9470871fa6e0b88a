"""GLS: descend the geometric mean of the task losses (Chennupati et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["geometric_loss", "GeometricLossState"]

_NAME = "geometric_loss"


class GeometricLossState(NamedTuple):
  """GLS keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights GLS/(K·L_k) of the last update


def _check_positive(task_losses: Any) -> None:
  """A clear error for non-positive losses when they are concrete (under jit: NaN weights)."""
  if task_losses is None or isinstance(task_losses, jax.core.Tracer):
    return
  x = np.asarray(jnp.asarray(task_losses, jnp.float32))
  bad = ~(x > 0)
  if np.any(bad):
    raise ValueError(
        f"{_NAME}: the geometric mean (Π_k L_k)^(1/K) needs positive task losses (its "
        f"gradient divides by each L_k); got task_losses={x.tolist()}, not positive at "
        f"tasks {np.flatnonzero(bad).tolist()}."
    )


def geometric_loss(
    *, num_tasks: int | None = None, shared: SharedMask = None
) -> optax.GradientTransformationExtraArgs:
  """Geometric loss strategy (GLS): the gradient of the geometric mean of the losses.

  .. math::
     \\mathrm{GLS} = \\Big(\\prod_{k=1}^K L_k\\Big)^{1/K}
       = \\exp\\Big(\\tfrac1K \\sum_k \\log L_k\\Big), \\qquad
     \\nabla \\mathrm{GLS} = \\sum_k w_k g_k, \\quad
     w_k = \\frac{\\mathrm{GLS}}{K\\,L_k}
       = \\tfrac1K \\exp\\Big(\\tfrac1K\\sum_j \\log L_j - \\log L_k\\Big)

  The update is the gradient of GLS with respect to the shared parameters: a
  task whose loss is small gets a large weight. The geometric mean is computed
  as ``exp(mean log L)`` (as torchjd), not as LibMTL's product followed by a
  power, which under- or overflows for many tasks or extreme losses; the
  weights are formed from the same logs, so they stay finite for losses from
  1e-30 to 1e30. Rescaling a task's loss and gradient by ``c_k > 0`` multiplies
  the update by ``(Π_k c_k)^{1/K}``: its direction is invariant to the loss
  scales, its length is not.

  The losses must be positive (the geometric mean's gradient divides by each
  ``L_k``): concrete losses that are not are refused with a ``ValueError``;
  under ``jit`` a non-positive loss gives NaN weights and a NaN update.
  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the
  aggregator contract).

  On K identical task gradients ``g`` the update is
  ``(GLS/K · Σ_k 1/L_k)·g``, which is ``g`` when the losses are equal.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``GLS/(K·L_k)`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")``
  finds them in a chain.

  Args:
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=`` (positive).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.geometric_loss(num_tasks=2)
    >>> grads = {"w": jnp.eye(2)}
    >>> u, state = tx.update(grads, tx.init(None), task_losses=jnp.array([4.0, 1.0]))
    >>> u["w"].tolist()  # GLS = 2: w = 2/(2·4), 2/(2·1)
    [0.25, 1.0]

  References:
    Chennupati, Sistu, Yogamani, Rawashdeh, "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR
    Workshops 2019.
  """

  def weight_fn(
      gramian: None, task_losses: jax.Array, state: GeometricLossState, key: Any
  ) -> tuple[jax.Array, GeometricLossState]:
    del gramian, key
    _check_positive(task_losses)
    logs = jnp.log(jax.lax.stop_gradient(task_losses).astype(jnp.float32))
    k = logs.shape[0]
    return jnp.exp(jnp.mean(logs) - logs) / k, state

  return gramian_aggregator(
      weight_fn,
      GeometricLossState,
      num_tasks=num_tasks,
      shared=shared,
      name=_NAME,
      needs_losses=True,
      needs_gramian=False,
  )
