"""ConFIG: the direction with equal positive cosines to every task gradient, scaled by their sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import normalize_gramian, pure_weighting
from weightax.weightings.imtl_g import IMTL_RANK_RTOL

__all__ = ["config"]


@jax.jit
@pure_weighting
def config(gramian: jax.Array, *, pref_vector: jax.Array | None = None) -> jax.Array:
  """ConFIG weights: ``u = (Σ_i <g_i, d̂>) d̂`` with ``d = Û⁺p``, as ``Jᵀw``.

  .. math:: \\hat U = D^{-1/2} J, \\quad d = \\hat U^{+} p, \\quad
     \\hat d = d / \\|d\\|, \\qquad u = \\Big(\\sum_i \\langle g_i, \\hat d\\rangle\\Big)\\hat d

  ``Û`` holds the unit task gradients (a zero gradient gives a zero row), so
  ``d`` is the minimum-norm direction whose projections on the unit gradients
  are ``p`` (ones by default: equal cosines). Since ``d`` lies in the row
  space of ``Û``, ``d = Jᵀ D^{-½} C⁺p`` with ``C = ÛÛᵀ`` the cosine matrix,
  so the update is a weighting of the Gramian:

  .. math:: v = C^{+} p, \\qquad
     w = \\frac{\\sum_i \\|g_i\\| (C v)_i}{v^\\top C v}\\, D^{-1/2} v

  This equals torchjd's ``ConFIG`` and the official code (``pinv`` of the
  unit Jacobian) up to where small singular values are cut: here eigenvalues
  of ``C`` below ``IMTL_RANK_RTOL·K·eps·λ_max`` (dependent directions),
  whereas ``torch.linalg.pinv`` cuts singular values of ``Û`` below
  ``max(K, n)·eps·σ_max``, a threshold that grows with the number of
  parameters n. When ``p`` has (up to rounding) no component in the range of
  ``C`` (e.g. two opposite gradients) the direction is undefined and the
  weights are zero (torchjd: a zero update). The official code's closed form
  for K = 2 and its momentum variant are not provided. Invariant to a
  positive rescaling of ``G``.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    pref_vector: ``[K]`` target projections ``p``; ``None`` means ones.

  Returns:
    ``[K]`` weights.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.diag(jnp.array([4.0, 1.0]))  # orthogonal, norms 2 and 1
    >>> [round(x, 4) for x in wx.weightings.config(G).tolist()]  # d̂ = (1,1)/√2, length 3/√2
    [0.75, 1.5]

  References:
    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025; torchjd (https://github.com/TorchJD/torchjd).
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  finfo = jnp.finfo(dtype)
  if pref_vector is None:
    p = jnp.ones((k,), dtype)
  else:
    p = jnp.asarray(pref_vector, dtype)
    if p.shape != (k,):
      raise ValueError(f"config: pref_vector must have shape ({k},); got {p.shape}.")
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  s = jnp.sqrt(diag / jnp.maximum(jnp.max(diag), finfo.tiny))  # ‖g_k‖ / max_j ‖g_j‖
  alive = s > jnp.sqrt(finfo.tiny)
  inv_s = jnp.where(alive, 1.0 / jnp.where(alive, s, 1.0), 0.0)
  root = jnp.sqrt(jnp.where(alive, diag, 1.0))
  both = alive[:, None] & alive[None, :]
  c = jnp.where(both, g / root[:, None] / root[None, :], 0.0)  # zero rows for zero gradients
  evals, evecs = jnp.linalg.eigh(c)
  keep = evals > IMTL_RANK_RTOL * k * finfo.eps * jnp.max(evals)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)
  coef = evecs.T @ p
  v = evecs @ (inv * coef)  # C⁺p: d's projection on each unit gradient is (Cv)_k
  cv = c @ v
  norm2 = v @ cv  # ‖d‖²
  ratio = jnp.sum(s * cv) / jnp.where(norm2 > 0, norm2, 1.0)
  # p orthogonal to range(C), up to the rounding of its projection: no direction.
  proj = jnp.sqrt(jnp.sum(jnp.where(keep, coef * coef, 0.0)))
  ok = (proj > 1e-3 * jnp.sqrt(jnp.sum(p * p))) & (norm2 > 0)
  return jnp.where(ok, ratio * v * inv_s, jnp.zeros_like(v))
