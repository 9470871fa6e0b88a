"""Loss-based task weightings against independent NumPy computations.

linear_scalarization, random_loss_weighting, dwa and uncertainty_weighting.
Feeding ``task_grads = I_K`` makes the update equal the weights themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

K = 3
EYE = {"w": jnp.eye(K)}


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


# linear scalarization ---------------------------------------------------------------------------


def test_linear_scalarization_is_weighted_sum():
  rng = np.random.default_rng(0)
  grads = {"a": rng.normal(size=(K, 4, 2)).astype(np.float32),
           "b": rng.normal(size=(K, 5)).astype(np.float32)}
  w = np.array([0.2, 1.0, 3.0], np.float32)
  tx = wx.linear_scalarization(weights=jnp.asarray(w), num_tasks=K)
  u, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(None))
  for name, g in grads.items():
    np.testing.assert_allclose(u[name], np.tensordot(w, g, axes=1), rtol=1e-6)
  default = wx.linear_scalarization()
  u, _ = default.update(jax.tree.map(jnp.asarray, grads), default.init(None))
  np.testing.assert_allclose(u["b"], grads["b"].sum(0), rtol=1e-6)


def test_linear_scalarization_traced_weights_and_shape_errors():
  state = wx.LinearScalarizationState()
  f = jax.jit(lambda w: wx.linear_scalarization(weights=w).update(EYE, state)[0]["w"])
  np.testing.assert_allclose(f(jnp.array([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
    wx.linear_scalarization(weights=jnp.ones(2), num_tasks=3)
  tx = wx.linear_scalarization(weights=jnp.ones(2))
  with pytest.raises(ValueError, match=r"expected \(3,\)"):
    tx.update(EYE, tx.init(None))


# random loss weighting --------------------------------------------------------------------------


def test_rlw_weights_are_softmax_of_a_normal_draw():
  tx = wx.random_loss_weighting(num_tasks=K)
  key = jax.random.key(42)
  u, _ = tx.update(EYE, tx.init(None), key=key)
  z = np.asarray(jax.random.normal(key, (K,)))
  np.testing.assert_allclose(u["w"], _softmax(z), rtol=1e-6)


def test_rlw_weights_on_simplex_and_vary_with_key():
  tx = wx.random_loss_weighting()
  state = tx.init(None)
  draws = np.stack([tx.update(EYE, state, key=jax.random.key(i))[0]["w"] for i in range(50)])
  assert (draws > 0).all()
  np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-6)
  assert len({tuple(d.round(6)) for d in draws}) == 50
  again = tx.update(EYE, state, key=jax.random.key(0))[0]["w"]
  np.testing.assert_array_equal(again, draws[0])
  # Symmetric in distribution: every task's mean weight is near 1/K.
  np.testing.assert_allclose(draws.mean(0), 1 / K, atol=0.1)


def test_rlw_without_key_raises():
  tx = wx.random_loss_weighting()
  with pytest.raises(ValueError, match="key"):
    tx.update(EYE, tx.init(None))


# DWA --------------------------------------------------------------------------------------------


def _dwa_reference(losses, period, temperature):
  """NumPy DWA: period means, w = K softmax(L(t-1)/L(t-2) / T) from the third period on."""
  k = losses.shape[1]
  out = []
  for step in range(len(losses)):
    p = step // period
    if p < 2:
      out.append(np.ones(k))
      continue
    mean = lambda q: losses[q * period:(q + 1) * period].mean(0)
    out.append(k * _softmax(mean(p - 1) / mean(p - 2) / temperature))
  return np.array(out)


@pytest.mark.parametrize("period,temperature", [(1, 2.0), (3, 2.0), (2, 0.5)])
def test_dwa_matches_numpy(period, temperature):
  rng = np.random.default_rng(1)
  losses = rng.uniform(0.5, 2.0, size=(4 * period + 2, K)).astype(np.float32)
  tx = wx.dwa(num_tasks=K, period=period, temperature=temperature)
  step = jax.jit(lambda s, ls: tx.update(EYE, s, task_losses=ls))
  state, got = tx.init(None), []
  for ls in losses:
    u, state = step(state, ls)
    got.append(u["w"])
  want = _dwa_reference(losses.astype(np.float64), period, temperature)
  np.testing.assert_allclose(np.array(got), want, rtol=1e-5)
  np.testing.assert_allclose(np.array(got).sum(1), K, rtol=1e-5)


def test_dwa_needs_losses_and_valid_hyperparameters():
  tx = wx.dwa(num_tasks=K)
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(EYE, tx.init(None))
  with pytest.raises(ValueError, match="period"):
    wx.dwa(num_tasks=K, period=0)
  with pytest.raises(ValueError, match="temperature"):
    wx.dwa(num_tasks=K, temperature=0.0)


def test_dwa_zero_previous_loss_gives_ratio_one():
  tx = wx.dwa(num_tasks=2)
  state = tx.init(None)
  for ls in ([0.0, 1.0], [1.0, 1.0], [1.0, 1.0]):
    u, state = tx.update({"w": jnp.eye(2)}, state, task_losses=jnp.array(ls))
  np.testing.assert_allclose(u["w"], [1.0, 1.0])


# uncertainty weighting --------------------------------------------------------------------------


def _adam_steps(s, losses_seq, lr, b1=0.9, b2=0.999, eps=1e-8):
  """Hand-derived ∂/∂s of Σ ½(e^{-s}L + s) = ½(1 - e^{-s}L), stepped with a NumPy Adam."""
  m = np.zeros_like(s)
  v = np.zeros_like(s)
  weights = []
  for t, losses in enumerate(losses_seq, start=1):
    weights.append(0.5 * np.exp(-s))
    g = 0.5 * (1.0 - np.exp(-s) * losses)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    s = s - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return np.array(weights), s


@pytest.mark.parametrize("init", [0.0, -0.5])
def test_uncertainty_weighting_adam_steps_match_hand_derivation(init):
  rng = np.random.default_rng(2)
  losses_seq = rng.uniform(0.1, 5.0, size=(5, K))
  tx = wx.uncertainty_weighting(num_tasks=K, learning_rate=0.05, init_log_variance=init)
  state, got = tx.init(None), []
  for ls in losses_seq:
    u, state = tx.update(EYE, state, task_losses=jnp.asarray(ls, jnp.float32))
    got.append(u["w"])
  weights, s = _adam_steps(np.full(K, init), losses_seq, lr=0.05)
  np.testing.assert_allclose(np.array(got), weights, rtol=1e-5)
  np.testing.assert_allclose(state.log_vars, s, rtol=1e-5, atol=1e-6)


def test_uncertainty_weighting_custom_optimizer_and_fixed_point():
  losses = jnp.array([4.0, 1.0, 0.25])
  tx = wx.uncertainty_weighting(num_tasks=K, optimizer=optax.sgd(0.5))
  state = tx.init(None)
  _, state = tx.update(EYE, state, task_losses=losses)
  np.testing.assert_allclose(state.log_vars, -0.5 * 0.5 * (1 - np.asarray(losses)), rtol=1e-6)
  step = jax.jit(lambda s: tx.update(EYE, s, task_losses=losses)[1])
  for _ in range(300):
    state = step(state)
  # The minimiser is s = log L, where the weight is 1/(2L).
  np.testing.assert_allclose(state.log_vars, np.log(np.asarray(losses)), atol=1e-3)


def test_uncertainty_weighting_needs_losses():
  tx = wx.uncertainty_weighting(num_tasks=K)
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(EYE, tx.init(None))
