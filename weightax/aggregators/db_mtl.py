"""DB-MTL: dual balancing of loss scales (log losses) and gradient magnitudes (Lin et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import (
    SharedMask,
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

__all__ = ["db_mtl", "DBMTLState"]

_NAME = "db_mtl"
_EPS = 1e-8  # log(L + 1e-8), as LibMTL: finite at L = 0


class DBMTLState(NamedTuple):
  """The moving averages ĝ_k of the log-loss gradients and the update count."""

  averages: Any  # like the shared parameters with a leading K axis: ĝ, float32
  count: jax.Array  # int32, number of updates so far
  task_weights: jax.Array | None = None  # [K] NaN: the update is not Σ_k w_k g_k


def task_norms(leaves: list[jax.Array], k: int) -> jax.Array:
  """``‖x_k‖`` over the leaves ``[K, ...]``, scaled by the largest entry so that entries of
  1e±30 neither over- nor underflow when squared in float32."""
  if not leaves:
    return jnp.zeros((k,), jnp.float32)
  flat = [jnp.reshape(x, (k, -1)).astype(jnp.float32) for x in leaves]
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(f), axis=1) for f in flat]), axis=0)
  scale = jnp.where(scale > 0, scale, 1.0)
  sq = sum(jnp.sum(jnp.square(f / scale[:, None]), axis=1) for f in flat)
  return scale * jnp.sqrt(sq)


def combine_tree(task_grads: Any, mask: Any, shared_out: list[jax.Array]) -> Any:
  """Shared leaves take the next of ``shared_out`` (cast to the leaf's dtype); task-specific
  leaves get ``Σ_k g_k`` (the aggregator contract), accumulated in float32."""
  it = iter(shared_out)

  def one(g: jax.Array, m: bool) -> jax.Array:
    out = next(it) if m else jnp.sum(g.astype(jnp.promote_types(g.dtype, jnp.float32)), axis=0)
    return out.astype(g.dtype)

  return jax.tree.map(one, task_grads, mask)


@requires_num_tasks("its state keeps a moving average of each of the K task gradients.")
def db_mtl(
    *,
    beta: float | jax.Array = 0.9,
    beta_sigma: float | jax.Array = 0.0,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """DB-MTL: average the gradients of the log losses, rescale each to the largest norm.

  Loss-scale balancing: each task's gradient is that of ``log(L_k + 10⁻⁸)``,
  ``g_k / (L_k + 10⁻⁸)``, so that rescaling a loss (``L_k → c L_k``) changes
  nothing. Gradient-magnitude balancing: a moving average ``ĝ_k`` of these
  (``ĝ₀ = 0``, no bias correction) is rescaled to the largest average norm:

  .. math:: \\hat g_k \\leftarrow \\beta_t \\hat g_k + (1 - \\beta_t)
     \\frac{g_k}{L_k + 10^{-8}}, \\qquad \\beta_t = \\beta / t^{\\sigma}, \\qquad
     u = \\sum_k \\alpha_k \\hat g_k, \\qquad
     \\alpha_k = \\frac{\\max_j \\lVert \\hat g_j \\rVert}{\\lVert \\hat g_k \\rVert}

  at update ``t = 1, 2, ...`` (a zero average gets ``α_k = 0``).

  Convention: the paper's update as the authors' LibMTL ``DB_MTL`` writes it
  (the sum of the rescaled averages, ``ĝ`` from 0 without bias correction,
  the schedule ``β_t = β/t^σ`` with LibMTL's defaults β = 0.9, σ = 0), with
  one difference: LibMTL divides by ``‖ĝ_k‖ + 10⁻⁸``,
  which shrinks averages of norm near 10⁻⁸ and below; here ``α_k`` is the
  paper's exact ratio, so the update keeps its direction and scale for
  gradients of any size. Losses must be above ``−10⁻⁸`` (their logarithm is
  taken): below, the averages become NaN, as the logarithm would, rather than
  silently descending ``−L``. With a ``shared`` mask, task-specific leaves
  receive ``Σ_k g_k`` (the aggregator contract; LibMTL's heads descend the
  summed log losses). The update is not ``Σ_k w_k g_k`` of the current
  gradients, so the state's ``task_weights`` stays NaN. The state holds a
  ``[K, ...]`` array per shared parameter, so ``init`` needs the parameters.

  With one task (K = 1) ``α = 1``: the update is the moving average itself,
  ``u_t = β_t u_{t−1} + (1 − β_t) g_t / (L_t + 10⁻⁸)`` from ``u_0 = 0``
  (so ``(1 − β)/(L_1 + 10⁻⁸)·g_1`` at the first update), not a multiple
  of the current gradient.

  On K identical task gradients ``g`` (at every step) each average is
  ``c_k g`` with ``c_k ← β_t c_k + (1 − β_t)/(L_k + 10⁻⁸)``, and the update
  is ``K · max_k c_k · g``: ``K(1 − β)/(min_k L_k + 10⁻⁸)·g`` at the first.

  Args:
    beta: ``β``, the averages' decay; may be traced.
    beta_sigma: ``σ`` in ``β_t = β / t^σ`` (0: a constant ``β``); may be traced.
    num_tasks: K, which fixes the shape of the state.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``; ``init`` needs the parameters.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.db_mtl(num_tasks=2, beta=0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> grads = {"w": jnp.array([[4.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(params), params, task_losses=jnp.array([2.0, 1.0]))
    >>> [round(x, 4) for x in u["w"].tolist()]  # ĝ = ½(2, 0), ½(0, 1): both rescaled to 1
    [1.0, 1.0]

  References:
    Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang, Kwok, "Dual-Balancing for
    Multi-Task Learning", arXiv:2308.12029, 2023.
  """

  def init(params: Any) -> DBMTLState:
    if params is None:
      raise ValueError(
          f"{_NAME} keeps a moving average of every task's gradient for every shared "
          "parameter, so init needs the parameters (for their shapes): call "
          "tx.init(params); got None."
      )
    mask = resolve_shared(shared, params)
    averages = jax.tree.map(
        lambda p, m: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.float32) if m else None,
        params, mask)
    return DBMTLState(averages=averages, count=jnp.zeros((), jnp.int32),
                      task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: DBMTLState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, DBMTLState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    losses = check_task_losses(task_losses, k, required=True, name=_NAME)
    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    mask, shared_grads = split_shared(task_grads, params, shared)
    grads = jax.tree.leaves(shared_grads)
    averages = check_state_leaves(state.averages, grads, name=_NAME)
    count = state.count + 1
    b = beta / count.astype(jnp.float32) ** beta_sigma
    shifted = losses + _EPS
    # d log(L + ε) = g / (L + ε); below −ε the logarithm is undefined: NaN, not −L's descent.
    inv = jnp.where(shifted > 0, 1.0 / jnp.where(shifted > 0, shifted, 1.0), jnp.nan)
    new_avgs = []
    for g, a in zip(grads, averages, strict=True):
      lg = g.astype(jnp.float32) * inv.reshape((k,) + (1,) * (g.ndim - 1))
      new_avgs.append(lg + b * (a - lg))  # β ĝ + (1 − β) ∇log L, LibMTL's form
    norms = task_norms(new_avgs, k)
    nonzero = norms > 0
    alpha = jnp.where(nonzero, jnp.max(norms) / jnp.where(nonzero, norms, 1.0), 0.0)
    # Σ_k α_k ĝ_k elementwise (no matmul: exact float32 on GPUs too, where dots may use TF32)
    out = [jnp.sum(alpha.reshape((k,) + (1,) * (a.ndim - 1)) * a, axis=0) for a in new_avgs]
    new_state = DBMTLState(
        averages=jax.tree.unflatten(jax.tree.structure(state.averages), new_avgs),
        count=count, task_weights=state.task_weights)
    return combine_tree(task_grads, mask, out), with_task_weights(new_state, None, num_tasks)

  return make_aggregator(init, update, shared)
