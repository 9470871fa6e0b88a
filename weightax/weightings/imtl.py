"""IMTL: IMTL-G on the gradients of the IMTL-L-scaled losses ``e^{s_k} L_k``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import pure_weighting
from weightax.weightings.imtl_g import imtl_g

__all__ = ["imtl"]


@jax.jit
@pure_weighting
def imtl(gramian: jax.Array, log_scales: jax.Array | None = None) -> jax.Array:
  """Full IMTL's weights on the task gradients ``g_k``, given IMTL-L's log-scales ``s``.

  IMTL-G is applied to the gradients of the scaled losses ``e^{s_k} L_k``,
  i.e. to ``g'_k = e^{s_k} g_k``, and its weights ``α`` are re-expressed on the
  original gradients:

  .. math:: \\alpha = \\mathrm{IMTL\\text{-}G}(D_s G D_s),\\ D_s = \\operatorname{diag}(e^{s}),
     \\qquad w_k = \\alpha_k e^{s_k}, \\qquad \\sum_k w_k g_k = \\sum_k \\alpha_k g'_k

  Rescaling a gradient does not change the cosine matrix that IMTL-G solves
  on, so with ``w⁰ = imtl_g(G)`` (the weights at ``s = 0``) this is exactly

  .. math:: w = \\frac{w^0}{\\sum_j w^0_j e^{-s_j}}

  which is how it is computed: ``G`` itself is never rescaled, so no entry
  over- or underflows however far apart the ``s_k`` are. The direction is
  IMTL-G's; the scales set the length. As in :func:`imtl_g`, the weights are
  zero when the direction is undefined (here: when ``Σ_j w⁰_j e^{-s_j}``,
  the sum of the unnormalised ``α``, vanishes relative to ``Σ_j |w⁰_j e^{-s_j}|``).

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ`` of the unscaled task gradients.
    log_scales: ``[K]`` IMTL-L log-scales ``s``; ``None`` means ``s = 0`` (IMTL-G).

  Returns:
    ``[K]`` weights on the unscaled gradients (``Σ_k w_k e^{-s_k} = 1``, or all
    zero in the degenerate case).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal, norms 1 and 2
    >>> [round(w, 4) for w in wx.weightings.imtl(G).tolist()]  # s = 0: IMTL-G
    [0.6667, 0.3333]
    >>> s = jnp.log(jnp.array([2.0, 1.0]))  # task 1's loss scaled by 2: α on [2g_1, g_2]
    >>> [round(w, 4) for w in wx.weightings.imtl(G, s).tolist()]
    [1.0, 0.5]

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
  """
  w0 = imtl_g(gramian)
  if log_scales is None:
    return w0
  s = jnp.asarray(log_scales, w0.dtype)
  lo = jnp.min(s)
  r = w0 * jnp.exp(-(s - lo))  # α up to the common factor e^{lo}; every factor <= 1
  total = jnp.sum(r)
  ok = jnp.abs(total) > 1e-4 * jnp.sum(jnp.abs(r))
  return jnp.where(ok, w0 * jnp.exp(lo) / jnp.where(ok, total, 1.0), jnp.zeros_like(w0))
