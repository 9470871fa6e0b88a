"""Tests written to kill mutants of ``aggregators/_base.py`` and ``losses/ghm.py`` that
survived the rest of the suite (see TESTING.md).

Each test names the mutation it was written for (``tools/mutate.py``'s operator and
line) and checks a documented behaviour, computed independently, that the
mutation changes.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax.aggregators._base import _pow2_scale

# ------------------------------------------------------------------ GHM-C / GHM-R


def _np_ghm_beta(g, bins, last_edge):
  """mmdetection's GHM weights for one call with momentum 0 and no label weights, in float64.

  Bin i holds ``edges[i] <= g < edges[i+1]``; ``beta = tot / (count of the bin) / n`` with
  ``tot`` the number of elements and n the number of non-empty bins (Li et al. 2019, eq. 4-5).
  """
  edges = np.arange(bins + 1, dtype=np.float64) / bins
  edges[-1] = last_edge
  beta = np.zeros_like(g)
  n = 0
  for i in range(bins):
    inds = (g >= edges[i]) & (g < edges[i + 1])
    if inds.sum():
      beta[inds] = g.size / inds.sum()
      n += 1
  return beta / max(n, 1)


# Residuals on the scale of mu = 0.02 (box deltas after normalisation), so that mu changes
# both the ASL1 values and the bins the gradient norms fall in.
_D = np.array([0.0, 0.004, -0.01, 0.015, 0.02, -0.03, 0.05, 0.08, -0.2, 0.5, 1.5, -0.007])


def test_ghm_defaults_are_the_documented_ones():
  """Mutant ``ghm.py:20 (line 217) 0.02 -> 0.04: mu: ArrayLike = 0.02`` (GHM-R's default mu).

  Documented (and the paper's and mmdetection's GHMR defaults): ``mu=0.02, bins=10,
  momentum=0``; GHM-C: ``bins=10, momentum=0`` (mmdetection's ``GHMC`` class defaults).
  Besides the signature, a call with the defaults must give the paper's ASL1
  ``sqrt(d² + μ²) − μ`` at μ = 0.02 times the harmonizing weights of the gradient norms
  ``|d| / sqrt(d² + μ²)`` in ten bins, here a float64 transcription.
  """
  r = inspect.signature(wx.losses.ghm_r).parameters
  c = inspect.signature(wx.losses.ghm_c).parameters
  assert (r["mu"].default, r["bins"].default, r["momentum"].default) == (0.02, 10, 0.0)
  assert (c["bins"].default, c["momentum"].default) == (10, 0.0)

  targets = np.linspace(-1.0, 1.0, _D.size)
  preds = targets + _D
  loss, state = wx.losses.ghm_r(jnp.asarray(preds, jnp.float32), jnp.asarray(targets, jnp.float32))
  d = np.asarray(jnp.asarray(preds, jnp.float32) - jnp.asarray(targets, jnp.float32), np.float64)
  mu = 0.02
  asl1 = np.sqrt(d * d + mu * mu) - mu
  want = asl1 * _np_ghm_beta(np.abs(d) / np.sqrt(d * d + mu * mu), 10, 1e3)
  np.testing.assert_allclose(loss, want, rtol=2e-5, atol=1e-8)
  np.testing.assert_array_equal(state.acc_sum, np.zeros(10))  # momentum 0: untouched


# ------------------------------------------------------------------ Gramian rescue


@pytest.mark.parametrize("m", [3e-30, 1.0, 0.75, 5e30, 2.0**-120])
def test_pow2_scale_is_the_power_of_two_at_or_above_the_largest_magnitude(m):
  """Mutant ``_base.py:15 (line 290) where(c, a, b) -> where(c, b, a)`` in ``_pow2_scale``.

  Documented: ``s`` is the power of two at or above max |x| (1 only when that is 0 or not
  finite), so that ``max |x| / s`` lies in ``[1/2, 1]``: the mutant returns 1 for every
  finite non-zero input and 2^e only for the degenerate ones.
  """
  x = [jnp.array([[0.5 * m, -m], [0.0, 0.25 * m]], jnp.float32), jnp.array([-0.1 * m], jnp.float32)]
  s = float(_pow2_scale(x))
  mx = float(np.float32(m))
  assert s == 2.0 ** np.round(np.log2(s)), s  # a power of two
  assert 0.5 <= mx / s <= 1.0, (m, s)
  for degenerate in (0.0, np.inf, np.nan):
    assert float(_pow2_scale([jnp.full((2, 2), degenerate, jnp.float32)])) == 1.0


# Two tasks, two leaves (one a [K, out, in] dense-layer Jacobian), norms a factor ~2 apart
# and an obtuse angle: MGDA's weights are far from the 1/2, 1/2 it gives a zero Gramian.
_G1 = {"w": np.array([[1.0, 0.3], [0.0, -0.5]]), "b": np.array([0.2, 0.4])}
_G2 = {"w": np.array([[-0.4, 1.5], [1.0, 0.8]]), "b": np.array([-0.6, 1.1])}


@pytest.mark.parametrize("scale", [1e-30, 1e-21, 1e30])
def test_rescued_gramian_gives_the_min_norm_point_of_tiny_and_huge_gradients(scale):
  """Mutant ``_base.py:15 (line 290) where(c, a, b) -> where(c, b, a)`` in ``_pow2_scale``.

  Documented (``gramian_aggregator``'s ``normalize_gramian``): gradients as small as 1e-30
  or as large as 1e30 neither underflow nor overflow in ``G``. Their float32 Gramian is 0
  (squares of 1e-30, or below float32's smallest normal for 1e-21) or inf (1e30), so only
  the rescaled one gives MGDA's min-norm weights; expected: the K = 2 closed form
  ``λ₁ = clip(<g₂ − g₁, g₂> / ‖g₁ − g₂‖², 0, 1)`` on the float64 gradients, and the update
  ``λ₁ g₁ + λ₂ g₂`` in float64.
  """
  grads = {k: jnp.asarray(np.stack([_G1[k], _G2[k]]) * scale, jnp.float32) for k in _G1}
  g64 = [np.concatenate([np.asarray(grads[k][t], np.float64).ravel() for k in sorted(_G1)])
         for t in range(2)]
  a, b = g64
  lam1 = np.clip((b - a) @ b / ((a - b) @ (a - b)), 0.0, 1.0)
  assert 0.2 < lam1 < 0.8  # not the uniform weights a zero Gramian would give
  tx = wx.aggregators.mgda(num_tasks=2)
  u, state = jax.jit(tx.update)(grads, tx.init(None))
  w = optax.tree_utils.tree_get(state, "task_weights")
  np.testing.assert_allclose(w, [lam1, 1 - lam1], rtol=1e-5)
  for k in _G1:
    g = np.asarray(grads[k], np.float64)
    want = lam1 * g[0] + (1 - lam1) * g[1]
    np.testing.assert_allclose(np.asarray(u[k], np.float64), want, rtol=1e-5, atol=1e-6 * scale)

