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
    "pure_weighting",
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


def pure_weighting(fn: Callable[..., Any]) -> Callable[..., Any]:
  """The common entry of every pure weighting ``fn(gramian, ...)``.

  - Refuses a ``gramian`` that is not a ``[K, K]`` matrix (e.g. ``J`` passed for ``J Jᵀ``),
    naming ``fn``; shapes are static, so this holds under ``jit`` too.
  - Computes in the Gramian's dtype promoted to at least float32: a bfloat16 or float16
    Gramian (``J Jᵀ`` of low-precision gradients) is solved in float32.
  - Runs ``fn`` at full matmul precision (:func:`full_precision`).
  - Returns NaN (in every floating output) when the Gramian holds a NaN or an infinity, or
    another floating argument (a hyperparameter, possibly traced, or a kept state such as
    the last weights) holds a NaN. The solvers would otherwise turn such input into
    ordinary-looking weights (uniform, zero, or 1e6 for Nash-MTL), hiding the NaN.
  """
  precise = full_precision(fn)

  @functools.wraps(fn)
  def wrapped(gramian: Any, *args: Any, **kwargs: Any) -> Any:
    g = jnp.asarray(gramian)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
      raise ValueError(
          f"{fn.__name__}: expected a square [K, K] Gramian G = J Jᵀ of the task gradients; "
          f"got shape {g.shape}. Compute it with weightax.gramian(task_grads) (J @ J.T for a "
          "[K, P] Jacobian).")
    g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    out = precise(g, *args, **kwargs)
    bad = ~jnp.all(jnp.isfinite(g))
    for x in jax.tree.leaves((args, kwargs)):
      if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
        bad = bad | jnp.any(jnp.isnan(x))
    return jax.tree.map(
        lambda y: jnp.where(bad, jnp.nan, y) if jnp.issubdtype(y.dtype, jnp.floating) else y,
        out)

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


def masked_solve(q: jax.Array, free: jax.Array, rhs: jax.Array, *,
                 cholesky: bool = False) -> jax.Array:
  """Solves ``Q[F, F] z[F] = rhs[F]`` with ``z = 0`` off the free set ``F``.

  The fixed-shape system is ``Q`` restricted to ``F`` plus the identity on the
  complement, so one ``K x K`` solve serves every active set. ``cholesky``
  (a Python bool) factorises it by Cholesky instead of LU, 1.2-1.5x faster on
  CPU, for a ``Q`` whose smallest eigenvalue is safely above float32 rounding
  (a ridge of ``1e-4`` relative to the largest, as UPGrad's and DualProj's):
  an indefinite ``Q`` gives NaN.
  """
  both = free[:, None] & free[None, :]
  m = jnp.where(both, q, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0)).astype(q.dtype)
  rhs = jnp.where(free.reshape(free.shape + (1,) * (rhs.ndim - 1)), rhs, 0.0)
  if not cholesky:
    return jnp.linalg.solve(m, rhs)
  factor = jnp.linalg.cholesky(m)
  col = rhs if rhs.ndim == 2 else rhs[:, None]
  y = lax.linalg.triangular_solve(factor, col, left_side=True, lower=True)
  z = lax.linalg.triangular_solve(factor, y, left_side=True, lower=True, transpose_a=True)
  return z if rhs.ndim == 2 else z[:, 0]


def nnqp_budget(k: int) -> int:
  """The iteration cap of each phase of :func:`nnqp` for a K-dimensional problem.

  A cap, not a trip count: both phases stop as soon as the KKT conditions
  hold. The pivoting phase needs at most 12 steps on the random and
  adversarial Gramians of the tests (K = 40 and 64, mostly 2 to 5); the
  primal active-set phase, which only runs if the first one did not
  converge, adds or drops one index per step and needs about K additions
  plus a few drops from a cold start.
  """
  return 3 * k + 5


def _nnqp_check(q: jax.Array, c: jax.Array, free: jax.Array,
                cholesky: bool = False) -> tuple[jax.Array, jax.Array]:
  """The free-set solution ``z`` and the mask of violated KKT conditions.

  ``z[F] = −Q[F,F]⁻¹c[F]``, ``z = 0`` elsewhere; a free coordinate is violated
  when ``z_i < 0``, a bound one when its gradient ``(Qz + c)_i`` is negative by
  more than rounding (64 eps relative to the terms that make it up).
  """
  z = masked_solve(q, free, -c, cholesky=cholesky)
  grad = q @ z + c
  tol = 64 * jnp.finfo(q.dtype).eps * (jnp.abs(c) + jnp.abs(q) @ jnp.abs(z))
  return z, jnp.where(free, z < 0, grad < -tol)


def _nnqp_pivoting(q: jax.Array, c: jax.Array, num_iters: int, cholesky: bool = False):
  """Block principal pivoting (Júdice & Pires 1994; Kim & Park 2011) for the NNQP's LCP.

  Every step solves on the current free set and exchanges *every* index that
  violates the KKT conditions (a negative free coordinate leaves, a bound one
  with a negative gradient enters), so a random problem is solved in a few
  steps whatever K. When the number of violations stops decreasing for
  ``3`` steps in a row, one index at a time is exchanged (the largest
  violated one, Murty's rule), which terminates for a positive definite Q.
  In exact arithmetic such a single exchange never flips the index it has
  just flipped (an index that enters comes in positive, one that leaves has
  a positive gradient); when rounding makes it do so, both violations are
  at rounding level and the step stops there (``stuck``).

  Returns:
    ``(z, free, violated, steps)`` of the last step; ``violated`` is cleared
    when it stopped stuck.
  """
  k = c.shape[0]
  # int32 throughout, as the carry's initial values: under jax_enable_x64 the defaults
  # of arange and sum are int64, and the while loop's carry would change type.
  idx = jnp.arange(k, dtype=jnp.int32)
  backup = 3

  def cond(carry):
    it, _, _, viol, _, _, _, stuck = carry
    return (it < num_iters) & jnp.any(viol) & ~stuck

  def body(carry):
    it, free, z, viol, best, tries, prev, _ = carry
    n = jnp.sum(viol, dtype=jnp.int32)
    better = n < best
    block = better | (tries > 0)
    last = jnp.max(jnp.where(viol, idx, -1))
    stuck = ~block & (last == prev)
    flip = jnp.where(block, viol, (idx == last) & ~stuck)
    free = free ^ flip
    best = jnp.where(better, n, best)
    tries = jnp.where(better, backup, jnp.where(block, tries - 1, tries))
    prev = jnp.where(block, -1, last)
    z_new, viol_new = _nnqp_check(q, c, free, cholesky)
    z = jnp.where(stuck, z, z_new)
    viol = jnp.where(stuck, viol, viol_new)
    return it + 1, free, z, viol, best, tries, prev, stuck

  # From x = 0 (F empty): the violated indices are those with c_i < 0.
  int32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
  init = vary_like((int32(0), jnp.zeros((k,), bool), jnp.zeros_like(c), c < 0, int32(k + 1),
                    int32(backup), int32(-1), jnp.zeros((), bool)), q)
  it, free, z, viol, _, _, _, stuck = lax.while_loop(cond, body, init)
  return z, free, viol & ~stuck, it


def _nnqp_primal(q: jax.Array, c: jax.Array, x: jax.Array, free: jax.Array, todo: jax.Array,
                 num_iters: int) -> jax.Array:
  """Lawson–Hanson style primal active set from a feasible ``x`` (the fallback of :func:`nnqp`).

  Solve on the free set; if the solution is positive, accept it and free the
  index whose negative gradient is largest; otherwise move towards it until
  the first free coordinate hits zero and drop it. The iterate stays
  feasible, so an exhausted cap still returns a feasible point. Runs only
  while ``todo`` (the pivoting phase did not converge) and the KKT
  conditions fail.
  """
  k = c.shape[0]
  eps = jnp.finfo(q.dtype).eps

  def cond(carry):
    it, _, _, todo = carry
    return (it < num_iters) & todo

  def body(carry):
    it, x, free, _ = carry
    z, viol = _nnqp_check(q, c, free)
    bad = free & (z <= 0)
    feasible = ~jnp.any(bad)
    # Accept z and free the most violated bound, if any.
    neg_grad = -(q @ z + c)
    score = jnp.where(viol & ~free, neg_grad, -jnp.inf)
    j = jnp.argmax(score)
    add = jnp.any(viol & ~free)
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
    return it + 1, x, free, ~feasible | add

  init = (jnp.zeros((), jnp.int32), x, free, todo)
  _, x, _, _ = lax.while_loop(cond, body, init)
  return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _nnqp(q: jax.Array, c: jax.Array, num_iters: int, cholesky: bool) -> jax.Array:
  z, free, viol, _ = _nnqp_pivoting(q, c, num_iters, cholesky)
  # Rarely needed: a feasible start (the positive part of the last pivoting
  # step) for the primal method, which then runs to the KKT point. Exchanging
  # many indices at once can reach a singular subsystem of a (nearly) singular
  # Q, or an indefinite one for Cholesky: its non-finite z sends the problem to
  # the primal method from x = 0 with LU, which frees one index at a time.
  broken = ~jnp.all(jnp.isfinite(z))
  x0 = jnp.where(free & ~broken, jnp.maximum(z, 0.0), 0.0)
  free0 = free & (z > 0) & ~broken
  return _nnqp_primal(q, c, x0, free0, jnp.any(viol) | broken, num_iters)


@_nnqp.defjvp
def _nnqp_jvp(num_iters, cholesky, primals, tangents):
  # Implicit differentiation on the solution's free set F: Q[F,F]x[F] = −c[F]
  # gives dx[F] = −Q[F,F]⁻¹(dQ x + dc)[F], dx = 0 off F (locally constant).
  q, c = primals
  dq, dc = tangents
  x = _nnqp(q, c, num_iters, cholesky)
  dx = masked_solve(q, x > 0, -(dq @ x + dc), cholesky=cholesky)
  return x, dx


def nnqp(q: jax.Array, c: jax.Array, *, num_iters: int | None = None,
         cholesky: bool = False) -> jax.Array:
  """``argmin_{x >= 0} ½ xᵀQx + cᵀx`` for a positive definite ``Q``.

  Block principal pivoting: solve on the free set, then exchange every index
  that violates the KKT conditions at once, with a one-at-a-time backup rule
  that guarantees termination (Júdice & Pires 1994; Kim & Park, "Fast
  nonnegative matrix factorization", 2011). The problems of the tests take
  at most 12 ``K x K`` solves at K = 40 and 64 (a primal active-set method
  adds one index per solve, about K of them). In the rare case the pivoting does not
  converge within ``num_iters`` steps, a primal active-set method (always
  feasible, exact in finitely many steps) continues from the positive part of
  its last iterate (from 0, with LU, if that iterate is not finite: a
  singular or, for Cholesky, indefinite subsystem). Both phases are
  ``lax.while_loop`` s that stop as soon as the KKT conditions hold, so the
  cost adapts to the problem; under ``vmap`` the batch runs until its slowest
  problem is solved. Differentiable (forward
  and reverse mode) by implicit differentiation on the solution's free set.

  Args:
    q: ``[K, K]`` symmetric positive definite matrix.
    c: ``[K]`` linear term.
    num_iters: the iteration cap of each phase (default ``nnqp_budget(K)``).
    cholesky: solve by Cholesky instead of LU (see :func:`masked_solve`).

  Returns:
    The ``[K]`` minimiser, non-negative.
  """
  k = c.shape[0]
  num_iters = nnqp_budget(k) if num_iters is None else num_iters
  return _nnqp(q, c, num_iters, cholesky)


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
