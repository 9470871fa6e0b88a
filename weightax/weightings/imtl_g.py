"""IMTL-G: the combination whose projections on every unit task gradient are equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import full_precision, normalize_gramian

__all__ = ["imtl_g"]


@jax.jit
@full_precision
def imtl_g(gramian: jax.Array) -> jax.Array:
  """IMTL-G weights: the update projects equally on every task's unit gradient.

  .. math:: w \\propto G^{+} \\sqrt{\\operatorname{diag}(G)}, \\qquad \\sum_k w_k = 1

  For linearly independent gradients, ``d = Jᵀw`` satisfies
  ``<d, g_k/‖g_k‖> = <d, g_j/‖g_j‖>`` for all k, j, which is the paper's
  condition; its closed form in the paper (differences against task 1, as in
  LibMTL and the Nash-MTL code) equals this one. The pseudo-inverse
  (eigenvalues below ``10·K·eps·λ_max`` dropped) extends it to dependent
  gradients, as in torchjd. When ``Σ G⁺√diag(G)`` vanishes (e.g. two opposite
  gradients) the direction is undefined and the weights are zero, as in
  torchjd. Invariant to a positive rescaling of ``G``.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.

  Returns:
    ``[K]`` weights summing to 1 (or all zero in the degenerate case).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal, norms 1 and 2
    >>> [round(w, 4) for w in wx.weightings.imtl_g(G).tolist()]
    [0.6667, 0.3333]

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; the
    pseudo-inverse form: Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024.
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  evals, evecs = jnp.linalg.eigh(g)
  keep = evals > 10 * k * jnp.finfo(dtype).eps * jnp.max(evals)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)
  sqrt_diag = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
  v = evecs @ (inv * (evecs.T @ sqrt_diag))
  total = jnp.sum(v)
  # Below this, Σv is rounding noise of an exactly cancelling configuration.
  ok = jnp.abs(total) > 1e-4 * jnp.sum(jnp.abs(v)) + 1e-6
  return jnp.where(ok, v / jnp.where(ok, total, 1.0), jnp.zeros_like(v))
