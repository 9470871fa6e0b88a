"""value_and_gramian (the Gramian without the Jacobian); mtl.fit with a Gramian weighting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax.gramian_free import GramianWeightingState

K, N, D, H = 4, 12, 5, 6


def _params(seed: int = 0) -> dict:
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"W": jax.random.normal(k1, (D, H)) / np.sqrt(D), "v": jax.random.normal(k2, (H, K))}


def _data(seed: int = 1) -> tuple[jax.Array, jax.Array]:
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (N, D)), jax.random.normal(k2, (N, K))


def _losses(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """L_k = mean_n (tanh(x W) v_k − y_k)², task k owns column k of v."""
  return jnp.mean((jnp.tanh(x @ p["W"]) @ p["v"] - y) ** 2, axis=0)


def _numpy_jacobian(p: dict, x: jax.Array, y: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """Float64 hand-derived per-task gradients: (J_W [K, D·H], J_v [K, H·K])."""
  w, v, x, y = (np.asarray(a, np.float64) for a in (p["W"], p["v"], x, y))
  h = np.tanh(x @ w)
  r = 2.0 / x.shape[0] * (h @ v - y)  # [N, K]: dL_k / dpred_k
  jw = np.stack([(x.T @ (r[:, [k]] * v[:, k] * (1.0 - h**2))).ravel() for k in range(K)])
  jv = np.zeros((K, H, K))
  for k in range(K):
    jv[k, :, k] = h.T @ r[:, k]
  return jw, jv.reshape(K, -1)


@pytest.fixture(scope="module")
def problem() -> tuple[dict, jax.Array, jax.Array, np.ndarray, np.ndarray]:
  p = _params()
  x, y = _data()
  jw, jv = _numpy_jacobian(p, x, y)
  return p, x, y, jw, jv


def _close(a: jax.Array, b: np.ndarray, rel: float = 2e-5) -> None:
  a = np.asarray(a, np.float64)
  np.testing.assert_allclose(a, b, rtol=0, atol=rel * np.max(np.abs(b)))


def test_gramian_matches_float64_numpy_and_the_jacobian(problem) -> None:
  p, x, y, jw, jv = problem
  losses, g = jax.jit(wx.value_and_gramian(_losses))(p, x, y)
  full = np.concatenate([jw, jv], axis=1)
  _close(g, full @ full.T)
  assert g.dtype == jnp.float32 and g.shape == (K, K)
  ref_losses, jac = wx.value_and_jacobian(_losses)(p, x, y)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  _close(g, np.asarray(wx.gramian(jac), np.float64))
  np.testing.assert_array_equal(g, g.T)


@pytest.mark.parametrize(
    "shared",
    [{"W": True, "v": False}, lambda p: {"W": True, "v": False},
     {"W": jnp.bool_(True), "v": np.bool_(False)}],
    ids=["prefix", "callable", "array-bools"],
)
def test_shared_mask_gives_the_gramian_of_the_shared_leaves(problem, shared) -> None:
  p, x, y, jw, _ = problem
  (losses, aux), g = wx.value_and_gramian(
      lambda q, a, b: (_losses(q, a, b), {"n": a.shape[0]}), has_aux=True, shared=shared)(p, x, y)
  _close(g, jw @ jw.T)
  assert aux == {"n": N}
  # The same Gramian as the aggregators' split of the full Jacobian.
  _, jac = wx.value_and_jacobian(_losses)(p, x, y)
  _close(g, np.asarray(wx.gramian(jac["W"]), np.float64))


def test_heads_only_mask_and_batched_map(problem) -> None:
  p, x, y, jw, jv = problem
  _, g_heads = wx.value_and_gramian(_losses, shared={"W": False, "v": True})(p, x, y)
  _close(g_heads, jv @ jv.T)
  # Each task owns its head column, so the heads' Gramian is diagonal.
  assert np.count_nonzero(np.asarray(g_heads) - np.diag(np.diag(g_heads))) == 0
  _, g_none = wx.value_and_gramian(_losses, shared={"W": False, "v": False})(p, x, y)
  np.testing.assert_array_equal(g_none, np.zeros((K, K)))
  _, g1 = wx.value_and_gramian(_losses)(p, x, y)
  _, g3 = wx.value_and_gramian(_losses, batch_size=3)(p, x, y)  # K=4 is not a multiple of 3
  np.testing.assert_allclose(g3, g1, rtol=1e-6)


def test_sequence_argnums_and_errors(problem) -> None:
  p, x, y, jw, _ = problem
  f = lambda w, v, a, b: _losses({"W": w, "v": v}, a, b)  # noqa: E731
  _, g = wx.value_and_gramian(f, argnums=(0, 1), shared=(True, False))(p["W"], p["v"], x, y)
  _close(g, jw @ jw.T)
  with pytest.raises(ValueError, match=r"shape \(K,\)"):
    wx.value_and_gramian(lambda q: jnp.sum(_losses(q, x, y)))(p)
  with pytest.raises(ValueError, match="argnums"):
    wx.value_and_gramian(f, argnums=5)(p["W"], p["v"], x, y)
  with pytest.raises(ValueError, match="argnums"):
    wx.value_and_gramian(f, argnums=-5)(p["W"], p["v"], x, y)
  # argnums=() differentiates nothing: it gave an all-zero Gramian (jax.grad refuses it)
  for make in (wx.value_and_gramian, wx.value_and_jacobian):
    with pytest.raises(ValueError, match="non-empty sequence of ints"):
      make(f, argnums=())
  # a NumPy integer is an int (it failed with "object is not iterable")
  _, g_np = wx.value_and_gramian(f, argnums=np.int64(0))(p["W"], p["v"], x, y)
  _, g_int = wx.value_and_gramian(f, argnums=0)(p["W"], p["v"], x, y)
  np.testing.assert_array_equal(g_np, g_int)
  for bad in (0, -1, 2.0, True):  # 0 was taken for None; -1 and 2.0 failed inside lax.map
    with pytest.raises(ValueError, match="batch_size must be None or a positive int"):
      wx.value_and_gramian(f, batch_size=bad)
    with pytest.raises(ValueError, match="batch_size must be None or a positive int"):
      wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=K, batch_size=bad)


def test_memory_does_not_hold_the_jacobian() -> None:
  """O(P + K²): the compiled Gramian's temporaries are a few copies of P, the Jacobian's K."""
  d, h, k, b = 512, 1024, 16, 4
  p = {"W": jnp.zeros((d, h)), "v": jnp.zeros((h, k))}
  x, y = jnp.zeros((b, d)), jnp.zeros((b, k))
  f = lambda q: jnp.mean((jnp.tanh(x @ q["W"]) @ q["v"] - y) ** 2, axis=0)  # noqa: E731
  size = 4 * (d * h + h * k)  # bytes of one float32 gradient
  mem_g = jax.jit(wx.value_and_gramian(f)).lower(p).compile().memory_analysis()
  mem_j = jax.jit(wx.value_and_jacobian(f)).lower(p).compile().memory_analysis()
  assert mem_j.temp_size_in_bytes + mem_j.output_size_in_bytes >= k * size
  assert mem_g.temp_size_in_bytes + mem_g.output_size_in_bytes <= 4 * size


# ---------------------------------------------------------------- mtl.fit


def _task_losses(p: dict, batch: tuple, key: jax.Array) -> tuple[jax.Array, dict]:
  del key
  return _losses(p, *batch), {"w_norm": jnp.sum(p["W"] ** 2)}


def _fit(agg, shared, steps: int = 12):
  x, y = _data(2)
  # Conflicting targets: tasks 1 and 3 ask for the opposite of tasks 0 and 2.
  y = y.at[:, 1].set(-y[:, 0]).at[:, 3].set(-y[:, 2])
  return wx.mtl.fit(_task_losses, _params(3), agg, optax.adam(0.05), (x, y),
                    key=jax.random.key(4), num_steps=steps, batch_size=8, shared=shared)


@pytest.mark.parametrize(
    ("weighting", "aggregator", "hparams"),
    [(wx.weightings.upgrad, wx.upgrad, {"reg_eps": 1e-4}),
     (wx.weightings.mgda, wx.mgda, {"reg_eps": 1e-6})],
    ids=["upgrad", "mgda"],
)
@pytest.mark.parametrize("shared", [{"W": True, "v": False}, None], ids=["masked", "all-shared"])
def test_fit_with_a_gramian_weighting_equals_the_aggregator(weighting, aggregator, hparams,
                                                            shared) -> None:
  ref = _fit(aggregator(num_tasks=K, **hparams), shared)
  res = _fit(wx.mtl.gramian_weighting(weighting, num_tasks=K, **hparams), shared)
  w_ref, w = ref.step_metrics["task_weights"], res.step_metrics["task_weights"]
  assert np.all(np.isfinite(w)) and w.dtype == jnp.float32
  # Not a trivial weighting: the conflicting tasks get different weights.
  assert np.ptp(np.asarray(w_ref), axis=1).max() > 1e-2
  np.testing.assert_allclose(w, w_ref, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(res.step_metrics["task_losses"], ref.step_metrics["task_losses"],
                             rtol=2e-4)
  np.testing.assert_allclose(res.step_metrics["w_norm"], ref.step_metrics["w_norm"], rtol=2e-4)
  for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
  assert isinstance(res.aggregator_state, GramianWeightingState)
  np.testing.assert_array_equal(res.aggregator_state.task_weights, w[-1])


def test_fit_gramian_weighting_traced_hparams_under_vmap() -> None:
  def run(eps: jax.Array) -> jax.Array:
    agg = wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=K, reg_eps=eps)
    return _fit(agg, {"W": True, "v": False}, steps=3).step_metrics["task_weights"]

  eps = jnp.array([1e-4, 1.0])
  w = jax.jit(jax.vmap(run))(eps)
  np.testing.assert_allclose(w[0], run(1e-4), rtol=1e-5)
  # A large ridge pulls UPGrad's weights towards the preference 1/K.
  dev = np.abs(np.asarray(w) - 1.0 / K).max(axis=(1, 2))
  assert dev[1] < dev[0]


def test_fit_gramian_weighting_errors() -> None:
  x, y = _data()
  with pytest.raises(ValueError, match="num_tasks=3"):
    wx.mtl.fit(_task_losses, _params(), wx.mtl.gramian_weighting(wx.weightings.upgrad,
                                                                 num_tasks=3),
               optax.sgd(0.1), (x, y), key=jax.random.key(0), num_steps=1, batch_size=4)
  with pytest.raises(ValueError, match="post_step_losses"):
    wx.mtl.fit(_task_losses, _params(), wx.mtl.gramian_weighting(wx.weightings.mgda,
                                                                 num_tasks=K),
               optax.sgd(0.1), (x, y), key=jax.random.key(0), num_steps=1, batch_size=4,
               post_step_losses=True)
  with pytest.raises(ValueError, match="num_tasks"):
    wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=0)
  assert wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=np.int64(K)).num_tasks == K
  with pytest.raises(TypeError, match="callable"):
    wx.mtl.gramian_weighting("upgrad", num_tasks=K)
