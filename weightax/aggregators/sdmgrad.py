"""SDMGrad (Xiao, Ban & Ji): stochastic direction-oriented multi-gradient descent."""

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
from weightax.weightings.sdmgrad import _EPS, sdmgrad_step

__all__ = ["sdmgrad", "SDMGradState", "EXTRA_TASK_GRADS"]

_NAME = "sdmgrad"
EXTRA_TASK_GRADS = "extra_task_grads"  # the keyword of the independent batches' Jacobians


class SDMGradState(NamedTuple):
  """SDMGrad's simplex weights ``w``, kept from one step to the next."""

  weights: jax.Array  # [K] w on the simplex (1/K at the start)
  task_weights: jax.Array | None = None  # [K] (w + λ/K)/(1 + λ) of the last update


def _log2_max(tree: Any) -> jax.Array:
  """The integer ``e`` with ``max |x| < 2^e`` over ``tree`` (0 when it is 0 or not finite)."""
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]))
  _, e = jnp.frexp(m)
  return jnp.where(jnp.isfinite(m) & (m > 0), e, 0).astype(jnp.int32)


def scaled_cross_gramian(a: Any, b: Any) -> tuple[jax.Array, jax.Array]:
  """``(A', e)`` with ``A = J_a J_bᵀ = 2^e A'``, computed in float32 without over/underflow.

  Each Jacobian is divided by the power of two at or above its largest entry
  (exact), so ``A'``'s entries are at most the number of parameters: gradients
  of 1e30 or 1e-30 give a usable ``A'`` and the exponent ``e`` carries the scale.
  ``b`` may be ``a`` itself (one Gramian). Leaves set to None are skipped.
  """
  k = jax.tree.leaves(a)[0].shape[0]
  ea = _log2_max(a)
  eb = ea if b is a else _log2_max(b)
  out = jnp.zeros((k, k), jnp.float32)
  with jax.default_matmul_precision("highest"):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      fx = jnp.ldexp(jnp.reshape(x, (k, -1)).astype(jnp.float32), -ea)
      fy = fx if b is a else jnp.ldexp(jnp.reshape(y, (k, -1)).astype(jnp.float32), -eb)
      out = out + fx @ fy.T
  return out, ea + eb


def check_extra_task_grads(extra: Any, task_grads: Any, count: int, name: str) -> tuple[Any, ...]:
  """``extra`` as a tuple of ``count`` Jacobians shaped like ``task_grads``, else a clear error."""
  if not isinstance(extra, tuple | list) or len(extra) != count:
    got = f"a {type(extra).__name__} of {len(extra)}" if isinstance(extra, tuple | list) else (
        type(extra).__name__)
    raise ValueError(
        f"{name}: {EXTRA_TASK_GRADS} must be a tuple of {count} Jacobians (each shaped like "
        f"task_grads, from an independent batch at the same parameters); got {got}.")
  want = jax.tree.map(jnp.shape, task_grads)
  for i, j in enumerate(extra):
    if (jax.tree.structure(j) != jax.tree.structure(task_grads)
        or jax.tree.map(jnp.shape, j) != want):
      raise ValueError(
          f"{name}: {EXTRA_TASK_GRADS}[{i}] must be shaped like task_grads ({want}); got "
          f"{jax.tree.map(jnp.shape, j) if jax.tree.leaves(j) else j!r}.")
  return tuple(extra)


@requires_num_tasks("its state keeps the K simplex weights w between steps.")
def sdmgrad(
    *,
    lam: float | jax.Array = 0.3,
    learning_rate: float | jax.Array = 10.0,
    num_steps: int | jax.Array = 20,
    momentum: float | jax.Array = 0.5,
    num_tasks: int,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """SDMGrad: an update between MGDA's min-norm direction and the mean, from three batches.

  With ``J_ζ``, ``J_ξ``, ``J_ξ'`` the Jacobians (shared leaves) of three
  independent batches at the same parameters, ``A = J_ξ J_ξ'ᵀ`` (an unbiased
  estimate of ``∇F ∇Fᵀ``; not symmetric), ``s = mean_k √max(A_kk, 0)``,
  ``Â = A / (s² + 10⁻⁸)`` and ``w̃ = 1/K``, each update runs ``num_steps``
  projected momentum steps on the kept simplex weights ``w`` (``v = 0`` at
  every update, ``w`` carried over from the last one, ``1/K`` at the start)

  .. math:: v \\leftarrow \\mu v + \\hat A (w + \\lambda \\tilde w), \\qquad
     w \\leftarrow \\Pi_\\Delta(w - \\eta v),

  and returns ``u = J_ζᵀ (w + λ w̃) / (1 + λ)`` (weights summing to 1): the
  direction-oriented step of the paper, ``(Σ_k w_k g_k + λ ḡ)/(1 + λ)``.

  **The three batches.** ``task_grads`` is ``J_ζ``, the batch of the update.
  ``update(..., extra_task_grads=(J_ξ, J_ξ'))`` passes the two others, each
  shaped like ``task_grads``; :func:`weightax.mtl.fit` draws and
  differentiates them itself, because the factory's transform says
  ``num_extra_batches = 2`` (with ``shared=``, only their shared leaves are
  read). **Without them** (a plain ``update`` call, or inside a wrapper such
  as ``optax.chain`` that hides the attribute from ``mtl.fit``) ``A`` is the
  Gramian ``J_ζ J_ζᵀ`` of the one batch: what a single-batch user gets,
  and a biased estimate (``E[J Jᵀ]`` adds the gradients' covariance to
  ``∇F ∇Fᵀ``, so noise counts as conflict); exact with full-batch gradients.

  Convention: λ = 0.3, 20 inner steps and momentum 0.5 as LibMTL and the
  authors' code; η = 10 as torchjd and the authors' code (LibMTL: 5, reachable
  by ``learning_rate=5.0``). ``s`` clamps negative diagonal entries of the
  non-symmetric ``A`` to 0 and adds 10⁻⁸ as LibMTL (the authors' code uses
  ``√(diag + 10⁻⁴)``, multiplies the update by K and clips it; neither is
  done here). ``A`` is formed from Jacobians rescaled by powers of two, so
  gradients of 1e-30 or 1e30 neither underflow nor overflow. With a
  ``shared`` mask, task-specific leaves receive ``Σ_k g_k`` of ``J_ζ`` (the
  aggregator contract; LibMTL's heads accumulate the three batches).

  On K identical task gradients ``g`` (and for K = 1) the update is ``g``:
  the weights sum to 1. With ``num_tasks=K`` the state's
  ``task_weights`` holds ``(w + λ w̃)/(1 + λ)`` of the last update (NaN before
  the first), so ``optax.tree_utils.tree_get(state, "task_weights")`` finds
  it in a chain; :func:`weightax.weightings.sdmgrad` is the same weighting as
  a pure function of ``A``.

  Args:
    lam: λ ≥ 0, the pull towards the average gradient; may be traced.
    learning_rate: the inner step size η on ``w``; may be traced.
    num_steps: the number of inner steps per update; may be traced.
    momentum: the inner (heavy-ball) momentum μ; may be traced.
    num_tasks: K, which fixes the shape of ``w``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (with ``num_extra_batches =
    2``) whose ``update`` accepts ``extra_task_grads=(J_ξ, J_ξ')``.

  Example:
    >>> import jax, jax.numpy as jnp, weightax as wx
    >>> tx = wx.sdmgrad(num_tasks=2)
    >>> g = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> noisy = ({"w": jnp.array([[1.0, 0.1], [0.0, 1.0]])},
    ...          {"w": jnp.array([[0.9, 0.0], [0.1, 1.0]])})
    >>> u, state = tx.update(g, tx.init(None), extra_task_grads=noisy)
    >>> state.weights.tolist()  # η = 10 ends on a corner here
    [1.0, 0.0]
    >>> [round(x, 4) for x in u["w"].tolist()]  # J_ζᵀ(w + λ/2)/(1 + λ), λ = 0.3
    [0.8846, 0.1154]
    >>> tx.num_extra_batches
    2

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023.
  """

  def init(params: Any) -> SDMGradState:
    del params
    return SDMGradState(weights=jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
                        task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: SDMGradState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      extra_task_grads: Any = None,
      **extra: Any,
  ) -> tuple[Any, SDMGradState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    mask, shared_grads = split_shared(task_grads, params, shared)
    if extra_task_grads is None:
      xi1 = xi2 = shared_grads  # one batch: the (biased) Gramian
    else:
      xi1, xi2 = (split_shared(j, params, shared)[1] for j in
                  check_extra_task_grads(extra_task_grads, task_grads, 2, _NAME))
    if jax.tree.leaves(shared_grads):
      a, e = scaled_cross_gramian(xi1, xi2)
    else:  # nothing is shared
      a, e = jnp.zeros((k, k), jnp.float32), jnp.zeros((), jnp.int32)
    # Â = A / (s² + eps) = A' / (s'² + eps·2^-e) with A = 2^e A'; inf there gives Â = 0.
    eps = jnp.ldexp(jnp.float32(_EPS), -e)
    applied, w = sdmgrad_step(a, state.weights, lam=lam, learning_rate=learning_rate,
                              num_steps=num_steps, momentum=momentum, eps=eps)
    new_state = SDMGradState(weights=w.astype(jnp.float32), task_weights=state.task_weights)
    return (apply_weights(task_grads, applied, mask),
            with_task_weights(new_state, applied, num_tasks))

  tx = make_aggregator(init, update, shared)
  tx.num_extra_batches = 2
  return tx
