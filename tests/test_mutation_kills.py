"""Tests written to kill mutants that survived the rest of the suite (see TESTING.md).

Each test names the mutation it was written for (``tools/mutate.py``'s operator and
line) and checks a documented behaviour, computed independently, that the
mutation changes.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx

# A Gramian with a conflict (g1·g3 < 0) and norms over a factor 3, so that every
# hyperparameter below changes the weights.
_J = np.array([[1.0, 0.2, 0.0, 0.3], [0.1, 2.0, 0.5, 0.0], [-0.8, -0.3, 3.0, 0.2]])
G = jnp.asarray(_J @ _J.T, jnp.float32)

# The documented defaults (docstrings; DESIGN: the references' own defaults where one
# exists: CAGrad c=0.4 and Nash-MTL max_norm=1 from the Nash-MTL code, UPGrad's ridge
# 1e-4 on G/tr(G) from torchjd), and a different value that must change the weights.
DEFAULTS = [
    ("mgda", "reg_eps", 1e-6, 1e-1),
    ("upgrad", "reg_eps", 1e-4, 1e-1),
    ("upgrad", "ridge", "trace", "relative"),
    ("cagrad", "c", 0.4, 0.8),
    ("cagrad", "rescale", True, False),
    ("cagrad", "reg_eps", 1e-6, None),  # with one task in the free set the ridge drops out
    ("nash_mtl", "max_norm", 1.0, 0.5),
    ("nash_mtl", "reg_eps", 1e-6, 1e-1),
]


@pytest.mark.parametrize(("name", "arg", "default", "other"), DEFAULTS,
                         ids=[f"{n}-{a}" for n, a, _, _ in DEFAULTS])
def test_weighting_defaults_are_the_documented_ones(name, arg, default, other):
  """Mutants of a default (e.g. ``c: float = 0.4 -> 0.8``) change what users get silently."""
  fn = getattr(wx.weightings, name)
  assert inspect.signature(fn).parameters[arg].default == default
  # Passed explicitly, a float is traced rather than folded: the same up to float32 rounding.
  np.testing.assert_allclose(fn(G), fn(G, **{arg: default}), rtol=1e-6, atol=1e-7)
  if other is None:
    return
  assert not np.allclose(fn(G), fn(G, **{arg: other}), rtol=1e-6, atol=0), (
      f"{name}: {arg}={other!r} should change the weights, or this test cannot see {arg}"
  )


def test_concrete_zero_d_bool_arrays_are_static_mask_leaves():
  """Mutant ``_base.py: drop Not`` in ``_static_bool`` (concrete arrays refused as masks).

  ``resolve_shared`` takes the mask leaves ``optax.masked`` takes: Python and NumPy
  bools, including 0-d NumPy or JAX bool arrays whose value is known; only a traced
  bool (unknown until run time) is refused.
  """
  import jax

  params = {"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(())}
  mask = {"a": np.array(True), "b": jnp.array(False), "c": np.bool_(True)}
  resolved = wx.aggregators.resolve_shared(mask, params)
  assert resolved == {"a": True, "b": False, "c": True}
  assert all(type(v) is bool for v in resolved.values())

  def traced(flag):
    return wx.aggregators.resolve_shared({"a": flag, "b": True, "c": True}, params)

  with pytest.raises(TypeError, match="static bools"):
    jax.jit(traced)(jnp.array(True))


@pytest.mark.parametrize("factor", [0.5, 3.0, 1e3])
def test_imtl_g_opposite_gradients_of_different_norms_get_zero_weights(factor):
  """Mutant ``imtl_g.py: where(keep, coef², 0.0) -> 1.0``: the range test counts dropped axes.

  Documented: when the equal-projection condition has no solution but zero (two
  opposite gradients, ``C⁺1 = 0``) the weights are zero. With different norms the
  rounding left in ``C⁺1`` does not cancel in ``Σ_k w_k``, so only the test that 1
  lies in the range of ``C`` returns the documented zeros.
  """
  rng = np.random.default_rng(int(factor * 10))
  for _ in range(5):
    g = rng.standard_normal(6)
    j = np.stack([g, -factor * g])
    w = wx.weightings.imtl_g(jnp.asarray(j @ j.T, jnp.float32))
    np.testing.assert_array_equal(w, np.zeros(2, np.float32))


@pytest.mark.parametrize("s", [1.0, 4.0])
def test_nash_mtl_does_not_clip_an_update_that_cancels(s):
  """Mutant ``nash_mtl.py:145 maximum(βᵀCβ, 0.0) -> 1.0`` (the update's norm floored at 1).

  Documented: ``w = α·min(1, max_norm/‖Jᵀα‖)``. For two opposite gradients of equal
  norm, ``α_1 = α_2`` by symmetry, so ``Jᵀα = 0``: nothing to clip, whatever
  ``max_norm > 0``, and the ridge alone fixes α: ``reg_eps·G_kk·α_k = 1/α_k``, i.e.
  ``α_k = 1/√(reg_eps·s)`` for ``G = s·[[1, -1], [-1, 1]]`` (a closed form).
  """
  gram = jnp.asarray([[s, -s], [-s, s]], jnp.float32)
  want = np.full(2, 1.0 / np.sqrt(1e-2 * s))
  for max_norm in (0.0, 0.5, 1.0):
    w = wx.weightings.nash_mtl(gram, max_norm=max_norm, reg_eps=1e-2)
    np.testing.assert_allclose(w, want, rtol=1e-5, err_msg=f"max_norm={max_norm}")


def test_gradvac_correction_reaches_a_nonzero_target_cosine():
  """Mutant ``gradvac.py:49 phi_hat**2 -> phi_hat**3`` (the correction's √(1−φ̂²)).

  Documented: when ``φ = cos(g_i', g_j) < φ̂_ij`` the correction makes the cosine
  exactly ``φ̂_ij``. The other tests use ``φ̂ = 0`` (the first step, PCGrad), where
  ``φ̂² = φ̂³``; here the targets are 0.5 and -0.8, checked in float64 on the rows.
  """
  j = np.array([[1.0, 0.0], [-0.6, 0.8]])  # unit rows, cosine -0.6
  targets = jnp.asarray([[0.0, 0.5], [-0.8, 0.0]], jnp.float32)
  w = np.asarray(wx.weightings.gradvac(jnp.asarray(j @ j.T, jnp.float32), targets), np.float64)
  # Task 1: φ = -0.6 >= φ̂ = -0.8, not corrected (c_1 = e_1); task 0: g_0' = g_0 + c·g_1.
  assert w[0] == pytest.approx(1.0, abs=1e-6)
  g0 = j[0] + (w[1] - 1.0) * j[1]
  cos = g0 @ j[1] / np.linalg.norm(g0) / np.linalg.norm(j[1])
  assert cos == pytest.approx(0.5, abs=1e-5)
  # The closed form: c = ‖g_0‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_1‖(√(1−φ̂²) + 1e-8)).
  c = (0.5 * 0.8 + 0.6 * np.sqrt(0.75)) / (np.sqrt(0.75) + 1e-8)
  assert w[1] - 1.0 == pytest.approx(c, rel=1e-5)


def test_gradvac_targets_stay_finite_with_a_zero_gradient():
  """Mutant ``gradvac.py:46 norm[j] > 0 -> >= 0`` (a zero gradient counted as live).

  A zero gradient has no cosine; the weighting never corrects against it, and the
  targets in the aggregator's state must stay finite (a NaN target would silently
  switch GradVac off for that pair at every later step, since ``φ < NaN`` is false).
  Two steps through the aggregator: one with a zero gradient, then one where every
  gradient is non-zero and task 2 conflicts with task 0.
  """
  import jax

  tx = wx.aggregators.gradvac(num_tasks=3, beta=0.5)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  zero_task = {"w": jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}
  _, state = tx.update(zero_task, state, params, key=jax.random.key(0))
  assert bool(jnp.all(jnp.isfinite(state.targets))), state.targets
  conflict = {"w": jnp.asarray([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])}
  u, state = tx.update(conflict, state, params, key=jax.random.key(1))
  assert bool(jnp.all(jnp.isfinite(state.targets))), state.targets
  assert bool(jnp.all(jnp.isfinite(u["w"])))
