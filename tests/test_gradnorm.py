"""GradNorm's weight step against a hand computation of L_grad's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

K = 3


def _grads(seed, scales=(1.0, 4.0, 0.5)):
  rng = np.random.default_rng(seed)
  s = np.asarray(scales, np.float32)
  return {
      "last": {"w": (s[:, None, None] * rng.normal(size=(K, 4, 3))).astype(np.float32)},
      "early": (s[:, None] * rng.normal(size=(K, 6))).astype(np.float32),
      "head": rng.normal(size=(K, 2)).astype(np.float32),
  }


PARAMS = {"last": {"w": jnp.zeros((4, 3))}, "early": jnp.zeros(6), "head": jnp.zeros(2)}
SHARED = {"last": {"w": True}, "early": True, "head": False}
LAST = {"last": {"w": True}, "early": False, "head": False}


def _norms(grads, leaves):
  return np.sqrt(sum((grads[name].reshape(K, -1).astype(np.float64) ** 2).sum(1)
                     for name in leaves))


def _lgrad_gradient(w, norms, losses, l0, alpha):
  """∂/∂w of Σ|G_k - sg(mean(G) r_k^α)|, G_k = ‖w_k g_k‖ = w_k n_k (w ≥ 0), by hand (the
  target is a constant)."""
  g = w * norms
  rel = losses / l0
  r = rel / rel.mean()
  target = g.mean() * r ** alpha
  return np.sign(g - target) * norms


def _flat(grads):
  return {"last": grads["last"]["w"], "early": grads["early"], "head": grads["head"]}


@pytest.mark.parametrize("layer,names", [(None, ("last", "early")), (LAST, ("last",))])
def test_weight_steps_match_hand_computation(layer, names):
  lr, alpha = 0.05, 1.5
  tx = wx.gradnorm(num_tasks=K, alpha=alpha, layer=layer, optimizer=optax.sgd(lr),
                   shared=SHARED)
  losses_seq = np.array([[1.0, 2.0, 3.0], [0.9, 1.0, 2.9], [0.5, 0.9, 2.5]])
  state = tx.init(PARAMS)
  w = np.ones(K)
  l0 = losses_seq[0]
  for seed, losses in enumerate(losses_seq):
    grads = _grads(seed)
    u, state = tx.update(jax.tree.map(jnp.asarray, grads), state, PARAMS,
                         task_losses=jnp.asarray(losses, jnp.float32))
    # The update uses the current weights on shared leaves, the plain sum on the head.
    np.testing.assert_allclose(u["early"], np.tensordot(w, grads["early"], axes=1), rtol=1e-5)
    np.testing.assert_allclose(u["head"], grads["head"].sum(0), rtol=1e-6)
    norms = _norms(_flat(grads), names)
    w = np.maximum(w - lr * _lgrad_gradient(w, norms, losses, l0, alpha), 0.0)
    w = K * w / w.sum()
    np.testing.assert_allclose(state.weights, w, rtol=1e-5)
    np.testing.assert_allclose(np.sum(state.weights), K, rtol=1e-6)
    np.testing.assert_allclose(state.initial_losses, l0)


def test_target_is_stop_gradiented():
  # Without the stop-gradient the mean(G) term would add (1/K) Σ_j sign(.) r_j^α n_k; make sure
  # that the two differ on this problem, and that gradnorm follows the stopped version.
  tx = wx.gradnorm(num_tasks=K, optimizer=optax.sgd(0.01), alpha=1.0)
  grads = _grads(7)
  losses = jnp.array([1.0, 2.0, 3.0])
  _, state = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(None), task_losses=losses)
  norms = _norms(_flat(grads), ("last", "early", "head"))

  def lgrad(w, stop):
    g = w * norms
    target = jnp.mean(g) * jnp.ones(K)  # r = 1 at the first step
    target = jax.lax.stop_gradient(target) if stop else target
    return jnp.sum(jnp.abs(g - target))

  w0 = jnp.ones(K)
  for stop in (True, False):
    w = w0 - 0.01 * jax.grad(lgrad)(w0, stop)
    w = K * w / w.sum()
    if stop:
      np.testing.assert_allclose(state.weights, w, rtol=1e-5)
    else:
      assert not np.allclose(state.weights, w, rtol=1e-3)


def test_default_adam_first_step_and_sum():
  tx = wx.gradnorm(num_tasks=K)
  grads = _grads(3)
  _, state = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(None),
                       task_losses=jnp.array([1.0, 1.0, 1.0]))
  norms = _norms(_flat(grads), ("last", "early", "head"))
  # Adam's first step is lr · sign(gradient).
  w = 1.0 - 0.025 * np.sign(_lgrad_gradient(np.ones(K), norms, np.ones(K), np.ones(K), 1.5))
  np.testing.assert_allclose(state.weights, K * w / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(np.sum(state.weights), K, rtol=1e-6)


def test_small_gradient_task_gains_weight():
  # Constant gradients of very different norms and equal training rates: GradNorm should shift
  # weight toward the task with the smallest gradient, as in the paper's toy.
  grads = {"w": jnp.diag(jnp.array([10.0, 1.0, 0.1]))}
  tx = wx.gradnorm(num_tasks=K, alpha=0.12, learning_rate=0.025)
  step = jax.jit(lambda s, t: tx.update(grads, s, task_losses=jnp.full(K, 0.99 ** t))[1])
  state = tx.init(None)
  for t in range(200):
    state = step(state, t)
  w = np.asarray(state.weights)
  assert w[2] > w[1] > w[0]
  np.testing.assert_allclose(w.sum(), K, rtol=1e-5)


def test_layer_errors_and_missing_losses():
  grads = jax.tree.map(jnp.asarray, _grads(0))
  bad = wx.gradnorm(num_tasks=K, shared=SHARED, layer={"last": {"w": False}, "early": False,
                                                        "head": True})
  with pytest.raises(ValueError, match="task-specific"):
    bad.update(grads, bad.init(PARAMS), PARAMS, task_losses=jnp.ones(K))
  none = wx.gradnorm(num_tasks=K, layer=lambda p: jax.tree.map(lambda _: False, p))
  with pytest.raises(ValueError, match="no shared leaf"):
    none.update(grads, none.init(PARAMS), PARAMS, task_losses=jnp.ones(K))
  tx = wx.gradnorm(num_tasks=K)
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(grads, tx.init(PARAMS), PARAMS)


def test_weights_stay_non_negative():
  # Norms 100 : 1, as the paper's toy with σ = (100, 1): the balanced weight of the first task
  # (≈ 0.02) is below Adam's step, so without the projection it would turn negative.
  grads = {"w": jnp.diag(jnp.array([100.0, 1.0]))}
  tx = wx.gradnorm(num_tasks=2, alpha=0.12)
  step = jax.jit(lambda s: tx.update(grads, s, task_losses=jnp.ones(2))[1])
  state, lowest = tx.init(None), []
  for _ in range(300):
    state = step(state)
    lowest.append(float(state.weights.min()))
  assert min(lowest) >= 0.0
  np.testing.assert_allclose(float(state.weights.sum()), 2.0, rtol=1e-6)
  assert float(state.weights[0]) < 0.1 < 1.9 < float(state.weights[1])


def _scan_updates(losses, grads=None, **kwargs):
  """The updates and applied weights of GradNorm over a sequence of losses [T, K]."""
  grads = {"w": jnp.diag(jnp.array([3.0, 1.0, 0.5]))} if grads is None else grads
  tx = wx.gradnorm(num_tasks=K, **kwargs)

  def body(state, ls):
    u, state = tx.update(grads, state, task_losses=ls)
    return state, (u["w"], state.task_weights, state.weights)

  _, out = jax.jit(lambda ls: jax.lax.scan(body, tx.init(None), ls))(losses)
  return out


@pytest.mark.parametrize("bad_step", [0, 25])
def test_nan_loss_is_never_reset(bad_step):
  """A NaN loss (at the first step: in L(0)) shows as NaN in the next updates; it must not be
  replaced by the weights' reset to 1."""
  steps = 30
  losses = jnp.tile(jnp.array([1.0, 0.9, 0.8]), (steps, 1)) * 0.98 ** jnp.arange(steps)[:, None]
  u, applied, _ = _scan_updates(losses.at[bad_step, 1].set(jnp.nan))
  clean_u, clean_applied, _ = _scan_updates(losses)
  # up to and including the bad step, the update uses weights learned from finite losses
  np.testing.assert_allclose(u[: bad_step + 1], clean_u[: bad_step + 1], rtol=1e-6)
  np.testing.assert_allclose(applied[: bad_step + 1], clean_applied[: bad_step + 1], rtol=1e-6)
  # from the next step on, the weights and every shared coordinate of the update are NaN
  assert bool(jnp.all(jnp.isnan(applied[bad_step + 1:])))
  assert bool(jnp.all(jnp.isnan(u[bad_step + 1:])))


def test_nan_gradient_is_never_reset():
  grads = {"w": jnp.diag(jnp.array([3.0, jnp.nan, 0.5]))}
  u, applied, weights = _scan_updates(jnp.ones((3, K)), grads=grads)
  assert bool(jnp.all(jnp.isnan(weights))) and bool(jnp.all(jnp.isnan(applied[1:])))
  assert bool(jnp.all(jnp.isnan(u[1:])))


def test_all_zero_weights_still_reset_to_one():
  """The documented reset (every weight projected to 0) is kept for finite weights."""
  flip = optax.GradientTransformation(  # a weight "optimizer" whose step sends w to -w
      lambda p: optax.EmptyState(), lambda g, s, p=None: (-2.0 * p, s))
  tx = wx.gradnorm(num_tasks=K, optimizer=flip)
  _, state = tx.update({"w": jnp.eye(K)}, tx.init(None), task_losses=jnp.ones(K))
  np.testing.assert_array_equal(state.weights, np.ones(K))
  np.testing.assert_array_equal(state.task_weights, np.ones(K))
