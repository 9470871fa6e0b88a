"""Focal losses (Lin et al., 2017): cross-entropy scaled down on well-classified examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from weightax.losses import _utils

__all__ = ["sigmoid_focal_loss", "softmax_focal_loss"]


def _safe_log(x: jax.Array) -> jax.Array:
  # log(0) = -inf with a finite (zero) gradient instead of 0 * inf = NaN.
  pos = x > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, x, 1)), -jnp.inf)


def _check_gamma(gamma: ArrayLike, fn: str) -> jax.Array | None:
  # (1 - p_t)^gamma: a negative gamma up-weights the easy examples, and gamma = inf gives
  # 0 * inf = NaN where p_t = 0.
  return _utils.check_hyperparameter(gamma, fn, "gamma", lo=0.0, hi=jnp.inf, hi_open=True)


def sigmoid_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike | None = 0.25,
    gamma: ArrayLike = 2.0,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Sigmoid focal loss, per element, for binary or multi-label targets.

  .. math::
    \mathrm{FL} = -\alpha_t (1 - p_t)^\gamma \log p_t, \quad
    p_t = p y + (1 - p)(1 - y), \quad \alpha_t = \alpha y + (1 - \alpha)(1 - y),

  with :math:`p = \sigma(x)`. ``log p_t`` is the binary cross-entropy computed with
  ``log_sigmoid``, and :math:`(1 - p_t)^\gamma = \exp(\gamma \log(1 - p_t))` with
  :math:`\log(1 - p_t)` a log-sum-exp of ``log_sigmoid(±x)``, so values and gradients stay
  finite for logits of any size and for :math:`\gamma < 1` (where the naive power has an
  infinite derivative at :math:`p_t = 1`). Soft labels in ``[0, 1]`` are accepted.

  Unlike ``optax.sigmoid_focal_loss`` (default ``alpha=None``), the default here is the
  paper's (and torchvision's) ``alpha=0.25``: positives get weight α, negatives 1 − α.
  "No α" is written ``alpha=None`` or, as in torchvision, any negative value
  (``alpha=-1``); both give :math:`\alpha_t = 1`.

  Invalid values are refused when they are concrete: labels outside ``[0, 1]`` (or NaN)
  where not masked out, ``alpha > 1`` or NaN, and ``gamma`` negative, infinite or NaN, raise
  a ValueError. Under ``jit``/``vmap`` they cannot be inspected and give a NaN loss for the
  affected elements instead.

  Args:
    logits: floating array of any shape.
    labels: targets in ``[0, 1]`` with the shape of ``logits``; entries masked out by
      ``where`` are ignored (any value, e.g. -100).
    alpha: weight of positives in ``[0, 1]`` (negatives get ``1 - alpha``); ``None`` or a
      negative value disables it. May be a traced scalar (or any array broadcastable to
      ``logits``).
    gamma: focusing exponent :math:`\gamma \ge 0` (finite); ``0`` gives (α-weighted)
      cross-entropy. May be traced.
    where: optional boolean mask with the shape of ``logits``; masked elements give 0.

  Returns:
    The per-element loss, shaped and typed like ``logits`` (no reduction).

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import sigmoid_focal_loss
    >>> loss = sigmoid_focal_loss(jnp.array([0.0, 2.0]), jnp.array([1.0, 0.0]), alpha=None)
    >>> [round(float(v), 4) for v in loss]
    [0.1733, 1.6501]

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_,
    ICCV 2017.
  """
  fn = "sigmoid_focal_loss"
  logits = _utils.check_logits(logits, fn)
  _utils.check_same_shape(labels, logits, "labels", "logits", fn)
  mask = _utils.check_mask(where, logits.shape, fn)
  labels = _utils.check_unit_labels(labels, logits, fn, mask)
  gamma_ok = _check_gamma(gamma, fn)
  dtype = logits.dtype
  log_p = jax.nn.log_sigmoid(logits)
  log_q = jax.nn.log_sigmoid(-logits)
  bce = -(labels * log_p + (1 - labels) * log_q)
  # 1 - p_t = y q + (1 - y) p, summed in log space: exact for hard labels, never log(0).
  log_one_minus_pt = jnp.logaddexp(_safe_log(labels) + log_q, _safe_log(1 - labels) + log_p)
  loss = jnp.exp(jnp.asarray(gamma).astype(dtype) * log_one_minus_pt) * bce
  if alpha is not None:
    _utils.check_range(alpha, fn, "alpha (or a negative value for none)", lo=-jnp.inf, hi=1.0)
    a = jnp.asarray(alpha).astype(dtype)
    alpha_t = a * labels + (1 - a) * (1 - labels)
    # Negative: no alpha (torchvision's alpha=-1). NaN or > 1 only reach here when traced.
    nan = jnp.full((), jnp.nan, dtype)
    loss = jnp.where(a < 0, 1, jnp.where(a <= 1, alpha_t, nan)) * loss
  loss = _utils.nan_unless(gamma_ok, loss)
  return _utils.apply_mask(loss.astype(dtype), mask)


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: ArrayLike = 2.0,
    alpha: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax (multi-class) focal loss, per example, for integer class labels.

  .. math::
    \mathrm{FL}(z, y) = -\alpha_y (1 - p_y)^\gamma \log p_y, \quad p = \mathrm{softmax}(z).

  With :math:`d = \log\sum_{j \ne y} e^{z_j} - z_y`, :math:`p_y = \sigma(-d)`, so
  :math:`\log p_y` and :math:`\log(1 - p_y)` are ``log_sigmoid(∓d)``: the factor
  :math:`(1 - p_y)^\gamma` is computed in log space and values and gradients stay finite
  and accurate even when :math:`p_y` rounds to 1.

  ``gamma`` negative, infinite or NaN, and negative or NaN entries of ``alpha``, raise a
  ValueError when concrete; under ``jit``/``vmap`` they give a NaN loss (every example for
  ``gamma``, the examples of the affected classes for ``alpha``).

  Args:
    logits: floating array ``[..., C]`` with ``C >= 2``.
    labels: integer class indices in ``[0, C)`` with shape ``logits.shape[:-1]``; entries
      masked out by ``where`` are ignored (any value, e.g. an ignore index -100).
    gamma: focusing exponent :math:`\gamma \ge 0` (finite); ``0`` gives cross-entropy. May
      be traced.
    alpha: optional per-class weights ``[C]``, ``>= 0`` (e.g. from
      ``class_balanced_weights``).
    where: optional boolean mask with the shape of ``labels``; masked examples give 0.

  Returns:
    The per-example loss with shape ``logits.shape[:-1]`` and the dtype of ``logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import softmax_focal_loss
    >>> logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    >>> loss = softmax_focal_loss(logits, jnp.array([0]), gamma=2.0)   # 0.25 * log 2
    >>> round(float(loss[0]), 4)
    0.1733

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_,
    ICCV 2017 (the multi-class form is given in its appendix).
  """
  fn = "softmax_focal_loss"
  logits = _utils.check_logits(logits, fn, min_ndim=1)
  labels, mask = _utils.check_integer_labels(labels, logits, fn, where)
  gamma_ok = _check_gamma(gamma, fn)
  dtype = logits.dtype
  log_p, log_not_p = _utils.class_logprobs(logits, labels)
  loss = -jnp.exp(jnp.asarray(gamma).astype(dtype) * log_not_p) * log_p
  if alpha is not None:
    a = _utils.check_class_weights(alpha, logits.shape[-1], "alpha", fn, dtype)
    loss = a[labels] * loss
  loss = _utils.nan_unless(gamma_ok, loss)
  return _utils.apply_mask(loss.astype(dtype), mask)
