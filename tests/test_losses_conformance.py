"""One conformance suite over every loss in weightax.losses (as Optax does for optimizers).

Each case is a loss with fixed labels, its traced hyperparameters and its output kind:
"softmax" losses take integer labels [B] for logits [B, C] and return [B]; "sigmoid" (and
regression) losses take labels shaped like the logits and return that shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightax import losses as L

B, C = 6, 4
COUNTS = np.array([500, 50, 5, 1])


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  kind: str  # "softmax", "sigmoid" or "regression"
  fn: Callable[..., jax.Array]  # (logits, labels, *, where=None, **hparams) -> loss
  hparams: dict[str, float]
  has_where: bool = True
  class_vectors: tuple[str, ...] = ()  # keyword args that must have shape (C,)

  def __call__(self, logits: Any, labels: Any, **kw: Any) -> jax.Array:
    return self.fn(logits, labels, **{**self.hparams, **kw})


def _ghm_c(z, y, where=None, **hp):
  lw = None if where is None else jnp.asarray(where, jnp.float32)
  return L.ghm_c(z, y, bins=5, label_weights=lw, **hp)[0]


def _ghm_r(z, y, where=None, **hp):
  lw = None if where is None else jnp.asarray(where, jnp.float32)
  return L.ghm_r(z, y, bins=5, label_weights=lw, **hp)[0]


CASES = [
    Case("sigmoid_focal", "sigmoid", L.sigmoid_focal_loss, {"alpha": 0.25, "gamma": 2.0}),
    Case("sigmoid_focal_noalpha", "sigmoid",
         lambda z, y, **k: L.sigmoid_focal_loss(z, y, alpha=None, **k), {"gamma": 0.5}),
    Case("softmax_focal", "softmax",
         lambda z, y, **k: L.softmax_focal_loss(z, y, alpha=jnp.linspace(0.5, 1.0, C), **k),
         {"gamma": 2.0}),
    Case("ghm_c", "sigmoid", _ghm_c, {"momentum": 0.75}),
    Case("ghm_r", "regression", _ghm_r, {"mu": 0.02, "momentum": 0.5}),
    Case("weighted_ce", "softmax",
         lambda z, y, **k: L.weighted_softmax_cross_entropy(
             z, y, class_weights=L.class_balanced_weights(COUNTS, beta=0.99), **k), {}),
    Case("ldam", "softmax", lambda z, y, **k: L.ldam_loss(z, y, class_counts=COUNTS, **k),
         {"max_margin": 0.5, "scale": 30.0}),
    Case("logit_adjusted", "softmax",
         lambda z, y, **k: L.logit_adjusted_cross_entropy(z, y, class_priors=COUNTS / 556, **k),
         {"tau": 1.0}),
    Case("asymmetric", "sigmoid", L.asymmetric_loss,
         {"gamma_pos": 1.0, "gamma_neg": 4.0, "clip": 0.05}),
]
IDS = [c.name for c in CASES]


def make_inputs(case: Case, seed: int = 0, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  logits = jnp.asarray(r.normal(size=(B, C)) * 2, dtype)
  if case.kind == "softmax":
    labels = jnp.asarray(r.integers(0, C, size=B), jnp.int32)
  elif case.kind == "sigmoid":
    labels = jnp.asarray(r.integers(0, 2, size=(B, C)), dtype)
  else:
    labels = jnp.asarray(r.normal(size=(B, C)), dtype)
  return logits, labels


def out_shape(case: Case) -> tuple[int, ...]:
  return (B,) if case.kind == "softmax" else (B, C)


def extreme_inputs(case: Case):
  big = jnp.array([100.0, -100.0, 0.0, 3.0])
  logits = jnp.stack([jnp.roll(big, i) for i in range(B)])  # [B, C], every row has +-100
  if case.kind == "softmax":
    labels = jnp.array([0, 0, 1, 1, 2, 3], jnp.int32)  # the +100, the -100 and other classes
  elif case.kind == "sigmoid":
    labels = jnp.asarray(np.indices((B, C)).sum(0) % 2, jnp.float32)
  else:
    labels = jnp.zeros((B, C))
  return logits, labels


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_shape_dtype_finite(case, dtype):
  logits, labels = make_inputs(case, dtype=dtype)
  out = case(logits, labels)
  assert out.shape == out_shape(case)
  assert out.dtype == dtype
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  # How close bf16 (and f16) results are to float32 is measured over 50 draws against a
  # bound derived from each format's precision in test_losses_precision.py.


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_matches_eager(case):
  logits, labels = make_inputs(case, seed=1)
  np.testing.assert_allclose(jax.jit(case.__call__)(logits, labels), case(logits, labels),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_batches(case):
  batches = [make_inputs(case, seed=s) for s in range(3)]
  zs = jnp.stack([b[0] for b in batches])
  ys = jnp.stack([b[1] for b in batches])
  out = jax.vmap(case.__call__)(zs, ys)
  for i, (z, y) in enumerate(batches):
    np.testing.assert_allclose(out[i], case(z, y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", [c for c in CASES if c.hparams],
                         ids=[i for c, i in zip(CASES, IDS, strict=True) if c.hparams])
def test_hyperparameters_traced(case):
  logits, labels = make_inputs(case, seed=2)
  grid = {k: jnp.array([v, 0.5 * v + 0.1], jnp.float32) for k, v in case.hparams.items()}
  swept = jax.jit(jax.vmap(lambda hp: case.fn(logits, labels, **hp)))(grid)
  for i in range(2):
    eager = case.fn(logits, labels, **{k: float(v[i]) for k, v in grid.items()})
    np.testing.assert_allclose(swept[i], eager, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("where", ["extreme", "zero"])
def test_grad_finite(case, where):
  logits, labels = extreme_inputs(case)
  if where == "zero":
    logits = jnp.zeros_like(logits)
  out = case(logits, labels)
  grad = jax.jit(jax.grad(lambda z: case(z, labels).mean()))(logits)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  assert grad.shape == logits.shape


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_where_mask_zeroes_loss_and_grad(case):
  logits, labels = make_inputs(case, seed=3)
  mask = np.ones(out_shape(case), bool)
  mask[::2] = False
  out, grad = jax.value_and_grad(lambda z: case(z, labels, where=mask).sum())(logits)
  per = case(logits, labels, where=mask)
  assert np.all(np.asarray(per)[~mask] == 0)
  assert np.all(np.asarray(grad)[::2] == 0)
  if case.kind == "softmax":  # unmasked examples are unchanged
    np.testing.assert_allclose(per[mask], case(logits, labels)[mask], rtol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    case(logits, labels, where=np.ones((B + 1,), bool))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_inputs_raise(case):
  logits, labels = make_inputs(case)
  with pytest.raises(ValueError, match=r"must have the shape"):
    case(logits, labels[:-1])
  with pytest.raises(ValueError, match="floating"):
    case(jnp.zeros((B, C), jnp.int32), labels)
  if case.kind == "softmax":
    with pytest.raises(ValueError, match=r"must have the shape"):
      case(logits, jnp.zeros((B, C), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
      case(logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
      case(logits, labels.at[0].set(C))
    bad = jnp.array([C, -1] + [0] * (B - 2), jnp.int32)  # unchecked under jit: NaN, not junk
    assert np.all(np.isnan(np.asarray(jax.jit(case.__call__)(logits, bad))[:2]))
    with pytest.raises(ValueError, match="at least 2 classes"):
      case(logits[:, :1], jnp.zeros((B,), jnp.int32))
  else:
    with pytest.raises(ValueError, match=r"must have the shape .* \(6, 4\); got \(6,\)"):
      case(logits, labels[:, 0])


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda z, y: L.softmax_focal_loss(z, y, alpha=jnp.ones(3)), r"alpha must have shape"),
        (lambda z, y: L.weighted_softmax_cross_entropy(z, y, class_weights=jnp.ones(5)),
         r"class_weights must have shape \(4,\)"),
        (lambda z, y: L.weighted_softmax_cross_entropy(z, y, sample_weights=jnp.ones(3)),
         r"sample_weights must have the shape of labels"),
        (lambda z, y: L.ldam_loss(z, y, class_counts=jnp.ones(3)), r"class_counts must have"),
        (lambda z, y: L.logit_adjusted_cross_entropy(z, y, class_priors=jnp.ones((4, 1))),
         r"class_priors must have shape"),
        (lambda z, y: L.class_balanced_weights(jnp.ones((2, 2)), beta=0.9), r"counts must be"),
        (lambda z, y: L.ghm_c(z, jnp.zeros((B, C)), bins=2.5), r"bins must be a positive"),
    ],
)
def test_bad_class_vectors_raise(call, pattern):
  logits = jnp.zeros((B, C))
  labels = jnp.zeros((B,), jnp.int32)
  with pytest.raises(ValueError, match=pattern):
    call(logits, labels)
