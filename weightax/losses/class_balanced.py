"""Per-class weights from class counts, and a class/sample-weighted cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from weightax.losses import _utils

__all__ = [
    "class_balanced_weights",
    "inverse_frequency_weights",
    "sqrt_inverse_frequency_weights",
    "weighted_softmax_cross_entropy",
]


def _normalise(raw: jax.Array, present: jax.Array, bad: jax.Array) -> jax.Array:
  """Zeroes absent classes and rescales to ``sum = C`` (all ones if every class is absent).

  ``bad`` (a NaN count or an invalid β, only possible under ``jit``) makes every weight NaN:
  the normalisation mixes all classes, and an absent-looking NaN class must not be zeroed.
  """
  raw = jnp.where(present, raw, 0.0)
  total = jnp.sum(raw)
  ok = total > 0
  w = jnp.where(ok, raw.shape[0] * raw / jnp.where(ok, total, 1.0), 1.0)
  return jnp.where(bad, jnp.full((), jnp.nan, w.dtype), w)


def _has_nan(counts: jax.Array) -> jax.Array:
  return jnp.any(jnp.isnan(counts))


def class_balanced_weights(counts: ArrayLike, *, beta: ArrayLike) -> jax.Array:
  r"""Class-balanced weights from the effective number of samples (Cui et al., 2019).

  .. math::
    w_c \propto \frac{1}{E_{n_c}} = \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = C.

  :math:`\beta = 0` gives uniform weights and :math:`\beta \to 1` inverse frequency
  :math:`1/n_c` (the limit is used at :math:`\beta = 1`). :math:`1 - \beta^{n}` is computed
  as ``-expm1(n * log1p(beta - 1))`` for :math:`\beta > 1/2`, which keeps full precision for
  the paper's :math:`\beta \in \{0.9, 0.99, 0.999, 0.9999\}` in float32. A class with
  :math:`n_c = 0` gets weight 0 (it has no samples to weight; its effective number is 0) and
  the others are normalised to sum to C; if every count is 0 the weights are all ones.

  The mean weight per *sample* can be far below 1 on long-tailed data; under SGD that is a
  smaller learning rate.

  Counts may be Python or NumPy integers of any size (they are converted through float64,
  so 3e9 samples do not wrap around int32). Negative or NaN counts, and β outside
  ``[0, 1]`` or NaN, raise a ValueError when concrete; under ``jit``/``vmap`` they give
  all-NaN weights.

  Args:
    counts: number of training samples per class, shape ``[C]`` (int or float, ``>= 0``).
    beta: hyperparameter in ``[0, 1)``, or exactly 1 for the inverse-frequency limit; may
      be a traced scalar.

  Returns:
    Weights of shape ``[C]`` summing to C (float32, or the floating dtype of ``counts``).

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import class_balanced_weights
    >>> w = class_balanced_weights(jnp.array([1, 3]), beta=0.5)   # 1/E_n = 1/1 and 1/1.75
    >>> [round(float(v), 4) for v in w]
    [1.2727, 0.7273]

  References:
    Cui et al., `Class-Balanced Loss Based on Effective Number of Samples
    <https://arxiv.org/abs/1901.05555>`_, CVPR 2019.
  """
  fn = "class_balanced_weights"
  counts = _utils.check_counts(counts, fn)
  _utils.check_range(beta, fn, "beta", lo=0.0, hi=1.0)
  dtype = counts.dtype
  beta = jnp.asarray(beta, dtype)
  bad = _has_nan(counts) | ~((beta >= 0) & (beta <= 1))
  beta = jnp.where(bad, 0.5, beta)  # keeps the branches below finite; the result is NaN
  present = counts > 0
  n = jnp.where(present, counts, 1.0)
  # Two branches, each fed a safe beta so neither produces NaN values or gradients.
  hi = beta > 0.5
  at_one = beta >= 1
  b_hi = jnp.where(hi & ~at_one, beta, 0.75)
  b_lo = jnp.where(hi, 0.25, beta)
  one_minus_pow = jnp.where(hi, -jnp.expm1(n * jnp.log1p(b_hi - 1)), 1 - b_lo**n)
  one_minus_beta = jnp.where(hi & ~at_one, 1 - b_hi, 1 - b_lo)
  raw = jnp.where(at_one, 1 / n, one_minus_beta / one_minus_pow)
  return _normalise(raw, present, bad)


def inverse_frequency_weights(counts: ArrayLike) -> jax.Array:
  r"""Inverse-frequency class weights, :math:`w_c \propto 1/n_c`, normalised to sum to C.

  .. math:: w_c = C \, \frac{1/n_c}{\sum_k 1/n_k}.

  Classes with zero count get weight 0; counts are checked and converted as in
  ``class_balanced_weights``.

  Args:
    counts: number of training samples per class, shape ``[C]``.

  Returns:
    Weights of shape ``[C]`` summing to C.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import inverse_frequency_weights
    >>> inverse_frequency_weights(jnp.array([1, 3])).tolist()
    [1.5, 0.5]

  References:
    Cui et al., `Class-Balanced Loss Based on Effective Number of Samples
    <https://arxiv.org/abs/1901.05555>`_, CVPR 2019 (the β → 1 limit; a baseline there).
  """
  counts = _utils.check_counts(counts, "inverse_frequency_weights")
  present = counts > 0
  return _normalise(1 / jnp.where(present, counts, 1.0), present, _has_nan(counts))


def sqrt_inverse_frequency_weights(counts: ArrayLike) -> jax.Array:
  r"""Square-root inverse-frequency weights, :math:`w_c \propto n_c^{-1/2}`, summing to C.

  .. math:: w_c = C \, \frac{n_c^{-1/2}}{\sum_k n_k^{-1/2}}.

  A milder rebalancing than ``inverse_frequency_weights``. Classes with zero count get 0;
  counts are checked and converted as in ``class_balanced_weights``.

  Args:
    counts: number of training samples per class, shape ``[C]``.

  Returns:
    Weights of shape ``[C]`` summing to C.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import sqrt_inverse_frequency_weights
    >>> w = sqrt_inverse_frequency_weights(jnp.array([1, 4]))
    >>> [round(float(v), 4) for v in w]
    [1.3333, 0.6667]

  References:
    Mahajan et al., `Exploring the Limits of Weakly Supervised Pretraining
    <https://arxiv.org/abs/1805.00932>`_, ECCV 2018 (square-root resampling).
  """
  counts = _utils.check_counts(counts, "sqrt_inverse_frequency_weights")
  present = counts > 0
  return _normalise(jax.lax.rsqrt(jnp.where(present, counts, 1.0)), present, _has_nan(counts))


def weighted_softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_weights: ArrayLike | None = None,
    sample_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with per-class and per-sample weights, per example.

  .. math:: \ell_i = s_i \, w_{y_i} \, (-\log \mathrm{softmax}(z_i)_{y_i}).

  There is no reduction. PyTorch's ``CrossEntropyLoss(weight=w)`` with ``reduction='mean'``
  divides by :math:`\sum_i w_{y_i}`, i.e. ``loss.sum() / class_weights[labels].sum()``;
  ``loss.mean()`` instead keeps the weights' overall scale (see ``class_balanced_weights``).

  Args:
    logits: floating array ``[..., C]``.
    labels: integer class indices in ``[0, C)`` with shape ``logits.shape[:-1]``; entries
      masked out by ``where`` are ignored (any value, e.g. an ignore index -100).
    class_weights: optional per-class weights ``[C]``, ``>= 0`` (negative or NaN entries
      raise a ValueError when concrete and give NaN for their classes under ``jit``).
    sample_weights: optional per-example weights with the shape of ``labels``.
    where: optional boolean mask with the shape of ``labels``; masked examples give 0.

  Returns:
    The per-example loss with shape ``logits.shape[:-1]`` and the dtype of ``logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import weighted_softmax_cross_entropy
    >>> logits = jnp.zeros((2, 2))
    >>> loss = weighted_softmax_cross_entropy(
    ...     logits, jnp.array([0, 1]), class_weights=jnp.array([1.0, 3.0]))
    >>> [round(float(v), 4) for v in loss]   # log 2 and 3 log 2
    [0.6931, 2.0794]

  References:
    Cui et al., `Class-Balanced Loss Based on Effective Number of Samples
    <https://arxiv.org/abs/1901.05555>`_, CVPR 2019 (class-weighted cross-entropy).
  """
  fn = "weighted_softmax_cross_entropy"
  logits = _utils.check_logits(logits, fn, min_ndim=1)
  labels, mask = _utils.check_integer_labels(labels, logits, fn, where)
  dtype = logits.dtype
  loss = -_utils.class_logprobs(logits, labels)[0]
  if class_weights is not None:
    cw = _utils.check_class_weights(class_weights, logits.shape[-1], "class_weights", fn, dtype)
    loss = cw[labels] * loss
  if sample_weights is not None:
    sw = _utils.check_same_shape(sample_weights, loss, "sample_weights", "labels", fn)
    loss = sw * loss
  return _utils.apply_mask(loss.astype(dtype), mask)
