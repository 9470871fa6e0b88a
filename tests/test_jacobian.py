"""value_and_jacobian and gramian against independent per-task jax.grad / NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx


def _params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,)),
          "head": [jax.random.normal(k3, (3, 2))]}


def _task_losses(p, x):
  h = jnp.tanh(x @ p["w"] + p["b"])
  out = h @ p["head"][0]
  return jnp.stack([jnp.mean(out[:, 0] ** 2), jnp.mean(jnp.abs(out[:, 1])), jnp.sum(h) ** 2])


def test_jacobian_equals_stacked_per_task_grads():
  p = _params(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 4))
  losses, jac = wx.value_and_jacobian(_task_losses)(p, x)
  np.testing.assert_allclose(losses, _task_losses(p, x), rtol=1e-6)
  for k in range(3):
    gk = jax.grad(lambda p, k=k: _task_losses(p, x)[k])(p)
    jax.tree.map(lambda a, b, k=k: np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6),
                 jac, gk)


def test_argnums_tuple_and_has_aux():
  f = lambda a, b: (jnp.stack([jnp.sum(a * b), jnp.sum(a**2 * b)]), {"n": a.size})
  a, b = jnp.arange(1.0, 4.0), jnp.array([2.0, -1.0, 0.5])
  (losses, aux), (ja, jb) = wx.value_and_jacobian(f, argnums=(0, 1), has_aux=True)(a, b)
  assert aux == {"n": 3}
  np.testing.assert_allclose(ja, np.stack([b, 2 * a * b]))
  np.testing.assert_allclose(jb, np.stack([a, a**2]))
  np.testing.assert_allclose(losses, [float(np.sum(a * b)), float(np.sum(a**2 * b))])


def test_one_forward_pass():
  calls = []

  def f(p):
    calls.append(1)  # runs once per trace: one trace means one forward pass
    return jnp.stack([jnp.sum(p), jnp.sum(p**2), jnp.sum(p**3)])

  wx.value_and_jacobian(f)(jnp.ones(3))
  assert len(calls) == 1


def test_jit_and_vmap():
  fn = wx.value_and_jacobian(_task_losses)
  p = _params(jax.random.key(0))
  xs = jax.random.normal(jax.random.key(2), (6, 5, 4))
  l_v, j_v = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(p, xs)
  l_0, j_0 = fn(p, xs[3])
  np.testing.assert_allclose(l_v[3], l_0, rtol=1e-5)
  np.testing.assert_allclose(j_v["w"][3], j_0["w"], rtol=1e-5, atol=1e-6)


def test_non_vector_output_raises():
  with pytest.raises(ValueError, match=r"shape \(K,\)"):
    wx.value_and_jacobian(lambda p: jnp.sum(p))(jnp.ones(3))


def test_gramian_matches_numpy():
  p = _params(jax.random.key(3))
  x = jax.random.normal(jax.random.key(4), (5, 4))
  _, jac = wx.value_and_jacobian(_task_losses)(p, x)
  flat = np.concatenate([np.asarray(leaf).reshape(3, -1) for leaf in jax.tree.leaves(jac)], axis=1)
  np.testing.assert_allclose(wx.gramian(jac), flat @ flat.T, rtol=1e-5, atol=1e-6)


def test_gramian_bf16_accumulates_in_f32():
  g = {"a": jnp.full((2, 4096), 0.01, jnp.bfloat16)}
  G = wx.gramian(g)
  assert G.dtype == jnp.float32
  expected = 4096 * float(jnp.bfloat16(0.01)) ** 2
  np.testing.assert_allclose(G, np.full((2, 2), expected), rtol=1e-3)


def test_num_tasks_mismatch_raises():
  with pytest.raises(ValueError, match="same leading task axis"):
    wx.num_tasks({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})


def test_empty_loss_vector_raises():
  with pytest.raises(ValueError, match="at least one task loss"):
    wx.value_and_jacobian(lambda p: jnp.zeros((0,)) + jnp.sum(p))(jnp.ones(3))
  with pytest.raises(ValueError, match="K = 0"):
    wx.gramian({"w": jnp.ones((0, 3))})


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_leaves_are_refused_with_their_path(dtype):
  # jax.vjp gives float0 cotangents for them, which failed later in an aggregator with an
  # error about type promotion; jax.grad refuses them the same way.
  params = {"w": jnp.ones(3), "step": jnp.zeros((), dtype)}
  f = lambda p: jnp.stack([jnp.sum(p["w"] ** 2), jnp.sum(p["w"])])
  for make in (wx.value_and_jacobian, wx.value_and_gramian):
    with pytest.raises(TypeError, match=r"\['step'\] has dtype (int32|bool)"):
      make(f)(params)
  with pytest.raises(TypeError, match=r"\['step'\]"):
    wx.mtl.shared_jacobian(lambda s, h: jnp.stack([jnp.sum(s["w"]) * h, h ** 2]),
                           params, jnp.float32(1.0))
