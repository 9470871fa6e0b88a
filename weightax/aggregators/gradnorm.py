"""GradNorm: learn task weights that balance the tasks' gradient norms (Chen et al.)."""

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
    resolve_shared,
    split_shared,
    with_task_weights,
)

__all__ = ["gradnorm", "GradNormState"]

_NAME = "gradnorm"


class GradNormState(NamedTuple):
  """GradNorm's learned weights, the first losses L(0) and the weights' optimizer state."""

  weights: jax.Array  # [K], sums to K
  initial_losses: jax.Array  # [K], L(0), recorded at the first update
  step: jax.Array  # int32: updates seen so far
  opt_state: optax.OptState
  task_weights: jax.Array | None = None  # [K] the weights applied at the last update


def _task_norms(leaves: list[jax.Array], k: int) -> jax.Array:
  """‖g_k‖ over the given leaves, scaled by the largest entry so 1e±30 neither over- nor
  underflows when squared in float32."""
  flat = [jnp.reshape(x, (k, -1)).astype(jnp.float32) for x in leaves]
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(f), axis=1) for f in flat]), axis=0)
  scale = jnp.where(scale > 0, scale, 1.0)
  sq = sum(jnp.sum(jnp.square(f / scale[:, None]), axis=1) for f in flat)
  return scale * jnp.sqrt(sq)


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
  ok = b != 0
  return jnp.where(ok, a / jnp.where(ok, b, 1.0), 1.0)


@requires_num_tasks("its state keeps the K learned weights and the K first losses.")
def gradnorm(
    *,
    alpha: float | jax.Array = 1.5,
    learning_rate: float | jax.Array = 0.025,
    layer: SharedMask = None,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Learns task weights so that each task trains at a balanced rate (GradNorm).

  With :math:`n_k = \\|\\nabla_W L_k\\|` on the chosen parameters W,

  .. math::
     G_k = \\|\\nabla_W\\, w_k L_k\\| = w_k\\, n_k, \\quad
     \\tilde L_k = \\frac{L_k(t)}{L_k(0)}, \\quad
     r_k = \\frac{\\tilde L_k}{\\operatorname{mean}_j \\tilde L_j},

  .. math::
     L_{grad}(w) = \\sum_k \\left|G_k - \\operatorname{sg}\\!\\left(
        \\operatorname{mean}_j(G_j)\\, r_k^{\\alpha}\\right)\\right| .

  Each ``update`` returns :math:`\\sum_k w_k g_k` with the current weights
  (:math:`w_0 = 1`), then steps ``w`` on :math:`\\nabla_w L_{grad}` (the target
  held fixed, ``sg`` = stop-gradient) with its own optimizer, and renormalises
  to :math:`\\sum_k w_k = K`. ``L(0)`` is the loss seen at the first update.
  At the kink :math:`G_k = \\text{target}_k` the subgradient 0 is used, so
  balanced tasks are left alone (with K = 1, ``w = 1`` always).

  Between the step and the renormalisation the weights are projected onto
  :math:`w \\ge 0` (and reset to 1 should all of them reach 0; a NaN, from a
  NaN loss, first loss or gradient, is never reset: the weights become NaN, so
  the next update is NaN, as with the other methods). The paper does not say
  this; without the projection, on its own toy (σ = (1, 100), α = 0.12) the
  large-σ task's balanced weight (≈ 0.02) is below Adam's step of 0.025 and
  the weight oscillates through negative values, which *ascends* that task's
  loss.

  Conventions: the paper's ``W`` is the last shared layer; the default here is
  every shared leaf (LibMTL also uses the whole encoder) — pass ``layer`` to
  choose. The paper only says "standard update rules" for ``w``; weightax uses
  Adam at ``learning_rate`` (0.025, the paper's rate) unless ``optimizer`` is
  given. LibMTL parameterises ``w = K softmax(ξ)``; here ``w`` is direct, as in
  the paper. The losses are assumed positive (:math:`r_k < 0` is clipped to 0).

  With a ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` (the
  aggregator contract); ``shared=None`` is ``jax.grad`` of ``Σ_k w_k L_k``.

  On K identical task gradients ``g`` the update is ``K·g`` at every step (the
  weights start at 1 and are renormalised to sum to K).
  With ``num_tasks=K`` the state's ``task_weights`` holds the ``[K]`` weights
  ``w`` *applied* (``weights`` holds the next ones) of the last update (NaN
  before the first; ``None`` without ``num_tasks``), so
  ``optax.tree_utils.tree_get(state, "task_weights")`` finds them in a chain.

  Args:
    alpha: the restoring-force strength α (1.5 for NYUv2, 0.12 for the paper's
      toy); may be traced.
    learning_rate: Adam's learning rate for ``w``; may be traced. Ignored when
      ``optimizer`` is given.
    layer: which shared leaves define ``W``, in the forms ``shared`` takes (a
      pytree of bools, a prefix of the parameters' structure, or a callable).
      ``None`` is every shared leaf. Under ``optax.inject_hyperparams`` list
      a callable in ``static_args``.
    optimizer: an Optax transformation for ``w`` replacing the default Adam.
    num_tasks: K, which fixes the shapes in the state.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> tx = wx.gradnorm(num_tasks=2, optimizer=optax.sgd(0.1))
    >>> state = tx.init(None)
    >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}  # norms 3 and 1
    >>> u, state = tx.update(grads, state, task_losses=jnp.array([1.0, 1.0]))
    >>> u["w"].tolist()  # w = 1 at first
    [3.0, 1.0]
    >>> [round(x, 3) for x in state.weights.tolist()]  # the large-gradient task loses weight
    [0.778, 1.222]

  References:
    Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.
  """
  opt = optax.adam(learning_rate) if optimizer is None else optimizer

  def init(params: Any) -> GradNormState:
    del params
    w = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(
        weights=w,
        initial_losses=jnp.ones((num_tasks,), jnp.float32),
        step=jnp.zeros([], jnp.int32),
        opt_state=opt.init(w),
        task_weights=init_task_weights(num_tasks),
    )

  def layer_leaves(task_grads: Any, params: Any, mask: Any) -> list[jax.Array]:
    if layer is None:
      chosen = mask
    else:
      template = params if params is not None else jax.tree.map(lambda g: g[0], task_grads)
      chosen = resolve_shared(layer, template)
    pairs = list(zip(jax.tree.leaves(chosen), jax.tree.leaves(mask), strict=True))
    if any(c and not m for c, m in pairs):
      raise ValueError(f"{_NAME}: `layer` must select shared leaves only; it selects a "
                       "task-specific one (see the `shared` mask).")
    leaves = [g for g, c in zip(jax.tree.leaves(task_grads), jax.tree.leaves(chosen),
                                strict=True) if c]
    if not leaves:
      raise ValueError(f"{_NAME}: `layer` selects no shared leaf; expected at least one.")
    return leaves

  def update(
      task_grads: Any,
      state: GradNormState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, GradNormState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    losses = check_task_losses(task_losses, k, required=True, name=_NAME)
    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    mask, _ = split_shared(task_grads, params, shared)
    norms = _task_norms(layer_leaves(task_grads, params, mask), k)

    w = state.weights
    first = state.step == 0
    l0 = jnp.where(first, losses, state.initial_losses)
    rel = _safe_div(losses, l0)
    r = jnp.maximum(_safe_div(rel, jnp.mean(rel)), 0.0)
    g = w * norms  # w >= 0 always, so this is ‖w_k g_k‖
    target = jnp.mean(g) * r ** jnp.asarray(alpha, jnp.float32)
    # d L_grad / d w_k with the target frozen; sign(0) = 0 is the subgradient at the kink.
    grad_w = jnp.sign(g - target) * norms
    step, opt_state = opt.update(grad_w, state.opt_state, w)
    new_w = jnp.maximum(optax.apply_updates(w, step).astype(jnp.float32), 0.0)
    total = jnp.sum(new_w)
    # Reset to 1 only when every weight reached 0. A NaN (from a NaN loss, L(0) or gradient)
    # fails `total > 0` too, but must stay NaN, so that it shows in the next update.
    reset = jnp.where(jnp.isnan(total), jnp.nan, 1.0)
    new_w = jnp.where(total > 0, k * new_w / jnp.where(total > 0, total, 1.0), reset)

    new_state = GradNormState(
        weights=new_w, initial_losses=l0, step=optax.safe_increment(state.step),
        opt_state=opt_state, task_weights=state.task_weights,
    )
    return apply_weights(task_grads, w, mask), with_task_weights(new_state, w, num_tasks)

  return make_aggregator(init, update, shared)
