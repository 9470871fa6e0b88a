"""MGDA: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import jax

from weightax.weightings._solvers import min_norm_simplex, pure_weighting

__all__ = ["mgda"]


@jax.jit
@pure_weighting
def mgda(gramian: jax.Array, *, reg_eps: float | jax.Array = 1e-6) -> jax.Array:
  """MGDA weights: the convex combination of task gradients with the smallest norm.

  .. math:: \\lambda^* = \\arg\\min_{\\lambda \\in \\Delta} \\|J^\\top \\lambda\\|^2
     = \\arg\\min_{\\lambda \\in \\Delta} \\lambda^\\top G \\lambda

  The update ``Jᵀλ*`` is the common descent direction of Désidéri's MGDA: it
  has a non-negative inner product with every task gradient, and is zero
  exactly when the parameters are Pareto-stationary. For K = 2 the closed form
  ``λ₁ = clip(<g₂ − g₁, g₂> / ‖g₁ − g₂‖², 0, 1)`` is used (``½`` when
  ``g₁ = g₂``), each λ from its own numerator. For K > 2, ``λ* = x / Σx`` with
  ``x = argmin_{x >= 0} ½ xᵀ(Ĝ + reg_eps·diag(Ĝ))x − 1ᵀx`` and
  ``Ĝ = G / tr(G)``, solved exactly by block principal pivoting (a few
  ``K x K`` solves, stopping at the KKT point) on the cosine matrix
  ``D^-½ĜD^-½``, so float32
  stays accurate when the gradient norms differ by ``1e7``. The ridge changes
  the optimal value by at most ``reg_eps·max_k G_kk`` and selects one
  minimiser when it is not unique. With it the guarantee reads
  ``<g_k, Jᵀλ> >= −reg_eps·‖g_k‖²·λ_k``, i.e. the conflict
  ``κ_k = −<g_k, Jᵀλ>/(‖g_k‖·Σ_j λ_j‖g_j‖) <= reg_eps`` (plus float32
  rounding, below ``1e-5`` on adversarial Gramians: norms over e^±8,
  rank-deficient, nearly opposite pairs, K <= 10). A zero gradient makes 0
  the min-norm point: λ is then uniform over the zero-gradient tasks. The
  weights are invariant to a positive rescaling of ``G``.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ`` of the task gradients.
    reg_eps: ridge relative to each task's squared norm (used when K > 2).

  Returns:
    ``[K]`` weights on the probability simplex (they sum to 1).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal, norms 1 and 2
    >>> [round(w, 4) for w in wx.weightings.mgda(G).tolist()]
    [0.8, 0.2]

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018; Désidéri, "Multiple-gradient descent algorithm (MGDA) for
    multiobjective optimization", C. R. Math. 2012.
  """
  return min_norm_simplex(gramian, reg_eps=reg_eps)
