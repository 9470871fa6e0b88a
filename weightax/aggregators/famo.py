"""FAMO: fast adaptive multitask optimization (Liu et al.), balancing the losses' decrease rates."""

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
    requires_num_tasks,
    split_shared,
    with_task_weights,
)

__all__ = ["famo", "FAMOState"]

_NAME = "famo"
_EPS = 1e-8  # D = L − b + 1e-8 (b = 0), as the official code


class FAMOState(NamedTuple):
  """FAMO's logits ``ξ``, their optimizer's state, the last losses and the update count."""

  logits: jax.Array  # [K] ξ, the task weights are softmax(ξ)
  opt_state: optax.OptState
  prev_losses: jax.Array  # [K] the task_losses of the last update
  count: jax.Array  # int32, number of updates so far
  task_weights: jax.Array | None = None  # [K] weights on g_k of the last update


@requires_num_tasks("its state keeps the K logits and the K losses of the last step.")
def famo(
    *,
    learning_rate: float | jax.Array = 0.025,
    gamma: float | jax.Array = 1e-3,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """FAMO: descend Σ z_k log L_k, with z = softmax(ξ) learned so that all losses fall alike.

  With ``z = softmax(ξ)`` and ``D_k = L_k + 10⁻⁸``, the update is the gradient
  of ``Σ_k z_k log D_k / c`` with ``c = Σ_k z_k / D_k`` held constant:

  .. math:: u = \\sum_k w_k g_k, \\qquad
     w_k = \\frac{z_k / D_k}{\\sum_j z_j / D_j} = \\operatorname{softmax}(\\xi - \\log D)_k

  (the weights sum to 1). After the step, ``ξ`` learns from how much each
  log-loss fell on the same batch, ``δ_k = \\log D_k(θ_t) − \\log D_k(θ_{t+1})``:
  its gradient is ``(∂z/∂ξ)ᵀ δ = z ⊙ (δ − (z·δ)1)``, followed by one step of
  Adam (``learning_rate``) with L2 weight decay ``gamma`` (torch's
  ``Adam(weight_decay=γ)``: ``γξ`` is added to the gradient before Adam).

  **Which losses ξ learns from.** The paper (Algorithm 2) and its code
  re-evaluate the losses of the step's batch *after* the step. That is what
  happens through ``weightax.mtl.fit(..., post_step_losses=True)``: at step
  ``t`` it passes ``post_step_losses = L(θ_t, b_{t−1})`` with
  ``task_losses = L(θ_t, b_t)``; ``famo`` kept ``L(θ_{t−1}, b_{t−1})`` from
  the previous update, so ``δ`` compares one batch before and after one step,
  exactly as the paper, and ``ξ`` is updated before this step's weights are
  formed (as the paper's order: weights, step, re-evaluation, ξ update). Used
  as a plain transform (no ``post_step_losses``), ``famo`` updates ``ξ`` from
  the losses it receives at the next call: ``δ = \\log D(θ_{t−1}, b_{t−1}) −
  \\log D(θ_t, b_t)``, which mixes the change due to the step with the
  difference between two batches (the same as the paper's with full-batch
  losses, noisier with mini-batches), and costs no extra forward pass. Either
  way the first update only forms weights (``ξ₀ = 0``: ``w ∝ 1/D``).

  Convention: lr 0.025 and γ = 1e-3 are the paper's Algorithm 2 values, as
  LibMTL and torchjd (the official class defaults to γ = 1e-5, its scripts
  use 1e-3, 1e-2 on Cityscapes). ``b = 0`` (the official ``min_losses``).
  The losses must be above ``−10⁻⁸`` (their logs are taken); the method is
  for non-negative losses. With a ``shared`` mask, task-specific leaves
  receive ``Σ_k g_k`` (the aggregator contract; the paper's heads descend the
  weighted log-losses).

  On K identical task gradients ``g`` the update is ``g`` (the weights sum to
  1). With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]``
  weights ``w`` of the last update (NaN before the first), so
  ``optax.tree_utils.tree_get(state, "task_weights")`` finds them in a chain.

  Args:
    learning_rate: Adam's learning rate for ``ξ``; may be traced.
    gamma: L2 weight decay on ``ξ`` (added to its gradient); may be traced.
    num_tasks: K, which fixes the shape of ``ξ`` and of the kept losses.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=`` and accepts ``post_step_losses=`` ``[K]``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.famo(num_tasks=2)
    >>> grads = {"w": jnp.eye(2)}
    >>> u, state = tx.update(grads, tx.init(None), task_losses=jnp.array([3.0, 1.0]))
    >>> [round(x, 4) for x in u["w"].tolist()]  # ξ = 0: w ∝ 1/L
    [0.25, 0.75]
    >>> # task 0's loss fell more after the step: ξ moves weight towards task 1
    >>> u, state = tx.update(grads, state, task_losses=jnp.array([1.5, 0.9]),
    ...                      post_step_losses=jnp.array([1.5, 0.9]))
    >>> [round(x, 4) for x in state.logits.tolist()]
    [-0.025, 0.025]

  References:
    Liu, Liu, Jin, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023.
  """
  opt = optax.chain(optax.add_decayed_weights(gamma), optax.adam(learning_rate))

  def init(params: Any) -> FAMOState:
    del params
    xi = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(
        logits=xi,
        opt_state=opt.init(xi),
        prev_losses=jnp.ones((num_tasks,), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        task_weights=init_task_weights(num_tasks),
    )

  def update(
      task_grads: Any,
      state: FAMOState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      post_step_losses: Any = None,
      **extra: Any,
  ) -> tuple[Any, FAMOState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    losses = check_task_losses(task_losses, k, required=True, name=_NAME)
    if post_step_losses is not None:
      post_step_losses = jnp.asarray(post_step_losses)
      if post_step_losses.shape != (k,):
        raise ValueError(
            f"{_NAME}: post_step_losses must have shape ({k},) to match the {k} task "
            f"gradients; got shape {post_step_losses.shape}."
        )
    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    after = losses if post_step_losses is None else (
        jax.lax.stop_gradient(post_step_losses).astype(jnp.float32))

    # ξ learns from the last step: δ = log D before − log D after.
    delta = jnp.log(state.prev_losses + _EPS) - jnp.log(after + _EPS)
    z = jax.nn.softmax(state.logits)
    grad_xi = z * (delta - jnp.sum(z * delta))  # (∂z/∂ξ)ᵀδ = (diag z − z zᵀ) δ
    step, opt_state = opt.update(grad_xi, state.opt_state, state.logits)
    learned = optax.apply_updates(state.logits, step).astype(jnp.float32)
    first = state.count == 0  # no step yet to learn from
    logits = jnp.where(first, state.logits, learned)
    opt_state = jax.tree.map(lambda old, new: jnp.where(first, old, new), state.opt_state,
                             opt_state)

    # w_k ∝ z_k / D_k, in the log domain so that tiny or huge losses stay finite.
    weights = jax.nn.softmax(logits - jnp.log(losses + _EPS))
    mask, _ = split_shared(task_grads, params, shared)
    new_state = FAMOState(logits=logits, opt_state=opt_state, prev_losses=losses,
                          count=state.count + 1, task_weights=state.task_weights)
    return apply_weights(task_grads, weights, mask), with_task_weights(new_state, weights,
                                                                      num_tasks)

  return make_aggregator(init, update, shared)
