"""Aligned-MTL: make the task gradients orthogonal and of equal norm, then combine them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import normalize_gramian, pure_weighting

__all__ = ["aligned_mtl", "ALIGNED_MTL_SCALE_MODES"]

ALIGNED_MTL_SCALE_MODES = ("min", "median", "rmse")


@functools.partial(jax.jit, static_argnames=("scale_mode",))
@pure_weighting
def aligned_mtl(
    gramian: jax.Array,
    *,
    pref_vector: jax.Array | None = None,
    scale_mode: str = "min",
) -> jax.Array:
  """Aligned-MTL weights: ``w = B p`` with ``B = √σ·G^{-½}`` on the range of ``G``.

  .. math:: G = V \\Lambda V^\\top, \\qquad
     B = \\sqrt{\\sigma}\\, V_r \\Lambda_r^{-1/2} V_r^\\top, \\qquad w = B p

  ``V_r, Λ_r`` keep the eigenvalues above ``λ_max·K·eps`` (``eps`` the
  machine epsilon of the dtype, as in LibMTL and torchjd). The aligned
  gradients, the rows of ``BJ``, are orthogonal with equal squared norm ``σ``
  on the span of J (the Procrustes solution closest to J with a condition
  number of 1), and the update is ``Jᵀw = (BJ)ᵀp``. ``σ`` is the smallest kept
  eigenvalue (``scale_mode="min"``, the paper's and both libraries' default),
  their lower median (``"median"``) or their mean (``"rmse"``), as torchjd.
  Since ``B`` is unchanged when ``G`` is rescaled, the Gramian is normalised
  by its trace first. A zero Gramian (rank 0) gives ``B = I``, ``w = p``, as
  torchjd.

  **Precision.** ``eigh`` in float32 gets each eigenvalue to about
  ``eps·λ_max``, so the weights are accurate to about ``eps·λ_max/σ``, the
  condition number of the kept spectrum times eps: exact to float32 for
  well-conditioned Gramians, a few digits when the gradient norms differ by
  ``10³`` (measured against a float64 transcription of torchjd's formula:
  below ``7·eps·λ_max/σ`` on random, rank-deficient, nearly opposite and
  widely spread Jacobians, K <= 10).

  **Convention.** ``p = 1`` (``pref_vector=None``): the authors' code
  (SamsungLabs/MTL) and LibMTL *sum* the aligned gradients; torchjd averages
  them (``p = 1/K``), which ``pref_vector=jnp.full(K, 1/K)`` gives.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    pref_vector: ``[K]`` weights ``p`` of the aligned gradients; ``None``
      means ones (the sum). May be traced.
    scale_mode: ``"min"``, ``"median"`` or ``"rmse"``; a Python string.

  Returns:
    ``[K]`` weights ``w``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[2.0, 0.0], [0.0, 1.0]])  # orthogonal: rescaled to the smaller norm
    >>> [round(x, 4) for x in wx.weightings.aligned_mtl(J @ J.T).tolist()]
    [0.5, 1.0]

  References:
    Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023.
  """
  if scale_mode not in ALIGNED_MTL_SCALE_MODES:
    raise ValueError(
        f"aligned_mtl: scale_mode must be one of {ALIGNED_MTL_SCALE_MODES}; got {scale_mode!r}.")
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  if pref_vector is None:
    p = jnp.ones((k,), dtype)
  else:
    p = jnp.asarray(pref_vector, dtype)
    if p.shape != (k,):
      raise ValueError(f"aligned_mtl: pref_vector must have shape ({k},); got {p.shape}.")
  # Tasks in decreasing order of gradient norm: tridiagonal eigensolvers are
  # most accurate on graded matrices with the large entries first, and a
  # canonical order makes the weights exactly permutation-invariant (up to ties).
  order = jnp.argsort(-jnp.diagonal(g))
  lam, v = jnp.linalg.eigh(g[order][:, order])
  v = jnp.zeros_like(v).at[order].set(v)  # rows back to the tasks' order
  top = jnp.max(lam)
  keep = lam > top * k * jnp.finfo(dtype).eps
  rank = jnp.sum(keep)
  safe = jnp.where(keep, lam, 1.0)
  if scale_mode == "min":
    sigma = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale_mode == "rmse":
    sigma = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
  else:  # the lower median of the kept eigenvalues, as torch.median
    ordered = jnp.sort(jnp.where(keep, lam, jnp.inf))
    sigma = ordered[jnp.maximum(rank - 1, 0) // 2]
  sigma = jnp.where(rank > 0, sigma, 1.0)
  inv_root = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
  b = jnp.sqrt(sigma) * (v * inv_root[None, :]) @ v.T
  b = jnp.where(rank > 0, b, jnp.eye(k, dtype=dtype))
  return b @ p
