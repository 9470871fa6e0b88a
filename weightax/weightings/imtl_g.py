"""IMTL-G: the combination whose projections on every unit task gradient are equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import normalize_gramian, pure_weighting

__all__ = ["imtl_g", "IMTL_RANK_RTOL"]

# Eigenvalues of the cosine matrix C below IMTL_RANK_RTOL·K·eps·λ_max(C) count
# as zero. Rounding a Gramian to the working precision moves the eigenvalues
# of C by at most about K·eps (its entries are cosines, each off by ~eps).
IMTL_RANK_RTOL = 16.0


@jax.jit
@pure_weighting
def imtl_g(gramian: jax.Array) -> jax.Array:
  """IMTL-G weights: the update projects equally on every task's unit gradient.

  .. math:: w \\propto D^{-1/2} C^{+} \\mathbf{1}, \\quad
     C = D^{-1/2} G D^{-1/2},\\ D = \\operatorname{diag}(G), \\qquad \\sum_k w_k = 1

  ``C`` is the matrix of cosines between the task gradients and
  ``v = C⁺1`` the contribution ``‖g_k‖·w_k`` of each task, so that
  ``d = Jᵀw`` satisfies ``<d, g_k/‖g_k‖> = <d, g_j/‖g_j‖>`` for all k, j (the
  paper's condition). For linearly independent gradients this is exactly
  ``G⁻¹√diag(G)`` normalised, the closed form of the paper, LibMTL and the
  Nash-MTL code (differences against task 1) and of torchjd. Working on ``C``
  instead of ``G`` keeps float32 exact for gradient norms that differ by
  ``1e7`` or more (``G`` itself would have a condition number of ``1e14``,
  and a cut-off on its eigenvalues would drop the small tasks).

  Dependent gradients: eigenvalues of ``C`` below
  ``IMTL_RANK_RTOL·K·eps·λ_max(C)`` are dropped (the pseudo-inverse), i.e.
  tasks count as dependent when their *directions* are, whatever their norms.
  ``v`` is then the least-squares solution of the equal-projection condition
  with every task counted equally; torchjd's ``G⁺√diag(G)`` instead weighs
  task k's residual by ``‖g_k‖``, so the two differ only for dependent
  gradients. Tasks with a zero gradient (squared norm at most ``tiny·max_k G_kk``)
  get weight 0. When the condition has no solution but zero (e.g. two opposite
  gradients, ``C⁺1 = 0``) or ``Σ_k w_k`` vanishes, the direction is undefined
  and the weights are zero, as in torchjd. Invariant to a positive rescaling
  of ``G``.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.

  Returns:
    ``[K]`` weights summing to 1 (or all zero in the degenerate case).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal, norms 1 and 2
    >>> [round(w, 4) for w in wx.weightings.imtl_g(G).tolist()]
    [0.6667, 0.3333]
    >>> G = jnp.diag(jnp.array([1.0, 1e-6]))  # norms 1 and 1e-3: w ∝ 1/‖g_k‖
    >>> [round(w, 6) for w in wx.weightings.imtl_g(G).tolist()]
    [0.000999, 0.999001]

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; the
    pseudo-inverse form: Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024.
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  finfo = jnp.finfo(dtype)
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  # s_k = ‖g_k‖ / max_j ‖g_j‖ in (0, 1]; below √tiny the task counts as zero.
  s = jnp.sqrt(diag / jnp.maximum(jnp.max(diag), finfo.tiny))
  alive = s > jnp.sqrt(finfo.tiny)
  inv_s = jnp.where(alive, 1.0 / jnp.where(alive, s, 1.0), 0.0)
  root = jnp.sqrt(jnp.where(alive, diag, 1.0))
  both = alive[:, None] & alive[None, :]
  c = jnp.where(both, g / root[:, None] / root[None, :], 0.0)
  ones = alive.astype(dtype)
  # Fast path: when every eigenvalue of C is certified above the cut-off, C⁺ = C⁻¹ and a
  # Cholesky solve replaces the eigendecomposition (several times cheaper at K = 40-64).
  # Dead tasks get a unit diagonal (a separate block, so v_dead = 1·0 = 0). The
  # certificate: λ_min(C) ≥ 1/‖C⁻¹‖_F, and λ_max(C) ≤ tr(C) = K, so
  # 1/‖C⁻¹‖_F > IMTL_RANK_RTOL·K·eps·K implies that eigh would keep every eigenvalue.
  c_pd = jnp.where(jnp.eye(k, dtype=bool), jnp.where(alive, jnp.diagonal(c), 1.0), c)
  chol = jnp.linalg.cholesky(c_pd)
  c_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(k, dtype=dtype))
  inv_fro = jnp.sqrt(jnp.sum(c_inv * c_inv))
  certified = jnp.isfinite(inv_fro) & (
      inv_fro * (IMTL_RANK_RTOL * k * finfo.eps * k) < 1.0)

  def direct(_):
    v = c_inv @ ones
    w = v * inv_s
    total = jnp.sum(w)
    ok = jnp.abs(total) > 1e-4 * jnp.sum(jnp.abs(w))
    return jnp.where(ok, w / jnp.where(ok, total, 1.0), jnp.zeros_like(w))

  return jax.lax.cond(certified, direct, lambda _: _pseudo_inverse_weights(
      c, alive, inv_s, ones, k, finfo), None)


def _pseudo_inverse_weights(c, alive, inv_s, ones, k, finfo):
  """IMTL-G's weights through the eigendecomposition of C (dependent directions dropped)."""
  evals, evecs = jnp.linalg.eigh(c)
  keep = evals > IMTL_RANK_RTOL * k * finfo.eps * jnp.max(evals)
  inv = jnp.where(keep, 1.0 / jnp.where(keep, evals, 1.0), 0.0)
  coef = evecs.T @ ones
  v = evecs @ (inv * coef)  # C⁺1: the contribution ‖g_k‖·w_k, up to a common factor
  w = v * inv_s
  total = jnp.sum(w)
  # 1 orthogonal to range(C) (only rounding left of its projection), or a
  # vanishing Σw: no direction has equal positive projections.
  proj = jnp.sqrt(jnp.sum(jnp.where(keep, coef * coef, 0.0)))
  ok = (proj > 1e-3 * jnp.sqrt(jnp.maximum(jnp.sum(ones), 1.0))) & (
      jnp.abs(total) > 1e-4 * jnp.sum(jnp.abs(w))
  )
  return jnp.where(ok, w / jnp.where(ok, total, 1.0), jnp.zeros_like(w))
