"""STCH: the smooth Tchebycheff scalarization of the task losses (Lin et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["stch", "STCHState"]

_NAME = "stch"


class STCHState(NamedTuple):
  """STCH keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights λ_k softmax_k of the last update


def stch(
    *,
    mu: float | jax.Array = 1.0,
    preference: jax.Array | None = None,
    ideal: jax.Array | None = None,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Smooth Tchebycheff scalarization: a soft maximum of the weighted losses.

  .. math::
     S_\\mu(L) = \\mu \\log \\sum_{k=1}^K \\exp\\Big(\\frac{\\lambda_k (L_k - z_k)}{\\mu}\\Big),
     \\qquad \\nabla S_\\mu = \\sum_k w_k g_k, \\quad
     w_k = \\lambda_k\\, \\operatorname{softmax}\\Big(\\frac{\\lambda (L - z)}{\\mu}\\Big)_k

  As ``μ → 0`` this is the Tchebycheff scalarization ``max_k λ_k(L_k − z_k)``
  (the update follows the worst weighted task); large ``μ`` tends to the
  linear scalarization ``Σ_k λ_k L_k`` (up to a constant). The softmax is
  computed stably (its largest argument subtracted), so the scalarization's
  value never has to be formed.

  Convention: the paper's scalarization, with the preference ``λ`` uniform
  (``1/K``) and the ideal point ``z = 0`` by default, as torchjd's ``STCH``.
  LibMTL instead applies it from its fifth epoch to ``log(L_k/N_k)`` with a
  nadir ``N`` averaged over the fourth, ``λ = 1`` and a factor K, after four
  epochs of ``Σ log L``; that schedule is not reproduced here.

  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the
  aggregator contract). On K identical task gradients ``g`` the update is
  ``(Σ_k w_k)·g``: ``g/K`` with the uniform preference.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")``
  finds them in a chain.

  Args:
    mu: the smoothing ``μ > 0``; may be traced.
    preference: ``[K]`` preference ``λ`` (positive, usually on the simplex);
      ``None`` means ``1/K`` each. May be traced.
    ideal: ``[K]`` ideal point ``z`` (a lower bound of each loss); ``None``
      means 0. May be traced.
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.stch(mu=0.5)
    >>> grads = {"w": jnp.eye(2)}
    >>> u, _ = tx.update(grads, tx.init(None), task_losses=jnp.array([2.0, 1.0]))
    >>> [round(x, 4) for x in u["w"].tolist()]  # ½ softmax([1, 0.5]/0.5): the worse task leads
    [0.3655, 0.1345]

  References:
    Lin, Zhang, Zhang, Liu, Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024.
  """

  def weight_fn(
      gramian: None, task_losses: jax.Array, state: STCHState, key: Any
  ) -> tuple[jax.Array, STCHState]:
    del gramian, key
    losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
    k = losses.shape[0]
    lam = (jnp.full((k,), 1.0 / k, jnp.float32) if preference is None
           else jnp.asarray(preference, jnp.float32))
    z = jnp.zeros((k,), jnp.float32) if ideal is None else jnp.asarray(ideal, jnp.float32)
    if lam.shape != (k,) or z.shape != (k,):
      raise ValueError(
          f"{_NAME}: preference and ideal must have shape ({k},), one entry per task; got "
          f"{lam.shape} and {z.shape}."
      )
    return lam * jax.nn.softmax(lam * (losses - z) / mu), state

  return gramian_aggregator(
      weight_fn,
      STCHState,
      num_tasks=num_tasks,
      shared=shared,
      name=_NAME,
      needs_losses=True,
      needs_gramian=False,
  )
