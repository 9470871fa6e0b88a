"""Float64 runs (``jax_enable_x64``) stay float64: the Gramian, the weights and the update.

A float64 run is how one checks a float32 result against a reference, so it must not
fall back to float32 anywhere on the way. Until this was fixed, ``wx.gramian``,
``wx.value_and_gramian`` and every Gramian aggregator computed G and the weights in
float32 whatever the gradients' dtype. The problems below have two nearly parallel
gradients, where float32's rounding of G moves IMTL-G's update by about 1e-2 (relative), so a
float32 step anywhere fails these float64 tolerances. The references are NumPy in
float64 (IMTL-G's closed form ``w ∝ G⁻¹√diag(G)``, ``Σw = 1``).
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx


def _rows() -> np.ndarray:
  """Three task gradients of 6 entries, two of them about 1e-2 apart in direction."""
  r = np.random.default_rng(3)
  j = r.normal(size=(3, 6))
  j[1] = j[0] + 1e-2 * r.normal(size=6)
  return j


def _imtl_g64(j: np.ndarray) -> np.ndarray:
  g = j @ j.T
  w = np.linalg.solve(g, np.sqrt(np.diag(g)))
  return w / w.sum()


def test_float32_would_fail_these_tolerances():
  """The premise: the same closed form from a float32 Gramian is off by far more than the
  float64 tolerances used below (so they can tell a float32 step from a float64 one)."""
  j = _rows()
  g32 = (j.astype(np.float32) @ j.astype(np.float32).T).astype(np.float64)
  w32 = np.linalg.solve(g32, np.sqrt(np.diag(g32)))
  w32 /= w32.sum()
  assert np.max(np.abs(w32 - _imtl_g64(j))) > 1e-6


def test_gramian_is_float64_for_float64_gradients():
  j = _rows()
  with jax.enable_x64(True):
    g = wx.gramian({"a": jnp.asarray(j[:, :4]), "b": jnp.asarray(j[:, 4:])})
    assert g.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g), j @ j.T, rtol=1e-13)
    # float32 gradients keep a float32 Gramian under x64 too (the default follows the input).
    assert wx.gramian({"a": jnp.asarray(j, jnp.float32)}).dtype == jnp.float32


def test_value_and_gramian_is_float64_for_float64_losses():
  j = _rows()
  with jax.enable_x64(True):
    losses, g = wx.value_and_gramian(lambda p: jnp.asarray(j) @ p)(jnp.ones(6))
    assert losses.dtype == g.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(g), j @ j.T, rtol=1e-12)


@pytest.mark.parametrize("shared", [None, {"w": True, "head": False}], ids=["all", "masked"])
def test_imtl_g_aggregator_update_is_float64(shared):
  """The aggregator path: Gramian, (rescue), weights and Σ w_k g_k, against NumPy's."""
  j = _rows()
  with jax.enable_x64(True):
    grads = {"w": jnp.asarray(j), "head": jnp.asarray(np.eye(3))}
    params = {"w": jnp.zeros(6), "head": jnp.zeros(3)}
    tx = wx.imtl_g(shared=shared) if shared else wx.imtl_g()
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert {x.dtype for x in jax.tree.leaves(u)} == {jnp.dtype(jnp.float64)}
    if shared:
      w = _imtl_g64(j)
      np.testing.assert_allclose(np.asarray(u["head"]), np.ones(3), rtol=1e-15)
    else:  # the head rows take part in the Gramian
      w = _imtl_g64(np.concatenate([j, np.eye(3)], axis=1))
    np.testing.assert_allclose(np.asarray(u["w"]), w @ j, rtol=1e-10)


def test_gramian_weighting_step_is_float64():
  """The Jacobian-free path (``mtl.gramian_weighting``): G from VJPs and JVPs, then one
  backward pass of ``Σ w_k ℓ_k``, against NumPy's update."""
  j = _rows()
  with jax.enable_x64(True):
    gw = wx.mtl.gramian_weighting(wx.weightings.imtl_g, num_tasks=3)
    fun = lambda p: (jnp.asarray(j) @ p["w"], {})  # noqa: E731  losses linear in w: J = j
    params = {"w": jnp.ones(6)}
    (losses, _), u, state = gw.value_and_update(fun, params, None)
    assert u["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(u["w"]), _imtl_g64(j) @ j, rtol=1e-10)
    assert state.task_weights.dtype == jnp.float32  # reported, as in float32 runs


def test_fit_in_float64_keeps_float64_parameters():
  """``mtl.fit`` with a Gramian aggregator under x64: float64 parameters from start to end,
  and the first step's update is IMTL-G's float64 one (plain SGD, learning rate 1)."""
  j = _rows()
  data = (jnp.zeros((4, 1)),)
  with jax.enable_x64(True):
    params = {"w": jnp.zeros(6, jnp.float64)}
    fit = wx.mtl.fit(lambda p, b, k: (jnp.asarray(j) @ p["w"], {}), params, wx.imtl_g(num_tasks=3),
                     optax.sgd(1.0), data, key=jax.random.key(0), num_steps=1, batch_size=2)
    assert fit.params["w"].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(fit.params["w"]), -(_imtl_g64(j) @ j), rtol=1e-10)


# The methods whose weights come from the Gramian alone; each records its weights in the
# float32 field task_weights, and Nash-MTL also caches them in float32 between refreshes.
GRAMIAN_ONLY = ["upgrad", "dualproj", "mgda", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl",
                "fairgrad", "krum", "config", "pcgrad"]
RECORDED = {"nash_mtl": 2}
# docs/conventions.md: these cast nothing to float32.
NO_CAST = ["linear_scalarization", "trimmed_mean", "graddrop"]
RECORDED.update(dict.fromkeys(NO_CAST, 0))


@pytest.mark.parametrize("name", GRAMIAN_ONLY + NO_CAST)
def test_methods_compute_in_float64(name):
  """Under x64 with float64 gradients, nothing on the way from the gradients to the update
  is cast to float32: the program's only float32 conversions are scalars (the power of two
  that rescales a Gramian, exact in any dtype) and the ``[K]`` weights the state records.
  (IMTL-G's float64 accuracy is measured above; this covers every Gramian-only method,
  and the methods docs/conventions.md says cast nothing.)"""
  r = np.random.default_rng(2)
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.asarray(r.normal(size=(3, 4, 3))), "b": jnp.asarray(r.normal(size=(3, 3)))}
    tx = getattr(wx, name)(num_tasks=3)
    jaxpr = jax.make_jaxpr(lambda g, s, k: tx.update(g, s, params, key=k))(
        grads, tx.init(params), jax.random.key(0))

  def casts(jaxpr):  # the shapes cast to float32, inside cond, while, pjit, custom_jvp too
    for eqn in jaxpr.eqns:
      if (eqn.primitive.name in ("convert_element_type", "bitcast_convert_type")
          and eqn.outvars[0].aval.dtype == jnp.float32):
        yield eqn.outvars[0].aval.shape
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from casts(sub)

  shapes = list(casts(jaxpr.jaxpr))
  assert [s for s in shapes if s != ()] == [(3,)] * RECORDED.get(name, 1), shapes


@pytest.mark.parametrize("name", ["upgrad", "mgda", "imtl_g", "dualproj"])
@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_float64_gradients_beyond_float32s_range(name, scale):
  """Gradients of 1e±200 (float64 only): their Gramian (1e±400) leaves float64's range,
  so the aggregators rescale the gradients by a power of two, found in float64 (in
  float32, 1e200 is infinite and the rescue gave up: updates off by 10-75%). These
  methods' updates scale with the gradients: u(cJ) = c·u(J)."""
  j = np.random.default_rng(0).normal(size=(3, 5))
  with jax.enable_x64(True):
    tx = getattr(wx, name)()
    p = {"w": jnp.zeros(5)}
    big, _ = tx.update({"w": jnp.asarray(j * scale)}, tx.init(p), p)
    one, _ = tx.update({"w": jnp.asarray(j)}, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(big["w"]) / scale, np.asarray(one["w"]), rtol=1e-12,
                             atol=1e-14)
