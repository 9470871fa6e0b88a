"""Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from weightax.losses import _utils

__all__ = ["asymmetric_loss"]


def asymmetric_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma_pos: ArrayLike = 1.0,
    gamma_neg: ArrayLike = 4.0,
    clip: ArrayLike = 0.05,
    detach_focusing_weights: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Asymmetric loss (ASL), per element, for multi-label targets in {0, 1}.

  .. math::
    \ell = -y (1 - p)^{\gamma_+} \log p - (1 - y)\, p_m^{\gamma_-} \log(1 - p_m), \qquad
    p_m = \max(p - m, 0),

  with :math:`p = \sigma(x)` and m the probability margin ``clip``. Negatives are focused
  harder than positives (:math:`\gamma_- > \gamma_+`) and very easy negatives
  (:math:`p \le m`) are discarded entirely. Everything is in log space:
  :math:`\log p` = ``log_sigmoid(x)``, :math:`(1-p)^{\gamma_+} = e^{\gamma_+ \log \sigma(-x)}`
  and :math:`\log(1 - p_m) = \min(\mathrm{logaddexp}(\log \sigma(-x), \log m), 0)`, so the
  values and gradients are finite for any logits, without the reference code's 1e-8 clamps.

  By default the gradient flows through the focusing weights
  :math:`w_+ = (1-p)^{\gamma_+}` and :math:`w_- = p_m^{\gamma_-}`, as in the paper's
  gradient analysis. ``detach_focusing_weights=True`` computes them under
  ``stop_gradient``, which is what the reference training code does
  (``AsymmetricLoss(..., disable_torch_grad_focal_loss=True)``); use it to reproduce the
  published ASL results. The loss values are the same either way; the gradient becomes

  .. math::
    \frac{\partial \ell}{\partial x} = -y\,(1-p)^{\gamma_+}(1-p)
      + (1-y)\,[p > m]\; p_m^{\gamma_-} \frac{p(1-p)}{1 - p_m}.

  The reference code sums over elements; this returns them unreduced and positive.

  Labels outside ``[0, 1]`` (or NaN) that are not masked out, ``gamma_pos`` or ``gamma_neg``
  negative, infinite or NaN, and ``clip`` outside ``[0, 1)`` or NaN raise a ValueError when
  concrete, and give a NaN loss under ``jit``/``vmap`` (the affected elements for labels,
  every element for the hyperparameters).

  Args:
    logits: floating array of any shape, e.g. ``[batch, num_labels]``.
    labels: targets in {0, 1} (soft targets in ``[0, 1]`` are accepted) with the shape of
      ``logits``; entries masked out by ``where`` are ignored (any value, e.g. -100).
    gamma_pos: focusing exponent for positives, finite and ``>= 0`` (1 or 0 in the paper);
      may be traced.
    gamma_neg: focusing exponent for negatives, finite and ``>= 0`` (4 in the paper); may
      be traced.
    clip: probability margin m in ``[0, 1)`` (0.05 in the paper); 0 disables it. May be
      traced.
    detach_focusing_weights: compute the focusing weights without gradient, as the
      reference training code does (a Python bool).
    where: optional boolean mask with the shape of ``logits``; masked elements give 0.

  Returns:
    The per-element loss, shaped and typed like ``logits`` (no reduction).

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.losses import asymmetric_loss
    >>> loss = asymmetric_loss(jnp.array([0.0, -3.0]), jnp.array([1.0, 0.0]))
    >>> [round(float(v), 4) for v in loss]   # 0.5 log 2, and p < clip gives 0
    [0.3466, 0.0]

  References:
    Ridnik et al., `Asymmetric Loss For Multi-Label Classification
    <https://arxiv.org/abs/2009.14119>`_, ICCV 2021.
  """
  fn = "asymmetric_loss"
  logits = _utils.check_logits(logits, fn)
  _utils.check_same_shape(labels, logits, "labels", "logits", fn)
  mask = _utils.check_mask(where, logits.shape, fn)
  labels = _utils.check_unit_labels(labels, logits, fn, mask)
  # A negative exponent turns the focusing weight into an up-weighting (p_m^γ is infinite
  # at p = m); a margin outside [0, 1) mixes the two branches below or discards everything.
  ok = [
      _utils.check_hyperparameter(gamma_pos, fn, "gamma_pos", lo=0.0, hi=jnp.inf,
                                  hi_open=True),
      _utils.check_hyperparameter(gamma_neg, fn, "gamma_neg", lo=0.0, hi=jnp.inf,
                                  hi_open=True),
      _utils.check_hyperparameter(clip, fn, "clip", lo=0.0, hi=1.0, hi_open=True),
  ]
  dtype = logits.dtype
  # stop_gradient on the weights only: the log terms keep their gradient, as in the
  # reference code, where torch.set_grad_enabled(False) wraps the weights' computation.
  focusing = jax.lax.stop_gradient if detach_focusing_weights else (lambda w: w)
  gp = jnp.asarray(gamma_pos).astype(dtype)
  gn = jnp.asarray(gamma_neg).astype(dtype)
  m = jnp.asarray(clip).astype(dtype)
  log_p = jax.nn.log_sigmoid(logits)
  log_q = jax.nn.log_sigmoid(-logits)
  loss_pos = -focusing(jnp.exp(gp * log_q)) * log_p

  # log(1 - p_m) = log(min(q + m, 1)); log(0) = -inf when m = 0 makes logaddexp return log_q.
  log_m = jnp.where(m > 0, jnp.log(jnp.where(m > 0, m, 1)), -jnp.inf)
  log_one_minus_pm = jnp.minimum(jnp.logaddexp(log_q, log_m), 0)
  p_m = jax.nn.sigmoid(logits) - m
  shifted = p_m > 0
  # p_m <= 0: the element is discarded (log(1 - p_m) = 0); the safe value keeps the
  # unused branch of the power free of log(0), whose gradient would be NaN.
  log_pm = jnp.log(jnp.where(shifted, p_m, 1))
  loss_neg = jnp.where(shifted, -focusing(jnp.exp(gn * log_pm)) * log_one_minus_pm, 0)
  loss = labels * loss_pos + (1 - labels) * loss_neg
  for hp_ok in ok:
    loss = _utils.nan_unless(hp_ok, loss)
  return _utils.apply_mask(loss.astype(dtype), mask)
