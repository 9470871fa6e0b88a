"""Tests written to kill mutants of ``weightings/_solvers.py`` that survived the rest of the suite.

Each test names the mutations it was written for (``tools/mutate.py``'s operator and
line, snapshot ``ff7ed4a``; see TESTING.md) and checks a documented behaviour of the
NNQP solvers against an independent float64 reference: a brute-force enumeration of
the active sets (small K), SciPy's ``nnls``, or a closed form. Most of them drive
paths the weightings never reach on ordinary inputs: the primal active-set fallback
of ``nnqp`` (block pivoting cut short by ``num_iters``, or a non-finite pivoting
iterate on a singular subsystem) and the one-at-a-time backup rule of block
principal pivoting (problems on which plain block pivoting cycles).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize as scipy_optimize

from weightax.weightings import _solvers


def _f32(a):
  """``a`` rounded to float32 and back: the problem the float32 code sees, exactly."""
  return np.asarray(np.asarray(a, np.float32), np.float64)


def _objective(q, c, x):
  return 0.5 * x @ q @ x + c @ x


def _brute_force(q, c):
  """argmin_{x>=0} ½xᵀQx + cᵀx in float64 by enumerating every free set (K <= 8).

  For a positive definite Q the minimiser is the unique point that solves
  Q[F,F]x[F] = −c[F] with x[F] >= 0 and (Qx + c)[~F] >= 0; the best feasible
  candidate over all 2^K free sets is it.
  """
  k = len(c)
  best, best_f = None, np.inf
  for mask in itertools.product([False, True], repeat=k):
    f = np.array(mask)
    x = np.zeros(k)
    if f.any():
      x[f] = np.linalg.solve(q[np.ix_(f, f)], -c[f])
    if np.any(x < 0):
      continue
    if _objective(q, c, x) < best_f:
      best, best_f = x, _objective(q, c, x)
  return best


def _nnls(q, c):
  """The same minimiser by SciPy's nnls: ½‖Lᵀx + L⁻¹c‖² up to a constant (Q = LLᵀ)."""
  chol = np.linalg.cholesky(q)
  x, _ = scipy_optimize.nnls(chol.T, -np.linalg.solve(chol, c), maxiter=100 * len(c))
  return x


def _assert_kkt(q, c, x, rtol=1e-5):
  """x >= 0, ∇ = Qx + c >= 0 and x·∇ = 0, to float32 rounding relative to the terms."""
  x = np.asarray(x, np.float64)
  grad = q @ x + c
  scale = np.abs(c).max() + np.abs(q).max() * np.abs(x).sum()
  assert np.all(np.isfinite(x)) and np.all(x >= 0), x
  assert np.all(grad >= -rtol * scale), (grad, x)
  assert np.all(np.abs(x * grad) <= rtol * scale * (np.abs(x) + rtol)), (x, grad)


def _random_problem(seed):
  """A random positive definite Q (row norms spread over e^±1) and c, in float32 exactly."""
  rng = np.random.default_rng(seed)
  k = int(rng.integers(3, 8))
  a = rng.normal(size=(k, k)) * np.exp(rng.normal(size=(k, 1)))
  q = a @ a.T + 1e-2 * np.eye(k)
  c = rng.normal(size=k) * np.exp(rng.normal(size=k))
  return _f32(q), _f32(c)


def _plain_block_pivoting_converges(q, c, steps):
  """Block pivoting without a backup rule (exchange every violated index, every step)."""
  k = len(c)
  free = np.zeros(k, bool)
  for _ in range(steps):
    x = np.zeros(k)
    if free.any():
      x[free] = np.linalg.solve(q[np.ix_(free, free)], -c[free])
    viol = np.where(free, x < 0, q @ x + c < 0)
    if not viol.any():
      return True
    free ^= viol
  return False


# Problems (seeds of _random_problem, found by a search over 300k seeds) on which plain
# block pivoting cycles: the code's backup rule (one exchange at a time, after three steps
# without fewer violations) is what solves them, in 10 to 22 steps. All but one have K = 7,
# so that they share compiled programs.
CYCLING_SEEDS = (949, 46694, 68567, 17072)
_pivoting = jax.jit(_solvers._nnqp_pivoting, static_argnums=2)
_nnqp = jax.jit(_solvers.nnqp)


def test_cut_short_pivoting_hands_over_to_the_primal_method():
  """Mutants ``_solvers.py:149`` (line 219) drop Invert: ``viol & ~stuck`` -> ``viol & stuck``,
  ``_solvers.py:90`` (line 279) BitOr -> BitAnd: ``jnp.any(viol) | broken``, and
  ``_solvers.py:21`` (line 276) drop Invert: ``broken = ~jnp.all(jnp.isfinite(z))``, and
  ``_solvers.py:207`` (line 216) 0 -> 1: ``int32(0)`` (the pivoting's step counter starts
  at 1, so ``num_iters=1`` gives no pivoting step at all).

  ``nnqp``'s documented fallback: when block pivoting does not converge within
  ``num_iters`` steps, the primal method continues from the positive part of its last
  iterate. With ``num_iters=1`` the first pivoting step (free set {c < 0} = {0, 1})
  gives z = Q⁻¹(−c) with z₂ < 0; the primal method then solves on {0}: x = (1, 0),
  whose gradient (0, 0.9 − 0.5) is non-negative, so one primal step is exact.
  """
  q = jnp.asarray([[1.0, 0.9], [0.9, 1.0]], jnp.float32)
  c = jnp.asarray([-1.0, -0.5], jnp.float32)
  _, _, viol, _ = _solvers._nnqp_pivoting(q, c, 1)
  assert np.any(viol)  # the precondition: pivoting is cut short
  x = _solvers.nnqp(q, c, num_iters=1)
  np.testing.assert_allclose(x, [1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(x, _brute_force(_f32(q), _f32(c)), atol=1e-6)


def _duplicated_gradients():
  """Six gradients, each given twice (K = 12): the cosine matrix is exactly singular."""
  rng = np.random.default_rng(1)
  base = np.eye(6) + 0.1 * rng.normal(size=(6, 6))
  base *= np.exp(0.5 * rng.normal(size=(6, 1)))
  return base, np.repeat(base, 2, axis=0)


def test_singular_subsystem_restarts_the_primal_method_from_zero():
  """Mutants ``_solvers.py:53`` (line 154) Mult -> Div: ``3 * k + 5`` -> ``3 * k / 5 + 5``;
  ``_solvers.py:169`` (line 261) BitOr -> BitAnd: ``~feasible | add``; ``_solvers.py:90``
  (line 279) BitOr -> BitAnd: ``jnp.any(viol) | broken``; ``_solvers.py:21`` (line 276)
  drop Invert: ``broken = ~jnp.all(jnp.isfinite(z))``.

  ``nnqp``'s documented path for a singular subsystem: the first pivoting step solves on
  every index (c < 0), a singular system when two tasks have the same gradient, and its
  non-finite z sends the problem to the primal method from x = 0, which frees one index
  at a time: here six (one per distinct gradient; the twin of a freed index has a zero
  gradient and stays at 0), so seven steps, within the budget 3K + 5 = 41. The
  reference is the float64 problem on the six distinct gradients: the twins' weights
  must add up to its solution. The same through ``min_norm_simplex`` without a ridge.
  """
  base, j = _duplicated_gradients()
  g = j @ j.T
  s = np.sqrt(np.diag(g))
  cos = _f32(g / s[:, None] / s[None, :])  # twins give identical rows, exactly
  c = _f32(-s.max() / s)
  z, _, _, _ = _solvers._nnqp_pivoting(jnp.asarray(cos, jnp.float32),
                                      jnp.asarray(c, jnp.float32), 41)
  assert not np.all(np.isfinite(z))  # the precondition: the singular path is reached
  x = np.asarray(_solvers.nnqp(jnp.asarray(cos, jnp.float32), jnp.asarray(c, jnp.float32)),
                 np.float64)
  _assert_kkt(cos, c, x)
  gb = base @ base.T
  sb = np.sqrt(np.diag(gb))
  ref = _brute_force(gb / sb[:, None] / sb[None, :], -s.max() / sb)
  assert np.all(ref > 0)  # every distinct gradient is in the support
  np.testing.assert_allclose(x[0::2] + x[1::2], ref, rtol=1e-5)

  lam = np.asarray(_solvers.min_norm_simplex(jnp.asarray(g, jnp.float32), reg_eps=0.0),
                   np.float64)
  x_ref = _brute_force(gb, -np.ones(6))  # λ* = x/Σx for the positive definite 6 x 6 Gramian
  np.testing.assert_allclose(lam[0::2] + lam[1::2], x_ref / x_ref.sum(), rtol=1e-5)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-6


def test_primal_method_frees_the_most_violated_index_first():
  """Mutants ``_solvers.py:76`` (line 246) drop USub: ``neg_grad = -(q @ z + c)``, and
  ``_solvers.py:215`` (line 250) Eq -> NotEq: ``free | (add & (jnp.arange(k) == j))``.

  The primal method is Lawson–Hanson's: from x = 0 it frees the one index whose negative
  gradient is largest. On Q = [[1, ½], [½, 1]], c = (−10, −1) that is index 0, and x =
  (10, 0) is the minimiser (gradient (0, 5 − 1) >= 0), so two steps (free 0; solve and
  stop) are exact. Freeing index 1 first (or every index but 0) needs a drop later.
  """
  q = jnp.asarray([[1.0, 0.5], [0.5, 1.0]], jnp.float32)
  c = jnp.asarray([-10.0, -1.0], jnp.float32)
  primal = jax.jit(lambda n: _solvers._nnqp_primal(q, c, jnp.zeros(2), jnp.zeros(2, bool),
                                                   jnp.asarray(True), n))
  x = primal(2)
  np.testing.assert_allclose(x, [10.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(x, _brute_force(_f32(q), _f32(c)), rtol=1e-6)
  # The cap caps: one step only frees index 0 (its iterate is the solution on the empty
  # free set, 0). Kills ``_solvers.py:168`` (line 261) Add -> Sub: ``it + 1`` -> ``it - 1``.
  np.testing.assert_array_equal(primal(1), [0.0, 0.0])


@jax.jit
def _primal_every_cap(q, c, x0, caps):
  """The primal method from the feasible x0 (free where x0 > 0), for every cap at once."""
  return jax.vmap(lambda n: _solvers._nnqp_primal(q, c, x0, x0 > 0, jnp.asarray(True), n))(caps)


def test_primal_method_is_a_feasible_descent_method():
  """The fallback's documented invariant: every iterate is feasible and the objective never
  rises (each step either accepts the minimiser on a free set that contains the iterate's
  support, or moves towards it, on a segment along which the convex objective falls), so
  an exhausted cap still returns a feasible point; with the budget it is the minimiser.
  From random feasible starts, against the brute-force minimiser, with ``c`` and the start
  scaled by 1e-6, 1 and 1e6 (the minimiser scales with them: nothing may depend on the
  absolute size of x).

  Also kills ``_solvers.py:255`` (line 257) Mult -> Div: ``x_mid > eps * max|x_mid|`` ->
  ``eps / max|x_mid|`` (at x ~ 1e-6 it drops positive coordinates), and ``_solvers.py:75``
  (line 244) drop Invert: ``feasible = ~jnp.any(bad)`` (infeasible solutions accepted).
  """
  for seed in range(6):
    q0, c0 = _random_problem(seed)
    k = len(c0)
    rng = np.random.default_rng([seed, 1])
    x00 = np.where(rng.random(k) < 0.6, rng.random(k) * 2.0, 0.0)
    for t in (1e-6, 1.0, 1e6):
      q, c, x0 = q0, _f32(t * c0), _f32(t * x00)
      caps = jnp.arange(3 * k + 6)
      xs = np.asarray(_primal_every_cap(jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32),
                                        jnp.asarray(x0, jnp.float32), caps), np.float64)
      assert np.all(xs >= 0), (seed, t)
      f = np.array([_objective(q, c, x) for x in xs])
      scale = np.abs(c).max() * np.abs(xs).max() + np.abs(q).max() * np.abs(xs).max() ** 2
      assert np.all(np.diff(f) <= 1e-5 * scale), (seed, t, f)
      assert f[0] == _objective(q, c, x0)  # cap 0: the start, untouched
      ref = _brute_force(q, c)
      np.testing.assert_allclose(xs[-1], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_backup_rule_solves_problems_on_which_block_pivoting_cycles():
  """Mutant ``_solvers.py:66`` (line 206) where(c, a, b) -> where(c, b, a):
  ``best = jnp.where(better, n, best)`` (every step counts as an improvement, so the
  backup rule never starts and plain block pivoting cycles until the cap).

  Block pivoting's documented termination: after three steps without fewer violations,
  one index at a time is exchanged (Murty's rule), which terminates for a positive
  definite Q. On problems where plain block pivoting cycles (checked by a NumPy
  transcription without the backup), the pivoting alone must reach the KKT point, and
  ``nnqp`` must return the brute-force minimiser (also SciPy's nnls).
  """
  for seed in CYCLING_SEEDS:
    q, c = _random_problem(seed)
    k = len(c)
    assert not _plain_block_pivoting_converges(q, c, 200), seed  # the path is needed
    q32, c32 = jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32)
    z, free, viol, _ = _pivoting(q32, c32, _solvers.nnqp_budget(k))
    ref = _brute_force(q, c)
    np.testing.assert_allclose(ref, _nnls(q, c), rtol=1e-7, atol=1e-9 * np.abs(ref).max())
    assert not np.any(viol), seed
    np.testing.assert_array_equal(np.asarray(free), ref > 0)
    x = np.asarray(_nnqp(q32, c32), np.float64)
    _assert_kkt(q, c, x)
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_min_norm_point_is_uniform_over_several_zero_gradients():
  """Mutant ``_solvers.py:242`` (line 378) .maximum -> .minimum:
  ``dead / jnp.maximum(jnp.sum(dead), 1.0)``.

  ``min_norm_simplex``'s docstring: a zero gradient makes 0 the min-norm point, and λ is
  then uniform over the zero-gradient tasks, here two of four (½ each), so that λ is on
  the simplex.
  """
  j = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 3.0], [0.0, 0.0, 0.0]])
  lam = np.asarray(_solvers.min_norm_simplex(jnp.asarray(j @ j.T, jnp.float32)))
  np.testing.assert_array_equal(lam, [0.0, 0.5, 0.0, 0.5])


def test_relative_ridge_protects_a_task_far_smaller_than_the_others():
  """Mutant ``_solvers.py:44`` (line 110) Div -> Mult: ``s = sqrt(diag / max(max(diag), tiny))``.

  ``relative_ridge_system`` (UPGrad's and DualProj's ``ridge="relative"``) keeps a task
  whose gradient is non-zero, ``s_k = ‖g_k‖/max‖g‖`` above ``√tiny ≈ 1.1e-19``, in the QP,
  and ``upgrad``'s docstring promises ``κ_k <= ε`` for it "whatever the norms" (worst
  measured 5e-5 for ε = 1e-4). Here a task 3e-19 times smaller than three orthonormal
  ones opposes two of them; κ_k = −<g_k, Jᵀw>/(‖g_k‖·Σ_j w_j‖g_j‖) is computed in float64.
  (With ``diag * max(diag)``, s_k would be scaled by max ĝ_kk = 1/3 and the task dropped
  as if its gradient were zero: w_k = u_k and κ_k ≈ 0.47.)
  """
  import weightax.weightings as ww

  r = 3e-19
  j = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-r / np.sqrt(2), -r / np.sqrt(2), 0]])
  g = j @ j.T
  for fn in (ww.upgrad, ww.dualproj):
    w = np.asarray(fn(jnp.asarray(g, jnp.float32), ridge="relative"), np.float64)
    norms = np.sqrt(np.diag(g))
    kappa = -(g @ w) / (norms * (norms @ np.abs(w)))
    assert np.all(w >= 0.25 * (1 - 1e-6)), (fn, w)
    assert kappa.max() < 1e-4, (fn, kappa)


def test_pivoting_cap_is_a_cap():
  """Mutants ``_solvers.py:199`` (line 195) Lt -> LtE: ``(it < num_iters) & ...``, and
  ``_solvers.py:60`` (line 195) BitAnd -> BitOr: ``... & jnp.any(viol) | ~stuck``, and
  ``_solvers.py:206`` (line 212) 1 -> 2: ``return it + 1, ...`` (steps counted twice).

  ``num_iters`` is documented as the iteration cap of each phase (``nnqp``, and
  ``nnqp_budget``: "a cap, not a trip count"): on a problem that needs 22 pivoting steps
  (seed 17072, more than any cap below), the pivoting stops after exactly ``m`` steps,
  not converged, for every cap ``m``.
  """
  q, c = _random_problem(17072)
  assert not _plain_block_pivoting_converges(q, c, 200)
  caps = jnp.arange(1, 9)
  _, _, viol, steps = jax.jit(jax.vmap(
      lambda m: _solvers._nnqp_pivoting(jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32),
                                        m)))(caps)
  np.testing.assert_array_equal(steps, caps)
  assert np.all(np.any(viol, axis=1))


def test_jacobi_ridge_is_the_documented_one():
  """Mutant ``_solvers.py:3`` (line 80) Add -> Sub: ``g + jnp.diag(...)``.

  ``jacobi_ridge(g, ε) = g + diag(ε·(g_kk + ε))`` (its docstring; FairGrad's and CAGrad's
  ridge), transcribed in float64; ε large enough to show at float32 resolution.
  """
  j = np.array([[1.0, 2.0, 0.0], [0.0, 0.1, 0.0], [-1.0, 0.5, 3.0]])
  g = j @ j.T
  eps = 0.01
  expected = g + np.diag(eps * (np.diag(g) + eps))
  np.testing.assert_allclose(_solvers.jacobi_ridge(jnp.asarray(g, jnp.float32), eps), expected,
                             rtol=1e-6)
