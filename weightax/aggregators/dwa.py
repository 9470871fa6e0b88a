"""Dynamic Weight Average (DWA): weights from the recent rate of change of each loss."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import SharedMask, gramian_aggregator, requires_num_tasks

__all__ = ["dwa", "DWAState"]

_NAME = "dwa"


class DWAState(NamedTuple):
  """The loss history DWA needs; every shape is ``[K]`` or a scalar."""

  step: jax.Array  # int32: updates seen so far
  loss_sum: jax.Array  # [K] running sum of the losses of the period in progress
  last: jax.Array  # [K] mean loss of the last completed period, L(t-1)
  before_last: jax.Array  # [K] mean loss of the period before it, L(t-2)
  task_weights: jax.Array | None = None  # [K] weights applied at the last update


@requires_num_tasks("its state keeps each task's recent mean losses as [K] arrays.")
def dwa(
    *,
    temperature: float | jax.Array = 2.0,
    period: int | jax.Array = 1,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Weights each task by how slowly its loss has been falling (Liu et al.'s DWA).

  With :math:`L_k(t)` the mean loss of task k over period t,

  .. math::
     r_k = \\frac{L_k(t-1)}{L_k(t-2)}, \\qquad
     w_k = K \\operatorname{softmax}(r / T)_k, \\qquad u = \\sum_k w_k g_k,

  and :math:`w = \\mathbf 1` during the first two periods, while there is no
  ratio yet. A task whose loss fell less (larger :math:`r_k`) gets more weight;
  the weights sum to K (so with K = 1 the update is the gradient itself).

  A *period* is ``period`` consecutive calls to ``update``; its mean loss is
  accumulated in the state and the weights stay constant within it. The
  default ``period=1`` compares single steps. The paper and LibMTL use epoch
  means: set ``period`` to the number of steps per epoch. Nash-MTL's code
  instead slides a window of 25 steps (the mean of the last 25 losses over the
  mean of the 25 before) and recomputes the weights at every step; that
  overlapping window is not what ``period=25`` does here (disjoint blocks).

  ``L(t-2) = 0`` gives ratio 1 instead of a division by zero. With a
  ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the aggregator
  contract); ``shared=None`` is ``jax.grad`` of ``Σ_k w_k L_k``.

  On K identical task gradients ``g`` the update is ``K·g`` (the weights sum to
  K: ``w = 1`` during the first two periods, ``K·softmax`` afterwards).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` of the last update (NaN before the first; ``None`` without
  ``num_tasks``), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  them in a chain.

  Args:
    temperature: the softmax temperature T (2 in the paper); may be traced.
    period: the number of steps averaged into one loss measurement (≥ 1); may
      be traced.
    num_tasks: K, which fixes the shapes of the loss history in the state.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=`` (the ``[K]`` losses of the current step).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.dwa(num_tasks=2)
    >>> state = tx.init(None)
    >>> grads = {"w": jnp.eye(2)}
    >>> for losses in ([1.0, 1.0], [0.5, 1.0], [0.25, 1.0]):
    ...   u, state = tx.update(grads, state, task_losses=jnp.array(losses))
    >>> [round(x, 3) for x in u["w"].tolist()]  # r = (0.5, 1): the stalled task 2 gets more
    [0.876, 1.124]

  References:
    Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019.
  """
  if isinstance(period, int) and period < 1:
    raise ValueError(f"{_NAME}: period must be a positive number of steps; got {period}.")
  if isinstance(temperature, int | float) and temperature <= 0:
    raise ValueError(f"{_NAME}: temperature must be positive; got {temperature}.")

  def init_fn() -> DWAState:
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    return DWAState(step=jnp.zeros([], jnp.int32), loss_sum=zeros, last=zeros, before_last=zeros)

  def weight_fn(
      gramian: None, task_losses: jax.Array, state: DWAState, key: jax.Array | None
  ) -> tuple[jax.Array, DWAState]:
    del gramian, key
    losses = jax.lax.stop_gradient(task_losses).astype(jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    n = jnp.asarray(period, jnp.int32)
    # The weights of this step use only completed periods, never the current loss.
    completed = state.step // n
    ok = state.before_last != 0
    ratio = jnp.where(ok, state.last / jnp.where(ok, state.before_last, 1.0), 1.0)
    w = jnp.where(completed >= 2, num_tasks * jax.nn.softmax(ratio / t), 1.0)

    loss_sum = state.loss_sum + losses
    ends = (state.step + 1) % n == 0
    new_state = DWAState(
        step=optax.safe_increment(state.step),
        loss_sum=jnp.where(ends, 0.0, loss_sum),
        last=jnp.where(ends, loss_sum / n.astype(jnp.float32), state.last),
        before_last=jnp.where(ends, state.last, state.before_last),
    )
    return w, new_state

  return gramian_aggregator(
      weight_fn,
      init_fn,
      num_tasks=num_tasks,
      shared=shared,
      name=_NAME,
      needs_losses=True,
      needs_gramian=False,
  )
