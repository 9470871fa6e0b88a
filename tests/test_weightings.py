"""Gramian weightings against independent computations (grids, enumeration, NumPy ports).

Expected values never come from the code under test: brute-force grids on the
simplex, exact KKT points found by enumerating active sets in float64, direct
NumPy loops of the papers' algorithms, and transliterations of torchjd,
LibMTL and the Nash-MTL code with SciPy in place of quadprog/cvxpy.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize as scipy_optimize  # a test dependency: fail loudly if missing

import weightax as wx
from weightax import weightings as ww

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _jacobian(seed, k, n, spread=1.0, kind="generic"):
  rng = np.random.default_rng(seed)
  j = rng.normal(size=(k, n)) * np.exp(spread * rng.normal(size=(k, 1)))
  if kind == "identical" and k >= 2:
    j[1] = j[0]
  elif kind == "opposite" and k >= 2:
    j[1] = -j[0] * np.exp(rng.normal())
  elif kind == "zero":
    j[0] = 0.0
  return j


def _w(fn, g, **kw):
  return np.asarray(fn(jnp.asarray(g, jnp.float32), **kw), np.float64)


def _simplex_grid(k, steps):
  if k == 2:
    t = np.linspace(0.0, 1.0, steps + 1)
    return np.stack([t, 1 - t], axis=1)
  pts = [(a, b, steps - a - b) for a in range(steps + 1) for b in range(steps + 1 - a)]
  return np.asarray(pts, np.float64) / steps


def _nnqp_exact(q, c):
  """argmin_{x>=0} ½xᵀQx + cᵀx by enumerating free sets (Q positive definite, float64)."""
  k = len(c)
  best = None
  for r in range(k + 1):
    for free in itertools.combinations(range(k), r):
      x = np.zeros(k)
      f = list(free)
      if f:
        x[f] = np.linalg.solve(q[np.ix_(f, f)], -c[f])
      grad = q @ x + c
      if np.all(x >= -1e-12) and np.all(grad >= -1e-10 * (1 + np.abs(c).max())):
        val = 0.5 * x @ q @ x + c @ x
        if best is None or val < best[0]:
          best = (val, np.maximum(x, 0))
  return best[1]


jacobians = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(2, 5),  # K
    st.integers(1, 8),  # dimension
    st.sampled_from([0.0, 1.0, 3.0]),  # spread of the gradient norms (log scale)
    st.sampled_from(["generic", "generic", "identical", "opposite", "zero"]),
)


# MGDA --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_brute_force_on_a_simplex_grid(k, seed):
  j = _jacobian(seed, k, 5, spread=1.0)
  g = j @ j.T
  grid = _simplex_grid(k, 4000 if k == 2 else 300)
  vals = np.einsum("ni,ij,nj->n", grid, g, grid)
  lam = _w(ww.mgda, g)
  assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-6
  # At least as good as every grid point, and next to the best one.
  assert lam @ g @ lam <= vals.min() * (1 + 1e-5) + 1e-7 * np.trace(g)
  np.testing.assert_allclose(lam, grid[np.argmin(vals)], atol=2.0 / (4000 if k == 2 else 300))


@pytest.mark.parametrize("k", [3, 4, 5])
def test_mgda_matches_exact_kkt_point(k):
  for seed in range(5):
    j = _jacobian(seed, k, k + 3, spread=1.5)
    g = j @ j.T / np.trace(j @ j.T)
    x = _nnqp_exact(g, -np.ones(k))  # λ* = x / Σx for positive definite G
    np.testing.assert_allclose(_w(ww.mgda, g), x / x.sum(), atol=1e-4)


def test_mgda_two_task_closed_form():
  g1, g2 = np.array([3.0, 1.0]), np.array([-1.0, 2.0])
  lam1 = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
  j = np.stack([g1, g2])
  np.testing.assert_allclose(_w(ww.mgda, j @ j.T), [lam1, 1 - lam1], rtol=1e-6)
  np.testing.assert_allclose(_w(ww.mgda, np.ones((2, 2))), [0.5, 0.5])  # identical: ½


@SETTINGS
@given(jacobians)
def test_mgda_kkt_and_common_descent(spec):
  j = _jacobian(*spec)
  g = j @ j.T
  lam = _w(ww.mgda, g)
  assert np.all(np.isfinite(lam)) and np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
  gl = g @ lam
  nu = lam @ gl
  # KKT of min λᵀGλ on Δ: (Gλ)_k >= λᵀGλ for all k, = on the support; so <Jᵀλ, g_k> >= 0.
  tol = 1e-4 * np.abs(g).max() + 1e-30
  assert np.all(gl >= nu - tol)
  assert np.all(np.abs(gl - nu)[lam > 1e-2] <= tol)


# UPGrad ------------------------------------------------------------------------------------------


def _upgrad_torchjd(j, norm_eps=1e-4, reg_eps=1e-4):
  """torchjd's UPGradWeighting (mean preference), with an exact QP in place of quadprog."""
  g = j @ j.T
  tr = np.trace(g)
  g = np.zeros_like(g) if tr < norm_eps else g / tr
  g = g + reg_eps * np.eye(len(g))
  u = np.eye(len(g)) / len(g)
  # solve_qp(G, 0, -I, -u): min ½vᵀGv s.t. v >= u, i.e. v = u + argmin_{x>=0} ½xᵀGx + xᵀGu.
  rows = [ui + _nnqp_exact(g, g @ ui) for ui in u]
  return np.sum(rows, axis=0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_upgrad_matches_torchjd(k):
  for seed in range(6):
    j = _jacobian(seed, k, 2 * k if seed % 2 else k - 1, spread=1.0)
    np.testing.assert_allclose(_w(ww.upgrad, j @ j.T), _upgrad_torchjd(j), rtol=2e-3, atol=1e-4)


@SETTINGS
@given(jacobians)
def test_upgrad_projections_satisfy_the_dual_cone_kkt(spec):
  j = _jacobian(*spec)
  g = j @ j.T
  k = len(g)
  q = g / np.trace(g) + 1e-4 * np.eye(k) if np.trace(g) > 0 else 1e-4 * np.eye(k)
  total = np.zeros(k)
  for i in range(k):
    e = np.eye(k)[i]
    v = _w(ww.upgrad, g, pref_vector=jnp.asarray(e))  # the projection of g_i alone
    total += v / k
    qv = q @ v
    scale = np.abs(q).max() * np.abs(v).max()
    assert np.all(v >= e - 1e-6)  # primal feasibility
    assert np.all(qv >= -1e-4 * scale)  # Jᵀv in the dual cone (of the regularised J)
    assert np.all(np.abs((v - e) * qv) <= 1e-4 * scale * np.abs(v).max())  # complementarity
  w = _w(ww.upgrad, g)
  np.testing.assert_allclose(w, total, rtol=1e-3, atol=1e-5)  # the mean preference is the sum/K
  # <Jᵀw, g_k> >= 0 up to the ridge: (Gw)_k >= -reg_eps·tr(G)·w_k.
  gw = g @ w
  assert np.all(gw >= -2e-4 * np.trace(g) * np.abs(w) - 1e-4 * np.abs(g).max() * np.abs(w).sum())


# PCGrad ------------------------------------------------------------------------------------------


def _pcgrad_numpy(j, order):
  """Algorithm 1 of Yu et al. (2020), as a plain loop over vectors."""
  out = np.zeros(j.shape[1])
  for i in range(len(j)):
    gi = j[i].copy()
    for t in order[i]:
      if t != i and gi @ j[t] < 0:
        gi -= (gi @ j[t]) / (j[t] @ j[t]) * j[t]
    out += gi
  return out


@pytest.mark.parametrize("k", [2, 3, 5])
def test_pcgrad_matches_numpy_loop(k):
  for seed in range(5):
    j = _jacobian(seed, k, 6, spread=1.0)
    key = jax.random.key(seed)
    order = np.asarray(ww.pcgrad_order(k, key))
    assert sorted(order[0].tolist()) == list(range(k))
    w = _w(ww.pcgrad, j @ j.T, key=key)
    np.testing.assert_allclose(w @ j, _pcgrad_numpy(j, order), rtol=1e-4, atol=1e-4)
    fixed = _w(ww.pcgrad, j @ j.T)
    np.testing.assert_allclose(fixed @ j, _pcgrad_numpy(j, [range(k)] * k), rtol=1e-4, atol=1e-4)


def test_pcgrad_removes_the_conflict_between_two_tasks():
  for seed in range(10):
    j = _jacobian(seed, 2, 4)
    if j[0] @ j[1] >= 0:
      j[1] -= 2 * (j[0] @ j[1]) / (j[0] @ j[0]) * j[0]  # make them conflict
    w = _w(ww.pcgrad, j @ j.T)
    # K = 2: w = c1 + c2 with c1 = (1, a), c2 = (b, 1), g1' = Jᵀc1, g2' = Jᵀc2.
    g1p = j[0] + (w[1] - 1) * j[1]
    g2p = j[1] + (w[0] - 1) * j[0]
    scale = np.linalg.norm(j[0]) * np.linalg.norm(j[1])
    assert abs(g1p @ j[1]) <= 1e-5 * scale and abs(g2p @ j[0]) <= 1e-5 * scale
    u = w @ j
    assert u @ j[0] >= -1e-5 * scale and u @ j[1] >= -1e-5 * scale


def test_pcgrad_leaves_agreeing_gradients_alone():
  j = np.array([[1.0, 0.2], [0.3, 1.0], [0.5, 0.5]])
  np.testing.assert_allclose(_w(ww.pcgrad, j @ j.T, key=jax.random.key(0)), [1, 1, 1])


# CAGrad ------------------------------------------------------------------------------------------


def _cagrad_libmtl(grads, calpha, rescale=1):
  """LibMTL's CAGrad.backward on a [K, n] matrix (SciPy SLSQP, as in LibMTL)."""
  k = len(grads)
  gg = grads @ grads.T
  g0_norm = np.sqrt(gg.mean() + 1e-8)
  x_start = np.ones(k) / k
  b = x_start.copy()
  c = calpha * g0_norm + 1e-8
  res = scipy_optimize.minimize(
      lambda x: x @ gg @ b + c * np.sqrt(x @ gg @ x + 1e-8), x_start,
      bounds=[(0, 1)] * k, constraints={"type": "eq", "fun": lambda x: 1 - sum(x)})
  gw = res.x @ grads
  g = grads.mean(0) + c / (np.linalg.norm(gw) + 1e-8) * gw
  return g / (1 + calpha**2) if rescale == 1 else g


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("c", [0.25, 0.5, 0.9])
def test_cagrad_matches_brute_force_on_a_simplex_grid(k, c):
  steps = 4000 if k == 2 else 300
  grid = _simplex_grid(k, steps)
  for seed in range(3):
    j = _jacobian(seed, k, 5)
    g = j @ j.T
    g0 = j.mean(0)
    r = c * np.linalg.norm(g0)
    gw = grid @ j
    vals = gw @ g0 + r * np.linalg.norm(gw, axis=1)
    best = grid[np.argmin(vals)]
    d_grid = g0 + r * (best @ j) / np.linalg.norm(best @ j)
    w = _w(ww.cagrad, g, c=c, rescale=False)
    x = w - 1.0 / k  # = (√φ/‖g_w*‖)·w*
    w_star = x / x.sum()
    val = (w_star @ j) @ g0 + r * np.linalg.norm(w_star @ j)
    assert val <= vals.min() + 1e-5 * np.trace(g)
    np.testing.assert_allclose(w @ j, d_grid, atol=0.02 * np.linalg.norm(g0))
    np.testing.assert_allclose(np.linalg.norm(w @ j - g0), r, rtol=1e-3)  # on the ball


@pytest.mark.parametrize("k", [2, 3, 4])
def test_cagrad_matches_libmtl(k):
  for seed in range(4):
    j = _jacobian(seed, k, 8)
    c = 0.5
    w = _w(ww.cagrad, j @ j.T, c=c)
    ref = _cagrad_libmtl(j, c)
    np.testing.assert_allclose(w @ j, ref, atol=2e-3 * np.linalg.norm(ref))


def test_cagrad_zero_c_is_the_mean_and_rescale_divides():
  j = _jacobian(0, 4, 6)
  np.testing.assert_allclose(_w(ww.cagrad, j @ j.T, c=0.0), np.full(4, 0.25), rtol=1e-6)
  a = _w(ww.cagrad, j @ j.T, c=0.7, rescale=False)
  b = _w(ww.cagrad, j @ j.T, c=0.7)
  np.testing.assert_allclose(b, a / (1 + 0.49), rtol=1e-6)


# IMTL-G ------------------------------------------------------------------------------------------


def _imtl_libmtl(grads):
  """LibMTL's IMTL gradient weights (differences against task 1)."""
  unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  d = grads[0:1] - grads[1:]
  u = unit[0:1] - unit[1:]
  alpha = grads[0] @ u.T @ np.linalg.inv(d @ u.T)
  return np.concatenate([[1 - alpha.sum()], alpha])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_imtl_g_equal_projections_and_libmtl(k):
  for seed in range(5):
    j = _jacobian(seed, k, k + 2, spread=1.0)
    w = _w(ww.imtl_g, j @ j.T)
    assert abs(w.sum() - 1) < 1e-5
    proj = (j / np.linalg.norm(j, axis=1, keepdims=True)) @ (w @ j)
    np.testing.assert_allclose(proj, np.full(k, proj.mean()), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(w, _imtl_libmtl(j), rtol=1e-3, atol=1e-4)


def test_imtl_g_degenerate_cases_are_finite():
  j = np.array([[1.0, 2.0], [-1.0, -2.0]])  # opposite: Σ G⁺√diag(G) = 0
  np.testing.assert_allclose(_w(ww.imtl_g, j @ j.T), [0.0, 0.0], atol=1e-6)
  j = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])  # dependent rows: pseudo-inverse
  w = _w(ww.imtl_g, j @ j.T)
  assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-5


# Nash-MTL ----------------------------------------------------------------------------------------


def _nash_reference(g):
  """Gα = 1/α in float64 with SciPy: L-BFGS-B on ½αᵀGα − Σ log α, then a root polish."""
  k = len(g)
  x0 = 1.0 / np.sqrt(np.diag(g))
  res = scipy_optimize.minimize(
      lambda a: (0.5 * a @ g @ a - np.sum(np.log(a)), g @ a - 1.0 / a), x0, jac=True,
      method="L-BFGS-B", bounds=[(1e-12, None)] * k, options={"gtol": 1e-12, "ftol": 1e-15})
  sol = scipy_optimize.root(lambda z: np.exp(z) * (g @ np.exp(z)) - 1.0, np.log(res.x))
  alpha = np.exp(sol.x)
  assert np.allclose(alpha * (g @ alpha), np.ones(k), atol=1e-8)
  return alpha


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_nash_mtl_solves_g_alpha_equals_inverse_alpha(k):
  for seed in range(5):
    j = _jacobian(seed, k, k + 3, spread=1.0)
    g = j @ j.T
    a = _w(ww.nash_mtl, g, max_norm=0.0)
    assert np.all(a > 0)
    np.testing.assert_allclose(a * (g @ a), np.ones(k), rtol=2e-3)
    np.testing.assert_allclose(a, _nash_reference(g), rtol=2e-3)


def test_nash_mtl_clips_the_update_norm():
  j = _jacobian(3, 3, 6)
  g = j @ j.T
  a = _w(ww.nash_mtl, g, max_norm=0.0)
  assert np.sqrt(a @ g @ a) == pytest.approx(np.sqrt(3), rel=1e-3)  # ‖Jᵀα‖² = K
  w = _w(ww.nash_mtl, g, max_norm=0.5)
  assert np.linalg.norm(w @ j) == pytest.approx(0.5, rel=1e-4)
  np.testing.assert_allclose(w / w.sum(), a / a.sum(), rtol=1e-5)
  np.testing.assert_allclose(_w(ww.nash_mtl, g, max_norm=10.0), a, rtol=1e-6)


def test_nash_mtl_zero_gradient_gets_the_documented_alpha():
  j = _jacobian(4, 3, 5)
  j[2] = 0.0
  g = j @ j.T
  a = _w(ww.nash_mtl, g, max_norm=0.0, reg_eps=1e-3)
  assert a[2] == pytest.approx(1.0 / (1e-3 * np.sqrt(np.trace(g))), rel=1e-5)
  # The other two solve their own system, untouched by the zero task.
  np.testing.assert_allclose(a[:2], _w(ww.nash_mtl, g[:2, :2], max_norm=0.0, reg_eps=1e-3),
                             rtol=1e-5)


@SETTINGS
@given(jacobians)
def test_nash_mtl_is_positive_and_finite(spec):
  j = _jacobian(*spec)
  g = j @ j.T
  a = _w(ww.nash_mtl, g, max_norm=0.0)
  assert np.all(np.isfinite(a)) and np.all(a > 0)
  if spec[4] == "generic" and spec[2] >= spec[1] and spec[3] <= 1.0:
    np.testing.assert_allclose(a * (g @ a), 1.0, atol=0.05)


# All weightings ----------------------------------------------------------------------------------

ALL = [ww.mgda, ww.pcgrad, ww.cagrad, ww.imtl_g, ww.upgrad, ww.nash_mtl]


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_weightings_vmap_and_traced_hyperparameters(fn):
  gs = np.stack([(lambda j: j @ j.T)(_jacobian(s, 3, 5)) for s in range(4)]).astype(np.float32)
  batched = jax.vmap(fn)(jnp.asarray(gs))
  for i in range(4):
    np.testing.assert_allclose(batched[i], fn(jnp.asarray(gs[i])), rtol=1e-4, atol=1e-6)
  hp = {"cagrad": "c", "nash_mtl": "max_norm", "mgda": "reg_eps", "upgrad": "reg_eps"}
  if fn.__name__ in hp:
    name = hp[fn.__name__]
    traced = jax.jit(lambda g, v: fn(g, **{name: v}))(jnp.asarray(gs[0]), 0.3)
    np.testing.assert_allclose(traced, fn(jnp.asarray(gs[0]), **{name: 0.3}), rtol=1e-5)
  if fn is ww.upgrad:  # the relative ridge: a static mode, a traced ε, batched
    rel = jax.jit(jax.vmap(lambda g, v: fn(g, reg_eps=v, ridge="relative"), (0, None)))
    batched = rel(jnp.asarray(gs), 0.01)
    for i in range(4):
      expect = fn(jnp.asarray(gs[i]), reg_eps=0.01, ridge="relative")
      np.testing.assert_allclose(batched[i], expect, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_weightings_are_invariant_to_the_scale_of_g(fn):
  g = (lambda j: j @ j.T)(_jacobian(7, 4, 6))
  ref = _w(fn, g)
  power = -0.5 if fn is ww.nash_mtl else 0.0  # α(sG) = α(G)/√s
  for s in [1e-12, 1e12]:
    np.testing.assert_allclose(_w(fn, s * g), ref * s**power, rtol=1e-3, atol=1e-6)


# Aggregators: the update is Jᵀw on the shared leaves ---------------------------------------------

FACTORIES = {"mgda": ww.mgda, "pcgrad": ww.pcgrad, "cagrad": ww.cagrad,
             "imtl_g": ww.imtl_g, "upgrad": ww.upgrad, "nash_mtl": ww.nash_mtl}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_aggregator_update_is_the_weighted_sum(name):
  j = _jacobian(5, 3, 7).astype(np.float32)
  grads = {"a": jnp.asarray(j[:, :3]), "b": jnp.asarray(j[:, 3:].reshape(3, 2, 2))}
  tx = getattr(wx, name)()
  kw = {"key": jax.random.key(3)} if name == "pcgrad" else {}  # PCGrad's random orders
  u, _ = tx.update(grads, tx.init(None), **kw)
  w = np.asarray(FACTORIES[name](jnp.asarray(j @ j.T), **kw), np.float64)
  if name == "nash_mtl":  # the aggregator clips to max_norm = 1
    w = w / max(1.0, np.linalg.norm(w @ j))
  flat = np.concatenate([np.ravel(u["a"]), np.ravel(u["b"])])
  np.testing.assert_allclose(flat, w @ j, rtol=1e-4, atol=1e-6)
  for s in [1e-30, 1e30]:  # no underflow/overflow in G: degree 1 in J (Nash: degree 0)
    us, _ = tx.update(jax.tree.map(lambda x, s=s: x * s, grads), tx.init(None), **kw)
    flat_s = np.concatenate([np.ravel(us["a"]), np.ravel(us["b"])]).astype(np.float64)
    expect = w @ j if name == "nash_mtl" else s * (w @ j)
    np.testing.assert_allclose(flat_s, expect, rtol=1e-3, atol=1e-6 * np.abs(expect).max())


def test_nash_mtl_aggregator_reuses_alpha_between_updates():
  j1, j2 = _jacobian(1, 2, 4), _jacobian(2, 2, 4)
  tx = wx.nash_mtl(update_weights_every=2, max_norm=0.0, num_tasks=2)
  state = tx.init(None)
  u1, state = tx.update({"w": jnp.asarray(j1, jnp.float32)}, state)
  u2, state = tx.update({"w": jnp.asarray(j2, jnp.float32)}, state)
  u3, state = tx.update({"w": jnp.asarray(j2, jnp.float32)}, state)
  a1 = _nash_reference(j1 @ j1.T)
  a2 = _nash_reference(j2 @ j2.T)
  np.testing.assert_allclose(u1["w"], a1 @ j1, rtol=2e-3)
  np.testing.assert_allclose(u2["w"], a1 @ j2, rtol=2e-3)  # the cached α on new gradients
  np.testing.assert_allclose(u3["w"], a2 @ j2, rtol=2e-3)
  with pytest.raises(ValueError, match="num_tasks"):
    wx.nash_mtl(update_weights_every=3)


PUBLIC = [getattr(ww, n) for n in ww.__all__ if callable(getattr(ww, n)) and n != "pcgrad_order"]
# A float hyperparameter of each weighting that may be traced (NaN must not pass silently).
FLOAT_HP = {"cagrad": "c", "mgda": "reg_eps", "nash_mtl": "max_norm", "upgrad": "reg_eps",
            "dualproj": "reg_eps", "fairgrad": "alpha", "gradvac": "beta", "sdmgrad": "lam",
            "modo": "gamma"}


def test_every_public_weighting_is_covered():
  assert {f.__name__ for f in PUBLIC} == {
      "cagrad", "gradvac", "imtl", "imtl_g", "mgda", "nash_mtl", "pcgrad", "upgrad",
      "aligned_mtl", "dualproj", "krum", "fairgrad", "config", "sdmgrad", "modo"}


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_nan_in_gives_nan_weights(fn):
  # A NaN Gramian used to come back as ordinary weights: uniform (MGDA, UPGrad, DualProj,
  # FairGrad, MoDo), ones (Aligned-MTL, PCGrad, GradVac), zeros (IMTL-G, IMTL, ConFIG),
  # 1e6 (Nash-MTL); only SDMGrad gave NaN.
  g = (lambda j: j @ j.T)(_jacobian(3, 3, 5)).astype(np.float32)
  bad = g.copy()
  bad[1, :] = bad[:, 1] = np.nan
  for gram in (bad, np.where(np.eye(3, dtype=bool), np.inf, g)):
    w = np.asarray(jax.jit(fn)(jnp.asarray(gram)))
    assert w.shape == (3,) and np.all(np.isnan(w)), (fn.__name__, w)
  assert np.all(np.isfinite(np.asarray(fn(jnp.asarray(g)))))
  if fn.__name__ in FLOAT_HP:  # a traced NaN hyperparameter (inject_hyperparams)
    name = FLOAT_HP[fn.__name__]
    w = jax.jit(lambda gram, v: fn(gram, **{name: v}))(jnp.asarray(g), jnp.float32(np.nan))
    assert np.all(np.isnan(np.asarray(w))), (fn.__name__, name, w)


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_low_precision_gramian_is_solved_in_float32(fn):
  # A bfloat16 or float16 Gramian used to crash nine weightings in LAPACK.
  g = (lambda j: j @ j.T)(_jacobian(4, 3, 5))
  for dtype in (jnp.bfloat16, jnp.float16):
    low = jnp.asarray(g, dtype)
    w = fn(low)
    assert w.dtype == jnp.float32, (fn.__name__, w.dtype)
    np.testing.assert_allclose(w, fn(low.astype(jnp.float32)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__name__)
def test_a_gramian_that_is_not_square_is_refused(fn):
  j = jnp.asarray(_jacobian(5, 3, 4), jnp.float32)
  for wrong in (j, j[0]):  # J instead of J Jᵀ; a vector
    with pytest.raises(ValueError, match=r"square \[K, K\] Gramian.*got shape"):
      fn(wrong)
