"""bfloat16 and float16: every loss over 50 random draws, within a bound set by the format.

For each loss and format, 50 independent batches (seeds) of logits are drawn, rounded to
the format, and the loss is computed twice: in the format, and in float32 on the very same
rounded inputs (upcast exactly). The float32 result is the reference: its own correctness
against float64 transcriptions of the papers' formulas is tested in test_losses.py, and its
error (~1e-7 relative) is four orders below the bounds here. So the difference measures
what computing in the low format costs, and nothing else.

The bound, per element (or example), is a standard forward-error bound:

    |ℓ_low − ℓ_ref| ≤ K · u · (|ℓ| + Σ_x |∂ℓ/∂x| · (|x| + s)) + tiny,

* u = eps/2 is the format's unit roundoff: 2^-8 for bfloat16, 2^-11 for float16;
* the sum runs over the inputs x the loss is differentiated in (logits; regression targets
  too); a relative perturbation of x by u changes ℓ by about u·|x·∂ℓ/∂x|, and s = 1 adds
  the absolute error u of a computed probability (sigmoid/softmax outputs carry it at any
  logit, including x ≈ 0, where |x·∂ℓ/∂x| vanishes); s = 0 for regression residuals;
* K = 8 roundings' worth of error; the largest ratio measured over all losses, formats and
  draws with the code as it is is about 4 (ASL in bfloat16);
* tiny = the format's smallest normal number (below it values are subnormal, with a fixed
  absolute spacing; it matters only for float16).

Hyperparameters are chosen exactly representable in both formats (clip = 1/16 rather than
ASL's 0.05, μ = 2^-6 rather than GHM-R's 0.02), so that both computations use the same
inputs; everything else is as in the papers.

This catches precision bugs that a single draw at a loose tolerance does not: GHM-C binning
its gradient norms in bfloat16 instead of float32 moves elements across bin edges and changes
their weights by O(1), an error of ~100-900 times u·cond here (checked by applying that bug).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightax import losses as L

SEEDS, B, C = 50, 8, 5
K = 8.0
COUNTS = np.array([500, 50, 5, 2, 1])

# name -> (kind, loss(logits, labels) -> per-element or per-example loss)
CASES = {
    "sigmoid_focal": ("sigmoid", lambda z, y: L.sigmoid_focal_loss(z, y, alpha=0.25, gamma=2.0)),
    "sigmoid_focal_gamma_half": (
        "sigmoid", lambda z, y: L.sigmoid_focal_loss(z, y, alpha=None, gamma=0.5)),
    "asymmetric": ("sigmoid", lambda z, y: L.asymmetric_loss(
        z, y, gamma_pos=1.0, gamma_neg=4.0, clip=0.0625)),
    "ghm_c": ("sigmoid", lambda z, y: L.ghm_c(z, y, bins=10, momentum=0.0)[0]),
    "ghm_c_momentum": ("sigmoid", lambda z, y: L.ghm_c(z, y, bins=30, momentum=0.75)[0]),
    "ghm_r": ("regression", lambda z, y: L.ghm_r(z, y, mu=2.0**-6, bins=10, momentum=0.5)[0]),
    "softmax_focal": ("softmax", lambda z, y: L.softmax_focal_loss(z, y, gamma=2.0)),
    "weighted_ce": ("softmax", lambda z, y: L.weighted_softmax_cross_entropy(
        z, y, class_weights=L.class_balanced_weights(COUNTS, beta=0.99))),
    "ldam": ("softmax", lambda z, y: L.ldam_loss(z, y, class_counts=COUNTS)),
    "logit_adjusted": ("softmax", lambda z, y: L.logit_adjusted_cross_entropy(
        z, y, class_priors=COUNTS, tau=1.0)),
}
FORMATS = {"bf16": jnp.bfloat16, "f16": jnp.float16}


def draws(kind: str, dtype, seed: int = 0):
  """50 batches rounded to ``dtype``: (logits, labels) in the format and upcast to float32."""
  r = np.random.default_rng(seed)
  if kind == "regression":  # box-delta residuals are small: around mu
    z = r.normal(size=(SEEDS, B, C)) * 0.1
    y = r.normal(size=(SEEDS, B, C)) * 0.1
  else:
    z = r.normal(size=(SEEDS, B, C)) * 2
    if kind == "softmax":
      y = r.integers(0, C, size=(SEEDS, B))
    else:
      y = r.integers(0, 2, size=(SEEDS, B, C))
  z_lo = jnp.asarray(z, dtype)
  if kind == "softmax":
    y_lo = y32 = jnp.asarray(y, jnp.int32)
  else:
    y_lo = jnp.asarray(y, dtype)
    y32 = y_lo.astype(jnp.float32)
  return z_lo, y_lo, z_lo.astype(jnp.float32), y32


@functools.cache
def compiled(name: str):
  """Per case: the batched loss and its input gradients, compiled once for both formats."""
  kind, fn = CASES[name]
  loss = jax.jit(jax.vmap(fn))
  total = lambda z, y: fn(z, y).sum()
  argnums = (0, 1) if kind == "regression" else 0
  grads = jax.jit(jax.vmap(jax.grad(total, argnums=argnums)))
  return loss, grads


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_error_within_format_bound(name, fmt):
  dtype = FORMATS[fmt]
  kind, _ = CASES[name]
  loss, grads = compiled(name)
  z_lo, y_lo, z32, y32 = draws(kind, dtype)
  out = loss(z_lo, y_lo)
  assert out.dtype == dtype
  out = np.asarray(out.astype(jnp.float32), np.float64)
  ref = np.asarray(loss(z32, y32), np.float64)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(ref))

  shift = 0.0 if kind == "regression" else 1.0
  g = grads(z32, y32)
  if kind == "regression":
    sens = (np.abs(np.asarray(g[0])) * np.abs(np.asarray(z32))
            + np.abs(np.asarray(g[1])) * np.abs(np.asarray(y32)))
  else:
    sens = np.abs(np.asarray(g, np.float64)) * (np.abs(np.asarray(z32, np.float64)) + shift)
  if kind == "softmax":  # one loss per example depends on the example's C logits
    sens = sens.sum(-1)
  u = float(jnp.finfo(dtype).eps) / 2
  tiny = float(jnp.finfo(dtype).smallest_normal)
  bound = K * u * (np.abs(ref) + sens) + tiny
  err = np.abs(out - ref)
  worst = np.unravel_index(np.argmax(err / bound), err.shape)
  assert np.all(err <= bound), (
      f"{name} in {fmt}: {np.sum(err > bound)} of {err.size} elements exceed "
      f"K·u·cond (K={K}, u={u:.3g}); worst: error {err[worst]:.3g}, bound {bound[worst]:.3g}, "
      f"value {ref[worst]:.4g}, draw {worst[0]}"
  )


def test_ghm_r_float16_large_residuals_do_not_overflow():
  # d² overflows float16 beyond |d| = 256; the ASL1 must stay ≈ |d| − μ (one bin: β = 1).
  d = np.array([300.0, -1000.0, 60000.0, 0.5])
  loss, _ = L.ghm_r(jnp.asarray(d, jnp.float16), jnp.zeros(4, jnp.float16), mu=2.0**-6, bins=1)
  d16 = np.asarray(jnp.asarray(d, jnp.float16), np.float64)
  expected = np.sqrt(d16**2 + 2.0**-12) - 2.0**-6
  u = float(jnp.finfo(jnp.float16).eps) / 2
  np.testing.assert_allclose(np.asarray(loss, np.float64), expected, rtol=K * u)
