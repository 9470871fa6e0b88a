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
    opp[1] = -1.3 * opp[0] + 1e-2 * rng.normal(size=N)
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
