"""SDMGrad and MoDo: parity with float64 transcriptions of the algorithms over several steps
with independent batches, the documented one-batch fallback, and mtl.fit's extra batches."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax.aggregators._base import make_aggregator

# ------------------------------------------------------------------ float64 references


def _proj_simplex(y):
  """LibMTL MoDo's ``_projection2simplex`` (a different loop from ours), in float64."""
  m = len(y)
  s = np.sort(y)[::-1]
  tmpsum, tmax_f = 0.0, (np.sum(y) - 1.0) / m
  for i in range(m - 1):
    tmpsum += s[i]
    tmax = (tmpsum - 1.0) / (i + 1.0)
    if tmax > s[i + 1]:
      tmax_f = tmax
      break
  return np.maximum(y - tmax_f, 0.0)


def _proj_simplex_exact(y):
  """The same projection in exact rational arithmetic (a list of Fractions)."""
  m = len(y)
  s = sorted(y, reverse=True)
  tmpsum, tmax_f = Fraction(0), (sum(y) - 1) / m
  for i in range(m - 1):
    tmpsum += s[i]
    tmax = (tmpsum - 1) / (i + 1)
    if tmax > s[i + 1]:
      tmax_f = tmax
      break
  return [max(v - tmax_f, Fraction(0)) for v in y]


def sdmgrad_ref(zeta, xi1, xi2, w, lam=0.3, lr=10.0, n=20, mom=0.5):
  """One SDMGrad update as LibMTL's ``SDMGrad.backward`` (torch SGD with momentum on w)."""
  gg = xi1 @ xi2.T
  scale = np.mean(np.sqrt(np.maximum(np.diag(gg), 0.0)))
  gg = gg / (scale**2 + 1e-8)
  g_mean = gg.mean(axis=1)
  buf = None
  for _ in range(n):
    grad = gg @ w + lam * g_mean
    buf = grad if buf is None else mom * buf + grad
    w = _proj_simplex(w - lr * buf)
  u = ((zeta * w[:, None]).sum(0) + lam * zeta.mean(0)) / (1 + lam)
  return u, w


def modo_ref(g1, g2, g3, lam, gamma=1e-3, rho=0.1):
  """One MoDo update as LibMTL's ``MoDo.backward``: λ from batches 1, 2; update on batch 3."""
  lam = _proj_simplex(lam - gamma * (g1 @ (g2.T @ lam) + rho * lam))
  return lam @ g3, lam


def _batches(seed, steps, k, n=7, noise=0.5, scale=1.0, dtype=np.float32):
  """[steps, 3, K, n] Jacobians: a drifting mean plus independent noise per batch."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(steps, 1, k, n)) * np.exp(rng.uniform(-1, 1, size=(1, 1, k, 1)))
  return (scale * (mean + noise * rng.normal(size=(steps, 3, k, n)))).astype(dtype)


def _run(tx, js, split=True):
  """Steps of ``tx`` on ``js`` [T, 3, K, n] (batch 0 the update's, 1 and 2 the extras)."""
  state = tx.init(None)
  us, ws = [], []
  step = jax.jit(lambda g, e1, e2, s: tx.update({"w": g}, s, extra_task_grads=(
      {"w": e1}, {"w": e2})))
  plain = jax.jit(lambda g, s: tx.update({"w": g}, s))
  for j in js:
    u, state = step(j[0], j[1], j[2], state) if split else plain(j[0], state)
    us.append(np.asarray(u["w"], np.float64))
    ws.append(np.asarray(state.weights, np.float64))
  return np.stack(us), np.stack(ws), state


def _sdm_ref_run(js, **kw):
  k = js.shape[2]
  w = np.full(k, 1.0 / k)
  us, ws = [], []
  for j in js.astype(np.float64):
    u, w = sdmgrad_ref(j[0], j[1], j[2], w, **kw)
    us.append(u)
    ws.append(w)
  return np.stack(us), np.stack(ws)


def _modo_ref_run(js, **kw):
  k = js.shape[2]
  lam = np.full(k, 1.0 / k)
  us, ws = [], []
  for j in js.astype(np.float64):
    u, lam = modo_ref(j[1], j[2], j[0], lam, **kw)
    us.append(u)
    ws.append(lam)
  return np.stack(us), np.stack(ws)


# ------------------------------------------------------------------ parity


# With the default η = 10 the inner iteration amplifies rounding: in float64, relative input
# perturbations of 1e-7 move the K = 5 weights below by 1.6e-3 after 4 steps. So η = 10 is
# compared on K = 2, 3 (well conditioned here) and η = 0.3 on every K.
@pytest.mark.parametrize(("k", "lr"), [(2, 0.3), (3, 0.3), (5, 0.3), (2, 10.0), (3, 10.0)])
def test_sdmgrad_matches_the_algorithm_over_steps(k, lr):
  js = _batches(k, steps=6, k=k)
  u, w, state = _run(wx.sdmgrad(learning_rate=lr, num_tasks=k), js)
  u_ref, w_ref = _sdm_ref_run(js, lr=lr)
  np.testing.assert_allclose(w, w_ref, atol=2e-4)
  scale = np.abs(js).max()
  np.testing.assert_allclose(u, u_ref, atol=2e-4 * scale * k)
  lam = 0.3
  np.testing.assert_allclose(state.task_weights, (w_ref[-1] + lam / k) / (1 + lam), atol=2e-4)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("gamma", [1e-3, 0.05])
def test_modo_matches_the_algorithm_over_steps(k, gamma):
  js = _batches(10 + k, steps=6, k=k)
  u, w, state = _run(wx.modo(gamma=gamma, num_tasks=k), js)
  u_ref, w_ref = _modo_ref_run(js, gamma=gamma)
  assert np.abs(w_ref[-1] - 1.0 / k).max() > 1e-3  # λ moved: the test can see the steps
  np.testing.assert_allclose(w, w_ref, atol=1e-5)
  np.testing.assert_allclose(u, u_ref, atol=1e-5 * np.abs(js).max() * k)
  np.testing.assert_allclose(state.task_weights, w_ref[-1], atol=1e-5)


def test_parity_on_adversarial_jacobians():
  """Nearly opposite pairs, norms over e^±6 and a zero task, both methods, several steps."""
  rng = np.random.default_rng(5)
  js = _batches(7, steps=5, k=3)
  js[:, :, 1] = -js[:, :, 0] * 1.5 + 1e-2 * rng.normal(size=js[:, :, 0].shape)
  js[:, :, 2] *= np.exp(6.0)
  js = js.astype(np.float32)
  u, w, _ = _run(wx.modo(gamma=1e-4, num_tasks=3), js)
  u_ref, w_ref = _modo_ref_run(js, gamma=1e-4)
  np.testing.assert_allclose(w, w_ref, atol=1e-5)
  u, w, _ = _run(wx.sdmgrad(learning_rate=0.3, num_tasks=3), js)
  u_ref, w_ref = _sdm_ref_run(js, lr=0.3)
  np.testing.assert_allclose(w, w_ref, atol=3e-4)
  zero = js.copy()
  zero[:, :, 2] = 0.0
  u, w, _ = _run(wx.sdmgrad(num_tasks=3), zero)
  u_ref, w_ref = _sdm_ref_run(zero.astype(np.float64))
  np.testing.assert_allclose(w, w_ref, atol=2e-4)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_extreme_scales_match_float64(scale):
  """float32 gradients of 1e±30: the cross-Gramian is rescaled by powers of two, and MoDo's
  step takes the exact limit where γ·J₁J₂ᵀλ would overflow (float64 holds 1e60)."""
  js = _batches(3, steps=3, k=3, scale=scale)
  u, w, _ = _run(wx.sdmgrad(learning_rate=0.3, num_tasks=3), js)
  _, w_ref = _sdm_ref_run(js.astype(np.float64), lr=0.3)
  np.testing.assert_allclose(w, w_ref, atol=2e-4)
  assert np.all(np.isfinite(u))
  u, w, _ = _run(wx.modo(gamma=0.1, num_tasks=3), js)
  # float64's projection loses λ next to entries of 1e57: the reference runs in exact
  # rational arithmetic on the float32 inputs instead.
  lam = [Fraction(1, 3)] * 3
  gamma, rho = Fraction(0.1), Fraction(0.1)
  for t, j in enumerate(js):
    j1, j2 = ([[Fraction(float(x)) for x in row] for row in j[i]] for i in (1, 2))
    j2l = [sum(j2[a][c] * lam[a] for a in range(3)) for c in range(len(j2[0]))]
    d = [sum(j1[a][c] * j2l[c] for c in range(len(j2l))) for a in range(3)]
    lam = _proj_simplex_exact([lam[a] - gamma * (d[a] + rho * lam[a]) for a in range(3)])
    np.testing.assert_allclose(w[t], [float(x) for x in lam], atol=1e-6)
  assert np.all(np.isfinite(u))
  if scale > 1:  # a huge step: all weight on the task of smallest (J₁J₂ᵀλ)_k
    assert set(np.unique(w)) <= {0.0, 1.0}


def test_pure_weightings_are_one_step_from_the_centre():
  j = _batches(21, steps=1, k=3)[0].astype(np.float64)
  g = j[1] @ j[2].T
  w0 = np.full(3, 1.0 / 3)
  _, w_ref = sdmgrad_ref(j[0], j[1], j[2], w0, lr=0.3)
  got = wx.weightings.sdmgrad(jnp.asarray(g, jnp.float32), learning_rate=0.3)
  np.testing.assert_allclose(got, (w_ref + 0.3 / 3) / 1.3, atol=2e-4)
  _, lam = modo_ref(j[1], j[2], j[0], w0, gamma=0.05)
  np.testing.assert_allclose(wx.weightings.modo(jnp.asarray(g, jnp.float32), gamma=0.05), lam,
                             atol=1e-6)


# ------------------------------------------------------------------ the one-batch fallback


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_without_extra_batches_the_one_batch_is_used_twice(name):
  """The documented fallback: no extra_task_grads is extra_task_grads=(J, J), i.e. the
  reference algorithm with all three batches equal."""
  js = _batches(30, steps=4, k=3)
  same = np.repeat(js[:, :1], 3, axis=1)
  kw = {"learning_rate": 0.3} if name == "sdmgrad" else {"gamma": 0.05}
  make = lambda: getattr(wx, name)(num_tasks=3, **kw)  # noqa: E731
  u_plain, w_plain, _ = _run(make(), js, split=False)
  u_twice, w_twice, _ = _run(make(), same)
  np.testing.assert_array_equal(w_plain, w_twice)
  np.testing.assert_array_equal(u_plain, u_twice)
  ref = _sdm_ref_run(same, lr=0.3) if name == "sdmgrad" else _modo_ref_run(same, gamma=0.05)
  np.testing.assert_allclose(w_plain, ref[1], atol=2e-4)
  # ... and it differs from the independent batches' weights (the test could fail).
  _, w_split, _ = _run(make(), js)
  assert np.abs(w_split - w_plain).max() > 1e-3


def test_one_batch_gramian_is_biased_and_the_cross_product_is_not():
  """The docstrings' claim: E[J Jᵀ] = ∇F∇Fᵀ + Cov, E[J₁J₂ᵀ] = ∇F∇Fᵀ (independent J₁, J₂)."""
  from weightax.aggregators.sdmgrad import scaled_cross_gramian

  rng = np.random.default_rng(0)
  k, n, draws, sigma = 2, 50, 4000, 0.3
  mean = rng.normal(size=(k, n)).astype(np.float32)
  truth = mean.astype(np.float64) @ mean.T
  noise = sigma * rng.normal(size=(draws, 2, k, n)).astype(np.float32)

  def both(e):
    j1, j2 = {"w": mean + e[0]}, {"w": mean + e[1]}
    a, x = scaled_cross_gramian(j1, j2)
    b, y = scaled_cross_gramian(j1, j1)
    return jnp.ldexp(a, x), jnp.ldexp(b, y)

  cross, same = jax.jit(jax.vmap(both))(jnp.asarray(noise))
  cross, same = np.asarray(cross, np.float64).mean(0), np.asarray(same, np.float64).mean(0)
  bias = sigma**2 * n * np.eye(k)  # the covariance of the noise, summed over coordinates
  se = 4 * sigma * np.sqrt(np.diag(truth)).max() * 2 / np.sqrt(draws) + 4 * sigma**2 * np.sqrt(
      n / draws)
  assert np.abs(cross - truth).max() < se
  assert np.abs(same - truth - bias).max() < se
  assert bias.max() > 10 * se


def test_extra_task_grads_must_match():
  tx = wx.sdmgrad(num_tasks=2)
  g = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match="tuple of 2 Jacobians"):
    tx.update(g, tx.init(None), extra_task_grads=(g,))
  with pytest.raises(ValueError, match=r"extra_task_grads\[1\] must be shaped like"):
    tx.update(g, tx.init(None), extra_task_grads=(g, {"w": jnp.ones((2, 4))}))
  tx = wx.modo(num_tasks=2)
  with pytest.raises(ValueError, match="tuple of 2 Jacobians"):
    tx.update(g, tx.init(None), extra_task_grads=g)
  assert wx.sdmgrad(num_tasks=2).num_extra_batches == wx.modo(num_tasks=2).num_extra_batches == 2


# ------------------------------------------------------------------ mtl.fit's extra batches


def _problem():
  x = jnp.linspace(-1.0, 1.0, 64)
  y = jnp.stack([2.0 * x + 0.3 * jnp.sin(7 * x), -x + 0.2 * jnp.cos(5 * x)], axis=1)
  data = (x, y)

  def task_losses(p, batch, key):
    xb, yb = batch
    h = jnp.tanh(xb[:, None] * p["trunk"]["w"] + p["trunk"]["b"])  # [B, 3]
    pred = h @ p["heads"]  # [B, 2]
    drop = jax.random.bernoulli(key, 0.9, (2,)).astype(jnp.float32)  # uses the loss key
    return jnp.mean((pred - yb) ** 2, axis=0) * (1.0 + 0.01 * drop), {}

  params = {"trunk": {"w": jnp.array([1.0, -0.5, 0.3]), "b": jnp.zeros(3)},
            "heads": jnp.full((3, 2), 0.2)}
  return task_losses, params, data


def _spy(n=2, slots=3):
  """An aggregator (mean of the tasks) whose state keeps how many extra Jacobians it got and
  the Jacobians themselves (main first, then the extras, zero-padded to ``slots``)."""

  def init(params):
    zeros = jax.tree.map(lambda x: jnp.zeros((2,) + x.shape, x.dtype), params)
    return jnp.zeros((), jnp.int32), (zeros,) * (1 + slots)

  def update(g, state, params=None, *, extra_task_grads=None, **kw):
    del params, kw
    extra = tuple(extra_task_grads or ())
    pad = state[1][len(extra) + 1:]
    u = jax.tree.map(lambda x: jnp.mean(x, 0), g)
    return u, (jnp.asarray(len(extra), jnp.int32), (g,) + extra + pad)

  tx = make_aggregator(init, update)
  tx.num_extra_batches = n
  return tx


def _spy_fit(n=2):
  task_losses, params, data = _problem()
  return task_losses, params, data, _spy(n)


@pytest.mark.filterwarnings("ignore:mtl.fit")
def test_fit_feeds_independent_batches_as_documented():
  task_losses, params, data, tx = _spy_fit()
  shared = {"trunk": True, "heads": False}
  key = jax.random.key(4)
  res = wx.mtl.fit(task_losses, params, tx, optax.sgd(0.0), data, key=key, num_steps=1,
                   batch_size=8, shared=shared)
  count, (main, e1, e2, _) = res.aggregator_state
  assert int(count) == 2
  # the task-specific leaves are masked out of the extras as of the main Jacobian
  assert jax.tree.structure(e1) == jax.tree.structure(main) == jax.tree.structure(e2)
  assert e1["heads"] is None and main["heads"] is None
  # independent batches: three different Jacobians
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (main, e1, e2)]
  assert min(np.abs(a - b).max() for a, b in [(flat[0], flat[1]), (flat[0], flat[2]),
                                              (flat[1], flat[2])]) > 1e-3
  # each is the Jacobian of the documented batch and loss key: fold_in(step key, 1), split
  step_key = jax.random.split(key, 1)[0]
  jacobian = jax.jit(
      lambda p, b, k: wx.value_and_jacobian(lambda q: task_losses(q, b, k)[0])(p)[1])
  for got, ke in zip((e1, e2), jax.random.split(jax.random.fold_in(step_key, 1), 2),
                     strict=True):
    kb, kl = jax.random.split(ke)
    batch = wx.sample_batch(data, kb, 8)
    want = jacobian(params, batch, kl)
    np.testing.assert_allclose(got["trunk"]["w"], want["trunk"]["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["trunk"]["b"], want["trunk"]["b"], rtol=1e-5, atol=1e-6)
  # the step's own batch is unchanged by the extras (same keys as without them)
  kb, kl, _ = jax.random.split(step_key, 3)
  batch = wx.sample_batch(data, kb, 8)
  want = jacobian(params, batch, kl)
  np.testing.assert_allclose(main["trunk"]["w"], want["trunk"]["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:mtl.fit")
def test_fit_num_extra_batches_overrides_and_turns_off():
  from weightax._mtl_fit import _num_extra_batches

  tx = _spy(2)
  chained = optax.chain(tx, optax.sgd(0.0))  # the chain hides the attribute
  assert _num_extra_batches(tx, None) == 2
  assert _num_extra_batches(tx, 0) == 0
  assert _num_extra_batches(chained, None) == 0
  assert _num_extra_batches(chained, 3) == 3
  with pytest.raises(ValueError, match="num_extra_batches must be a non-negative int"):
    _num_extra_batches(tx, -1)
  task_losses, params, data = _problem()
  three = wx.mtl.fit(task_losses, params, chained, optax.identity(), data,
                     num_extra_batches=3, key=jax.random.key(1), num_steps=1, batch_size=8)
  count, jacs = three.aggregator_state[0]
  assert int(count) == 3 and float(jnp.abs(jacs[3]["trunk"]["w"]).max()) > 0


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_fit_is_the_documented_loop(name):
  """mtl.fit with sdmgrad/modo (shared mask, 3 steps) equals a hand-written loop drawing the
  documented batches, and the weights it records are the aggregator's."""
  task_losses, params, data, _ = _spy_fit()
  shared = {"trunk": True, "heads": False}
  kw = {"learning_rate": 0.3} if name == "sdmgrad" else {"gamma": 0.5}
  agg = getattr(wx, name)(num_tasks=2, **kw)
  opt = optax.sgd(0.1)
  key = jax.random.key(7)
  res = wx.mtl.fit(task_losses, params, agg, opt, data, key=key, num_steps=3, batch_size=8,
                   shared=shared)
  p, s_agg, s_opt = params, agg.init({"trunk": params["trunk"], "heads": None}), opt.init(params)

  @jax.jit
  def jac(p, kb, kl):
    batch = wx.sample_batch(data, kb, 8)
    losses, (jt, jh) = wx.value_and_jacobian(
        lambda t, h: task_losses({"trunk": t, "heads": h}, batch, kl)[0], argnums=(0, 1))(
            p["trunk"], p["heads"])
    return losses, {"trunk": jt, "heads": None}, jnp.sum(jh, 0)

  update = jax.jit(lambda j, s, t, e: agg.update(j, s, {"trunk": t, "heads": None},
                                                  extra_task_grads=e))
  weights = []
  for k in jax.random.split(key, 3):
    kb, kl, _ = jax.random.split(k, 3)
    _, j, head = jac(p, kb, kl)
    extras = []
    for ke in jax.random.split(jax.random.fold_in(k, 1), 2):
      kb2, kl2 = jax.random.split(ke)
      extras.append(jac(p, kb2, kl2)[1])
    u, s_agg = update(j, s_agg, p["trunk"], tuple(extras))
    upd, s_opt = opt.update({"trunk": u["trunk"], "heads": head}, s_opt, p)
    p = optax.apply_updates(p, upd)
    weights.append(s_agg.task_weights)
  np.testing.assert_allclose(res.step_metrics["task_weights"], np.stack(weights), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), res.params, p)
  # the extra batches matter: without them (fallback) the run differs
  off = wx.mtl.fit(task_losses, params, agg, opt, data, key=key, num_steps=3, batch_size=8,
                   shared=shared, num_extra_batches=0)
  assert np.abs(np.asarray(off.step_metrics["task_weights"])
                - np.asarray(res.step_metrics["task_weights"])).max() > 1e-4


def test_projection_keeps_the_unit_sum_at_any_magnitude():
  """Duchi's projection of v is that of v + c·1; in float32 an unshifted cumsum - 1 loses the
  1 at |v| ~ 3e7 (all weights came out 0). Expected values: the exact rational projection."""
  from weightax.weightings.sdmgrad import project_simplex

  for v in ([3e7, 1e7, -2e7], [1e10, 1e10 - 1024.0, -3e10], [-5e9, -5e9, 2.0], [0.2, 0.3, 0.1]):
    got = np.asarray(project_simplex(jnp.asarray(v, jnp.float32)), np.float64)
    # the float32 input, projected exactly
    want = [float(x) for x in _proj_simplex_exact(
        [Fraction(float(x)) for x in np.asarray(v, np.float32)])]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert abs(got.sum() - 1.0) < 1e-6


def test_sdmgrad_with_a_non_positive_cross_diagonal_stays_on_the_simplex():
  """Extras (J, -J): diag(J_ξ J_ξ'ᵀ) <= 0, so the normaliser is 1e-8 and the iterates reach
  ~1e10. The weights must still be the float64 algorithm's, on the simplex."""
  rng = np.random.default_rng(3)
  j = rng.normal(size=(3, 6)).astype(np.float32)
  tx = wx.sdmgrad(num_tasks=3)
  state = tx.init(None)
  u, state = jax.jit(lambda g, e1, e2, s: tx.update({"w": g}, s, extra_task_grads=(
      {"w": e1}, {"w": e2})))(j, j, -j, state)
  w_got = np.asarray(state.weights, np.float64)
  u_ref, w_ref = sdmgrad_ref(j.astype(np.float64), j.astype(np.float64), -j.astype(np.float64),
                             np.full(3, 1.0 / 3.0))
  assert abs(w_got.sum() - 1.0) < 1e-6 and np.all(w_got >= 0), w_got
  np.testing.assert_allclose(w_got, w_ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(u["w"], np.float64), u_ref, rtol=1e-5, atol=1e-6)
  tw = np.asarray(state.task_weights, np.float64)
  assert abs(tw.sum() - 1.0) < 1e-5, tw  # the docstring's promise: task weights sum to 1
