"""SDMGrad: direction-oriented weights from a few projected steps on a cross-batch Gramian."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import pure_weighting, vary_like

__all__ = ["sdmgrad", "sdmgrad_step", "project_simplex"]

_EPS = 1e-8  # Â = A / (s² + 1e-8), as LibMTL and the authors' LibMTL-based code


def project_simplex(v: jax.Array) -> jax.Array:
  """The Euclidean projection of ``v`` ``[K]`` onto the simplex ``{x >= 0, Σ x = 1}``.

  .. math:: \\Pi_\\Delta(v)_k = \\max(v_k - \\tau, 0), \\qquad
     \\tau = \\frac{\\sum_{i \\le \\rho} u_i - 1}{\\rho}, \\quad
     \\rho = \\max\\{j : u_j > (\\textstyle\\sum_{i \\le j} u_i - 1) / j\\}

  with ``u`` the entries of ``v`` sorted in decreasing order (Duchi et al.,
  ICML 2008), the algorithm of LibMTL's SDMGrad and MoDo. Entries equal to
  ``-inf`` are allowed (they get 0) as long as one entry is finite. ``v`` is first
  shifted by its largest entry (the projection does not change), so entries of any
  magnitude keep the unit sum.

  Args:
    v: ``[K]`` vector.

  Returns:
    ``[K]`` non-negative weights summing to 1.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.weightings.sdmgrad import project_simplex
    >>> project_simplex(jnp.array([0.5, 0.5, 3.0])).tolist()
    [0.0, 0.0, 1.0]
  """
  k = v.shape[-1]
  # Π(v + c·1) = Π(v): shifting by the largest entry keeps the "- 1" below from being lost
  # in float32 when the entries are huge (SDMGrad's normalised Gramian is divided by 1e-8
  # when its diagonal is <= 0, and its iterates reach ~1e10).
  v = v - jnp.max(v)
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u)
  idx = jnp.arange(1, k + 1, dtype=v.dtype)
  # -inf entries: -inf > -inf - 1 is False, so they never count in ρ.
  rho = jnp.max(jnp.where(u * idx > css - 1.0, jnp.arange(1, k + 1), 1))
  tau = (css[rho - 1] - 1.0) / rho.astype(v.dtype)
  return jnp.maximum(v - tau, 0.0)


def _normalized(cross: jax.Array, eps: jax.Array | float) -> jax.Array:
  """``A / (s² + eps)`` with ``s`` the mean of ``√max(diag A, 0)`` (diag A can be < 0)."""
  s = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(cross), 0.0)))
  return cross / (s * s + eps)


@jax.jit
@pure_weighting
def sdmgrad_step(
    gramian: jax.Array,
    weights: jax.Array,
    *,
    lam: float | jax.Array = 0.3,
    learning_rate: float | jax.Array = 10.0,
    num_steps: int | jax.Array = 20,
    momentum: float | jax.Array = 0.5,
    eps: float | jax.Array = _EPS,
) -> tuple[jax.Array, jax.Array]:
  """SDMGrad's applied weights and its new simplex weights ``w`` (see :func:`sdmgrad`).

  Args:
    gramian: ``[K, K]`` ``A = J_ξ J_ξ'ᵀ`` (any square matrix; not symmetric in general).
    weights: ``[K]`` the simplex weights ``w`` kept from the last step.
    lam: λ, the pull towards the average gradient.
    learning_rate: the inner step size on ``w``.
    num_steps: the number of inner steps.
    momentum: the inner heavy-ball momentum (torch SGD's).
    eps: the ``s² + eps`` of the normalisation.

  Returns:
    ``(applied [K], w [K])``: the weights on the update's Jacobian
    ``(w + λ/K)/(1 + λ)`` and the new ``w`` to keep.
  """
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  a_hat = _normalized(gramian.astype(dtype), jnp.asarray(eps, dtype))
  k = a_hat.shape[0]
  lam = jnp.asarray(lam, dtype)
  lr = jnp.asarray(learning_rate, dtype)
  mom = jnp.asarray(momentum, dtype)
  w_tilde = jnp.full((k,), 1.0 / k, dtype)

  def body(_: int | jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
    v, w = carry
    # ∇_w of ½‖J_ξ w‖²-like objective with the direction term: Â (w + λ w̃).
    v = mom * v + a_hat @ (w + lam * w_tilde)
    return v, project_simplex(w - lr * v)

  carry0 = vary_like((jnp.zeros((k,), dtype), weights.astype(dtype)), a_hat)
  _, w = lax.fori_loop(0, num_steps, body, carry0)
  return (w + lam * w_tilde) / (1.0 + lam), w


def sdmgrad(
    gramian: jax.Array,
    weights: jax.Array | None = None,
    *,
    lam: float | jax.Array = 0.3,
    learning_rate: float | jax.Array = 10.0,
    num_steps: int | jax.Array = 20,
    momentum: float | jax.Array = 0.5,
) -> jax.Array:
  """SDMGrad weights: ``w`` on the simplex after ``num_steps`` projected momentum steps.

  With ``A = J_ξ J_ξ'ᵀ`` (the Jacobians of two independent batches; the
  Gramian ``G = J Jᵀ`` of one batch when only one is at hand),
  ``s = mean_k √max(A_kk, 0)``, ``Â = A / (s² + 10⁻⁸)``, ``w̃ = 1/K`` and
  ``v = 0``, repeat ``num_steps`` times

  .. math:: v \\leftarrow \\mu v + \\hat A (w + \\lambda \\tilde w), \\qquad
     w \\leftarrow \\Pi_\\Delta(w - \\eta v),

  then weight the tasks by ``(w + λ w̃) / (1 + λ)`` (they sum to 1): the
  update ``Σ_k w_k g_k + λ ḡ`` over ``1 + λ`` leans from the min-norm
  direction of MGDA towards the average gradient ``ḡ``. This is the weighting
  of one step from ``w`` (``1/K`` by default); :func:`weightax.sdmgrad` keeps
  ``w`` between steps and feeds it independent batches.

  Args:
    gramian: ``[K, K]`` ``A`` (a Gramian, or the non-symmetric product of two
      batches' Jacobians).
    weights: ``[K]`` starting ``w`` on the simplex (default ``1/K``).
    lam: λ ≥ 0, the pull towards the average gradient (may be traced).
    learning_rate: the inner step size η (may be traced).
    num_steps: the number of inner steps (may be traced).
    momentum: the inner momentum μ (may be traced).

  Returns:
    ``[K]`` non-negative weights summing to 1.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[4.0, 0.0], [0.0, 1.0]])  # orthogonal gradients of norms 2 and 1
    >>> # λ = 0 and small steps: MGDA's min-norm weights 1/5, 4/5
    >>> [round(x, 3) for x in wx.weightings.sdmgrad(G, lam=0.0, learning_rate=1.0).tolist()]
    [0.2, 0.8]
    >>> # the default η = 10 overshoots: w oscillates around the simplex's corners
    >>> [round(x, 4) for x in wx.weightings.sdmgrad(G).tolist()]
    [0.8583, 0.1417]

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023.
  """
  k = gramian.shape[0]
  if weights is None:
    weights = jnp.full((k,), 1.0 / k, jnp.promote_types(gramian.dtype, jnp.float32))
  applied, _ = sdmgrad_step(gramian, weights, lam=lam, learning_rate=learning_rate,
                            num_steps=num_steps, momentum=momentum)
  return applied
