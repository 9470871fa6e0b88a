"""Nash-MTL aggregator: the Nash bargaining solution between the tasks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["nash_mtl", "NashMTLState"]

_NAME = "nash_mtl"


class NashMTLState(NamedTuple):
  """The step count and the last solved α (for ``update_weights_every > 1``)."""

  count: jax.Array  # int32: updates seen so far
  alpha: jax.Array  # [K] (or [0] without num_tasks): unclipped α, in gradient units
  task_weights: jax.Array | None = None  # [K] applied weights α·clip (None without num_tasks)


def nash_mtl(
    *,
    max_norm: float | jax.Array = 1.0,
    update_weights_every: int | jax.Array = 1,
    reg_eps: float | jax.Array = 1e-6,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL: combine the task gradients by the Nash bargaining solution.

  .. math:: \\alpha > 0:\\ G\\alpha = 1/\\alpha, \\qquad
     u = \\min\\!\\Big(1, \\frac{\\text{max\\_norm}}{\\|J^\\top\\alpha\\|}\\Big) J^\\top\\alpha

  ``<u, g_k> ∝ 1/α_k > 0`` for every task: the bargaining solution is a
  common ascent direction for every task's utility (with the ridge,
  ``∝ 1/α_k − reg_eps·‖g_k‖²·α_k``, positive on every adversarial Gramian
  tested; see :func:`weightax.weightings.nash_mtl`, also for α's accuracy in
  float32). Following the paper's
  code, α is recomputed every ``update_weights_every`` steps (kept in the
  state in between, and applied to the new gradients) and the update of the
  shared parameters is clipped to ``max_norm`` (``<= 0``: no clipping); the
  code's default is ``max_norm = 1``, and since ``‖Jᵀα‖ = √K`` at the
  solution, that clip is active for K >= 2. α is found by damped Newton in
  pure JAX (see :func:`weightax.weightings.nash_mtl`) instead of the code's
  20 cvxpy/ECOS iterations, which silently keep the previous α when ECOS is
  missing (cvxpy >= 1.6) or fails. Computed on the Gramian of the shared
  leaves; with a ``shared`` mask task-specific leaves receive ``Σ_k g_k``
  unclipped (the code only clips the shared parameters, and there uses the
  weighted loss, which gives head k the gradient ``α_k g_k`` instead).

  On K identical task gradients ``g``, ``Gα = 1/α`` gives ``α_k = 1/(√K‖g‖)``
  and ``Jᵀα = √K·g/‖g‖``: the update is ``g/‖g‖`` with the default
  ``max_norm=1`` (``max_norm·g/‖g‖`` when ``max_norm < √K``), ``√K·g/‖g‖`` with
  ``max_norm=0``.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` (α after the clip) of the last update (NaN before the first; ``None``
  without ``num_tasks``), so ``optax.tree_utils.tree_get(state,
  "task_weights")`` finds them in a chain.

  Args:
    max_norm: the largest norm of the shared update; may be traced.
    update_weights_every: recompute α every this many steps (>= 1); may be
      traced. Values above 1 need ``num_tasks`` (α lives in the state).
    reg_eps: relative ridge, so that α exists for dependent gradients.
    num_tasks: K; fixes the shape of the cached α.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}  # α = (1, 1/2)
    >>> tx = wx.nash_mtl(max_norm=0.0)
    >>> u, _ = tx.update(grads, tx.init(None))
    >>> [round(x, 4) for x in u["w"].tolist()]  # Jᵀα, of norm √2
    [1.0, 1.0]
    >>> tx = optax.chain(wx.nash_mtl(num_tasks=2), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
  """
  if isinstance(update_weights_every, int):
    if update_weights_every < 1:
      raise ValueError(f"{_NAME}: update_weights_every must be >= 1; got {update_weights_every}.")
    if update_weights_every > 1 and num_tasks is None:
      raise ValueError(
          f"{_NAME}: update_weights_every={update_weights_every} keeps α in the state, whose "
          "shape needs num_tasks; pass num_tasks=K."
      )
  if isinstance(reg_eps, int | float) and not reg_eps > 0:
    raise ValueError(f"{_NAME}: reg_eps must be positive; got {reg_eps}.")
  if isinstance(max_norm, int | float) and max_norm != max_norm:
    raise ValueError(f"{_NAME}: max_norm must be a number (<= 0: no clipping); got {max_norm}.")

  def init_fn() -> NashMTLState:
    k = 0 if num_tasks is None else num_tasks
    return NashMTLState(count=jnp.zeros([], jnp.int32), alpha=jnp.ones((k,), jnp.float32))

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: NashMTLState, key: Any, *, scale: jax.Array
  ) -> tuple[jax.Array, NashMTLState]:
    del task_losses, key
    # α(G/s²) = s·α(G): divide by s for the weights of the original gradients.
    alpha = weightings.nash_mtl(gramian, max_norm=0.0, reg_eps=reg_eps) / scale
    if state.alpha.shape == alpha.shape:  # static: a cache exists
      every = jnp.maximum(jnp.asarray(update_weights_every, jnp.int32), 1)
      alpha = jnp.where(state.count % every == 0, alpha, state.alpha)
      cached = alpha
    else:
      cached = state.alpha
    a_hat = alpha * scale
    hi = jax.lax.Precision.HIGHEST  # K x K: no TF32 on GPUs
    norm = jnp.sqrt(jnp.maximum(jnp.dot(a_hat, jnp.dot(gramian, a_hat, precision=hi),
                                        precision=hi), 0.0))  # ‖Jᵀα‖
    limit = jnp.asarray(max_norm, jnp.float32)
    clip = (limit > 0) & (norm > limit)
    factor = jnp.where(clip, limit / jnp.where(clip, norm, 1.0), 1.0)
    factor = jnp.where(jnp.isnan(limit), jnp.nan, factor)  # a traced NaN must not unclip
    return alpha * factor, NashMTLState(count=optax.safe_increment(state.count),
                                        alpha=cached.astype(state.alpha.dtype))

  return gramian_aggregator(
      weight_fn, init_fn, num_tasks=num_tasks, shared=shared, name=_NAME, normalize_gramian=True
  )
