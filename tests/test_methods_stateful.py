"""Parity of the loss-based and stateful methods of issue 9 with independent references.

Each reference is a float64 NumPy transcription of the paper's algorithm (or of
the authors' code where the paper leaves a detail open), written here without
importing weightax's implementation: GLS's gradient by complex-step
differentiation of ``(Π L)^(1/K)``; IMTL's closed form of the paper
(``α_{2:} = g_1 Uᵀ (D Uᵀ)⁻¹``) on the gradients of ``e^s L`` and Adam on the
IMTL-L loss; FAMO's official ``get_weighted_loss``/``update`` with torch's Adam
(L2 weight decay).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

N = 9  # parameters


def _jacobians(rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
  """Random and adversarial [K, N] Jacobians: norms over e^±8, a nearly opposite pair, and
  a nearly dependent triple."""
  unit = rng.normal(size=(k, N))
  unit /= np.linalg.norm(unit, axis=1, keepdims=True)
  spread = np.exp(np.linspace(-8, 8, k))[:, None] * unit
  opp = rng.normal(size=(k, N))
  if k >= 2:
    # cosine ≈ -0.998: IMTL-G's float32 rank cut-off (eigenvalues of the cosine matrix below
    # 16·K·eps·λ_max count as zero) leaves this pair independent; at 1e-2 noise it would not.
    opp[1] = -1.3 * opp[0] + 1e-1 * rng.normal(size=N)
  dep = rng.normal(size=(k, N))
  if k >= 3:
    dep[2] = dep[0] + dep[1] + 1e-3 * rng.normal(size=N)
  return {"random": rng.normal(size=(k, N)), "spread": spread, "opposite": opp,
          "dependent": dep}


def _update(tx, j, state, **kw):
  u, state = tx.update({"w": jnp.asarray(j, jnp.float32)}, state, **kw)
  return np.asarray(u["w"], np.float64), state


# ------------------------------------------------------------------ GLS


def _gls_grad_wrt_losses(losses: np.ndarray) -> np.ndarray:
  """∂(Π L)^(1/K)/∂L_k by complex-step differentiation (exact to float64 rounding)."""
  k = len(losses)
  out = np.empty(k)
  for i in range(k):
    h = 1e-30 * losses[i]
    z = losses.astype(np.complex128)
    z[i] += 1j * h
    out[i] = (np.prod(z) ** (1.0 / k)).imag / h
  return out


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_geometric_loss_is_the_gradient_of_the_geometric_mean(k):
  rng = np.random.default_rng(k)
  loss_cases = [np.exp(rng.uniform(-2, 2, size=k)),
                np.exp(rng.uniform(-69, 69, size=k)),  # 1e-30 .. 1e30, as the docstring says
                np.where(np.arange(k) % 2 == 0, 1e-30, 1e30),
                np.full(k, 0.3)]
  tx = wx.geometric_loss(num_tasks=k)
  update = jax.jit(lambda g, s, ls: tx.update(g, s, task_losses=ls))
  for losses in loss_cases:
    want_w = _gls_grad_wrt_losses(losses)
    for name, j in _jacobians(rng, k).items():
      u, state = update({"w": jnp.asarray(j, jnp.float32)}, tx.init(None),
                        jnp.asarray(losses, jnp.float32))
      w = np.asarray(state.task_weights, np.float64)
      # weights below float32's smallest normal number (1.2e-38) are flushed to 0 on the CPU
      np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=np.finfo(np.float32).tiny,
                                 err_msg=name)
      want_u = want_w @ j
      scale = np.abs(want_w) @ np.linalg.norm(j, axis=1)
      assert np.linalg.norm(np.asarray(u["w"], np.float64) - want_u) <= 1e-5 * scale, name


@pytest.mark.parametrize("bad", [[1.0, 0.0, 2.0], [1.0, -0.5, 2.0], [1.0, np.nan, 2.0]])
def test_geometric_loss_refuses_non_positive_losses(bad):
  tx = wx.geometric_loss()
  with pytest.raises(ValueError, match=r"positive task losses.*not positive at tasks \[1\]"):
    tx.update({"w": jnp.eye(3)}, tx.init(None), task_losses=jnp.asarray(bad))
  # under jit the check cannot run: the update is NaN, not silently repaired
  u, _ = jax.jit(lambda ls: tx.update({"w": jnp.eye(3)}, tx.init(None), task_losses=ls))(
      jnp.asarray(bad, jnp.float32))
  assert bool(jnp.any(jnp.isnan(u["w"])))


def test_geometric_loss_direction_ignores_loss_scales():
  """L_k -> c_k L_k, g_k -> c_k g_k multiplies the update by (Π c_k)^(1/K) (docstring)."""
  rng = np.random.default_rng(0)
  j, losses = rng.normal(size=(3, N)), np.array([0.5, 2.0, 1.5])
  c = np.array([10.0, 0.1, 3.0])
  tx = wx.geometric_loss()
  u, _ = _update(tx, j, tx.init(None), task_losses=jnp.asarray(losses, jnp.float32))
  v, _ = _update(tx, c[:, None] * j, tx.init(None), task_losses=jnp.asarray(c * losses,
                                                                            jnp.float32))
  np.testing.assert_allclose(v, np.prod(c) ** (1 / 3) * u, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ IMTL


def _imtl_g_paper(j: np.ndarray) -> np.ndarray:
  """IMTL-G's closed form (Liu et al., 2021, Eq. 9): α_{2:} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ."""
  if len(j) == 1:
    return np.ones(1)
  u = j / np.linalg.norm(j, axis=1, keepdims=True)
  d, uu = j[0] - j[1:], u[0] - u[1:]
  a = j[0] @ uu.T @ np.linalg.inv(d @ uu.T)
  return np.concatenate([[1.0 - a.sum()], a])


class _Adam:
  """torch.optim.Adam's update (no weight decay unless given: L2 added to the gradient)."""

  def __init__(self, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def step(self, x, grad):
    grad = grad + self.wd * x
    if self.m is None:
      self.m, self.v = np.zeros_like(x), np.zeros_like(x)
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad**2
    mhat, vhat = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
    return x - self.lr * mhat / (np.sqrt(vhat) + self.eps)


def _imtl_reference(js, losses, lr):
  """Full IMTL in float64: IMTL-G (paper's closed form) on the grads of e^s L, then one Adam
  step of s on Σ(e^s L − s). Returns per-step weights on the unscaled g_k and updates."""
  k = js.shape[1]
  s, adam = np.zeros(k), _Adam(lr)
  ws, us = [], []
  for j, ls in zip(js, losses, strict=True):
    alpha = _imtl_g_paper(np.exp(s)[:, None] * j)
    w = alpha * np.exp(s)
    ws.append(w)
    us.append(alpha @ (np.exp(s)[:, None] * j))
    s = adam.step(s, np.exp(s) * ls - 1.0)
  return np.array(ws), np.array(us), s


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_imtl_matches_the_paper(k):
  rng = np.random.default_rng(10 + k)
  steps, lr = 6, 0.3  # a large lr so that the scales move far from 1 within a few steps
  tx = wx.imtl(num_tasks=k, learning_rate=lr)

  @jax.jit
  def run(js, losses):
    def body(state, xs):
      u, state = tx.update({"w": xs[0]}, state, task_losses=xs[1])
      return state, (u["w"], state.task_weights)
    return jax.lax.scan(body, tx.init(None), (js, losses))

  for name in ["random", "spread", "opposite"]:  # full row rank: the closed form exists
    js = np.stack([_jacobians(rng, k)[name] for _ in range(steps)])
    losses = np.exp(rng.uniform(-2, 2, size=(steps, k)))
    state, (u, w) = run(jnp.asarray(js, jnp.float32), jnp.asarray(losses, jnp.float32))
    want_w, want_u, want_s = _imtl_reference(js.astype(np.float32).astype(np.float64),
                                             losses.astype(np.float32), lr)
    scale = np.abs(want_w) * np.linalg.norm(js, axis=2)  # contributions |w_k|·‖g_k‖
    err = np.abs(np.asarray(w) - want_w) * np.linalg.norm(js, axis=2)
    assert np.all(err <= 1e-4 * scale.sum(1, keepdims=True)), (name, err.max())
    u_err = np.linalg.norm(np.asarray(u, np.float64) - want_u, axis=1)
    assert np.all(u_err <= 1e-4 * scale.sum(1)), (name, u_err.max())
    np.testing.assert_allclose(state.log_scales, want_s, rtol=1e-4, atol=1e-5, err_msg=name)
  assert np.abs(want_s).max() > 0.3  # the scales did move: the test sees IMTL-L


def test_imtl_weighting_is_imtl_g_on_scaled_gradients():
  """weightings.imtl(G, s) = IMTL-G(D G D)·e^s (the paper's form), for scales over e^±6."""
  rng = np.random.default_rng(0)
  for _ in range(5):
    j = rng.normal(size=(4, N))
    s = rng.uniform(-6, 6, size=4)
    want = _imtl_g_paper(np.exp(s)[:, None] * j) * np.exp(s)
    got = np.asarray(wx.weightings.imtl(jnp.asarray(j @ j.T, jnp.float32),
                                        jnp.asarray(s, jnp.float32)), np.float64)
    contrib = np.abs(want) * np.linalg.norm(j, axis=1)
    assert np.all(np.abs(got - want) * np.linalg.norm(j, axis=1) <= 1e-4 * contrib.sum())
  g = jnp.asarray(j @ j.T, jnp.float32)
  np.testing.assert_array_equal(wx.weightings.imtl(g), wx.weightings.imtl_g(g))


def test_imtl_weighting_far_apart_scales_stay_finite():
  """Scales e^±60 (G·e^{s_i+s_j} would overflow float32): finite weights, IMTL-G's direction."""
  j = np.random.default_rng(1).normal(size=(4, N))
  g = jnp.asarray(j @ j.T, jnp.float32)
  w = np.asarray(wx.weightings.imtl(g, jnp.array([60.0, -60.0, 0.0, 5.0])), np.float64)
  w0 = np.asarray(wx.weightings.imtl_g(g), np.float64)
  assert np.all(np.isfinite(w)) and np.abs(w).max() > 0
  np.testing.assert_allclose(w / w0, np.full(4, (w / w0)[0]), rtol=1e-5)


# ------------------------------------------------------------------ FAMO


class _FAMOReference:
  """The official FAMO class (Cranial-XIX/FAMO, methods/weight_methods.py) in float64 NumPy:
  get_weighted_loss stores the losses and gives the weights of Σ z log D / c; update(curr)
  sets ξ.grad = (∂softmax/∂ξ)ᵀ δ and steps torch's Adam(lr, weight_decay=γ)."""

  def __init__(self, k, lr=0.025, gamma=1e-3):
    self.xi, self.adam, self.prev = np.zeros(k), _Adam(lr, weight_decay=gamma), None

  def weights(self, losses):
    z = np.exp(self.xi) / np.exp(self.xi).sum()
    d = losses + 1e-8
    c = (z / d).sum()
    self.prev = losses
    return z / d / c  # the gradient of Σ_k z_k log D_k / c with respect to L_k·(∂L_k)

  def update(self, curr):
    delta = np.log(self.prev + 1e-8) - np.log(curr + 1e-8)
    z = np.exp(self.xi) / np.exp(self.xi).sum()
    grad = z * delta - z * (z @ delta)  # (diag z − z zᵀ) δ
    self.xi = self.adam.step(self.xi, grad)


def _famo_run(tx, js, losses, post=None):
  @jax.jit
  def run(js, losses, post):
    def body(state, xs):
      kw = {} if post is None else {"post_step_losses": xs[2]}
      u, state = tx.update({"w": xs[0]}, state, task_losses=xs[1], **kw)
      return state, (u["w"], state.task_weights)
    return jax.lax.scan(body, tx.init(None), (js, losses, losses if post is None else post))
  return run(jnp.asarray(js, jnp.float32), jnp.asarray(losses, jnp.float32),
             None if post is None else jnp.asarray(post, jnp.float32))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_famo_with_post_step_losses_matches_the_official_algorithm(k):
  """The paper's order: weights from ξ_t, step, the same batch re-evaluated, ξ update."""
  rng = np.random.default_rng(20 + k)
  steps, lr, gamma = 8, 0.2, 0.05
  losses = np.exp(rng.uniform(-3, 3, size=(steps, k))).astype(np.float32)  # L(θ_t, b_t)
  after = (losses * np.exp(rng.uniform(-1, 0.3, size=(steps, k)))).astype(np.float32)
  # fit passes at step t the re-evaluation of step t−1's batch; at step 0 the losses themselves
  post = np.concatenate([losses[:1], after[:-1]])
  js = np.stack([_jacobians(rng, k)["spread"] for _ in range(steps)])
  state, (u, w) = _famo_run(wx.famo(num_tasks=k, learning_rate=lr, gamma=gamma), js, losses,
                            post)
  ref = _FAMOReference(k, lr, gamma)
  for t in range(steps):
    want = ref.weights(losses[t].astype(np.float64))
    np.testing.assert_allclose(w[t], want, rtol=2e-5, atol=1e-7, err_msg=f"step {t}")
    np.testing.assert_allclose(u[t], want @ js[t], rtol=1e-4,
                               atol=1e-5 * (want @ np.linalg.norm(js[t], axis=1)))
    seen = ref.xi.copy()  # the transform has not yet seen the last re-evaluation
    ref.update(after[t].astype(np.float64))
  if k > 1:
    np.testing.assert_allclose(state.logits, seen, rtol=1e-4, atol=1e-6)
    assert np.abs(seen).max() > 0.05  # ξ moved: the test sees the learning


def test_famo_as_a_plain_transform_learns_from_the_next_call():
  """Without post_step_losses, ξ's update at call t uses the losses of call t as 'after'."""
  rng = np.random.default_rng(3)
  k, steps = 3, 8
  losses = np.exp(rng.uniform(-2, 2, size=(steps, k))).astype(np.float32)
  js = rng.normal(size=(steps, k, N))
  state, (_, w) = _famo_run(wx.famo(num_tasks=k, learning_rate=0.1), js, losses)
  ref = _FAMOReference(k, 0.1)
  for t in range(steps):
    if t > 0:
      ref.update(losses[t].astype(np.float64))
    np.testing.assert_allclose(w[t], ref.weights(losses[t].astype(np.float64)), rtol=2e-5,
                               atol=1e-7, err_msg=f"step {t}")
  np.testing.assert_allclose(state.logits, ref.xi, rtol=1e-4, atol=1e-6)


def test_famo_through_mtl_fit_is_the_paper_loop():
  """mtl.fit(post_step_losses=True) on full batches = the paper's loop written out by hand:
  weights, SGD step, the same batch re-evaluated, ξ update (float64 NumPy)."""
  rng = np.random.default_rng(4)
  n, d, k, steps, lr = 16, 5, 3, 12, 0.05
  x = rng.normal(size=(n, d))
  ys = np.stack([x @ rng.normal(size=d) + 0.5 * rng.normal(size=n) for _ in range(k)], 1)
  ys *= np.array([1.0, 5.0, 0.2])  # losses of different scales

  def losses64(theta):
    r = x @ theta[:, None] - ys  # [n, K]: one shared linear model for every task
    return np.mean(r**2, axis=0), 2 * (r.T @ x) / n  # [K], Jacobian [K, d]

  theta, ref, want_w = np.zeros(d), _FAMOReference(k), []
  for _ in range(steps):
    ls, jac = losses64(theta)
    w = ref.weights(ls)
    want_w.append(w)
    theta = theta - lr * w @ jac
    seen = ref.xi.copy()  # fit's last re-evaluation reaches no further update
    ref.update(losses64(theta)[0])

  def task_losses(params, batch, key):
    del key
    r = batch["x"] @ params["theta"][:, None] - batch["y"]
    return jnp.mean(r**2, axis=0), None

  data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(ys, jnp.float32)}
  res = wx.mtl.fit(task_losses, {"theta": jnp.zeros(d)}, wx.famo(num_tasks=k),
                   optax.sgd(lr), data, key=jax.random.key(0), num_steps=steps,
                   batch_size=n, post_step_losses=True)
  np.testing.assert_allclose(res.step_metrics["task_weights"], np.array(want_w), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(res.params["theta"], theta, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(res.aggregator_state.logits, seen, rtol=1e-3, atol=1e-6)
  assert np.abs(ref.xi).max() > 1e-2  # ξ moved


def test_famo_checks_post_step_losses_shape():
  tx = wx.famo(num_tasks=2)
  with pytest.raises(ValueError, match=r"post_step_losses must have shape \(2,\).*\(3,\)"):
    tx.update({"w": jnp.eye(2)}, tx.init(None), task_losses=jnp.ones(2),
              post_step_losses=jnp.ones(3))


# ------------------------------------------------------------------ STCH


def _stch_grad_wrt_losses(losses, lam, z, mu):
  """∂/∂L_k of μ log Σ exp(λ(L − z)/μ), by complex-step differentiation of the plain formula."""
  out = np.empty(len(losses))
  for i in range(len(losses)):
    h = 1e-30
    x = losses.astype(np.complex128)
    x[i] += 1j * h
    out[i] = (mu * np.log(np.sum(np.exp(lam * (x - z) / mu)))).imag / h
  return out


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_stch_is_the_gradient_of_the_smooth_tchebycheff_scalarization(k):
  rng = np.random.default_rng(30 + k)
  for mu in [0.05, 1.0, 20.0]:
    lam = rng.dirichlet(np.ones(k))
    z = rng.uniform(0, 0.2, size=k)
    losses = np.exp(rng.uniform(-1, 2, size=k))
    want = _stch_grad_wrt_losses(losses, lam, z, mu)
    tx = wx.stch(mu=mu, preference=jnp.asarray(lam, jnp.float32),
                 ideal=jnp.asarray(z, jnp.float32), num_tasks=k)
    j = _jacobians(rng, k)["spread"]
    u, state = _update(tx, j, tx.init(None), task_losses=jnp.asarray(losses, jnp.float32))
    np.testing.assert_allclose(state.task_weights, want, rtol=1e-4, atol=1e-7, err_msg=str(mu))
    scale = np.abs(want) @ np.linalg.norm(j, axis=1)
    assert np.linalg.norm(u - want @ j) <= 1e-5 * scale
  # defaults: λ = 1/K, z = 0, μ = 1
  tx = wx.stch()
  u, _ = _update(tx, np.eye(k, N), tx.init(None), task_losses=jnp.asarray(losses, jnp.float32))
  np.testing.assert_allclose(u[:k], _stch_grad_wrt_losses(losses, np.full(k, 1 / k),
                                                          np.zeros(k), 1.0), rtol=1e-5)


def test_stch_small_mu_follows_the_worst_task():
  """μ → 0: the Tchebycheff scalarization, the gradient of max_k λ_k (L_k − z_k)."""
  tx = wx.stch(mu=1e-3)
  u, _ = _update(tx, np.eye(3, N), tx.init(None), task_losses=jnp.array([1.0, 3.0, 2.0]))
  np.testing.assert_allclose(u[:3], [0.0, 1 / 3, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match=r"preference and ideal must have shape \(3,\)"):
    wx.stch(preference=jnp.ones(2)).update({"w": jnp.eye(3)}, None, task_losses=jnp.ones(3))


# ------------------------------------------------------------------ GradVac


def _gradvac_reference(j, targets, orders, beta):
  """LibMTL's GradVac.backward on the Jacobian rows (float64), with given visiting orders."""
  k = len(j)
  pc, t, beyond = j.copy(), targets.copy(), 0
  for i in range(k):
    for jj in orders[i]:
      if jj == i:
        continue
      rho = pc[i] @ j[jj] / (np.linalg.norm(pc[i]) * np.linalg.norm(j[jj]))
      if rho < t[i, jj]:
        th = t[i, jj]
        w = (np.linalg.norm(pc[i]) * (th * np.sqrt(1 - rho**2) - rho * np.sqrt(1 - th**2))
             / (np.linalg.norm(j[jj]) * np.sqrt(1 - th**2) + 1e-8))  # LibMTL: absolute 1e-8
        pc[i] = pc[i] + w * j[jj]
        beyond += th > 0  # a positive target: a correction PCGrad would not make
      t[i, jj] = (1 - beta) * t[i, jj] + beta * rho
  return pc.sum(0), t, beyond


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_gradvac_matches_libmtl(k):
  rng = np.random.default_rng(40 + k)
  steps, beta = 5, 0.5
  tx = wx.gradvac(num_tasks=k, beta=beta)

  @jax.jit
  def run(js, keys):
    def body(state, xs):
      u, state = tx.update({"w": xs[0]}, state, key=xs[1])
      return state, (u["w"], state.targets)
    return jax.lax.scan(body, tx.init(None), (js, keys))

  corrected = 0
  for name in ["random", "spread", "opposite", "dependent"]:
    # one direction per task plus noise, so that the cosines persist and the targets act
    base = _jacobians(rng, k)[name]
    js = np.stack([base + 0.6 * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(N)
                   * rng.normal(size=base.shape) for _ in range(steps)])
    js = js.astype(np.float32).astype(np.float64)
    keys = jax.random.split(jax.random.key(k), steps)
    _, (u, targets) = run(jnp.asarray(js, jnp.float32), keys)
    t = np.zeros((k, k))
    all_orders = np.asarray(jax.vmap(lambda kk: wx.weightings.pcgrad_order(k, kk))(keys))
    for s in range(steps):
      orders = all_orders[s]
      want_u, t_next, beyond = _gradvac_reference(js[s], t, orders, beta)
      corrected += beyond
      scale = np.linalg.norm(js[s], axis=1).sum() * max(1.0, np.abs(want_u).max())
      assert np.linalg.norm(np.asarray(u[s], np.float64) - want_u) <= 2e-4 * scale, (name, s)
      np.testing.assert_allclose(targets[s], t_next, atol=2e-5, err_msg=f"{name} {s}")
      t = t_next
  assert k == 1 or corrected > 0  # the parity covers GradVac's own corrections


def test_gradvac_targets_are_reached():
  """After a correction the cosine of g_i' with g_j is exactly the target (the paper's aim)."""
  j = np.array([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0]])
  g = jnp.asarray(j @ j.T, jnp.float32)
  # task 1's target 0 is below its cosine 0.196 (no correction): g_0' = Jᵀw − g_1
  targets = jnp.array([[0.0, 0.8], [0.0, 0.0]])
  w = np.asarray(wx.weightings.gradvac(g, targets), np.float64)
  g0 = w @ j - j[1]
  cos = g0 @ j[1] / (np.linalg.norm(g0) * np.linalg.norm(j[1]))
  np.testing.assert_allclose(cos, 0.8, rtol=1e-5)
  np.testing.assert_allclose(w[0], 1.0, rtol=1e-6)  # g_0 itself is kept, g_1 added


def test_gradvac_weights_ignore_the_gradients_scale():
  """The relative 1e-8 (docstring): gradients scaled by 1e-12 get the same weights."""
  j = np.random.default_rng(5).normal(size=(4, N))
  g = j @ j.T
  targets = jnp.asarray(np.random.default_rng(6).uniform(-0.5, 0.9, size=(4, 4)), jnp.float32)
  w = wx.weightings.gradvac(jnp.asarray(g, jnp.float32), targets)
  w_small = wx.weightings.gradvac(jnp.asarray(1e-24 * g, jnp.float32), targets)
  np.testing.assert_allclose(w_small, w, rtol=1e-4)


# ------------------------------------------------------------------ ExcessMTL


def _excess_mtl_reference(js, eta):
  """LibMTL's ExcessMTL.backward (the authors' code) in float64: per-step weights."""
  k = js.shape[1]
  grad_sum, weight, initial, out = np.zeros_like(js[0]), np.ones(k), None, []
  for j in js:
    grad_sum += j**2
    e = np.array([j[i] * (1 / np.sqrt(grad_sum[i] + 1e-7)) @ j[i] for i in range(k)])
    if initial is None:
      initial = e
    else:
      weight = weight * np.exp(e / initial * eta)
      weight = weight / weight.sum() * k
    out.append(weight.copy())
  return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_excess_mtl_matches_the_authors_code(k):
  rng = np.random.default_rng(50 + k)
  steps, eta = 6, 0.5  # a large step so that the weights move far from 1
  tx = wx.excess_mtl(num_tasks=k, step_size=eta)
  params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(3)}

  @jax.jit
  def run(grads):
    def body(state, g):
      u, state = tx.update(g, state, params)
      return state, (u, state.task_weights)
    return jax.lax.scan(body, tx.init(params), grads)

  for name in ["random", "spread", "opposite"]:
    js = np.stack([_jacobians(rng, k)[name] for _ in range(steps)])
    js = js * np.exp(rng.uniform(-1, 1, size=(steps, k, 1)))  # estimates that change
    js = js.astype(np.float32).astype(np.float64)
    grads = {"a": jnp.asarray(js[..., :6].reshape(steps, k, 3, 2), jnp.float32),
             "b": jnp.asarray(js[..., 6:], jnp.float32)}
    _, (u, w) = run(grads)
    want = _excess_mtl_reference(js, eta)
    np.testing.assert_allclose(w, want, rtol=2e-5, err_msg=name)
    flat = np.concatenate([np.asarray(u["a"]).reshape(steps, -1), np.asarray(u["b"])], 1)
    want_u = np.einsum("sk,skn->sn", want, js)
    scale = np.einsum("sk,sk->s", want, np.linalg.norm(js, axis=2))
    assert np.all(np.linalg.norm(flat - want_u, axis=1) <= 1e-5 * scale), name
    if k > 1:
      assert np.abs(want[-1] - 1).max() > 0.05  # the weights moved


def test_excess_mtl_needs_the_parameters_and_survives_extreme_gradients():
  tx = wx.excess_mtl(num_tasks=2)
  with pytest.raises(ValueError, match=r"init needs the parameters.*tx.init\(params\)"):
    tx.init(None)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  for scale in [1e30, 1e-30, 0.0, 1.0]:
    u, state = tx.update({"w": scale * jnp.ones((2, 3))}, state, params)
    assert bool(jnp.all(jnp.isfinite(u["w"]))) and bool(jnp.all(jnp.isfinite(state.weights)))
