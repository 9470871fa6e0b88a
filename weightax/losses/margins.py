"""Label-dependent logit shifts for long-tailed classification: LDAM and logit adjustment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from weightax.losses import _utils

__all__ = ["ldam_margins", "ldam_loss", "logit_adjusted_cross_entropy"]


def ldam_margins(class_counts: ArrayLike, *, max_margin: ArrayLike = 0.5) -> jax.Array:
  r"""LDAM per-class margins, :math:`\Delta_j \propto n_j^{-1/4}`, the largest ``max_margin``.

  .. math:: \Delta_j = \Delta_{\max} \left(\frac{\min_k n_k}{n_j}\right)^{1/4}.

  This is the reference code's ``m = n^(-1/4); m *= max_m / max(m)`` for any positive
  counts, including fractions (class frequencies give the same margins as counts). A class
  with count 0 (absent) gets the largest margin and the minimum is taken over the present
  classes (the reference code would divide by zero). Integer counts of any size are
  converted through float64, so counts above 2^31 do not wrap. Negative or NaN counts, and
  a negative, infinite or NaN ``max_margin``, raise a ValueError when concrete and give
  all-NaN margins under ``jit``.

  Args:
    class_counts: training samples (or frequencies) per class ``[C]``, ``>= 0``.
    max_margin: the margin of the rarest class, finite and ``>= 0`` (0 gives no margins);
      may be traced.

  Returns:
    Margins ``[C]`` (float32, or the floating dtype of ``class_counts``).

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import ldam_margins
    >>> ldam_margins(jnp.array([16, 1]), max_margin=0.5).tolist()
    [0.25, 0.5]

  References:
    Cao et al., `Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss
    <https://arxiv.org/abs/1906.07413>`_, NeurIPS 2019.
  """
  fn = "ldam_margins"
  n = _utils.check_counts(class_counts, fn)
  return _margins(n, max_margin, fn)


def _margins(n: jax.Array, max_margin: ArrayLike, fn: str) -> jax.Array:
  """Margins in ``n``'s dtype from validated counts, and the check of ``max_margin``.

  NaN counts (only possible when traced) and a traced invalid ``max_margin`` give NaN.
  """
  # A negative margin would raise the true class's logit instead of lowering it.
  ok = _utils.check_hyperparameter(max_margin, fn, "max_margin", lo=0.0, hi=jnp.inf,
                                   hi_open=True)
  present = n > 0
  n_min = jnp.min(jnp.where(present, n, jnp.inf))  # inf only when every class is absent
  ratio = jnp.where(present, n_min / jnp.where(present, n, 1), 1)
  margins = jnp.asarray(max_margin, n.dtype) * ratio**0.25
  margins = jnp.where(jnp.any(jnp.isnan(n)), jnp.full((), jnp.nan, n.dtype), margins)
  return _utils.nan_unless(ok, margins)


def ldam_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_counts: ArrayLike,
    max_margin: ArrayLike = 0.5,
    scale: ArrayLike = 30.0,
    class_weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Label-distribution-aware margin (LDAM) loss, per example.

  .. math::
    \ell(z, y) = w_y \, \mathrm{CE}\big(s \, (z - \Delta_y e_y),\ y\big), \qquad
    \Delta_j \propto n_j^{-1/4},\ \max_j \Delta_j = \Delta_{\max},

  i.e. the true class's logit is lowered by its margin before scaling by s; rare classes
  get larger margins. ``logits`` are expected to be cosine similarities (normalised
  features and weights), as in the paper, hence the scale s = 30.

  Deferred re-weighting (DRW) passes ``class_weights=class_balanced_weights(counts,
  beta=0.9999)`` in the last stage of training. The per-example loss is ``w_y · CE``; the
  reference code's mean divides by :math:`\sum_i w_{y_i}` instead of the batch size.

  Computed in the precision of ``logits`` (float64 logits under x64 give float64 margins
  and loss; bfloat16/float16 margins are computed in float32 and rounded once). Counts and
  ``max_margin`` are validated as in ``ldam_margins``; ``scale`` that is not positive and
  finite, and negative or NaN ``class_weights``, raise a ValueError when concrete and give a
  NaN loss under ``jit`` (every example, or those of the affected classes).

  Args:
    logits: floating array ``[..., C]``.
    labels: integer class indices in ``[0, C)`` with shape ``logits.shape[:-1]``; entries
      masked out by ``where`` are ignored (any value, e.g. an ignore index -100).
    class_counts: training samples (or frequencies) per class ``[C]``, ``>= 0``.
    max_margin: largest margin :math:`\Delta_{\max}`, finite and ``>= 0`` (0.5 in the
      paper); may be traced.
    scale: logit scale s, finite and ``> 0`` (30 in the paper); may be traced.
    class_weights: optional per-class weights ``[C]``, ``>= 0`` (DRW).
    where: optional boolean mask with the shape of ``labels``; masked examples give 0.

  Returns:
    The per-example loss with shape ``logits.shape[:-1]`` and the dtype of ``logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import ldam_loss
    >>> loss = ldam_loss(jnp.zeros((1, 2)), jnp.array([1]), class_counts=jnp.array([16, 1]),
    ...                  max_margin=0.5, scale=1.0)   # log(1 + e^0.5)
    >>> round(float(loss[0]), 4)
    0.9741

  References:
    Cao et al., `Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss
    <https://arxiv.org/abs/1906.07413>`_, NeurIPS 2019.
  """
  fn = "ldam_loss"
  logits = _utils.check_logits(logits, fn, min_ndim=1)
  labels, mask = _utils.check_integer_labels(labels, logits, fn, where)
  num_classes = logits.shape[-1]
  dtype = logits.dtype
  # Margins in the logits' precision (float64 stays float64), at least float32 for bf16/f16.
  cdt = jnp.promote_types(dtype, jnp.float32)
  counts = _utils.check_class_counts(class_counts, num_classes, "class_counts", fn, cdt)
  # s <= 0 flattens (s = 0: log C for every example) or inverts the softmax.
  scale_ok = _utils.check_hyperparameter(scale, fn, "scale", lo=0.0, hi=jnp.inf, lo_open=True,
                                         hi_open=True)
  margins = _margins(counts, max_margin, fn).astype(dtype)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
  shifted = jnp.asarray(scale).astype(dtype) * (logits - margins[labels][..., None] * onehot)
  loss = _utils.nan_unless(scale_ok, -_utils.class_logprobs(shifted, labels)[0])
  if class_weights is not None:
    cw = _utils.check_class_weights(class_weights, num_classes, "class_weights", fn, dtype)
    loss = cw[labels] * loss
  return _utils.apply_mask(loss.astype(dtype), mask)


def logit_adjusted_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    class_priors: ArrayLike,
    tau: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Logit-adjusted softmax cross-entropy (Menon et al., 2021), per example.

  .. math:: \ell(z, y) = \mathrm{CE}(z + \tau \log \pi,\ y)
            = -\log \frac{e^{z_y + \tau \log \pi_y}}{\sum_j e^{z_j + \tau \log \pi_j}}.

  ``tau = 1`` is the balanced softmax (Ren et al., 2020); ``tau = 0`` is plain
  cross-entropy. Because the softmax is shift-invariant, ``class_priors`` need not be
  normalised: raw class counts give the same loss. Priors are clamped below at the
  smallest positive normal number of their dtype so that an absent class stays finite;
  negative or NaN priors raise a ValueError when concrete (NaN loss under ``jit``). The
  shift is computed in the precision of ``logits`` (float64 stays float64 under x64;
  bfloat16/float16 use float32 and round once). At test time, predict with the raw logits
  ``z``.

  Args:
    logits: floating array ``[..., C]``.
    labels: integer class indices in ``[0, C)`` with shape ``logits.shape[:-1]``; entries
      masked out by ``where`` are ignored (any value, e.g. an ignore index -100).
    class_priors: class frequencies (or counts) ``[C]``, ``>= 0``.
    tau: adjustment strength; may be traced.
    where: optional boolean mask with the shape of ``labels``; masked examples give 0.

  Returns:
    The per-example loss with shape ``logits.shape[:-1]`` and the dtype of ``logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import logit_adjusted_cross_entropy
    >>> loss = logit_adjusted_cross_entropy(
    ...     jnp.zeros((1, 2)), jnp.array([1]), class_priors=jnp.array([0.75, 0.25]))
    >>> round(float(loss[0]), 4)   # -log 0.25
    1.3863

  References:
    Menon et al., `Long-tail learning via logit adjustment
    <https://arxiv.org/abs/2007.07314>`_, ICLR 2021; Ren et al., `Balanced Meta-Softmax
    <https://arxiv.org/abs/2007.10740>`_, NeurIPS 2020.
  """
  fn = "logit_adjusted_cross_entropy"
  logits = _utils.check_logits(logits, fn, min_ndim=1)
  labels, mask = _utils.check_integer_labels(labels, logits, fn, where)
  num_classes = logits.shape[-1]
  dtype = logits.dtype
  # The shift in the logits' precision (float64 stays float64), at least float32.
  cdt = jnp.promote_types(dtype, jnp.float32)
  priors = _utils.check_class_counts(class_priors, num_classes, "class_priors", fn, cdt)
  log_prior = jnp.log(jnp.maximum(priors, jnp.finfo(cdt).tiny))
  shift = (jnp.asarray(tau, cdt) * log_prior).astype(dtype)
  # Explicit leading axes so the code also runs under jax_numpy_rank_promotion='raise'.
  adjusted = logits + jnp.expand_dims(shift, tuple(range(logits.ndim - 1)))
  loss = -_utils.class_logprobs(adjusted, labels)[0]
  return _utils.apply_mask(loss.astype(dtype), mask)
