"""IMTL: IMTL-L's learned loss scales together with IMTL-G (Liu et al., the full method)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator, requires_num_tasks

__all__ = ["imtl", "IMTLState"]

_NAME = "imtl"


class IMTLState(NamedTuple):
  """IMTL-L's log-scales ``s`` and their optimizer's state."""

  log_scales: jax.Array  # [K]
  opt_state: optax.OptState
  task_weights: jax.Array | None = None  # [K] weights on the unscaled g_k at the last update


def _imtl_l_objective(log_scales: jax.Array, task_losses: jax.Array) -> jax.Array:
  """IMTL-L's loss ``Σ_k (e^{s_k} L_k − s_k)``, whose minimiser is ``s_k = −log L_k``."""
  return jnp.sum(jnp.exp(log_scales) * task_losses - log_scales)


@requires_num_tasks("its state keeps the K learned log-scales of IMTL-L.")
def imtl(
    *,
    learning_rate: float | jax.Array = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Impartial MTL: IMTL-L's learned loss scales with IMTL-G's equal projections.

  IMTL-L scales each loss by a learned ``e^{s_k}`` and trains ``s`` on

  .. math:: \\mathcal L_s = \\sum_k \\left(e^{s_k} L_k - s_k\\right), \\qquad
     \\frac{\\partial \\mathcal L_s}{\\partial s_k} = e^{s_k} L_k - 1

  (so ``e^{s_k} L_k`` is driven towards 1). IMTL-G then combines the gradients
  of the scaled losses, ``g'_k = e^{s_k} g_k``, with the weights ``α``
  (``Σ α = 1``) under which the update projects equally on every unit
  ``g'_k`` (:func:`weightax.weightings.imtl_g`, solved on the cosine matrix):

  .. math:: u = \\sum_k \\alpha_k e^{s_k} g_k = \\sum_k w_k g_k, \\qquad
     w_k = \\alpha_k e^{s_k}

  (:func:`weightax.weightings.imtl`). Rescaling does not change directions, so
  ``u`` points where IMTL-G's does and the learned scales set its length.
  At each ``update`` the weights use the current ``s``, and then ``s`` takes
  one step of its own optimizer (both gradients at the same point, as joint
  training does).

  Convention: ``s₀ = 0`` and the IMTL-L loss above, as the paper, LibMTL and
  torchjd's ``IMTLL``. LibMTL and torchjd train ``s`` with the model's
  optimizer; here it has its own, Adam at ``learning_rate`` unless
  ``optimizer`` is given. The weights are those on the *unscaled* gradients,
  ``α_k e^{s_k}``. Unlike the paper, whose task-specific parameters descend
  the scaled losses ``e^{s_k} L_k``, task-specific leaves of a ``shared`` mask
  receive ``Σ_k g_k`` (the aggregator contract); the losses must be
  non-negative (with ``L_k < 0`` the IMTL-L loss has no minimum).

  On K identical task gradients ``g`` the update is ``K/(Σ_k e^{-s_k})·g``,
  ``g`` at the first update (``s₀ = 0``).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` applied (before ``s`` steps) at the last update (NaN before the
  first; ``None`` without ``num_tasks``), so ``optax.tree_utils.tree_get(state,
  "task_weights")`` finds them in a chain.

  Args:
    learning_rate: Adam's learning rate for ``s``; may be traced. Ignored when
      ``optimizer`` is given.
    optimizer: an Optax transformation for ``s`` replacing the default Adam.
    num_tasks: K, which fixes the shape of ``s``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.imtl(num_tasks=2, learning_rate=0.1)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> u, state = tx.update(grads, tx.init(None), task_losses=jnp.array([4.0, 0.25]))
    >>> [round(x, 4) for x in u["w"].tolist()]  # s = 0: IMTL-G's equal projections
    [0.6667, 0.6667]
    >>> [round(x, 3) for x in state.log_scales.tolist()]  # Adam's first step: towards -log L
    [-0.1, 0.1]

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task
    Learning", ICLR 2021.
  """
  opt = optax.adam(learning_rate) if optimizer is None else optimizer

  def init_fn() -> IMTLState:
    s = jnp.zeros((num_tasks,), jnp.float32)
    return IMTLState(log_scales=s, opt_state=opt.init(s))

  def weight_fn(
      gramian: jax.Array,
      task_losses: jax.Array,
      state: IMTLState,
      key: jax.Array | None,
      *,
      scale: jax.Array,
  ) -> tuple[jax.Array, IMTLState]:
    del key, scale  # IMTL-G's weights do not depend on the scale of G
    losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
    s = state.log_scales
    weights = weightings.imtl(gramian, s)
    grad_s = jax.grad(_imtl_l_objective)(s, losses)
    step, opt_state = opt.update(grad_s, state.opt_state, s)
    s = optax.apply_updates(s, step).astype(jnp.float32)
    return weights, IMTLState(log_scales=s, opt_state=opt_state)

  return gramian_aggregator(
      weight_fn,
      init_fn,
      num_tasks=num_tasks,
      shared=shared,
      name=_NAME,
      needs_losses=True,
      normalize_gramian=True,
  )
