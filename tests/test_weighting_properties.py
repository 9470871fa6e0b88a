"""Every guarantee the Gramian weightings document, checked on adversarial Gramians in float32.

The Gramians are built in float64 from Jacobians whose row norms spread over
e^±8 (one task at e^8, one at e^-8), and which are rank-deficient, have a
nearly opposite pair (cosine −(1 − δ²/2), δ down to 1e-4), two identical rows,
or a zero row, for K in {2, 3, 5, 10}; the weightings get them rounded to
float32 (as an aggregator's float32 Gramian would be). Every property is then
evaluated in float64 on the float64 Jacobian, so the weights are judged by
what they do, not by what the code computes about them.

The conflict of an update ``u = Jᵀw`` with task k is measured by
``κ_k = −<g_k, u> / (‖g_k‖·Σ_j |w_j|‖g_j‖)``: the cosine between ``g_k`` and
``u`` when no contributions cancel, and at most 1 in any case. A
no-conflict guarantee is ``κ_k <= 0``.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import weightax as wx
from weightax import weightings as ww

KS = (2, 3, 5, 10)
KINDS = ("random", "rank", "opposite", "identical", "zero")
SEEDS = range(12)
SPREAD = 8.0
EPS32 = float(np.finfo(np.float32).eps)


def adversarial_jacobian(seed, k, kind, log_delta=(-4.0, -1.0)):
  rng = np.random.default_rng([seed, k, KINDS.index(kind)])
  n = int(rng.integers(k + 1, 2 * k + 3))
  if kind == "rank":
    r = int(rng.integers(1, k))
    j = rng.normal(size=(k, r)) @ rng.normal(size=(r, n))
  else:
    j = rng.normal(size=(k, n))
  j /= np.linalg.norm(j, axis=1, keepdims=True)
  log_norm = rng.uniform(-SPREAD, SPREAD, size=k)
  log_norm[:2] = rng.permutation([-SPREAD, SPREAD])
  if kind == "opposite":
    delta = 10.0 ** rng.uniform(*log_delta)
    e = rng.normal(size=n)
    e -= (e @ j[0]) * j[0]
    e /= np.linalg.norm(e)
    j[1] = -(j[0] + delta * e) / np.sqrt(1 + delta * delta)
  elif kind == "identical":
    j[1] = j[0]
  elif kind == "zero":
    j[-1] = 0.0
  return (j * np.exp(log_norm)[:, None]).astype(np.float32).astype(np.float64)


@functools.cache
def cases(k, log_delta=(-4.0, -1.0)):
  """[(kind, J)] and the stacked float32 Gramians, for one K (one compiled program per method)."""
  js = [(kind, adversarial_jacobian(s, k, kind, log_delta)) for kind in KINDS for s in SEEDS]
  return js, jnp.asarray(np.stack([j @ j.T for _, j in js]), jnp.float32)


@functools.cache
def weights(name, k, **kw):
  fn = getattr(ww, name)
  kw = dict(kw)
  js, gs = cases(k)
  return np.asarray(jax.vmap(lambda g: fn(g, **kw))(gs), np.float64)


def conflict(j, w):
  """κ_k for every task (0 for a zero gradient, which conflicts with nothing)."""
  norms = np.linalg.norm(j, axis=1)
  scale = np.sum(np.abs(w) * norms)
  ip = j @ (w @ j)
  return np.where(norms > 0, -ip / np.where(norms > 0, norms, 1.0) / max(scale, 1e-300), 0.0)


def worst_conflict(name, k, **kw):
  js, _ = cases(k)
  return max(conflict(j, w).max() for (_, j), w in zip(js, weights(name, k, **kw), strict=True))


# No-conflict guarantees -------------------------------------------------------------------------


@pytest.mark.parametrize("k", KS)
def test_mgda_is_a_common_descent_direction(k):
  # KKT with the ridge: (Ĝλ)_k >= −ε·Ĝ_kk·λ_k, so κ_k <= ε = 1e-6; rounding adds < 1e-5.
  js, _ = cases(k)
  for (_, j), w in zip(js, weights("mgda", k), strict=True):
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
    assert conflict(j, w).max() <= 1e-6 + 1e-5


def test_pcgrad_removes_every_conflict_for_two_tasks_only():
  js, _ = cases(2)
  for (_, j), w in zip(js, weights("pcgrad", 2), strict=True):
    assert conflict(j, w).max() <= 1e-5
  assert max(worst_conflict("pcgrad", k) for k in (3, 5, 10)) > 0.01  # K > 2: "no"


@pytest.mark.parametrize("name", ["cagrad", "imtl_g"])
def test_methods_documented_without_the_guarantee_do_conflict(name):
  assert max(worst_conflict(name, k) for k in (2, 3)) > 0.1


@pytest.mark.parametrize("k", KS)
def test_nash_mtl_has_no_conflict(k):
  # (Ĝ + ε·diag Ĝ)α = 1/α gives <g_k, Jᵀα> ∝ 1/α_k − ε·Ĝ_kk·α_k, positive on every case here.
  assert worst_conflict("nash_mtl", k, max_norm=0.0) <= 1e-5


# UPGrad: the two ridges --------------------------------------------------------------------------

RIDGE = 1e-4


@pytest.mark.parametrize("k", KS)
def test_upgrad_trace_ridge_bound_holds(k):
  # <g_k, u> >= −ε·tr(G)·w_k, with float32 rounding below 1e-5·‖g_k‖·Σ_j w_j‖g_j‖; w >= 1/K.
  js, _ = cases(k)
  for (_, j), w in zip(js, weights("upgrad", k), strict=True):
    norms = np.linalg.norm(j, axis=1)
    bound = -RIDGE * np.sum(norms**2) * w - 1e-5 * norms * np.sum(w * norms)
    assert np.all(j @ (w @ j) >= bound)
    assert np.all(w >= 1.0 / k - 1e-6)


def _upgrad_trace_float64(j, eps=RIDGE):
  """torchjd's UPGrad in float64: v_i = argmin_{v >= e_i/K} vᵀ(G/tr G + εI)v, each QP by
  enumerating the active sets (the KKT point with v >= e_i/K and Qv >= 0 off them)."""
  k = len(j)
  q = j @ j.T / np.trace(j @ j.T) + eps * np.eye(k)
  total = np.zeros(k)
  for i in range(k):
    lo = np.eye(k)[i] / k
    for r in range(k + 1):
      for free in itertools.combinations(range(k), r):
        f = list(free)
        b = [x for x in range(k) if x not in f]
        v = lo.copy()
        if f:
          v[f] = np.linalg.solve(q[np.ix_(f, f)], -q[np.ix_(f, b)] @ lo[b])
        if np.all(v >= lo - 1e-12) and np.all((q @ v)[b] >= -1e-12):
          break
      else:
        continue
      break
    total += v
  return total


def test_upgrad_trace_ridge_can_point_against_a_small_task():
  # The example, from torchjd's definition in float64: <g_3, u> = −0.0043 (cosine −0.92).
  j = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.01, -0.01, 0.003]])
  ref = _upgrad_trace_float64(j)
  assert (j @ (ref @ j))[2] == pytest.approx(-0.0043, abs=5e-5)
  w = np.asarray(ww.upgrad(jnp.asarray(j @ j.T, jnp.float32)), np.float64)
  np.testing.assert_allclose(w, ref, rtol=1e-3)
  # On adversarial Gramians the documented worst case: κ = 1.00, an update straight
  # against a task whose squared norm is far below ε·tr(G).
  assert max(worst_conflict("upgrad", k) for k in KS) >= 0.995


@pytest.mark.parametrize("k", KS)
def test_upgrad_relative_ridge_conflicts_by_at_most_eps(k):
  js, _ = cases(k)
  for (_, j), w in zip(js, weights("upgrad", k, ridge="relative"), strict=True):
    norms = np.linalg.norm(j, axis=1)
    # <g_k, u> >= −ε·‖g_k‖²·w_k, i.e. κ_k <= ε; float32 rounding below 1e-5.
    bound = -RIDGE * norms**2 * w - 1e-5 * norms * np.sum(w * norms)
    assert np.all(j @ (w @ j) >= bound)
    assert conflict(j, w).max() <= RIDGE + 1e-5
    assert np.all(w >= 1.0 / k - 1e-6)
  j = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.01, -0.01, 0.003]])
  w = np.asarray(ww.upgrad(jnp.asarray(j @ j.T, jnp.float32), ridge="relative"), np.float64)
  assert (j @ (w @ j))[2] >= -RIDGE * 2.09e-4 * w[2]


@pytest.mark.parametrize("k", [3, 5])
def test_upgrad_relative_ridge_solves_each_projection(k):
  """KKT of min vᵀ(Ĝ + ε·diag Ĝ)v s.t. v >= e_i, in y = D^½v (float64): they imply the optimum."""
  js, _ = cases(k)
  fn = jax.jit(jax.vmap(lambda g, p: ww.upgrad(g, pref_vector=p, ridge="relative"), (None, 0)))
  for _, j in js[:: max(1, len(js) // 20)]:
    g = j @ j.T
    d = np.diag(g)
    if np.any(d == 0):
      continue
    r = np.sqrt(d)
    c = g / np.outer(r, r) + RIDGE * np.eye(k)
    vs = np.asarray(fn(jnp.asarray(g, jnp.float32), jnp.eye(k)), np.float64)
    for i in range(k):
      y = r * vs[i] / r[i]  # the problem for e_i, scaled so that y_i >= 1
      cy = c @ y
      assert y[i] >= 1 - 1e-5 and np.all(y >= -1e-6)
      assert np.all(cy >= -1e-4 * np.abs(y).max())
      slack = y - np.eye(k)[i]
      assert np.all(np.abs(slack * cy) <= 1e-4 * np.abs(y).max() ** 2)


def test_upgrad_rejects_an_unknown_ridge():
  with pytest.raises(ValueError, match="ridge"):
    ww.upgrad(jnp.eye(2), ridge="Trace")
  with pytest.raises(ValueError, match="ridge"):
    wx.upgrad(ridge="diag")


# IMTL-G against float64 --------------------------------------------------------------------------

IMTL_CUTOFF = 16  # the code's IMTL_RANK_RTOL: eigenvalues of C below 16·K·eps32·λ_max are dropped


def imtl_reference(g):
  """float64: (w ∝ D^-½C⁺1 with zero-gradient tasks out, cond of C's kept part), or None.

  None near the rank cut-off, where float32 cannot decide the rank.
  """
  k = len(g)
  d = np.diag(g).copy()
  alive = d > 0
  r = np.sqrt(np.where(alive, d, 1.0))
  c = np.where(np.outer(alive, alive), g / np.outer(r, r), 0.0)
  lam, q = np.linalg.eigh(c)
  tol = IMTL_CUTOFF * k * EPS32 * lam.max()
  nonzero = np.abs(lam) > 1e-300
  if np.any(np.abs(np.log(np.abs(lam[nonzero]) / tol)) < np.log(30)):
    return None  # within a factor 30 of the cut-off: float32 cannot decide the rank
  keep = lam > tol
  coef = q.T @ alive.astype(float)
  v = q[:, keep] @ (coef[keep] / lam[keep])
  if np.linalg.norm(coef[keep]) < 1e-2 * np.sqrt(alive.sum()):
    return None  # (nearly) no direction with equal projections: undefined
  w = np.where(alive, v / r, 0.0)
  return w / w.sum(), lam[keep].max() / lam[keep].min()


@pytest.mark.parametrize("k", KS)
def test_imtl_g_matches_float64_across_the_norm_spread(k):
  """The spread of the norms costs nothing: the error is that of C's conditioning alone.

  Rounding G to float32 moves the cosines by a few eps, so ‖δC‖ <~ 3·K·eps and the
  solution moves by about cond(C)·‖δC‖ (cond over the kept eigenvalues); the
  tolerance is 100·K·eps·cond (measured worst: 30·K·eps·cond, 3.2e-3 at K = 10 with
  cond = 88). The code before this test zeroed every task whose norm was below ~1/650
  of the largest (errors ~1e7 here).
  """
  js, gs = cases(k, (-1.5, -0.5))
  ws = np.asarray(jax.vmap(ww.imtl_g)(gs), np.float64)
  checked = 0
  for (_, j), w in zip(js, ws, strict=True):
    out = imtl_reference(j @ j.T)
    if out is None:
      continue
    ref, cond = out
    checked += 1
    tol = max(1e-5, 100 * k * EPS32 * cond)
    d_ref = ref @ j
    assert np.linalg.norm(w @ j - d_ref) <= tol * np.linalg.norm(d_ref)
    contrib = np.linalg.norm(j, axis=1)  # ‖g_k‖·w_k: what each task puts into the update
    assert np.max(np.abs((w - ref) * contrib)) <= tol * np.max(np.abs(ref * contrib))
  assert checked >= 0.8 * len(js)


def test_imtl_g_keeps_a_small_task():
  # Orthogonal gradients of norms 1 and 1e-3: w ∝ 1/‖g_k‖ = (1, 1000)/1001.
  w = np.asarray(ww.imtl_g(jnp.diag(jnp.array([1.0, 1e-6]))), np.float64)
  np.testing.assert_allclose(w, [1 / 1001, 1000 / 1001], rtol=1e-5)
  tx = wx.imtl_g()
  u, _ = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 1e-3]])}, tx.init(None))
  np.testing.assert_allclose(u["w"], [1 / 1001, 1 / 1001], rtol=1e-5)
  for ratio in [1e-5, 1e-7]:  # norm ratios up to 1e7
    w = np.asarray(ww.imtl_g(jnp.diag(jnp.array([1.0, ratio**2]))), np.float64)
    np.testing.assert_allclose(w, [ratio / (1 + ratio), 1 / (1 + ratio)], rtol=1e-5)


# Nash-MTL against float64 ------------------------------------------------------------------------


def nash_reference(g, eps):
  """float64 α of (Ĝ + ε·diag Ĝ)α = 1/α (Ĝ = G/tr G), rescaled to G; Newton on log(√Ĝ_kk·α)."""
  tr = np.trace(g)
  gh = g / tr
  r = np.sqrt(np.diag(gh))
  c = gh / np.outer(r, r) + eps * np.eye(len(g))
  z = optimize.minimize(
      lambda z: (0.5 * np.exp(z) @ c @ np.exp(z) - z.sum(), np.exp(z) * (c @ np.exp(z)) - 1),
      np.zeros(len(g)), jac=True, method="BFGS", options={"gtol": 1e-10}).x
  for _ in range(50):
    b = np.exp(z)
    z = z - np.linalg.solve(np.diag(b * (c @ b)) + b[:, None] * c * b[None, :], b * (c @ b) - 1)
  assert np.abs(np.exp(z) * (c @ np.exp(z)) - 1).max() < 1e-7
  return np.exp(z) / r / np.sqrt(tr)


@pytest.mark.parametrize("k", [3, 10])
def test_nash_mtl_accuracy_is_as_documented(k):
  """Well-posed cases to 1e-5; ridge-determined ones to 0.25 at ε = 1e-6, 2e-3 at ε = 1e-4."""
  js, gs = cases(k)
  for eps, tol_rank in [(1e-6, 0.25), (1e-4, 2e-3)]:
    alphas = np.asarray(jax.vmap(lambda g, e=eps: ww.nash_mtl(g, max_norm=0.0, reg_eps=e))(gs))
    for (kind, j), a in zip(js, alphas, strict=True):
      if kind == "zero":
        continue
      ref = nash_reference(j @ j.T, eps)
      err = np.max(np.abs(a / ref - 1))
      assert err <= (tol_rank if kind in ("rank", "opposite") else 1e-5), (kind, err)


# Zero gradients, as documented ------------------------------------------------------------------


def test_zero_gradients_get_the_documented_weights():
  j = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 0.5, 1.0], [0.0, 0.0, 0.0]])
  g = jnp.asarray(j @ j.T, jnp.float32)
  # MGDA: 0 is in the hull, so λ is uniform over the zero-gradient tasks.
  np.testing.assert_allclose(ww.mgda(g), [0.0, 0.5, 0.0, 0.5], atol=1e-7)
  np.testing.assert_allclose(ww.mgda(g[:2, :2]), [0.0, 1.0], atol=1e-7)
  # IMTL-G: weight 0, and the others as without them.
  w = np.asarray(ww.imtl_g(g))
  np.testing.assert_allclose(w[[1, 3]], 0.0, atol=0)
  np.testing.assert_allclose(w[[0, 2]], ww.imtl_g(g[::2, ::2]), rtol=1e-6)
  # UPGrad, relative ridge: w_k = u_k = 1/K for a zero gradient.
  w = np.asarray(ww.upgrad(g, ridge="relative"))
  np.testing.assert_allclose(w[[1, 3]], 0.25, rtol=1e-6)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_relative_ridge_protects_down_to_the_documented_floor(name):
  # The docstrings: κ_k <= ε for every task down to ‖g_k‖ = 1.1e-19·max_j‖g_j‖ (√ of
  # float32's smallest normal), and a smaller task counts as a zero gradient. A task at
  # cosine −0.9 against a unit one, at norm ratios either side of the floor.
  fn = getattr(ww, name)
  direction = np.array([-0.9, np.sqrt(1 - 0.81)])
  for ratio in (3e-19, 1e-15, 1e-6):
    j = np.array([[1.0, 0.0], ratio * direction])  # float64 rows, float32 Gramian
    w = np.asarray(fn(jnp.asarray(j @ j.T, jnp.float32), reg_eps=RIDGE, ridge="relative"),
                   np.float64)
    assert conflict(j, w)[1] <= RIDGE + 1e-5, (ratio, w)
  j = np.array([[1.0, 0.0], 5e-20 * direction])
  below = fn(jnp.asarray(j @ j.T, jnp.float32), reg_eps=RIDGE, ridge="relative")
  zero = fn(jnp.asarray(np.diag([1.0, 0.0]), jnp.float32), reg_eps=RIDGE, ridge="relative")
  np.testing.assert_allclose(below, zero, rtol=1e-6)
  assert conflict(j, np.asarray(below, np.float64))[1] > 0.1  # not protected any more


def test_upgrad_aggregator_passes_the_relative_ridge():
  j = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.01, -0.01, 0.003]], np.float32)
  for ridge, conflicts in [("trace", True), ("relative", False)]:
    tx = wx.upgrad(ridge=ridge)
    u, _ = tx.update({"w": jnp.asarray(j)}, tx.init(None))
    w = np.asarray(ww.upgrad(jnp.asarray(j @ j.T), ridge=ridge))
    np.testing.assert_allclose(u["w"], w @ j, rtol=1e-5, atol=1e-8)
    assert (float(j[2].astype(np.float64) @ np.asarray(u["w"], np.float64)) < 0) == conflicts


# The numbers the docstrings quote: `python tests/test_weighting_properties.py` ------------------


def measure() -> None:
  """Prints the worst conflicts and accuracies on the cases above (float32, vs float64)."""
  print("worst conflict κ over", len(cases(2)[0]), "Jacobians per K, K in", KS)
  for label, name, kw in [("mgda", "mgda", {}), ("pcgrad K=2", "pcgrad", {}),
                          ("upgrad trace", "upgrad", {}),
                          ("upgrad relative", "upgrad", {"ridge": "relative"}),
                          ("nash_mtl", "nash_mtl", {"max_norm": 0.0})]:
    ks = (2,) if name == "pcgrad" else KS
    print(f"  {label:16s} {max(worst_conflict(name, k, **kw) for k in ks):.3g}")
  worst = 0.0
  for k in KS:
    js, gs = cases(k, (-1.5, -0.5))
    ws = np.asarray(jax.vmap(ww.imtl_g)(gs), np.float64)
    for (_, j), w in zip(js, ws, strict=True):
      out = imtl_reference(j @ j.T)
      if out is not None:
        d_ref = out[0] @ j
        worst = max(worst, np.linalg.norm(w @ j - d_ref) / np.linalg.norm(d_ref))
  print(f"imtl_g: worst relative error of the update vs float64: {worst:.2g}")
  for eps in (1e-6, 1e-5, 1e-4):
    errs: dict[str, float] = {}
    for k in KS:
      js, gs = cases(k)
      al = np.asarray(jax.vmap(lambda g, e=eps: ww.nash_mtl(g, max_norm=0.0, reg_eps=e))(gs))
      for (kind, j), a in zip(js, al, strict=True):
        if kind != "zero":
          err = float(np.max(np.abs(a / nash_reference(j @ j.T, eps) - 1)))
          errs[kind] = max(errs.get(kind, 0.0), err)
    print(f"nash_mtl reg_eps={eps:g}: worst relative error of α vs float64:",
          {kind: float(f"{e:.2g}") for kind, e in errs.items()})


if __name__ == "__main__":
  measure()
