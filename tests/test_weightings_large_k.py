"""The QP-based weightings at K = 40 and 64 against float64 SciPy references.

Multi-task benchmarks have 40 tasks (CelebA's attributes) and more, where the
block principal pivoting of ``_solvers.nnqp`` replaced a primal active-set
method. Expected values come from SciPy's ``nnls`` (Lawson–Hanson, float64) on
the same problem the float32 code sees (the float32 Gramian, converted
exactly), and from SLSQP for CAGrad's primal problem. Adversarial Gramians:
gradient norms spread over e^±3σ, rank K/4, nearly opposite pairs, and a zero
gradient. Each case compiles every weighting once per K (a few seconds in all).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize as scipy_optimize

from weightax import weightings as ww
from weightax.weightings import _solvers
from weightax.weightings.imtl_g import IMTL_RANK_RTOL

KS = (40, 64)
KINDS = ("random", "spread", "lowrank", "opposite", "zero")
WELL_CONDITIONED = ("random", "spread")


def _gramian(k, kind, seed=0):
  """A float32 Gramian (returned in float64, exactly) of a K x max(2K, 64) Jacobian."""
  rng = np.random.default_rng([seed, k, KINDS.index(kind)])
  n = max(2 * k, 64)
  if kind == "lowrank":
    j = rng.normal(size=(k, k // 4)) @ rng.normal(size=(k // 4, n))
  else:
    j = rng.normal(size=(k, n))
  j *= np.exp((3.0 if kind == "spread" else 1.0) * rng.normal(size=(k, 1)))
  if kind == "opposite":  # pairs (2i, 2i+1) nearly opposite, of different norms
    j[1::2] = -j[0::2] * np.exp(rng.normal(size=(k // 2, 1))) + 1e-3 * rng.normal(size=(k // 2, n))
  if kind == "zero":
    j[3] = 0.0
  return (j @ j.T).astype(np.float32).astype(np.float64)


def _nnqp_ref(q, c):
  """argmin_{x>=0} ½xᵀQx + cᵀx in float64: ½‖Lᵀx + L⁻¹c‖² up to a constant, by SciPy's nnls."""
  chol = np.linalg.cholesky(q)
  x, _ = scipy_optimize.nnls(chol.T, -np.linalg.solve(chol, c), maxiter=100 * len(c))
  return x


def _f32(a):
  return np.asarray(np.asarray(a, np.float32), np.float64)


def _update_error(w, w_ref, g):
  """‖Jᵀ(w − w_ref)‖ / ‖Jᵀw_ref‖: the error of the update, defined even where w is not."""
  d = w - w_ref
  return np.sqrt(max(d @ g @ d, 0.0) / (w_ref @ g @ w_ref))


def _upgrad_ref(g):
  """UPGrad (trace ridge 1e-4, u = 1/K) in float64: Σ_i u_ie_i + argmin_{x>=0} ½xᵀQx + xᵀQu_ie_i."""
  k = len(g)
  q = g / np.trace(g) + 1e-4 * np.eye(k)
  # The code solves on float32(Q) and float32(Q u_i e_i); so does the reference.
  q32 = _f32(q)
  u = np.eye(k) / k
  return np.sum([ui + _nnqp_ref(q32, _f32(q @ ui)) for ui in u], axis=0)


def _dualproj_ref(g):
  k = len(g)
  q = g / np.trace(g) + 1e-4 * np.eye(k)
  u = np.full(k, 1.0 / k)
  return u + _nnqp_ref(_f32(q), _f32(q @ u))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_and_dualproj_match_nnls(k, kind):
  g = _gramian(k, kind)
  g32 = jnp.asarray(g, jnp.float32)
  for fn, ref_fn in ((ww.upgrad, _upgrad_ref), (ww.dualproj, _dualproj_ref)):
    w = np.asarray(fn(g32), np.float64)
    ref = ref_fn(g)
    assert np.all(np.isfinite(w)) and np.all(w >= 1.0 / k - 1e-7), fn
    assert _update_error(w, ref, g) < 1e-4, (fn, _update_error(w, ref, g))
    if kind in WELL_CONDITIONED:  # the weights themselves are well determined
      np.testing.assert_allclose(w, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("kind", KINDS)
def test_upgrad_relative_ridge_guarantee_at_large_k(k, kind):
  # ridge="relative": <g_k, Jᵀw> >= −ε‖g_k‖²w_k, i.e. (Gw)_k >= −ε·G_kk·w_k (+ rounding).
  g = _gramian(k, kind)
  w = np.asarray(ww.upgrad(jnp.asarray(g, jnp.float32), ridge="relative"), np.float64)
  assert np.all(np.isfinite(w)) and np.all(w >= 1.0 / k - 1e-7)
  gw = g @ w
  scale = np.sqrt(np.diag(g)) * (np.sqrt(np.diag(g)) @ np.abs(w))  # ‖g_k‖·Σ_j w_j‖g_j‖
  kappa = np.where(scale > 0, -gw / np.where(scale > 0, scale, 1.0), 0.0)
  assert kappa.max() < 1e-4 + 1e-5, kappa.max()


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("kind", KINDS)
def test_mgda_matches_nnls(k, kind):
  g = _gramian(k, kind)
  lam = np.asarray(ww.mgda(jnp.asarray(g, jnp.float32)), np.float64)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
  if kind == "zero":  # a zero gradient: 0 is the min-norm point, λ on it
    np.testing.assert_allclose(lam, np.eye(k)[3], atol=1e-7)
    return
  # λ* = x/Σx with x = argmin_{x>=0} ½xᵀ(Ĝ + 1e-6·diag Ĝ)x − 1ᵀx (the ridge of the code).
  gn = g / np.trace(g)
  x = _nnqp_ref(gn + 1e-6 * np.diag(np.diag(gn)), -np.ones(k))
  ref = x / x.sum()
  # The min-norm value is what is well determined (λ is not, for dependent gradients).
  assert lam @ g @ lam <= ref @ g @ ref * (1 + 1e-4) + 1e-9 * np.max(np.diag(g)), (
      lam @ g @ lam, ref @ g @ ref)
  if kind in WELL_CONDITIONED:
    np.testing.assert_allclose(lam, ref, atol=1e-4 * ref.max())


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("kind", ("random", "lowrank", "opposite"))
def test_cagrad_matches_slsqp(k, kind):
  # Primal: min_{w∈Δ} <g_w, g0> + √φ‖g_w‖ with φ = c²‖g0‖²; the code's x = (√φ/‖g_w*‖)·w*.
  g = _gramian(k, kind)
  gn = g / np.trace(g)
  c = 0.4
  w = np.asarray(ww.cagrad(jnp.asarray(g, jnp.float32), c=c, rescale=False), np.float64)
  b = np.full(k, 1.0 / k)
  x = w - b
  assert np.all(x >= -1e-7)
  sqrt_phi = c * np.sqrt(b @ gn @ b)
  objective = lambda v: v @ gn @ b + sqrt_phi * np.sqrt(max(v @ gn @ v, 0.0))  # noqa: E731
  def gradient(v):
    norm = np.sqrt(max(v @ gn @ v, 1e-300))
    return gn @ b + sqrt_phi * (gn @ v) / norm

  res = scipy_optimize.minimize(
      objective, b, jac=gradient, method="SLSQP", bounds=[(0, 1)] * k,
      constraints={"type": "eq", "fun": lambda v: v.sum() - 1}, options={"maxiter": 500,
                                                                          "ftol": 1e-14})
  ours = objective(x / x.sum()) if x.sum() > 0 else objective(b)
  assert ours <= res.fun + 1e-5 * abs(res.fun) + 1e-7, (ours, res.fun)
  # ‖Jᵀx‖ = √φ: the update sits on the ball around g0.
  np.testing.assert_allclose(np.sqrt(x @ gn @ x), sqrt_phi, rtol=1e-3)


@pytest.mark.parametrize("k", KS)
def test_pivoting_takes_a_few_solves(k):
  # The documented cost: at most 12 K x K solves on these Gramians (K problems each),
  # converged without the primal fallback.
  piv = jax.jit(jax.vmap(lambda q, c: _solvers._nnqp_pivoting(q, c, 3 * k + 5), (None, 0)))
  for kind in KINDS:
    g = _gramian(k, kind)
    gn = g / np.trace(g)
    q = gn + 1e-4 * np.eye(k)
    cs = q / k  # UPGrad's K problems: c_i = Q u_i e_i
    _, _, viol, steps = piv(jnp.asarray(q, jnp.float32), jnp.asarray(cs, jnp.float32))
    assert not np.any(viol), kind
    assert int(np.max(steps)) <= 12, (kind, int(np.max(steps)))


def test_primal_fallback_is_exact_from_a_cold_start():
  # The fallback alone (from x = 0, every index bound) reaches the KKT point too.
  k = 40
  g = _gramian(k, "random")
  q = _f32(g / np.trace(g) + 1e-4 * np.eye(k))
  c = _f32(q @ (np.eye(k)[5] / k)) - 1e-3
  q32, c32 = jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32)
  x = _solvers._nnqp_primal(q32, c32, jnp.zeros(k), jnp.zeros(k, bool), jnp.asarray(True),
                            3 * k + 5)
  ref = _nnqp_ref(q, c)
  np.testing.assert_allclose(np.asarray(x, np.float64), ref, atol=1e-4 * np.abs(ref).max())


def test_nnqp_derivative_is_the_implicit_one():
  # Directional derivative against central differences of the float64 reference.
  rng = np.random.default_rng(3)
  k = 6
  j = rng.normal(size=(k, 8))
  q = j @ j.T / k + 0.5 * np.eye(k)
  c = rng.normal(size=k)
  dq = rng.normal(size=(k, k))
  dq = dq + dq.T
  dc = rng.normal(size=k)
  f = lambda t: _nnqp_ref(q + t * dq, c + t * dc)  # noqa: E731
  h = 1e-6
  expected = (f(h) - f(-h)) / (2 * h)
  x = _nnqp_ref(q, c)
  assert 0 < np.sum(x > 0) < k  # some bounds active: the derivative is not a plain solve's
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  _, tangent = jax.jvp(lambda a, b: _solvers.nnqp(a, b), (f32(q), f32(c)), (f32(dq), f32(dc)))
  np.testing.assert_allclose(np.asarray(tangent), expected, atol=1e-4)
  # Reverse mode is its transpose.
  grad_c = jax.grad(lambda b: jnp.sum(_solvers.nnqp(f32(q), b) * f32(dc)))(f32(c))
  vjp = np.asarray(grad_c, np.float64) @ dc
  jvp_c = (np.sum(_nnqp_ref(q, c + h * dc) * dc) - np.sum(_nnqp_ref(q, c - h * dc) * dc)) / (2 * h)
  np.testing.assert_allclose(vjp, jvp_c, atol=1e-4)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("reg_eps", [1e-8, 0.0])
def test_tiny_ridge_on_a_rank_deficient_gramian_stays_finite(k, reg_eps):
  # Pivoting can reach a singular (or, for Cholesky, indefinite) subsystem; the
  # primal fallback from 0 then finishes with LU. The weights stay feasible: w >= u.
  g = jnp.asarray(_gramian(k, "lowrank"), jnp.float32)
  for fn in (ww.upgrad, ww.dualproj):
    for ridge in ("trace", "relative"):
      w = np.asarray(fn(g, reg_eps=reg_eps, ridge=ridge))
      assert np.all(np.isfinite(w)) and np.all(w >= 1.0 / k - 1e-6), (fn, ridge)


@pytest.mark.parametrize("k,rank", [(40, 40), (64, 64), (40, 10), (64, 16), (64, 63)])
def test_imtl_g_matches_the_float64_pseudo_inverse(k, rank):
  """IMTL-G at large K: full rank takes the Cholesky path (certified λ_min(C) > cut-off),
  rank-deficient Gramians the eigendecomposition; both equal w ∝ D^-½ C⁺ 1 computed in float64
  on the same float32 Gramian, with eigenvalues of C below the documented cut-off dropped."""
  rng = np.random.default_rng(k + rank)
  # full rank: K independent rows in 2K dimensions (C well conditioned, as in training);
  # else rows mixed from `rank` directions
  jac = (rng.normal(size=(k, 2 * k)) if rank == k
         else rng.normal(size=(k, rank)) @ rng.normal(size=(rank, 2 * k)))
  jac *= np.exp(rng.normal(size=(k, 1)))
  g = (jac @ jac.T).astype(np.float32)
  g64 = g.astype(np.float64)
  d = np.sqrt(np.diag(g64))
  c = g64 / np.outer(d, d)
  cut = IMTL_RANK_RTOL * k * np.finfo(np.float32).eps
  v = np.linalg.pinv(c, rcond=cut, hermitian=True) @ np.ones(k)
  want = (v / d) / np.sum(v / d)
  got = np.asarray(ww.imtl_g(jnp.asarray(g)), np.float64)
  # full rank: float32 rounding of a well-conditioned C (measured ≤ 3e-7 of max|w|);
  # rank-deficient: the conditioning of C on its range (measured ≤ 9e-5)
  tol = 2e-6 if rank == k else 5e-4
  np.testing.assert_allclose(got, want, atol=tol * np.max(np.abs(want)))
