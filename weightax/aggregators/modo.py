"""MoDo (Chen, Fernando et al.): multi-objective gradient with double sampling."""

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
from weightax.aggregators.sdmgrad import check_extra_task_grads, scaled_cross_gramian
from weightax.weightings.modo import modo_step

__all__ = ["modo", "MoDoState"]

_NAME = "modo"


class MoDoState(NamedTuple):
  """MoDo's simplex weights ``λ``, kept from one step to the next."""

  weights: jax.Array  # [K] λ on the simplex (1/K at the start)
  task_weights: jax.Array | None = None  # [K] λ applied at the last update


@requires_num_tasks("its state keeps the K simplex weights λ between steps.")
def modo(
    *,
    gamma: float | jax.Array = 0.001,
    rho: float | jax.Array = 0.1,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """MoDo: one projected step on the weights ``λ`` per update, from two independent batches.

  With ``J₁``, ``J₂``, ``J₃`` the Jacobians (shared leaves) of three
  independent batches at the same parameters,

  .. math:: \\lambda \\leftarrow \\Pi_\\Delta\\big(\\lambda - \\gamma
     (J_1 J_2^\\top \\lambda + \\rho \\lambda)\\big), \\qquad u = J_3^\\top \\lambda ,

  with ``λ = 1/K`` at the start: ``J₁J₂ᵀλ`` is an unbiased estimate of the
  gradient of MGDA's ``½‖∇F λ‖²`` (the product of two independent batches,
  not symmetric), so ``λ`` tracks the min-norm weights across steps, and ρ
  keeps it off the simplex's corners.

  **The three batches.** ``task_grads`` is ``J₃``, the batch of the update
  (as LibMTL and the authors' code; some descriptions apply λ to the
  average of batches 1 and 2 instead, which is not provided).
  ``update(..., extra_task_grads=(J₁, J₂))`` passes the two others, each
  shaped like ``task_grads``; :func:`weightax.mtl.fit` draws and
  differentiates them itself, because the factory's transform says
  ``num_extra_batches = 2`` (with ``shared=``, only their shared leaves are
  read). **Without them** (a plain ``update`` call, or inside a wrapper that
  hides the attribute from ``mtl.fit``) ``J₁ = J₂ = J₃``: the step uses the
  Gramian ``J₃J₃ᵀ`` of the one batch, what a single-batch user gets, and a
  biased estimate (``E[J Jᵀ]`` adds the gradients' covariance); exact with
  full-batch gradients.

  Convention: γ = 10⁻³ and ρ = 0.1 as LibMTL (torchjd's documentation uses
  γ = 0.1). The step is not normalised, so γ must suit the gradients' scale
  (``γ‖g‖²`` of order 1 moves ``λ`` substantially). ``J₁J₂ᵀ`` is formed from
  Jacobians rescaled by powers of two and the projection's shift invariance
  removes ``min(J₁J₂ᵀλ)`` before scaling back, so gradients of 1e-30 or 1e30
  give finite updates (the exact limit: a huge step puts all weight on the
  tasks of smallest ``(J₁J₂ᵀλ)_k``). With a ``shared`` mask, task-specific
  leaves receive ``Σ_k g_k`` of ``J₃`` (the aggregator contract; LibMTL's
  heads get the mean over the three batches).

  On K identical task gradients ``g`` (and for K = 1) the update is ``g``:
  λ stays on the simplex. With ``num_tasks=K`` the state's
  ``task_weights`` holds the ``λ`` of the last update (NaN before the first);
  :func:`weightax.weightings.modo` is the same step as a pure function.

  Args:
    gamma: the step size γ on λ; may be traced.
    rho: the ℓ2 regularisation ρ of λ; may be traced.
    num_tasks: K, which fixes the shape of λ.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (with ``num_extra_batches =
    2``) whose ``update`` accepts ``extra_task_grads=(J₁, J₂)``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> tx = wx.modo(gamma=0.1, num_tasks=2)
    >>> g3 = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> g1 = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}   # J₁J₂ᵀ = diag(4, 1)
    >>> u, state = tx.update(g3, tx.init(None), extra_task_grads=(g1, g1))
    >>> [round(x, 4) for x in state.weights.tolist()]  # Π([.295, .445])
    [0.425, 0.575]
    >>> [round(x, 4) for x in u["w"].tolist()]  # λ on J₃
    [0.425, 0.575]

  References:
    Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
    Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023.
  """

  def init(params: Any) -> MoDoState:
    del params
    return MoDoState(weights=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
                     task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: MoDoState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      extra_task_grads: Any = None,
      **extra: Any,
  ) -> tuple[Any, MoDoState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    mask, shared_grads = split_shared(task_grads, params, shared)
    if extra_task_grads is None:
      j1 = j2 = shared_grads  # one batch: the (biased) Gramian
    else:
      j1, j2 = (split_shared(j, params, shared)[1] for j in
                check_extra_task_grads(extra_task_grads, task_grads, 2, _NAME))
    if jax.tree.leaves(shared_grads):
      a, e = scaled_cross_gramian(j1, j2)
    else:  # nothing is shared
      a, e = jnp.zeros((k, k), jnp.float32), jnp.zeros((), jnp.int32)
    lam = modo_step(a, state.weights, gamma=gamma, rho=rho, log2_scale=e).astype(jnp.float32)
    new_state = MoDoState(weights=lam, task_weights=state.task_weights)
    return apply_weights(task_grads, lam, mask), with_task_weights(new_state, lam, num_tasks)

  tx = make_aggregator(init, update, shared)
  tx.num_extra_batches = 2
  return tx
