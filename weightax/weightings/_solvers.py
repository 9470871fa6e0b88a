"""Small dense solvers for the Gramian weightings, in pure JAX with fixed budgets.

Every problem here is K-dimensional (K tasks), so direct K x K linear solves
are cheap; what matters is that each solver has a fixed iteration count and no
data-dependent Python control flow, so it runs under ``jit``, ``vmap``,
``lax.scan`` and ``shard_map`` exactly as it runs eagerly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "full_precision",
    "normalize_gramian",
    "jacobi_ridge",
    "masked_solve",
    "nnqp",
    "nnqp_budget",
    "min_norm_simplex",
]


def full_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Runs ``fn`` with float32 matmuls at full precision (no TF32 on GPUs).

  The solvers compare gradients of the objective against small tolerances; a
  10-bit TF32 mantissa would break them, and the matrices are only K x K.
  """

  @functools.wraps(fn)
  def wrapped(*args: Any, **kwargs: Any) -> Any:
    with jax.default_matmul_precision("highest"):
      return fn(*args, **kwargs)

  return wrapped


def vary_like(tree: Any, ref: jax.Array) -> Any:
  """``tree`` unchanged, but typed as varying over the same ``shard_map`` axes as ``ref``.

  A loop carry must keep its type; inside ``shard_map`` a constant initial carry
  (``zeros``) is replicated while the body's output varies with the data, which
  JAX rejects. Selecting with a data-dependent (always false) flag gives the
  constant the data's type; outside ``shard_map`` it is a no-op that XLA folds.
  """
  flat = jnp.ravel(ref)[:1]
  never = jnp.any(flat != flat) & False  # False, with ref's varying axes
  return jax.tree.map(lambda x: jnp.where(never, x, x), tree)


def normalize_gramian(gramian: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``(G / tr(G), tr(G))``, symmetrised; a zero Gramian stays zero.

  Every weighting here is invariant to a positive rescaling of ``G`` (or
  rescales its output explicitly), so solving on the trace-normalised Gramian
  keeps the tolerances and the regularisers relative to the data's scale.
  """
  g = 0.5 * (gramian + gramian.T)
  trace = jnp.trace(g)
  safe = jnp.where(trace > jnp.finfo(g.dtype).tiny, trace, jnp.ones_like(trace))
  return g / safe, trace


def jacobi_ridge(g: jax.Array, reg_eps: float | jax.Array) -> jax.Array:
  """``g + diag(ε·(g_kk + ε))``: a ridge proportional to each task's squared gradient norm.

  A ridge ``ε·I`` would swamp a task whose gradient is much smaller than the
  others (``g_kk << ε``); scaling it by ``g_kk`` keeps its relative effect at
  ``ε`` for every task, and the ``ε²`` floor keeps ``Q`` positive definite
  when a gradient is exactly zero.
  """
  eps = jnp.asarray(reg_eps, g.dtype)
  return g + jnp.diag(eps * (jnp.diagonal(g) + eps))


def preference_vector(pref_vector: Any, k: int, dtype: Any, name: str) -> jax.Array:
  """The ``[K]`` preference vector ``u`` (``1/K`` when None); raises on a wrong shape."""
  if pref_vector is None:
    return jnp.full((k,), 1.0 / k, dtype)
  u = jnp.asarray(pref_vector, dtype)
  if u.shape != (k,):
    raise ValueError(f"{name}: pref_vector must have shape ({k},); got {u.shape}.")
  return u


def relative_ridge_system(g: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``Q = C + εI`` on the cosine matrix ``C = D^-½ G D^-½`` of a (normalised) Gramian.

  Used by the ``ridge="relative"`` QPs of UPGrad and DualProj: their ridge
  ``ε·diag(G)`` is ``D^½(C + εI)D^½``, whose condition number is at most
  ``(K + ε)/ε`` whatever the spread of the gradient norms. A task with a zero
  gradient conflicts with nothing and becomes an isolated unit row of ``C``.

  Returns:
    ``(Q, s, alive)``: ``s_k = ‖g_k‖ / max_j ‖g_j‖`` (1 for a zero gradient), the
    factor that maps the solution back (``v = y / s``), and the mask of tasks
    with a non-zero gradient.
  """
  dtype = g.dtype
  k = g.shape[0]
  finfo = jnp.finfo(dtype)
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  s = jnp.sqrt(diag / jnp.maximum(jnp.max(diag), finfo.tiny))  # ‖g_k‖ / max_j ‖g_j‖
  alive = s > jnp.sqrt(finfo.tiny)
  root = jnp.sqrt(jnp.where(alive, diag, 1.0))
  both = alive[:, None] & alive[None, :]
  c = jnp.where(both, g / root[:, None] / root[None, :], 0.0) + jnp.diag(
      jnp.where(alive, 0.0, 1.0)
  ).astype(dtype)
  q = c + eps * jnp.eye(k, dtype=dtype)
  return q, jnp.where(alive, s, 1.0), alive


def masked_solve(q: jax.Array, free: jax.Array, rhs: jax.Array) -> jax.Array:
  """Solves ``Q[F, F] z[F] = rhs[F]`` with ``z = 0`` off the free set ``F``.

  The fixed-shape system is ``Q`` restricted to ``F`` plus the identity on the
  complement, so one ``K x K`` solve serves every active set.
  """
  both = free[:, None] & free[None, :]
  m = jnp.where(both, q, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0)).astype(q.dtype)
  rhs = jnp.where(free.reshape(free.shape + (1,) * (rhs.ndim - 1)), rhs, 0.0)
  return jnp.linalg.solve(m, rhs)


def nnqp_budget(k: int) -> int:
  """The fixed active-set budget for a K-dimensional problem.

  Each iteration adds or drops one index; from a cold start the active-set
  method needs about K additions plus a few drops on random problems.
  """
  return 3 * k + 5


def nnqp(q: jax.Array, c: jax.Array, *, num_iters: int | None = None) -> jax.Array:
  """``argmin_{x >= 0} ½ xᵀQx + cᵀx`` for a positive definite ``Q`` (active set).

  A Lawson–Hanson style primal active-set method: solve on the free set; if
  the solution is positive, accept it and free the index whose negative
  gradient is largest; otherwise move towards it until the first free
  coordinate hits zero and drop it. The iterate is always feasible, so an
  exhausted budget returns a feasible (if not optimal) point. Exact in
  finitely many steps for a positive definite ``Q``.

  Args:
    q: ``[K, K]`` symmetric positive definite matrix.
    c: ``[K]`` linear term.
    num_iters: the fixed number of active-set steps (default ``nnqp_budget(K)``).

  Returns:
    The ``[K]`` minimiser, non-negative.
  """
  k = c.shape[0]
  num_iters = nnqp_budget(k) if num_iters is None else num_iters
  dtype = q.dtype
  eps = jnp.finfo(dtype).eps
  abs_q = jnp.abs(q)

  def step(_, carry):
    x, free = carry
    z = masked_solve(q, free, -c)
    bad = free & (z <= 0)
    feasible = ~jnp.any(bad)
    # Accept z and free the most violated bound, if any is violated by more
    # than rounding (the tolerance is relative to the terms of the gradient).
    neg_grad = -(q @ z + c)
    tol = 64 * eps * (jnp.abs(c) + abs_q @ jnp.abs(z))
    score = jnp.where(free, -jnp.inf, neg_grad - tol)
    j = jnp.argmax(score)
    add = score[j] > 0
    free_ok = free | (add & (jnp.arange(k) == j))
    # Otherwise step from x towards z until the first free coordinate hits 0.
    # x >= 0 >= z on `bad`, so x - z >= 0; it is 0 only for an index freed at 0.
    gap = jnp.where(bad, x - z, 1.0)
    ratio = jnp.where(bad, jnp.where(gap > 0, x / jnp.where(gap > 0, gap, 1.0), 0.0), jnp.inf)
    alpha = jnp.clip(jnp.min(ratio), 0.0, 1.0)
    x_mid = x + alpha * (z - x)
    free_mid = free & (x_mid > eps * jnp.max(jnp.abs(x_mid))) & ~(bad & (ratio <= alpha))
    x_mid = jnp.where(free_mid, x_mid, 0.0)
    x = jnp.where(feasible, z, x_mid)
    free = jnp.where(feasible, free_ok, free_mid)
    return x, free

  x0, free0 = vary_like((jnp.zeros_like(c), jnp.zeros(c.shape, bool)), q)
  x, free = lax.fori_loop(0, num_iters, step, (x0, free0))
  # One last solve on the final free set, kept only if it is feasible.
  z = masked_solve(q, free, -c)
  return jnp.where(jnp.all(~free | (z > 0)), z, x)


def min_norm_simplex(gramian: jax.Array, *, reg_eps: float | jax.Array = 1e-6) -> jax.Array:
  """``argmin_{λ ∈ Δ} λᵀGλ``, the min-norm point of the convex hull of the rows of J.

  K = 2 uses the exact closed form; K > 2 uses that for a positive definite
  ``Q``, ``λ* = x / Σx`` with ``x = argmin_{x >= 0} ½ xᵀQx − 1ᵀx`` (both share
  the KKT system ``Qλ >= ν1`` with equality on the support), with
  ``Q = Ĝ + reg_eps·diag(Ĝ)`` and ``Ĝ = G / tr(G)``. The QP is solved in
  ``y = D^½x`` on the cosine matrix ``C = D^-½ĜD^-½`` plus ``reg_eps·I``
  (``D = diag(Ĝ)``), whose condition number does not depend on the spread of
  the gradient norms, so float32 keeps the KKT conditions for norms that
  differ by ``1e7`` or more. The ridge bounds the error in the objective by
  ``reg_eps·max_k G_kk`` and picks a unique λ when the minimiser is not
  (identical or cancelling gradients). A zero gradient makes 0 the min-norm
  point: λ is then uniform over the zero-gradient tasks.

  Args:
    gramian: ``[K, K]`` Gramian ``J Jᵀ``.
    reg_eps: relative ridge (on each task's squared norm), used when K > 2.

  Returns:
    ``[K]`` weights on the simplex.
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  if k == 1:
    return jnp.ones((1,), dtype)
  if k == 2:
    # λ₁ = clip(<g₂ − g₁, g₂> / ‖g₁ − g₂‖², 0, 1); identical gradients: ½.
    # Each λ from its own numerator: 1 − λ₁ would round a small λ₂ (a large
    # gradient against a small one, λ₂ ~ ‖g₁‖/‖g₂‖) to 0 or to a multiple of eps.
    num = jnp.stack([g[1, 1] - g[0, 1], g[0, 0] - g[0, 1]])
    den = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    ok = den > 16 * jnp.finfo(dtype).eps
    return jnp.where(ok, jnp.clip(num / jnp.where(ok, den, 1.0), 0.0, 1.0), 0.5)
  finfo = jnp.finfo(dtype)
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  s = jnp.sqrt(diag / jnp.maximum(jnp.max(diag), finfo.tiny))  # ‖g_k‖ / max_j ‖g_j‖
  alive = s > jnp.sqrt(finfo.tiny)
  safe_s = jnp.where(alive, s, 1.0)
  root = jnp.sqrt(jnp.where(alive, diag, 1.0))
  both = alive[:, None] & alive[None, :]
  c = jnp.where(both, g / root[:, None] / root[None, :], 0.0) + jnp.diag(
      jnp.where(alive, 0.0, 1.0)
  ).astype(dtype)
  q = c + jnp.asarray(reg_eps, dtype) * jnp.eye(k, dtype=dtype)
  # x = D^-½y solves the QP in x; the common factor max‖g‖ drops out of λ.
  y = nnqp(q, -jnp.where(alive, 1.0 / safe_s, 1.0))
  x = jnp.where(alive, y / safe_s, 0.0)
  total = jnp.sum(x)
  dead = (~alive).astype(dtype)
  lam = jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), jnp.full((k,), 1.0 / k, dtype))
  return jnp.where(jnp.any(~alive), dead / jnp.maximum(jnp.sum(dead), 1.0), lam)
