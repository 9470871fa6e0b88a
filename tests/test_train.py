"""fit: a scan loop that equals the same steps written as a Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx


def _setup():
  x = jax.random.normal(jax.random.key(0), (40, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5])
  loss_fn = lambda p, b, k: (jnp.mean((b[0] @ p - b[1]) ** 2), {"norm": jnp.sum(p**2)})
  return x, y, loss_fn


def test_fit_equals_python_loop():
  x, y, loss_fn = _setup()
  opt = optax.sgd(0.05, momentum=0.9)
  p0 = jnp.zeros(3)
  res = jax.jit(lambda k: wx.fit(loss_fn, p0, opt, (x, y), key=k, num_steps=12, batch_size=8,
                                 eval_fn=lambda p: jnp.sum(p), eval_every=4))(jax.random.key(5))
  p, s = p0, opt.init(p0)
  evals = [jnp.sum(p)]
  for t, k in enumerate(jax.random.split(jax.random.key(5), 12)):
    kb, kl = jax.random.split(k)
    batch = wx.sample_batch((x, y), kb, 8)
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, kl)
    np.testing.assert_allclose(res.step_metrics["loss"][t], loss, rtol=1e-5)
    u, s = opt.update(g, s, p)
    p = optax.apply_updates(p, u)
    if (t + 1) % 4 == 0:
      evals.append(jnp.sum(p))
  np.testing.assert_allclose(res.params, p, rtol=1e-5)
  np.testing.assert_allclose(res.eval_metrics, jnp.stack(evals), rtol=1e-5, atol=1e-6)
  assert res.step_metrics["norm"].shape == (12,)


def test_full_batch_when_batch_size_covers_data():
  x, y, _ = _setup()
  out = wx.sample_batch((x, y), jax.random.key(0), 1000)
  assert out[0] is x


def test_fit_rejects_bad_schedule_and_data():
  x, y, loss_fn = _setup()
  with pytest.raises(ValueError, match="multiple of eval_every"):
    wx.fit(loss_fn, jnp.zeros(3), optax.sgd(0.1), (x, y), key=jax.random.key(0), num_steps=10,
           batch_size=4, eval_every=3)
  with pytest.raises(ValueError, match="same number of examples"):
    wx.sample_batch((x, y[:5]), jax.random.key(0), 4)


def test_loss_state_is_carried_between_steps():
  """A loss with state (a step counter and a running mean) sees every step once."""
  x, y, _ = _setup()

  def loss_fn(p, b, k, state):
    count, ema = state
    loss = jnp.mean((b[0] @ p - b[1]) ** 2)
    new = (count + 1, 0.5 * ema + 0.5 * loss)
    return loss * (1.0 + 0.0 * count), ({"count": count}, new)

  res = wx.fit(loss_fn, jnp.zeros(3), optax.sgd(0.01), (x, y), key=jax.random.key(1),
               num_steps=6, batch_size=40, loss_state=(jnp.int32(0), jnp.float32(0.0)),
               eval_every=3)
  np.testing.assert_array_equal(res.step_metrics["count"], np.arange(6))
  assert int(res.loss_state[0]) == 6
  # full batch: the EMA is a closed form of the per-step losses
  ema = 0.0
  for loss in np.asarray(res.step_metrics["loss"]):
    ema = 0.5 * ema + 0.5 * loss
  np.testing.assert_allclose(res.loss_state[1], ema, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_batch_size_must_be_a_positive_int(batch_size):
  # batch_size=0 used to train on nothing and record NaN losses; -3 failed inside JAX.
  x, y, loss_fn = _setup()
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    wx.fit(loss_fn, jnp.zeros(3), optax.sgd(0.1), (x, y), key=jax.random.key(0), num_steps=2,
           batch_size=batch_size)
  tl = lambda p, b, k: jnp.stack([jnp.mean((b[0] @ p - b[1]) ** 2), jnp.sum(p ** 2)])
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    wx.mtl.fit(tl, jnp.zeros(3), wx.upgrad(), optax.sgd(0.1), (x, y), key=jax.random.key(0),
               num_steps=2, batch_size=batch_size)


def test_aux_may_not_replace_the_loss():
  # An aux entry "loss" used to overwrite the optimised loss in step_metrics.
  x, y, _ = _setup()
  loss_fn = lambda p, b, k: (2.0 * jnp.mean((b[0] @ p - b[1]) ** 2), {"loss": jnp.sum(p)})
  with pytest.raises(ValueError, match="reserved metric name 'loss'"):
    wx.fit(loss_fn, jnp.zeros(3), optax.sgd(0.1), (x, y), key=jax.random.key(0), num_steps=2,
           batch_size=8)
  array_aux = lambda p, b, k: (jnp.mean((b[0] @ p - b[1]) ** 2), jnp.sum(p))
  with pytest.raises(TypeError, match="aux must be a dict of metrics or None"):
    wx.fit(array_aux, jnp.zeros(3), optax.sgd(0.1), (x, y), key=jax.random.key(0),
           num_steps=2, batch_size=8)
