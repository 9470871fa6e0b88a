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
                np.exp(rng.uniform(-60, 60, size=k)),  # 1e-26 .. 1e26
                np.full(k, 0.3)]
  tx = wx.geometric_loss(num_tasks=k)
  update = jax.jit(lambda g, s, ls: tx.update(g, s, task_losses=ls))
  for losses in loss_cases:
    want_w = _gls_grad_wrt_losses(losses)
    for name, j in _jacobians(rng, k).items():
      u, state = update({"w": jnp.asarray(j, jnp.float32)}, tx.init(None),
                        jnp.asarray(losses, jnp.float32))
      w = np.asarray(state.task_weights, np.float64)
      np.testing.assert_allclose(w, want_w, rtol=1e-5, err_msg=name)
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
