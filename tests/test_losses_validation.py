"""Inputs the losses refuse, conventions users bring from other libraries, and precision.

Each test here failed on the code before it was added: invalid labels, β, counts, momentum
and μ that returned numbers; torchvision's ``alpha=-1``; int64 counts above 2^31 that
wrapped; LDAM margins of fractional counts; masked ignore labels that raised; ASL's detached
focusing weights; float64 inputs computed in float32. Expected values come from float64
NumPy transcriptions of the papers' (and reference implementations') formulas.

Under ``jit`` the values cannot be inspected, and every refused input gives NaN instead;
those cases are checked here too, so that eager and jit differ only in raising.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightax import losses as L

# ---------------------------------------------------------------- float64 references


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_bce(x, y):
  p = np_sigmoid(x)
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def np_focal_no_alpha(x, y, gamma):
  p = np_sigmoid(x)
  pt = p * y + (1 - p) * (1 - y)
  return np_bce(x, y) * (1 - pt) ** gamma


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_ce(z, y):
  """-log softmax(z)_y as log(1 + sum_{j != y} e^(z_j - z_y)), accurate for tiny losses."""
  z = np.asarray(z, np.float64)
  zy = z[np.arange(len(y)), y][:, None]
  others = np.where(np.arange(z.shape[-1]) == np.asarray(y)[:, None], -np.inf, z - zy)
  return np.log1p(np.exp(others).sum(-1))


def np_ldam_margins(counts, max_m=0.5):
  """Cao et al.'s reference: m = 1/sqrt(sqrt(n)); m *= max_m / max(m)."""
  m = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, np.float64)))
  return m * (max_m / m.max())


def np_effective_weights(counts, beta):
  n = np.asarray(counts, np.float64)
  w = (1 - beta) / (1 - beta**n)
  return w / w.sum() * len(n)


RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 3)).astype(np.float32) * 3
Y01 = RNG.integers(0, 2, size=(4, 3)).astype(np.float32)
Z = RNG.normal(size=(5, 4)).astype(np.float32) * 2
YINT = np.array([0, 3, 1, 2, 3], np.int32)
COUNTS = np.array([500, 50, 5, 1])

SIGMOID = {
    "sigmoid_focal": lambda z, y, **k: L.sigmoid_focal_loss(z, y, **k),
    "asymmetric": lambda z, y, **k: L.asymmetric_loss(z, y, **k),
    "ghm_c": lambda z, y, where=None: L.ghm_c(
        z, y, bins=4, momentum=0.5,
        label_weights=None if where is None else jnp.asarray(where, jnp.float32))[0],
}
SOFTMAX = {
    "softmax_focal": lambda z, y, **k: L.softmax_focal_loss(z, y, **k),
    "weighted_ce": lambda z, y, **k: L.weighted_softmax_cross_entropy(
        z, y, class_weights=jnp.array([1.0, 2.0, 3.0, 4.0]), **k),
    "ldam": lambda z, y, **k: L.ldam_loss(z, y, class_counts=COUNTS, scale=5.0, **k),
    "logit_adjusted": lambda z, y, **k: L.logit_adjusted_cross_entropy(
        z, y, class_priors=COUNTS, **k),
}


# ---------------------------------------------------------- item 7: refused inputs


@pytest.mark.parametrize("name", list(SIGMOID))
@pytest.mark.parametrize("bad", [1.5, -0.5, np.nan])
def test_sigmoid_labels_outside_unit_interval_raise_eagerly_nan_under_jit(name, bad):
  fn = SIGMOID[name]
  y = Y01.copy()
  y[1, 2] = bad
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
    fn(X, y)
  out = np.asarray(jax.jit(fn)(X, y))
  assert np.isnan(out[1, 2])
  if name != "ghm_c":  # elementwise losses: only the bad element is NaN
    assert np.isfinite(np.delete(out.ravel(), 1 * 3 + 2)).all()


@pytest.mark.parametrize("beta", [-0.1, 1.5, np.nan])
def test_class_balanced_beta_outside_unit_interval(beta):
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
    L.class_balanced_weights(COUNTS, beta=beta)
  traced = jax.jit(lambda b: L.class_balanced_weights(COUNTS, beta=b))(beta)
  assert np.all(np.isnan(traced))
  # beta = 1 stays the documented inverse-frequency limit.
  inv = (1 / COUNTS) / (1 / COUNTS).sum() * 4
  np.testing.assert_allclose(L.class_balanced_weights(COUNTS, beta=1.0), inv, rtol=1e-6)


COUNT_FNS = {
    "class_balanced": lambda c: L.class_balanced_weights(c, beta=0.9),
    "inverse_frequency": L.inverse_frequency_weights,
    "sqrt_inverse_frequency": L.sqrt_inverse_frequency_weights,
    "ldam_margins": L.ldam_margins,
    "ldam_loss": lambda c: L.ldam_loss(Z, YINT, class_counts=c),
    "logit_adjusted": lambda c: L.logit_adjusted_cross_entropy(Z, YINT, class_priors=c),
}


@pytest.mark.parametrize("name", list(COUNT_FNS))
@pytest.mark.parametrize("bad", [-3.0, np.nan])
def test_negative_or_nan_counts_raise_eagerly_nan_under_jit(name, bad):
  fn = COUNT_FNS[name]
  counts = np.array([500.0, 50.0, bad, 1.0], np.float32)
  with pytest.raises(ValueError, match=r"must be >= 0 and not NaN"):
    fn(counts)
  out = np.asarray(jax.jit(fn)(counts))
  assert np.isnan(out).any()
  if name not in ("ldam_loss", "logit_adjusted"):  # weights/margins: every class is NaN
    assert np.isnan(out).all()


@pytest.mark.parametrize("which", ["c", "r"])
@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, np.nan])
def test_ghm_momentum_outside_unit_interval(which, momentum):
  fn = L.ghm_c if which == "c" else L.ghm_r
  with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
    fn(X, Y01, bins=4, momentum=momentum)
  loss, state = jax.jit(lambda m: fn(X, Y01, bins=4, momentum=m))(momentum)
  assert np.all(np.isnan(loss)) and np.all(np.isnan(state.acc_sum))


@pytest.mark.parametrize("mu", [0.0, -0.01, np.nan])
def test_ghm_r_mu_must_be_positive(mu):
  with pytest.raises(ValueError, match=r"mu must lie in \(0, inf\]"):
    L.ghm_r(X, Y01, mu=mu, bins=4)
  loss, state = jax.jit(lambda m: L.ghm_r(X, Y01, mu=m, bins=4, momentum=0.5))(mu)
  assert np.all(np.isnan(loss)) and np.all(np.isnan(state.acc_sum))


def test_ghm_r_gradient_finite_at_zero_residual():
  # The docstring's example: mu > 0 keeps ASL1 smooth at d = 0 (mu = 0 made it |d|).
  preds, targets = jnp.array([0.0, 1.0]), jnp.zeros(2)
  grad = jax.jit(jax.grad(lambda p: L.ghm_r(p, targets, mu=0.02, bins=1)[0].mean()))(preds)
  d = np.array([0.0, 1.0])
  np.testing.assert_allclose(grad, d / np.sqrt(d**2 + 0.02**2) / 2, rtol=1e-6)


# ------------------------------------------------------ item 8: torchvision's alpha=-1


@pytest.mark.parametrize("alpha", [None, -1, -1.0, -0.5])
def test_sigmoid_focal_no_alpha_spellings(alpha):
  out = L.sigmoid_focal_loss(X, Y01, alpha=alpha, gamma=2.0)
  np.testing.assert_allclose(out, np_focal_no_alpha(X, Y01, 2.0), rtol=2e-5, atol=1e-7)


def test_sigmoid_focal_alpha_traced_negative_and_refused():
  swept = jax.jit(jax.vmap(lambda a: L.sigmoid_focal_loss(X, Y01, alpha=a)))(
      jnp.array([-1.0, 0.25]))
  np.testing.assert_allclose(swept[0], np_focal_no_alpha(X, Y01, 2.0), rtol=2e-5, atol=1e-7)
  alpha_t = np.where(Y01 == 1, 0.25, 0.75)
  np.testing.assert_allclose(swept[1], alpha_t * np_focal_no_alpha(X, Y01, 2.0), rtol=2e-5,
                             atol=1e-7)
  for bad in (1.5, np.nan):
    with pytest.raises(ValueError, match="alpha"):
      L.sigmoid_focal_loss(X, Y01, alpha=bad)
    assert np.all(np.isnan(jax.jit(lambda a: L.sigmoid_focal_loss(X, Y01, alpha=a))(bad)))


# --------------------------------------------------- item 9: large and fractional counts


def test_int64_counts_above_2_pow_31_do_not_wrap():
  big = np.array([3_000_000_000, 5_000_000, 5], np.int64)
  for counts in (big, big.tolist()):  # NumPy int64 and Python ints
    np.testing.assert_allclose(L.class_balanced_weights(counts, beta=0.999),
                               np_effective_weights(big, float(np.float32(0.999))), rtol=1e-5)
    inv = (1 / big) / (1 / big).sum() * 3
    np.testing.assert_allclose(L.inverse_frequency_weights(counts), inv, rtol=1e-6)
    sq = big**-0.5 / (big**-0.5).sum() * 3
    np.testing.assert_allclose(L.sqrt_inverse_frequency_weights(counts), sq, rtol=1e-6)
    np.testing.assert_allclose(L.ldam_margins(counts), np_ldam_margins(big), rtol=1e-6)
    la = L.logit_adjusted_cross_entropy(Z[:3, :3], YINT[:3] % 3, class_priors=counts)
    logp = np_log_softmax(Z[:3, :3] + np.log(big / big.sum()))
    np.testing.assert_allclose(la, -logp[np.arange(3), YINT[:3] % 3], rtol=1e-5)
  w = np.asarray(L.class_balanced_weights(big, beta=0.9999))
  assert w[0] > 0  # the 3e9-sample class has a (small) positive weight, not 0


@pytest.mark.parametrize("counts", [[0.7, 0.2, 0.1], [3.0, 1.0, 0.25], [1000, 100, 10, 3],
                                    [2.5e-3, 1.0]])
def test_ldam_margins_follow_the_reference_for_any_positive_counts(counts):
  np.testing.assert_allclose(L.ldam_margins(np.array(counts), max_margin=0.5),
                             np_ldam_margins(counts), rtol=1e-6)


def test_ldam_margins_fraction_example_and_loss():
  np.testing.assert_allclose(L.ldam_margins(np.array([0.7, 0.2, 0.1])),
                             [0.3074, 0.4204, 0.5], atol=5e-5)
  freqs = np.array([0.7, 0.2, 0.1, 0.0])  # an absent class gets the largest margin
  m = np.append(np_ldam_margins(freqs[:3]), 0.5)
  np.testing.assert_allclose(L.ldam_margins(freqs), m, rtol=1e-6)
  shifted = Z.astype(np.float64).copy()
  shifted[np.arange(5), YINT] -= m[YINT]
  expected = -np_log_softmax(30.0 * shifted)[np.arange(5), YINT]
  np.testing.assert_allclose(L.ldam_loss(Z, YINT, class_counts=freqs), expected, rtol=1e-4)


# --------------------------------------------- item 10: labels masked out by `where`


def _check_masked(fn, z, y_bad, y_ok, mask):
  eager = fn(z, y_bad, where=mask)  # must not raise
  jitted = jax.jit(fn)(z, y_bad, where=mask)
  reference = fn(z, y_ok, where=mask)  # the masked labels replaced by valid ones
  np.testing.assert_array_equal(eager, reference)
  np.testing.assert_allclose(jitted, reference, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(eager)[~mask] == 0)
  grad = jax.grad(lambda q, y: fn(q, y, where=mask).sum())
  g_eager = grad(z, y_bad)  # concrete labels: the eager checks run inside grad
  g_jit = jax.jit(grad)(z, y_bad)
  g_ref = jax.jit(grad)(z, y_ok)
  assert np.all(np.isfinite(g_eager))
  np.testing.assert_allclose(g_eager, g_ref, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g_jit, g_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(SOFTMAX))
def test_masked_ignore_index_softmax(name):
  fn = SOFTMAX[name]
  mask = np.array([True, False, True, False, True])
  y_bad = np.where(mask, YINT, -100).astype(np.int32)
  y_ok = np.where(mask, YINT, 0).astype(np.int32)
  _check_masked(fn, Z, y_bad, y_ok, mask)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
    fn(Z, y_bad, where=~mask)  # the -100s are not masked out now


@pytest.mark.parametrize("name", list(SIGMOID))
def test_masked_ignore_value_sigmoid(name):
  fn = SIGMOID[name]
  mask = RNG.uniform(size=X.shape) > 0.4
  y_bad = np.where(mask, Y01, -100).astype(np.float32)
  y_ok = np.where(mask, Y01, 0).astype(np.float32)
  _check_masked(fn, X, y_bad, y_ok, mask)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
    fn(X, y_bad)


# ------------------------------------------- item 11: ASL's detached focusing weights


@pytest.mark.parametrize("gp,gn,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (1.0, 2.0, 0.0)])
def test_asymmetric_detached_focusing_gradient(gp, gn, clip):
  x = np.linspace(-6, 6, 25).astype(np.float32)
  x2 = np.concatenate([x, x])
  y = np.concatenate([np.ones(25), np.zeros(25)]).astype(np.float32)
  kw = dict(gamma_pos=gp, gamma_neg=gn, clip=clip)
  detached = lambda z: L.asymmetric_loss(z, y, detach_focusing_weights=True, **kw)
  grad = jax.jit(jax.grad(lambda z: detached(z).sum()))(x2)
  # Independent formula: the weights are constants, only log p and log(1 - p_m) vary.
  p = np_sigmoid(x2)
  pm = p - clip
  w_pos = (1 - p) ** gp
  w_neg = np.where(pm > 0, np.maximum(pm, 0) ** gn, 0.0)
  expected = np.where(y == 1, -w_pos * (1 - p), w_neg * p * (1 - p) / (1 - pm))
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  # Same values as the default; a different gradient (through the weights) by default.
  np.testing.assert_array_equal(detached(x2), L.asymmetric_loss(x2, y, **kw))
  full = jax.jit(jax.grad(lambda z: L.asymmetric_loss(z, y, **kw).sum()))(x2)
  assert np.max(np.abs(np.asarray(full) - expected)) > 1e-2
  # and the default's gradient is the derivative of the reference loss (central differences)
  h = 1e-5
  xd = x2.astype(np.float64)

  def ref(v):
    pv = np_sigmoid(v)
    neg = np.minimum(1 - pv + clip, 1.0)
    pt = pv * y + neg * (1 - y)
    gamma = gp * y + gn * (1 - y)
    return -(y * np.log(pv) + (1 - y) * np.log(neg)) * (1 - pt) ** gamma

  fd = (ref(xd + h) - ref(xd - h)) / (2 * h)
  near_clip = np.abs(p - clip) < 1e-3  # the kink of max(p - m, 0)
  np.testing.assert_allclose(np.asarray(full)[~near_clip], fd[~near_clip], rtol=1e-3,
                             atol=1e-6)


# --------------------------------------------------- item 13: the input's precision


def test_logit_adjustment_and_ldam_keep_float64():
  with jax.enable_x64(True):
    r = np.random.default_rng(3)
    z = r.normal(size=(6, 4)) * 0.5  # float64
    y = r.integers(0, 4, size=6)
    counts = np.array([123457, 9871, 313, 7])  # int64
    priors = counts / counts.sum()  # float64
    la = L.logit_adjusted_cross_entropy(jnp.asarray(z), jnp.asarray(y), class_priors=priors,
                                        tau=1.0)
    assert la.dtype == jnp.float64
    np.testing.assert_allclose(la, np_ce(z + np.log(priors), y), rtol=1e-13)
    ldam = L.ldam_loss(jnp.asarray(z), jnp.asarray(y), class_counts=counts, scale=30.0)
    assert ldam.dtype == jnp.float64
    m = np_ldam_margins(counts)
    shifted = z.copy()
    shifted[np.arange(6), y] -= m[y]
    np.testing.assert_allclose(ldam, np_ce(30.0 * shifted, y), rtol=1e-12)
    margins = L.ldam_margins(counts.astype(np.float64))
    assert margins.dtype == jnp.float64
    np.testing.assert_allclose(margins, m, rtol=1e-14)


# ------------------------------- documented hyperparameter ranges (refused when concrete)

HPARAMS = {
    # name: (loss of the hyperparameter, the error's interval, bad values)
    "sigmoid_focal gamma": (lambda g: L.sigmoid_focal_loss(X, Y01, gamma=g),
                            r"gamma must lie in \[0, inf\)", [-1.0, -1e-3, np.inf, np.nan]),
    "softmax_focal gamma": (lambda g: L.softmax_focal_loss(Z, YINT, gamma=g),
                            r"gamma must lie in \[0, inf\)", [-1.0, np.inf, np.nan]),
    "asymmetric gamma_pos": (lambda g: L.asymmetric_loss(X, Y01, gamma_pos=g),
                             r"gamma_pos must lie in \[0, inf\)", [-1.0, np.inf, np.nan]),
    "asymmetric gamma_neg": (lambda g: L.asymmetric_loss(X, Y01, gamma_neg=g),
                             r"gamma_neg must lie in \[0, inf\)", [-1.0, np.inf, np.nan]),
    "asymmetric clip": (lambda c: L.asymmetric_loss(X, Y01, clip=c),
                        r"clip must lie in \[0, 1\)", [-0.1, 1.0, 1.5, np.nan]),
    "ldam scale": (lambda s: L.ldam_loss(Z, YINT, class_counts=COUNTS, scale=s),
                   r"scale must lie in \(0, inf\)", [0.0, -1.0, np.inf, np.nan]),
    "ldam max_margin": (lambda m: L.ldam_loss(Z, YINT, class_counts=COUNTS, max_margin=m),
                        r"max_margin must lie in \[0, inf\)", [-0.5, np.inf, np.nan]),
    "ldam_margins max_margin": (lambda m: L.ldam_margins(COUNTS, max_margin=m),
                                r"max_margin must lie in \[0, inf\)", [-0.5, np.inf, np.nan]),
}
HPARAM_CASES = [(name, bad) for name, (_, _, bads) in HPARAMS.items() for bad in bads]


@pytest.mark.parametrize("name,bad", HPARAM_CASES)
def test_hyperparameter_outside_documented_range_raises_eagerly_nan_under_jit(name, bad):
  fn, match, _ = HPARAMS[name]
  with pytest.raises(ValueError, match=match):
    fn(bad)
  with pytest.raises(ValueError, match=match):
    fn(jnp.float32(bad))  # a concrete JAX scalar is checked too
  assert np.all(np.isnan(jax.jit(fn)(bad)))


@pytest.mark.parametrize("name", list(HPARAMS))
def test_hyperparameter_sweep_makes_only_the_invalid_member_nan(name):
  fn, _, bads = HPARAMS[name]
  valid = {"asymmetric clip": 0.05, "ldam scale": 5.0}.get(name, 0.5)
  swept = np.asarray(jax.jit(jax.vmap(fn))(jnp.array([valid, bads[0]])))
  np.testing.assert_allclose(swept[0], fn(valid), rtol=1e-6, atol=1e-7)
  assert np.all(np.isnan(swept[1]))


def test_hyperparameters_at_the_edge_of_their_ranges_are_accepted():
  # gamma = 0: plain (binary) cross-entropy; clip = 0: no margin; max_margin = 0: none.
  np.testing.assert_allclose(L.sigmoid_focal_loss(X, Y01, alpha=None, gamma=0.0),
                             np_bce(X, Y01), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(L.softmax_focal_loss(Z, YINT, gamma=0.0), np_ce(Z, YINT),
                             rtol=2e-5, atol=1e-7)
  asl = L.asymmetric_loss(X, Y01, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
  np.testing.assert_allclose(asl, np_bce(X, Y01), rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(L.ldam_margins(COUNTS, max_margin=0.0), np.zeros(4))
  np.testing.assert_allclose(L.ldam_loss(Z, YINT, class_counts=COUNTS, max_margin=0.0,
                                         scale=1.0), np_ce(Z, YINT), rtol=2e-5, atol=1e-7)


CLASS_WEIGHTS = {
    "softmax_focal alpha": lambda w: L.softmax_focal_loss(Z, YINT, alpha=w),
    "weighted_ce class_weights": lambda w: L.weighted_softmax_cross_entropy(
        Z, YINT, class_weights=w),
    "ldam class_weights": lambda w: L.ldam_loss(Z, YINT, class_counts=COUNTS, class_weights=w),
}


@pytest.mark.parametrize("name", list(CLASS_WEIGHTS))
@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_negative_per_class_weights_raise_eagerly_nan_under_jit(name, bad):
  fn = CLASS_WEIGHTS[name]
  w = np.array([1.0, bad, 2.0, 0.5], np.float32)  # class 1 has one example (YINT[2])
  with pytest.raises(ValueError, match=r"must be >= 0 and not NaN; got .* at index \(1,\)"):
    fn(w)
  out = np.asarray(jax.jit(fn)(w))
  assert np.isnan(out[YINT == 1]).all() and np.isfinite(out[YINT != 1]).all()
  np.testing.assert_array_equal(fn(np.array([1.0, 0.0, 2.0, 0.5], np.float32))[YINT == 1], 0)


# -------------------------------- error messages show the offending value in full


@pytest.mark.parametrize("call,shown", [
    (lambda: L.class_balanced_weights(COUNTS, beta=1.0000001), "got 1.0000001."),
    (lambda: L.class_balanced_weights(COUNTS, beta=-1e-9), "got -1e-09."),
    (lambda: L.sigmoid_focal_loss(X, Y01, alpha=1.0000001), "got 1.0000001."),
    (lambda: L.ghm_r(X, Y01, bins=4, mu=-1e-12), "got -1e-12."),
    (lambda: L.asymmetric_loss(X, Y01, clip=1.0000000001), "got 1.0000000001."),
])
def test_scalar_range_errors_print_the_value_in_full(call, shown):
  with pytest.raises(ValueError) as info:
    call()
  assert str(info.value).endswith(shown), str(info.value)


def test_array_range_errors_print_the_first_offender_in_full_with_its_index():
  y = Y01.copy()
  y[1, 2] = np.float32(1.0000001)  # a soft label's rounding artefact
  with pytest.raises(ValueError) as info:
    L.sigmoid_focal_loss(X, y)
  # float32(1.0000001) is 1.0000001192092896; "got 1" would read as a valid label.
  assert str(info.value).endswith("got 1.0000001192092896 at index (1, 2)."), str(info.value)
  y[0, 1], y[3, 0] = -1e-8, np.nan
  with pytest.raises(ValueError) as info:
    L.sigmoid_focal_loss(X, y)
  msg = str(info.value)
  assert "2 values in [-9.99999993922529e-09, 1.0000001192092896] and 1 NaN" in msg, msg
  assert msg.endswith("the first, at index (0, 1), is -9.99999993922529e-09."), msg
  with pytest.raises(ValueError) as info:
    L.inverse_frequency_weights(np.array([5.0, np.nan, 2.0]))
  assert str(info.value).endswith("got NaN at index (1,)."), str(info.value)
