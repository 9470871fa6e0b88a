"""Correctness of weightax.losses against naive float64 NumPy versions of the papers' formulas.

The references below are written directly from the papers (and, for GHM, the way
mmdetection loops over bins), not from weightax's code; no expected number comes from the
code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weightax import losses as wl
from weightax.losses import GHMState, init_ghm_state

# Jitted aliases: an eager call compiles every primitive separately (seconds per new shape on
# a small machine), a jitted one compiles once. Eager behaviour, and the label-range check
# that needs concrete labels, are covered by test_losses_conformance.py.
asymmetric_loss = jax.jit(wl.asymmetric_loss)
class_balanced_weights = jax.jit(wl.class_balanced_weights)
ghm_c = jax.jit(wl.ghm_c, static_argnames="bins")
ghm_r = jax.jit(wl.ghm_r, static_argnames="bins")
inverse_frequency_weights = jax.jit(wl.inverse_frequency_weights)
ldam_loss = jax.jit(wl.ldam_loss)
ldam_margins = jax.jit(wl.ldam_margins)
logit_adjusted_cross_entropy = jax.jit(wl.logit_adjusted_cross_entropy)
sigmoid_focal_loss = jax.jit(wl.sigmoid_focal_loss)
softmax_focal_loss = jax.jit(wl.softmax_focal_loss)
sqrt_inverse_frequency_weights = jax.jit(wl.sqrt_inverse_frequency_weights)
weighted_softmax_cross_entropy = jax.jit(wl.weighted_softmax_cross_entropy)

RTOL = 2e-5
ATOL = 1e-6

# ---------------------------------------------------------------- naive float64 references


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_bce(x, y):
  p = np_sigmoid(x)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_focal(x, y, alpha, gamma):
  p = np_sigmoid(x)
  pt = p * y + (1 - p) * (1 - y)
  loss = np_bce(x, y) * (1 - pt) ** gamma
  if alpha is not None:
    loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
  return loss


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_ce(z, y):
  return -np.log(np_softmax(z)[np.arange(len(y)), y])


def np_ghm_c(x, y, lw, acc_sum, bins, mmt):
  """mmdetection's GHMC.forward for one call.

  Returns (BCE_i * beta_i, acc_sum, beta_i, mmdetection's scalar loss), where beta are
  mmdetection's ``weights`` after the division by n, before the final division by tot.
  """
  acc_sum = np.array(acc_sum, np.float64)
  edges = np.arange(bins + 1, dtype=np.float32) / bins
  edges[-1] += 1e-6
  g = np.abs(np_sigmoid(x) - y)
  weights = np.zeros_like(g)
  valid = lw > 0
  tot = max(valid.sum(), 1.0)
  n = 0
  for i in range(bins):
    inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
    num = inds.sum()
    if num > 0:
      if mmt > 0:
        acc_sum[i] = mmt * acc_sum[i] + (1 - mmt) * num
        weights[inds] = tot / acc_sum[i]
      else:
        weights[inds] = tot / num
      n += 1
  if n > 0:
    weights = weights / n
  scalar = (np_bce(x, y) * weights).sum() / tot  # F.bce_with_logits(weight, 'sum') / tot
  return np_bce(x, y) * weights, acc_sum, weights, scalar


def np_ghm_r(pred, target, lw, acc_sum, mu, bins, mmt):
  """mmdetection's GHMR.forward for one call; returns as ``np_ghm_c``."""
  acc_sum = np.array(acc_sum, np.float64)
  edges = np.arange(bins + 1, dtype=np.float32) / bins
  edges[-1] = 1e3
  d = np.asarray(pred, np.float64) - target
  loss = np.sqrt(d * d + mu * mu) - mu
  g = np.abs(d / np.sqrt(mu * mu + d * d))
  weights = np.zeros_like(g)
  valid = lw > 0
  tot = max(lw.sum(), 1.0)
  n = 0
  for i in range(bins):
    inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
    num = inds.sum()
    if num > 0:
      n += 1
      if mmt > 0:
        acc_sum[i] = mmt * acc_sum[i] + (1 - mmt) * num
        weights[inds] = tot / acc_sum[i]
      else:
        weights[inds] = tot / num
  if n > 0:
    weights = weights / n
  return loss * weights, acc_sum, weights, (loss * weights).sum() / tot


def np_effective_weights(counts, beta):
  n = np.asarray(counts, np.float64)
  w = (1 - beta) / (1 - beta**n)
  return w / w.sum() * len(n)


def np_asl(x, y, gp, gn, clip, eps=1e-8):
  """Ridnik et al.'s reference AsymmetricLoss, per element, made positive."""
  p = np_sigmoid(x)
  xs_neg = np.minimum(1 - p + clip, 1.0)
  los = y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(xs_neg, eps))
  pt = p * y + xs_neg * (1 - y)
  gamma = gp * y + gn * (1 - y)
  return -los * (1 - pt) ** gamma


def rng_data(seed, shape, scale=3.0):
  r = np.random.default_rng(seed)
  return (r.normal(size=shape) * scale).astype(np.float32), r


# ------------------------------------------------------------------------------ focal


@pytest.mark.parametrize("alpha", [None, 0.25, 0.6])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_sigmoid_focal_matches_formula(alpha, gamma):
  x, r = rng_data(0, (6, 7))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  out = sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma)
  np.testing.assert_allclose(out, np_focal(x, y, alpha, gamma), rtol=RTOL, atol=ATOL)


def test_sigmoid_focal_soft_labels_and_optax():
  x, r = rng_data(1, (5, 4))
  y = r.uniform(size=x.shape).astype(np.float32)
  np.testing.assert_allclose(
      sigmoid_focal_loss(x, y, alpha=0.3, gamma=1.5), np_focal(x, y, 0.3, 1.5), rtol=RTOL
  )
  # An independent implementation agrees too (same convention when alpha is given).
  np.testing.assert_allclose(
      sigmoid_focal_loss(x, y, alpha=0.3, gamma=1.5),
      optax.sigmoid_focal_loss(x, y, alpha=0.3, gamma=1.5),
      rtol=RTOL,
  )


def test_sigmoid_focal_gamma0_is_bce_and_default_alpha():
  x, r = rng_data(2, (10,))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  np.testing.assert_allclose(sigmoid_focal_loss(x, y, alpha=None, gamma=0.0), np_bce(x, y),
                             rtol=RTOL)
  # Default alpha = 0.25 (the paper's): positives x 0.25, negatives x 0.75.
  ratio = sigmoid_focal_loss(x, y) / sigmoid_focal_loss(x, y, alpha=None)
  np.testing.assert_allclose(ratio, np.where(y == 1, 0.25, 0.75), rtol=1e-6)


def test_sigmoid_focal_extreme_logits_value_and_grad():
  # Confident and right -> ~0 loss and ~0 grad; confident and wrong -> loss ~ |x|, grad ~ +-1.
  x = jnp.array([100.0, -100.0, 100.0, -100.0])
  y = jnp.array([1.0, 0.0, 0.0, 1.0])
  loss = sigmoid_focal_loss(x, y, alpha=None, gamma=2.0)
  np.testing.assert_allclose(loss, [0.0, 0.0, 100.0, 100.0], atol=1e-6)
  grad = jax.grad(lambda z: sigmoid_focal_loss(z, y, alpha=None, gamma=0.5).sum())(x)
  np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_softmax_focal_matches_formula(gamma):
  z, r = rng_data(3, (8, 5))
  y = r.integers(0, 5, size=8)
  alpha = r.uniform(0.1, 1.0, size=5).astype(np.float32)
  p = np_softmax(z)[np.arange(8), y]
  expected = -alpha[y] * (1 - p) ** gamma * np.log(p)
  np.testing.assert_allclose(softmax_focal_loss(z, y, gamma=gamma, alpha=alpha), expected,
                             rtol=RTOL)


def test_softmax_focal_properties():
  z, r = rng_data(4, (6, 4))
  y = r.integers(0, 4, size=6)
  np.testing.assert_allclose(softmax_focal_loss(z, y, gamma=0.0), np_ce(z, y), rtol=RTOL)
  # Two classes with logits (0, x) and label 1 is the sigmoid focal loss of x with label 1.
  x = z[:, 0]
  two = np.stack([np.zeros_like(x), x], axis=-1)
  np.testing.assert_allclose(
      softmax_focal_loss(two, np.ones(6, np.int32), gamma=2.0),
      np_focal(x, 1.0, None, 2.0), rtol=RTOL,
  )


def test_softmax_focal_confident_class_is_finite_and_accurate():
  # p_y = 1 - 2e^-50 rounds to 1 in float32; log(1 - p_y) must not become -inf.
  z = jnp.array([[50.0, 0.0, 0.0]])
  loss = softmax_focal_loss(z, jnp.array([0]), gamma=0.5)
  one_minus_p = 2 * np.exp(-50.0) / (1 + 2 * np.exp(-50.0))
  np.testing.assert_allclose(loss, [one_minus_p**0.5 * -np.log1p(-one_minus_p)], rtol=1e-4)
  g = jax.grad(lambda q: softmax_focal_loss(q, jnp.array([0]), gamma=0.5).sum())(z)
  assert np.all(np.isfinite(g))


def test_focal_gamma_is_traceable():
  x, r = rng_data(5, (4, 3))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  gammas = jnp.array([0.0, 1.0, 2.0])
  swept = jax.jit(jax.vmap(lambda g: sigmoid_focal_loss(x, y, gamma=g, alpha=0.25)))(gammas)
  for i, g in enumerate([0.0, 1.0, 2.0]):
    np.testing.assert_allclose(swept[i], np_focal(x, y, 0.25, g), rtol=RTOL)


# -------------------------------------------------------------------------------- GHM


def test_ghm_c_single_call_matches_mmdetection_loop():
  x, r = rng_data(6, (40, 6))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  loss, state = ghm_c(x, y, bins=10)
  ref, acc, _, scalar = np_ghm_c(x, y, np.ones_like(x), np.zeros(10), 10, 0.0)
  np.testing.assert_allclose(loss, ref, rtol=RTOL, atol=1e-7)
  # The documented one-line reduction (no label weights: the mean) is mmdetection's GHMC.
  np.testing.assert_allclose(loss.mean(), scalar, rtol=RTOL)
  # As documented: at momentum 0 the weights beta = loss / BCE average to 1.
  np.testing.assert_allclose(np.mean(np.asarray(loss, np.float64) / np_bce(x, y)), 1.0,
                             rtol=1e-5)
  assert isinstance(state, GHMState) and state.acc_sum.shape == (10,)


def test_ghm_c_momentum_state_across_two_calls():
  bins, mmt = 30, 0.75
  x1, r = rng_data(7, (50, 5))
  y1 = r.integers(0, 2, size=x1.shape).astype(np.float32)
  x2 = (r.normal(size=x1.shape) * 2).astype(np.float32)
  y2 = r.integers(0, 2, size=x1.shape).astype(np.float32)
  lw = np.ones_like(x1)
  l1, s1 = ghm_c(x1, y1, None, bins=bins, momentum=mmt)
  l2, s2 = ghm_c(x2, y2, s1, bins=bins, momentum=mmt)
  r1, a1, _, _ = np_ghm_c(x1, y1, lw, np.zeros(bins), bins, mmt)
  r2, a2, _, scalar2 = np_ghm_c(x2, y2, lw, a1, bins, mmt)
  np.testing.assert_allclose(s1.acc_sum, a1, rtol=1e-6)
  np.testing.assert_allclose(s2.acc_sum, a2, rtol=1e-6)
  np.testing.assert_allclose(l1, r1, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(l2, r2, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(l2.sum() / l2.size, scalar2, rtol=RTOL)


def test_ghm_c_label_weights_mask():
  x, r = rng_data(8, (30, 4))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  lw = (r.uniform(size=x.shape) > 0.3).astype(np.float32)
  loss, state = ghm_c(x, y, bins=5, momentum=0.5, label_weights=lw)
  ref, acc, _, scalar = np_ghm_c(x, y, lw, np.zeros(5), 5, 0.5)
  np.testing.assert_allclose(loss, ref, rtol=RTOL, atol=1e-7)
  np.testing.assert_allclose(state.acc_sum, acc, rtol=1e-6)
  # The documented reduction with label weights: divide by the number of valid elements.
  np.testing.assert_allclose(loss.sum() / jnp.maximum((lw > 0).sum(), 1), scalar, rtol=RTOL)
  assert np.all(np.asarray(loss)[lw == 0] == 0)
  assert state.acc_sum.sum() == pytest.approx(0.5 * lw.sum())


def test_ghm_c_g_equal_one_lands_in_last_bin():
  x = jnp.array([-100.0, 100.0, 0.0])
  y = jnp.array([1.0, 0.0, 1.0])  # g = 1, 1, 0.5
  _, state = ghm_c(x, y, bins=4, momentum=0.5)
  np.testing.assert_allclose(state.acc_sum, [0.0, 0.0, 0.5, 1.0])


def test_ghm_c_one_bin_is_mean_bce_and_momentum0_ignores_state():
  x, r = rng_data(9, (20,))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  loss, _ = ghm_c(x, y, bins=1)
  np.testing.assert_allclose(loss, np_bce(x, y), rtol=RTOL)  # one bin: every beta is 1
  other = GHMState(acc_sum=jnp.array([123.0]))
  np.testing.assert_allclose(ghm_c(x, y, other, bins=1)[0], loss, rtol=1e-7)
  x5, r = rng_data(10, (20, 3))
  y5 = r.integers(0, 2, size=x5.shape).astype(np.float32)
  junk = GHMState(acc_sum=jnp.arange(7.0))
  np.testing.assert_array_equal(ghm_c(x5, y5, junk, bins=7)[0], ghm_c(x5, y5, bins=7)[0])


@pytest.mark.parametrize("which", ["c", "r"])
def test_ghm_momentum0_leaves_running_counts_untouched(which):
  # mmdetection updates acc_sum only when momentum > 0; with momentum 0 the state passes
  # through unchanged, whatever it holds, and the loss uses this batch's counts.
  x, r = rng_data(19, (12, 3))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  held = GHMState(acc_sum=jnp.array([5.0, 0.0, 2.5, 7.0, 1.0]))
  if which == "c":
    loss, state = ghm_c(x, y, held, bins=5, momentum=0.0)
    ref, acc, _, _ = np_ghm_c(x, y, np.ones_like(x), held.acc_sum, 5, 0.0)
  else:
    loss, state = ghm_r(x * 0.05, y, held, mu=0.02, bins=5, momentum=0.0)
    ref, acc, _, _ = np_ghm_r(x * 0.05, y, np.ones_like(x), held.acc_sum, 0.02, 5, 0.0)
  np.testing.assert_array_equal(state.acc_sum, held.acc_sum)
  np.testing.assert_array_equal(acc, held.acc_sum)  # the reference agrees
  np.testing.assert_allclose(loss, ref, rtol=RTOL, atol=1e-7)


def test_ghm_c_grad_has_no_weight_dependence():
  x, r = rng_data(11, (16, 3))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  grad = jax.grad(lambda z: ghm_c(z, y, bins=6, momentum=0.3)[0].sum())(x)
  _, _, beta, _ = np_ghm_c(x, y, np.ones_like(x), np.zeros(6), 6, 0.3)
  np.testing.assert_allclose(grad, (np_sigmoid(x) - y) * beta, rtol=1e-4, atol=1e-6)


def test_ghm_c_momentum_traced_and_bins_static_under_jit():
  x, r = rng_data(12, (10, 3))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  f = jax.jit(wl.ghm_c, static_argnames="bins")
  moms = jnp.array([0.0, 0.5, 0.9])
  losses, states = jax.vmap(lambda m: f(x, y, None, bins=8, momentum=m))(moms)
  for i, m in enumerate([0.0, 0.5, 0.9]):
    ref, acc, _, _ = np_ghm_c(x, y, np.ones_like(x), np.zeros(8), 8, m)
    np.testing.assert_allclose(losses[i], ref, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(states.acc_sum[i], acc, rtol=1e-6)


@pytest.mark.parametrize("mmt", [0.0, 0.7])
def test_ghm_r_two_calls_with_fractional_label_weights(mmt):
  p1, r = rng_data(13, (40, 4), scale=0.05)
  t1 = np.zeros_like(p1)
  p2 = (r.normal(size=p1.shape) * 0.1).astype(np.float32)
  lw = r.choice([0.0, 0.5, 1.0, 2.0], size=p1.shape).astype(np.float32)
  l1, s1 = ghm_r(p1, t1, None, mu=0.02, bins=10, momentum=mmt, label_weights=lw)
  l2, s2 = ghm_r(p2, t1, s1, mu=0.02, bins=10, momentum=mmt, label_weights=lw)
  r1, a1, _, _ = np_ghm_r(p1, t1, lw, np.zeros(10), 0.02, 10, mmt)
  r2, a2, w2, scalar2 = np_ghm_r(p2, t1, lw, a1, 0.02, 10, mmt)
  np.testing.assert_allclose(l1, r1, rtol=RTOL, atol=1e-7)
  np.testing.assert_allclose(l2, r2, rtol=RTOL, atol=1e-7)
  # The documented reduction: divide by the sum of the label weights.
  np.testing.assert_allclose(l2.sum() / jnp.maximum(lw.sum(), 1), scalar2, rtol=RTOL)
  np.testing.assert_allclose(s2.acc_sum, a2, rtol=1e-6)
  grad = jax.grad(lambda q: ghm_r(q, t1, s1, mu=0.02, bins=10, momentum=mmt,
                                  label_weights=lw)[0].sum())(p2)
  d = p2.astype(np.float64)
  np.testing.assert_allclose(grad, d / np.sqrt(d * d + 0.02**2) * w2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bins", [3, 10, 30])
@pytest.mark.parametrize("last", ["c", "r"])
def test_ghm_binning_exact_at_edges(bins, last):
  from weightax.losses.ghm import _harmonizing_weights  # the binning itself, at the edges

  edges = np.arange(bins + 1, dtype=np.float32) / np.float32(bins)
  edges[-1] = edges[-1] + np.float32(1e-6) if last == "c" else 1e3
  inner = edges[:-1]
  g = np.concatenate([inner, np.nextafter(inner[1:], np.float32(-1)),
                      np.nextafter(inner, np.float32(2)), [np.float32(1.0)]]).astype(np.float32)
  expected = np.array([np.sum((g >= edges[i]) & (g < edges[i + 1])) for i in range(bins)])
  # momentum 0.5 from the zero state: the running counts are half the bin counts (exact).
  binning = jax.jit(lambda g, e: _harmonizing_weights(
      g, jnp.ones(g.shape, bool), jnp.float32(g.size), e, None, 0.5, bins, "test")[1])
  state = binning(jnp.asarray(g), jnp.asarray(edges))
  np.testing.assert_array_equal(state.acc_sum, 0.5 * expected)


def test_ghm_state_helpers():
  np.testing.assert_array_equal(init_ghm_state(4).acc_sum, np.zeros(4))
  with pytest.raises(ValueError, match="bins must be a positive Python int"):
    init_ghm_state(0)
  with pytest.raises(ValueError, match=r"state.acc_sum must have shape \(5,\)"):
    ghm_c(jnp.zeros(3), jnp.zeros(3), init_ghm_state(4), bins=5)


# ----------------------------------------------------------------- class weights & CE


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_matches_formula(beta):
  counts = np.array([5000, 500, 50, 5, 1])
  # The reference uses beta as float32 stores it (0.9999 -> 0.99989998): that rounding alone
  # moves 1 - beta by 2e-4 relative, which no algorithm can undo.
  beta32 = float(np.float32(beta))
  np.testing.assert_allclose(class_balanced_weights(counts, beta=beta),
                             np_effective_weights(counts, beta32), rtol=1e-5)


def test_class_balanced_limits():
  counts = np.array([1, 2, 5, 10, 100])
  np.testing.assert_allclose(class_balanced_weights(counts, beta=0.0), np.ones(5), rtol=1e-6)
  inv = (1 / counts) / (1 / counts).sum() * 5
  np.testing.assert_allclose(class_balanced_weights(counts, beta=1.0), inv, rtol=1e-6)
  np.testing.assert_allclose(class_balanced_weights(counts, beta=0.99999), inv, rtol=2e-3)
  np.testing.assert_allclose(inverse_frequency_weights(counts), inv, rtol=1e-6)
  sq = counts**-0.5 / (counts**-0.5).sum() * 5
  np.testing.assert_allclose(sqrt_inverse_frequency_weights(counts), sq, rtol=1e-6)


def test_class_weights_zero_counts_and_tracing():
  counts = np.array([0, 4, 1])
  for fn in (lambda c: class_balanced_weights(c, beta=0.9), inverse_frequency_weights,
             sqrt_inverse_frequency_weights):
    w = np.asarray(fn(counts))
    assert np.all(np.isfinite(w)) and w[0] == 0 and w.sum() == pytest.approx(3.0)
  np.testing.assert_array_equal(inverse_frequency_weights(np.zeros(3, int)), np.ones(3))
  betas = jnp.array([0.0, 0.9, 0.999, 1.0])
  swept = jax.jit(jax.vmap(lambda b: class_balanced_weights(counts[1:], beta=b)))(betas)
  assert np.all(np.isfinite(swept))
  grads = jax.vmap(jax.grad(lambda b: class_balanced_weights(counts[1:], beta=b)[0]))(betas)
  assert np.all(np.isfinite(grads))


def test_weighted_softmax_cross_entropy():
  z, r = rng_data(14, (9, 4))
  y = r.integers(0, 4, size=9)
  cw = r.uniform(0.2, 3, size=4).astype(np.float32)
  sw = r.uniform(0, 2, size=9).astype(np.float32)
  out = weighted_softmax_cross_entropy(z, y, class_weights=cw, sample_weights=sw)
  np.testing.assert_allclose(out, cw[y] * sw * np_ce(z, y), rtol=RTOL)
  np.testing.assert_allclose(weighted_softmax_cross_entropy(z, y), np_ce(z, y), rtol=RTOL)
  mask = np.arange(9) % 2 == 0
  masked = weighted_softmax_cross_entropy(z, y, class_weights=cw, where=mask)
  np.testing.assert_allclose(masked, np.where(mask, cw[y] * np_ce(z, y), 0), rtol=RTOL)


# --------------------------------------------------------------------- LDAM and LA


def test_ldam_matches_reference():
  counts = np.array([1000, 100, 10, 3])
  m = 1 / np.sqrt(np.sqrt(counts))
  m = m * (0.5 / m.max())
  np.testing.assert_allclose(ldam_margins(counts, max_margin=0.5), m, rtol=1e-6)
  z, r = rng_data(15, (7, 4), scale=0.3)
  y = r.integers(0, 4, size=7)
  shifted = z.astype(np.float64).copy()
  shifted[np.arange(7), y] -= m[y]
  cw = np_effective_weights(counts, 0.9999)
  expected = cw[y] * np_ce(30.0 * shifted, y)
  out = ldam_loss(z, y, class_counts=counts, max_margin=0.5, scale=30.0,
                  class_weights=cw.astype(np.float32))
  np.testing.assert_allclose(out, expected, rtol=1e-4)
  # Equal counts: every class gets the full margin.
  np.testing.assert_allclose(ldam_margins(np.full(3, 7), max_margin=0.3), [0.3] * 3, rtol=1e-6)


def test_logit_adjusted_cross_entropy():
  z, r = rng_data(16, (8, 5))
  y = r.integers(0, 5, size=8)
  counts = np.array([400.0, 100, 30, 10, 2])
  prior = counts / counts.sum()
  for tau in (0.0, 0.5, 1.0, 2.0):
    expected = np_ce(z + tau * np.log(prior), y)
    out = logit_adjusted_cross_entropy(z, y, class_priors=prior, tau=tau)
    np.testing.assert_allclose(out, expected, rtol=RTOL)
  np.testing.assert_allclose(logit_adjusted_cross_entropy(z, y, class_priors=prior, tau=0.0),
                             np_ce(z, y), rtol=RTOL)
  # Shift invariance: raw counts give the same loss as normalised priors.
  np.testing.assert_allclose(logit_adjusted_cross_entropy(z, y, class_priors=counts),
                             logit_adjusted_cross_entropy(z, y, class_priors=prior), rtol=1e-5)
  taus = jnp.array([0.0, 1.0])
  swept = jax.vmap(lambda t: logit_adjusted_cross_entropy(z, y, class_priors=prior, tau=t))(taus)
  np.testing.assert_allclose(swept[1], np_ce(z + np.log(prior), y), rtol=RTOL)


# ---------------------------------------------------------------------------- ASL


@pytest.mark.parametrize("gp,gn,clip", [(1.0, 4.0, 0.05), (0.0, 4.0, 0.05), (0.0, 2.0, 0.2),
                                        (1.0, 1.0, 0.0)])
def test_asymmetric_matches_reference(gp, gn, clip):
  x, r = rng_data(17, (10, 6))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  out = asymmetric_loss(x, y, gamma_pos=gp, gamma_neg=gn, clip=clip)
  np.testing.assert_allclose(out, np_asl(x, y, gp, gn, clip), rtol=1e-4, atol=1e-7)


def test_asymmetric_special_cases():
  x, r = rng_data(18, (12,))
  y = r.integers(0, 2, size=x.shape).astype(np.float32)
  np.testing.assert_allclose(asymmetric_loss(x, y, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                             np_bce(x, y), rtol=RTOL)
  np.testing.assert_allclose(asymmetric_loss(x, y, gamma_pos=2.0, gamma_neg=2.0, clip=0.0),
                             np_focal(x, y, None, 2.0), rtol=RTOL, atol=1e-7)
  # Easy negatives with p <= clip are discarded, and carry no gradient.
  easy = jnp.array([-4.0, -3.5])
  assert np.all(asymmetric_loss(easy, jnp.zeros(2)) == 0)
  assert np.all(jax.grad(lambda z: asymmetric_loss(z, jnp.zeros(2)).sum())(easy) == 0)


# ------------------------------------------------------------------ property tests

_logits8 = hnp.arrays(np.float32, (8,), elements=st.floats(-30, 30, width=32))
_labels8 = hnp.arrays(np.float32, (8,), elements=st.sampled_from([0.0, 1.0]))


@settings(max_examples=40, deadline=None)
@given(x=_logits8, y=_labels8, gamma=st.floats(0.0, 5.0))
def test_focal_never_exceeds_bce(x, y, gamma):
  focal = np.asarray(sigmoid_focal_loss(x, y, alpha=None, gamma=gamma), np.float64)
  xd = x.astype(np.float64)
  bce = np.logaddexp(0, np.where(y == 1, -xd, xd))
  assert np.all(focal <= bce * (1 + 1e-5) + 1e-6)


@settings(max_examples=40, deadline=None)
@given(counts=hnp.arrays(np.int32, (6,), elements=st.integers(1, 10_000)),
       beta=st.floats(0.0, 1.0))
def test_class_balanced_sum_and_order(counts, beta):
  w = np.asarray(class_balanced_weights(counts, beta=beta), np.float64)
  assert np.all(np.isfinite(w)) and np.all(w > 0)
  assert w.sum() == pytest.approx(6.0, rel=1e-5)
  order = np.argsort(counts, kind="stable")  # more samples -> no larger weight
  assert np.all(np.diff(w[order]) <= 1e-5)
