"""ExcessMTL: task weights driven by estimated excess risks (He et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import (
    SharedMask,
    apply_weights,
    check_state_leaves,
    check_task_grads,
    check_task_losses,
    init_task_weights,
    make_aggregator,
    requires_num_tasks,
    resolve_shared,
    split_shared,
    with_task_weights,
)

__all__ = ["excess_mtl", "ExcessMTLState"]

_NAME = "excess_mtl"
_EPS = 1e-7  # under the square root of the accumulated squares, as LibMTL and torchjd


class ExcessMTLState(NamedTuple):
  """The per-coordinate root of the accumulated squared gradients, the weights, e⁰, the count."""

  root_sum_sq: Any  # like the shared parameters with a leading K axis: √(Σ_t g_t²), float32
  weights: jax.Array  # [K] the robust weights, Σ = K
  initial_excess: jax.Array  # [K] e⁰, the excess-risk estimates of the first update
  count: jax.Array  # int32, number of updates so far
  task_weights: jax.Array | None = None  # [K] weights of the last update


@requires_num_tasks("its state keeps K weights and the K per-coordinate gradient sums.")
def excess_mtl(
    *,
    step_size: float | jax.Array = 1e-2,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """ExcessMTL: up-weight the tasks whose estimated excess risk is largest.

  Each task's excess risk is estimated with a diagonal (AdaGrad) curvature
  from its accumulated squared gradients:

  .. math:: S_k \\leftarrow S_k + g_k \\odot g_k, \\qquad
     e_k = \\sum_n \\frac{g_{k,n}^2}{\\sqrt{S_{k,n} + 10^{-7}}}

  The first update records ``e⁰ = e`` and keeps ``w = 1``; every later one
  takes a multiplicative-weights step on the estimates relative to their
  first values and renormalises to ``Σ_k w_k = K``:

  .. math:: w_k \\leftarrow w_k \\exp\\big(\\eta\\, e_k / e^0_k\\big), \\qquad
     w \\leftarrow K\\, w / \\textstyle\\sum_j w_j, \\qquad u = \\sum_k w_k g_k

  Convention: the authors' code (LibMTL's ``ExcessMTL``): ``w₀ = 1``, the sum
  ``K``, ``η = 10⁻²`` and no step at the first update. torchjd's starts from
  ``1/K``, keeps ``Σ w = 1``, uses ``η = 1`` and steps at the first call.
  ``√S`` is kept instead of ``S`` (updated with ``hypot``) so that gradients
  up to float32's largest do not overflow; a task whose first estimate is
  zero (a zero gradient) keeps its weight. The state holds a ``[K, ...]``
  array per shared parameter, so ``init`` needs the parameters (their shapes).
  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k``.

  On K identical task gradients ``g`` every estimate is the same, the weights
  stay 1 and the update is ``K·g``.
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  of the last update (NaN before the first), so
  ``optax.tree_utils.tree_get(state, "task_weights")`` finds them in a chain.

  Args:
    step_size: ``η``, the multiplicative-weights step; may be traced.
    num_tasks: K, which fixes the shape of the state.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``init`` needs the parameters.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.excess_mtl(num_tasks=2, step_size=1.0)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> u, state = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}, state, params)
    >>> u["w"].tolist()  # the first update keeps w = 1
    [1.0, 2.0]
    >>> u, state = tx.update({"w": jnp.array([[3.0, 0.0], [0.0, 2.0]])}, state, params)
    >>> [round(x, 3) for x in state.task_weights.tolist()]  # task 0's estimate grew more
    [1.789, 0.211]

  References:
    He, Zhou, Li, Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024.
  """

  def init(params: Any) -> ExcessMTLState:
    if params is None:
      raise ValueError(
          f"{_NAME} keeps a per-coordinate sum of squared gradients for every shared "
          "parameter, so init needs the parameters (for their shapes): call "
          "tx.init(params); got None."
      )
    mask = resolve_shared(shared, params)
    roots = jax.tree.map(
        lambda p, m: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.float32) if m else None,
        params, mask)
    return ExcessMTLState(
        root_sum_sq=roots,
        weights=jnp.ones((num_tasks,), jnp.float32),
        initial_excess=jnp.ones((num_tasks,), jnp.float32),
        count=jnp.zeros((), jnp.int32),
        task_weights=init_task_weights(num_tasks),
    )

  def update(
      task_grads: Any,
      state: ExcessMTLState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, ExcessMTLState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    mask, shared_grads = split_shared(task_grads, params, shared)
    grads = jax.tree.leaves(shared_grads)
    roots = check_state_leaves(state.root_sum_sq, grads, name=_NAME)
    new_roots, excess = [], jnp.zeros((k,), jnp.float32)
    for g, r in zip(grads, roots, strict=True):
      g = g.astype(jnp.float32)
      r = jnp.hypot(r, g)  # √(S + g²) without forming the squares
      new_roots.append(r)
      denom = jnp.sqrt(jnp.hypot(r, jnp.sqrt(_EPS)))  # (S + 1e-7)^(1/4)
      excess = excess + jnp.sum((g / denom).reshape(k, -1) ** 2, axis=1)
    first = state.count == 0
    initial = jnp.where(first, excess, state.initial_excess)
    known = initial != 0  # a NaN estimate (a NaN gradient) is "known": it must not become 0
    ratio = jnp.where(known, excess / jnp.where(known, initial, 1.0), 0.0)
    logits = jnp.log(state.weights) + step_size * ratio
    stepped = k * jax.nn.softmax(logits)  # w·exp(η e/e⁰), renormalised to Σ = K
    weights = jnp.where(first, state.weights, stepped)
    new_state = ExcessMTLState(
        root_sum_sq=jax.tree.unflatten(jax.tree.structure(state.root_sum_sq), new_roots),
        weights=weights, initial_excess=initial, count=state.count + 1,
        task_weights=state.task_weights)
    return apply_weights(task_grads, weights, mask), with_task_weights(new_state, weights,
                                                                      num_tasks)

  return make_aggregator(init, update, shared)
