"""Tests written to kill mutants of ``aggregators/_base.py`` and ``losses/ghm.py`` that
survived the rest of the suite (see TESTING.md).

Each test names the mutation it was written for (``tools/mutate.py``'s operator and
line) and checks a documented behaviour, computed independently, that the
mutation changes.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax.aggregators._base import _pow2_scale

# ------------------------------------------------------------------ GHM-C / GHM-R


def _np_ghm_beta(g, bins, last_edge, valid=None, tot=None):
  """mmdetection's GHM weights for one call with momentum 0, in float64.

  Bin i holds ``edges[i] <= g < edges[i+1]`` (a NaN g is in none); ``beta = tot / (number of
  valid elements in the bin) / n`` on valid elements, n the number of non-empty bins (Li et
  al. 2019, eq. 4-5; mmdetection's ``GHMC``/``GHMR``); ``tot`` defaults to the element count.
  """
  g = np.asarray(g, np.float64)
  valid = np.ones(g.shape, bool) if valid is None else np.asarray(valid, bool)
  tot = g.size if tot is None else tot
  edges = np.arange(bins + 1, dtype=np.float64) / bins
  edges[-1] = last_edge
  beta = np.zeros_like(g)
  n = 0
  for i in range(bins):
    inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
    if inds.sum():
      beta[inds] = tot / inds.sum()
      n += 1
  return beta / max(n, 1)


def _np_bce(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


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


def test_ghm_tot_is_at_least_one():
  """Mutants ``ghm.py: tot = jnp.maximum(..., 1.0)`` with ``1.0 -> 2.0`` (GHM-C line 204,
  GHM-R line 283) and ``.maximum -> .minimum`` (GHM-R line 283).

  Documented: ``tot = max(Σ v, 1)`` for GHM-C (a count of valid elements) and
  ``tot = max(Σ label_weight, 1)`` for GHM-R; with one valid element, or label weights that
  sum to less than 1, the floor of 1 is what counts. Expected: float64 transcription.
  """
  x = np.array([0.3, -1.0, 2.0, 0.7], np.float32)
  y = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
  lw = np.array([0.0, 1.0, 0.0, 0.0], np.float32)  # one valid element: beta = 1
  loss, _ = wx.losses.ghm_c(jnp.asarray(x), jnp.asarray(y), label_weights=jnp.asarray(lw))
  np.testing.assert_allclose(loss, np.where(lw > 0, _np_bce(x, y), 0.0), rtol=1e-6)

  preds = np.array([0.01, 0.5, -0.3, 0.2], np.float32)
  targets = np.zeros(4, np.float32)
  for lw in (np.array([0.3, 0.2, 0.0, 0.0], np.float32),  # Σ lw = 0.5: tot = 1
             np.array([0.9, 0.8, 0.7, 0.0], np.float32)):  # Σ lw = 2.4: tot = 2.4
    loss, _ = wx.losses.ghm_r(jnp.asarray(preds), jnp.asarray(targets), mu=0.02,
                              label_weights=jnp.asarray(lw))
    d = np.asarray(preds, np.float64)
    g = np.abs(d) / np.sqrt(d * d + 0.02**2)
    beta = _np_ghm_beta(g, 10, 1e3, valid=lw > 0, tot=max(float(lw.sum()), 1.0))
    np.testing.assert_allclose(loss, (np.sqrt(d * d + 0.02**2) - 0.02) * beta, rtol=2e-5)


def test_ghm_c_nan_label_under_jit_is_left_out_of_the_bin_counts():
  """Mutant ``ghm.py:5 (line 99) BitAnd -> BitOr: valid = valid & ~jnp.isnan(g)``.

  Documented: under jit an invalid label makes its element's loss NaN and "it is left out
  of the bin counts" (mmdetection: a NaN g fails every bin comparison), so every other
  element keeps the weights of the bins without it; tot still counts it (it is valid by
  its label weight). Expected: float64 transcription.
  """
  x = np.array([-4.0, -3.5, -3.0, 0.2, 1.0, 3.0, -0.5, 2.5], np.float32)
  y = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, np.nan, 0.0], np.float32)
  loss = np.asarray(jax.jit(lambda a, b: wx.losses.ghm_c(a, b)[0])(x, y))
  assert np.isnan(loss[6])
  g = np.abs(_np_sigmoid(x) - y)  # NaN for the NaN label: in no bin
  want = _np_bce(x, y) * _np_ghm_beta(g, 10, 1.0 + 1e-6, tot=x.size)
  np.testing.assert_allclose(np.delete(loss, 6), np.delete(want, 6), rtol=1e-5)


def test_ghm_c_labels_of_ignored_elements_may_hold_anything():
  """Mutant ``ghm.py:77 (line 200) Is -> IsNot: None if lw is None else valid``.

  Documented: labels outside ``[0, 1]`` are refused on valid elements only; "elements with
  ``label_weight <= 0`` may hold anything" (e.g. an ignore index) and get zero loss.
  """
  x = np.array([0.5, -1.0, 2.0, 0.1], np.float32)
  y = np.array([1.0, 0.0, 7.0, -1.0], np.float32)  # ignore markers on the last two
  lw = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
  loss, _ = wx.losses.ghm_c(jnp.asarray(x), jnp.asarray(y), label_weights=jnp.asarray(lw))
  g = np.abs(_np_sigmoid(x) - y)
  want = np.where(lw > 0, _np_bce(x, np.clip(y, 0, 1)), 0.0) * _np_ghm_beta(
      g, 10, 1.0 + 1e-6, valid=lw > 0, tot=2.0)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_ghm_r_huge_residuals_land_in_the_last_bin():
  """A bug this work found (not a mutant): ``g = |d| / sqrt(d² + μ²)`` computed as written
  overflows ``d²`` in float32 beyond |d| ≈ 1.8e19, giving g = 0 (the easiest bin) where the
  documented formula gives g = 1 (the last bin). Expected: float64 transcription, where d²
  does not overflow. (Also exercises ``ghm.py`` line 288's mutants.)
  """
  preds = np.array([1e20, 0.5, 0.001, 1e19, -3e25, 0.03, 0.0], np.float32)
  targets = np.zeros_like(preds)
  loss, _ = wx.losses.ghm_r(jnp.asarray(preds), jnp.asarray(targets), mu=0.02)
  d = preds.astype(np.float64)
  g = np.abs(d) / np.sqrt(d * d + 0.02**2)
  want = (np.sqrt(d * d + 0.02**2) - 0.02) * _np_ghm_beta(g, 10, 1e3)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def _near_edges(bins):
  """Gradient norms 5e-7 either side of every inner edge i/B, and 0: well inside their bins
  at float32 resolution (~6e-8 at 1), and 1e-6-wide gaps that move an edge by 1e-6 swap."""
  inner = np.arange(1, bins) / bins
  return np.concatenate([[0.0, 0.03], inner - 5e-7, inner + 5e-7])


@pytest.mark.parametrize("bins", [3, 10])
def test_ghm_elements_next_to_a_bin_edge_land_in_the_documented_bin(bins):
  """Mutants of the edges built in ``ghm_c`` (line 205, ``.at[-1].add(1e-6)``: ``drop USub``
  -> ``.at[1]``, ``1 -> 2`` -> ``.at[-2]``) and ``ghm_r`` (line 289, ``.at[-1].set(1e3)``).

  Documented: bins ``[i/B, (i+1)/B)``, only the last edge raised (GHM-C: by 1e-6 so that
  g = 1 lands in the last bin; GHM-R: to 1e3). Moving an inner edge by 1e-6 moves elements
  next to it (``test_ghm_binning_exact_at_edges`` passes its own edges, so it cannot see
  how ``ghm_c``/``ghm_r`` build them). Expected: float64 transcription with edges i/B.
  """
  g = _near_edges(bins)
  # GHM-C: label 1 and σ(x) = 1 - g, so g = |σ(x) - y|; plus g = 1 exactly (x → -inf).
  x = np.concatenate([np.log1p(-g) - np.log(np.maximum(g, 1e-30)), [-200.0]]).astype(np.float32)
  x[0] = 100.0  # g = 0
  y = np.ones_like(x)
  loss, _ = wx.losses.ghm_c(jnp.asarray(x), jnp.asarray(y), bins=bins)
  gc = np.abs(_np_sigmoid(x) - y)
  edges = np.arange(bins + 1) / bins
  assert np.min(np.abs(gc[:, None] - edges[None, 1:-1])) > 2e-7  # clear of the edges
  want = _np_bce(x, y) * _np_ghm_beta(gc, bins, 1.0 + 1e-6)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-12)  # BCE(100, 1) ≈ 4e-44

  # GHM-R: d = μ g / sqrt(1 - g²) gives |d| / sqrt(d² + μ²) = g; plus a huge residual (g = 1).
  mu = 0.02
  d = np.concatenate([mu * g / np.sqrt(1 - g * g), [1e6]]).astype(np.float32)
  loss, _ = wx.losses.ghm_r(jnp.asarray(d), jnp.zeros_like(jnp.asarray(d)), mu=mu, bins=bins)
  d64 = d.astype(np.float64)
  gr = np.abs(d64) / np.sqrt(d64 * d64 + mu * mu)
  assert np.min(np.abs(gr[:, None] - edges[None, 1:-1])) > 2e-7
  want = (np.sqrt(d64 * d64 + mu * mu) - mu) * _np_ghm_beta(gr, bins, 1e3)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-12)


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



class _Seen(NamedTuple):
  """The Gramian and the scale that ``gramian_aggregator`` handed its weighting."""

  gramian: jax.Array = jnp.zeros((2, 2), jnp.float32)
  scale: jax.Array = jnp.zeros((), jnp.float32)


def _record(gramian, task_losses, state, key, *, scale):
  del task_losses, state, key
  return jnp.full((2,), 0.5), _Seen(gramian, scale)


_RESCUE = wx.gramian_aggregator(_record, _Seen, normalize_gramian=True)
_RESCUE_UPDATE = jax.jit(_RESCUE.update)
_B = 2.0**-50  # its square is the documented threshold 2^-100

# (task rows, whether the Gramian must be recomputed from the rescaled gradients)
RESCUE_CASES = {
    "normal": ([[1.0, 0.0, 0.5], [0.0, 2.0, -1.0]], False),
    "top-diag-exactly-2^-100": ([[_B, 0.0, 0.0], [0.0, 0.5 * _B, 0.0]], False),
    "top-diag-just-below-2^-100": ([[0.75 * _B, 0.0, 0.0], [0.0, 0.5 * _B, 0.1 * _B]], True),
    "tiny": ([[1e-30, 3e-31, 0.0], [-2e-31, 1e-30, 5e-31]], True),
    "one-tiny-task-beside-a-normal-one": ([[1.0, 0.5, 0.0], [1e-30, 0.0, 2e-30]], False),
    "one-overflowing-task": ([[1e30, 0.0, 2e29], [0.0, 1.0, 0.5]], True),
    "huge": ([[1e30, -3e29, 0.0], [2e29, 1e30, 4e29]], True),
    # leaf "a" (first column) huge, leaf "b" tiny: s must follow the largest leaf
    "huge-leaf-beside-a-tiny-leaf": ([[1e30, 1e-30, 0.0], [2e29, 0.0, 3e-30]], True),
}


@pytest.mark.parametrize("case", list(RESCUE_CASES))
def test_gramian_is_rescued_exactly_when_documented(case):
  """Mutants of ``_rescue_gramian``'s test and of ``_TINY_GRAMIAN`` (``_base.py``, lines
  295, 308, 309: ``2.0**-100`` -> ``2.0*-100`` / ``4.0**-100`` / ``2.0**100`` /
  ``2.0**-101``; ``top = jnp.max(diag)`` -> ``.min``; ``bad = ~all(isfinite(g)) | (top <
  T)`` with ``| -> &``, ``drop ~``, ``.all -> .any``, ``< -> <=``) and of the rescaling
  (line 315 ``Div -> Mult``, line 290's swapped where, line 287's ``.max -> .min``).

  Documented (``normalize_gramian``): when ``G`` overflows (any entry) or its *largest*
  diagonal entry is below 2^-100, the weighting gets ``G / s²`` with ``s`` the power of two
  at or above the largest gradient magnitude, and ``scale=s``; otherwise ``G`` and ``s = 1``.
  Expected: the Gramian of the rescaled gradients in float64.
  """
  rows, rescued = RESCUE_CASES[case]
  j = np.asarray(rows, np.float32)
  # two leaves, so that the largest magnitude is taken over leaves too
  _, seen = _RESCUE_UPDATE({"a": jnp.asarray(j[:, :1]), "b": jnp.asarray(j[:, 1:])},
                           _RESCUE.init(None))
  s = float(seen.scale)
  mx = float(np.abs(j).max())
  if rescued:
    assert s == 2.0 ** np.round(np.log2(s)) and 0.5 <= mx / s <= 1.0, (case, s, mx)
  else:
    assert s == 1.0, (case, s)
  j64 = j.astype(np.float64) / s
  want = j64 @ j64.T
  np.testing.assert_allclose(seen.gramian, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_num_tasks_must_be_positive():
  """Mutant ``_base.py:46 (line 110) drop Not: ... and not isinstance(k, bool) and k < 1``.

  Documented (``requires_num_tasks``): ``num_tasks`` is a positive number of tasks; 0 or a
  negative K is refused with a ValueError that names it, while K = 1 is a legal single task.
  """
  for k in (0, -2):
    with pytest.raises(ValueError, match=rf"num_tasks must be a positive number of tasks; got {k}"):
      wx.aggregators.db_mtl(num_tasks=k)
  wx.aggregators.db_mtl(num_tasks=1)

