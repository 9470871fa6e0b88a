"""MoCo: stochastic multi-objective gradient correction (Fernando et al.), tracked gradients."""

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
from weightax.aggregators.db_mtl import combine_tree, task_norms

__all__ = ["moco", "MoCoState", "project_to_simplex"]

_NAME = "moco"
_SIMPLEX = ("projection", "softmax")


class MoCoState(NamedTuple):
  """The tracked gradients Y, the weights λ on them and the update count."""

  tracked: Any  # like the shared parameters with a leading K axis: the rows of Y, float32
  lambdas: jax.Array  # [K] λ, on the simplex
  count: jax.Array  # int32, number of updates so far
  task_weights: jax.Array | None = None  # [K] NaN: the update is not Σ_k w_k g_k


def project_to_simplex(v: jax.Array) -> jax.Array:
  """The Euclidean projection of ``v [K]`` onto the probability simplex.

  ``λ = max(v − τ, 0)`` with ``τ`` such that ``Σ λ = 1`` (sort-based, exact, no
  iterations). NaN in ``v`` gives NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.aggregators.moco import project_to_simplex
    >>> [round(x, 6) for x in project_to_simplex(jnp.array([0.8, 0.6, -1.0])).tolist()]
    [0.6, 0.4, 0.0]
  """
  k = v.shape[0]
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  ind = jnp.arange(1, k + 1, dtype=v.dtype)
  active = u - css / ind > 0
  r = jnp.sum(active) - 1  # the last active index (the first is always active)
  tau = css[jnp.maximum(r, 0)] / (jnp.maximum(r, 0) + 1).astype(v.dtype)
  out = jnp.maximum(v - tau, 0.0)
  return jnp.where(jnp.any(jnp.isnan(v)), jnp.nan, out)


@requires_num_tasks("its state keeps the K tracked gradients and the K weights λ.")
def moco(
    *,
    beta: float | jax.Array = 0.5,
    beta_sigma: float | jax.Array = 0.5,
    gamma: float | jax.Array = 0.1,
    gamma_sigma: float | jax.Array = 0.5,
    rho: float | jax.Array = 0.0,
    simplex: str = "projection",
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """MoCo: track each task's normalised gradient, weight the tracks by a λ on the simplex.

  At update ``t = 1, 2, ...``, with ``h_k = L_k g_k / ‖g_k‖`` (0 for a zero
  gradient), the tracked gradients ``Y`` (rows ``y_k``, ``Y₀ = 0``) and the
  weights ``λ`` (``λ₀ = 1/K``) move by

  .. math:: y_k \\leftarrow y_k - \\beta_t (y_k - h_k), \\qquad
     \\lambda \\leftarrow \\Pi_\\Delta\\big(\\lambda
     - \\gamma_t (Y Y^\\top + \\rho I)\\lambda\\big), \\qquad u = Y^\\top \\lambda

  with ``β_t = β / t^{σ_β}``, ``γ_t = γ / t^{σ_γ}``; ``Π_Δ`` is the Euclidean
  projection onto the simplex (:func:`project_to_simplex`). ``Y`` corrects the
  bias of stochastic gradients by averaging them; the ``λ`` step is one
  projected gradient step on MGDA's ``½‖Yᵀλ‖² + ½ρ‖λ‖²``.

  Convention: the paper's projection ``Π_Δ``; LibMTL's ``MoCo`` (built on the
  authors' code) replaces it with ``softmax``, reachable with
  ``simplex="softmax"``. The rest is LibMTL's: the tracked input is the
  normalised gradient times the loss, ``h_k = L_k g_k/‖g_k‖``; β = 0.5,
  γ = 0.1, σ_β = σ_γ = 0.5, ρ = 0; the update uses the new ``Y`` and ``λ``;
  the paper's projection of each ``y_k`` onto a ball is not applied. LibMTL
  divides by ``‖g_k‖ + 10⁻⁸``, which shrinks gradients of norm near 10⁻⁸ and
  below; here the normalisation is exact, so ``h_k`` has norm ``|L_k|`` at
  every gradient scale. With a ``shared`` mask, task-specific leaves receive
  ``Σ_k g_k`` (the aggregator contract). The update is not ``Σ_k w_k g_k`` of
  the current gradients, so the state's ``task_weights`` stays NaN; ``λ`` is
  the state's ``lambdas``. The state holds a ``[K, ...]`` array per shared
  parameter, so ``init`` needs the parameters.

  With one task (K = 1) ``λ = 1`` (either map) and the update is the tracked
  gradient itself, ``u_t = (1 − β_t) u_{t−1} + β_t L_t g_t/‖g_t‖`` from
  ``u_0 = 0`` (so ``β L_1/‖g_1‖·g_1`` at the first update), not a multiple of
  the current gradient.

  On K identical task gradients ``g`` the first update is
  ``(λᵀy)/‖g‖·g`` with ``y = βL`` and, when no weight is clipped at 0,
  ``λ = 1/K + γβ²(Σ_j L_j/K)(L̄ − L)`` (``L̄`` the mean loss): ``Y = y ĝᵀ``
  makes ``YYᵀλ = (yᵀλ) y``.

  Args:
    beta: ``β``, the tracking step size; may be traced.
    beta_sigma: ``σ_β`` in ``β_t = β / t^{σ_β}``; may be traced.
    gamma: ``γ``, the step size of ``λ``; may be traced.
    gamma_sigma: ``σ_γ`` in ``γ_t = γ / t^{σ_γ}``; may be traced.
    rho: ``ρ``, the ℓ2 regularisation of ``λ``'s problem; may be traced.
    simplex: ``"projection"`` (the paper's ``Π_Δ``) or ``"softmax"`` (LibMTL's).
    num_tasks: K, which fixes the shape of the state.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
    ``task_losses=``; ``init`` needs the parameters.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.moco(num_tasks=2, gamma=1.0)
    >>> params = {"w": jnp.zeros(2)}
    >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 0.5]])}
    >>> u, state = tx.update(grads, tx.init(params), params, task_losses=jnp.array([2.0, 1.0]))
    >>> # Y = diag(1, ½); λ − γYYᵀλ = (0, 0.375), projected onto the simplex:
    >>> state.lambdas.tolist()  # weight moves to the shorter track
    [0.3125, 0.6875]
    >>> u["w"].tolist()  # Yᵀλ
    [0.3125, 0.34375]

  References:
    Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias
    in Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.
  """
  if simplex not in _SIMPLEX:
    raise ValueError(f"{_NAME}: simplex must be one of {_SIMPLEX}; got {simplex!r}.")

  def init(params: Any) -> MoCoState:
    if params is None:
      raise ValueError(
          f"{_NAME} tracks every task's gradient for every shared parameter, so init needs "
          "the parameters (for their shapes): call tx.init(params); got None."
      )
    mask = resolve_shared(shared, params)
    tracked = jax.tree.map(
        lambda p, m: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.float32) if m else None,
        params, mask)
    return MoCoState(tracked=tracked,
                     lambdas=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
                     count=jnp.zeros((), jnp.int32),
                     task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: MoCoState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, MoCoState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    losses = check_task_losses(task_losses, k, required=True, name=_NAME)
    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    mask, shared_grads = split_shared(task_grads, params, shared)
    grads = jax.tree.leaves(shared_grads)
    tracked = check_state_leaves(state.tracked, grads, name=_NAME)
    count = state.count + 1
    t = count.astype(jnp.float32)
    b = beta / t ** beta_sigma
    c = gamma / t ** gamma_sigma
    norms = task_norms(grads, k)
    nonzero = norms > 0
    coef = jnp.where(nonzero, losses / jnp.where(nonzero, norms, 1.0), 0.0)  # h = L g/‖g‖
    new_y = []
    for g, y in zip(grads, tracked, strict=True):
      h = g.astype(jnp.float32) * coef.reshape((k,) + (1,) * (g.ndim - 1))
      new_y.append(y - b * (y - h))
    with jax.default_matmul_precision("highest"):  # K x K: no TF32 on GPUs
      gram = sum((jnp.reshape(y, (k, -1)) @ jnp.reshape(y, (k, -1)).T for y in new_y),
                 jnp.zeros((k, k), jnp.float32))
      step = state.lambdas - c * (gram @ state.lambdas + rho * state.lambdas)
    lambdas = project_to_simplex(step) if simplex == "projection" else jax.nn.softmax(step)
    # Yᵀλ elementwise (no matmul: exact float32 on GPUs too, where dots may use TF32)
    out = [jnp.sum(lambdas.reshape((k,) + (1,) * (y.ndim - 1)) * y, axis=0) for y in new_y]
    new_state = MoCoState(
        tracked=jax.tree.unflatten(jax.tree.structure(state.tracked), new_y),
        lambdas=lambdas, count=count, task_weights=state.task_weights)
    return combine_tree(task_grads, mask, out), with_task_weights(new_state, None, num_tasks)

  return make_aggregator(init, update, shared)
