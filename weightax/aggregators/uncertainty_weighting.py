"""Uncertainty weighting: learned homoscedastic log-variances per task (Kendall et al.)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import SharedMask, gramian_aggregator, requires_num_tasks

__all__ = ["uncertainty_weighting", "UncertaintyWeightingState"]

_NAME = "uncertainty_weighting"


class UncertaintyWeightingState(NamedTuple):
  """The learned log-variances ``s = log σ²`` and their optimizer's state."""

  log_vars: jax.Array  # [K]
  opt_state: optax.OptState
  task_weights: jax.Array | None = None  # [K] weights e^{-s}/2 applied at the last update


def _objective(log_vars: jax.Array, task_losses: jax.Array) -> jax.Array:
  """The joint objective ``Σ_k ½(e^{-s_k} L_k + s_k)`` that the log-variances descend."""
  return 0.5 * jnp.sum(jnp.exp(-log_vars) * task_losses + log_vars)


@requires_num_tasks("its state keeps the K learned log-variances.")
def uncertainty_weighting(
    *,
    learning_rate: float | jax.Array = 1e-3,
    init_log_variance: float | jax.Array = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Weights tasks by learned uncertainties, trained jointly with the model.

  Kendall et al. minimise :math:`\\sum_k L_k / (2\\sigma_k^2) + \\log\\sigma_k`
  over the model and the :math:`\\sigma_k`. With :math:`s_k = \\log\\sigma_k^2`
  (for stability) this is

  .. math::
     \\mathcal L(\\theta, s) = \\sum_k \\tfrac12\\left(e^{-s_k} L_k(\\theta) + s_k\\right),
     \\qquad w_k = \\tfrac12 e^{-s_k},
     \\qquad \\frac{\\partial\\mathcal L}{\\partial s_k} = \\tfrac12\\left(1 - e^{-s_k} L_k\\right).

  At each ``update`` the model's update is :math:`\\sum_k w_k g_k` with the
  *current* weights, and ``s`` then takes one step of its own optimizer on
  :math:`\\partial\\mathcal L/\\partial s` (both gradients taken at the same
  point, as joint training does). The minimiser is :math:`s_k = \\log L_k`.
  With K = 1 the update is :math:`\\tfrac12 e^{-s} g`: the learned scale
  acts as a learning-rate factor.

  Convention: LibMTL and Nash-MTL's code minimise the same objective and
  differ only in the start and in what they report. weightax follows Nash-MTL's
  code: :math:`s_0 = 0` (so :math:`w = \\tfrac12` at first) and the weights are
  the true coefficients :math:`\\tfrac12 e^{-s}`. LibMTL starts at
  :math:`s_0 = -0.5` (``init_log_variance=-0.5``). Both train ``s`` with the
  model's optimizer (Adam, lr 1e-4 in their NYUv2 scripts); here it has its
  own, Adam at ``learning_rate`` unless ``optimizer`` is given. The objective
  assumes non-negative losses: with :math:`L_k < 0`, :math:`s_k` diverges.

  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the
  aggregator contract); ``shared=None`` is ``jax.grad`` of ``Σ_k w_k L_k``.

  On K identical task gradients ``g`` the update is ``(Σ_k ½e^{-s_k})·g``,
  ``K/2·g`` at the first update (``s_0 = 0``).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``½e^{-s}`` applied (before ``s`` steps) of the last update (NaN before the
  first; ``None`` without ``num_tasks``), so ``optax.tree_utils.tree_get(state,
  "task_weights")`` finds them in a chain.

  Args:
    learning_rate: Adam's learning rate for ``s``; may be traced. Ignored when
      ``optimizer`` is given.
    init_log_variance: :math:`s_0`, the same for every task; may be traced.
    optimizer: an Optax transformation for ``s`` replacing the default Adam.
    num_tasks: K, which fixes the shape of ``s``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.uncertainty_weighting(num_tasks=2, learning_rate=0.1)
    >>> state = tx.init(None)
    >>> u, state = tx.update({"w": jnp.eye(2)}, state, task_losses=jnp.array([4.0, 0.25]))
    >>> u["w"].tolist()  # w = e^{-s}/2 with s = 0
    [0.5, 0.5]
    >>> [round(x, 3) for x in state.log_vars.tolist()]  # Adam's first step is ±lr, towards log L
    [0.1, -0.1]

  References:
    Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018.
  """
  opt = optax.adam(learning_rate) if optimizer is None else optimizer

  def init_fn() -> UncertaintyWeightingState:
    s = jnp.full((num_tasks,), init_log_variance, jnp.float32)
    return UncertaintyWeightingState(log_vars=s, opt_state=opt.init(s))

  def weight_fn(
      gramian: None,
      task_losses: jax.Array,
      state: UncertaintyWeightingState,
      key: jax.Array | None,
  ) -> tuple[jax.Array, UncertaintyWeightingState]:
    del gramian, key
    losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
    s = state.log_vars
    weights = 0.5 * jnp.exp(-s)
    grad_s = jax.grad(_objective)(s, losses)
    step, opt_state = opt.update(grad_s, state.opt_state, s)
    s = optax.apply_updates(s, step).astype(jnp.float32)
    return weights, UncertaintyWeightingState(log_vars=s, opt_state=opt_state)

  return gramian_aggregator(
      weight_fn,
      init_fn,
      num_tasks=num_tasks,
      shared=shared,
      name=_NAME,
      needs_losses=True,
      needs_gramian=False,
  )
