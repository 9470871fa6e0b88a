"""Nash-MTL: the Nash bargaining solution, α > 0 with Gα = 1/α."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import full_precision, jacobi_ridge, normalize_gramian

__all__ = ["nash_mtl", "NASH_NEWTON_STEPS"]

# In float64, 15 steps reach |α(Qα) − 1| < 1e-8 on random Gramians with K <= 40,
# gradient norms spread over e^±8, zero and opposite gradients, rank 1..3K.
NASH_NEWTON_STEPS = 20


def _solve_alpha(q: jax.Array, num_iters: int) -> jax.Array:
  """``argmin_{α > 0} ½ αᵀQα − Σ log α_k`` (whose stationarity is ``Qα = 1/α``).

  Newton's method with a line search on the sign of the directional
  derivative: the objective is convex along the Newton direction d, so
  ``φ'(t) = dᵀQ(α + td) − Σ d_k / (α_k + t d_k)`` increases with t, and the
  largest step ``t ∈ {1/(1 + λ)} ∪ {2^j : -6 <= j <= 10}`` with ``φ'(t) <= 0``
  (and ``α + td > 0``) decreases the objective. ``1/(1 + λ)`` (λ the Newton
  decrement) is the classical damped step for this self-concordant objective;
  the long steps matter for nearly dependent gradients, where α must grow by
  orders of magnitude and a unit Newton step at most doubles it. Comparing
  signs rather than objective values keeps the search reliable in float32.
  """
  dtype = q.dtype
  powers = 2.0 ** jnp.arange(-6, 11, dtype=dtype)

  def step(_, alpha):
    grad = q @ alpha - 1.0 / alpha
    hess = q + jnp.diag(1.0 / (alpha * alpha))
    d = -jnp.linalg.solve(hess, grad)
    lam = jnp.sqrt(jnp.maximum(-(grad @ d), 0.0))
    ts = jnp.concatenate([(1.0 / (1.0 + lam))[None], powers])
    cands = alpha[None, :] + ts[:, None] * d[None, :]
    ok = jnp.all(cands > 0, axis=-1)
    safe = jnp.where(cands > 0, cands, 1.0)
    slope = (d @ (q @ alpha)) + ts * (d @ (q @ d)) - jnp.sum(d[None, :] / safe, axis=-1)
    ok = ok & (slope <= 0)
    t = jnp.max(jnp.where(ok, ts, 0.0))
    t = jnp.where(lam < 0.25, 1.0, jnp.maximum(t, ts[0]))  # pure Newton region: |d/α| < 1
    new = alpha + t * d
    return jnp.where(jnp.all(new > 0) & jnp.all(jnp.isfinite(new)), new, alpha)

  alpha0 = 1.0 / jnp.sqrt(jnp.diagonal(q))  # exact for orthogonal gradients
  return lax.fori_loop(0, num_iters, step, alpha0)


@functools.partial(jax.jit, static_argnames=("num_iters",))
@full_precision
def nash_mtl(
    gramian: jax.Array,
    *,
    max_norm: float | jax.Array = 1.0,
    reg_eps: float | jax.Array = 1e-6,
    num_iters: int = NASH_NEWTON_STEPS,
) -> jax.Array:
  """Nash-MTL weights: the Nash bargaining solution, with the update norm clipped.

  .. math:: \\alpha > 0:\\ G\\alpha = 1/\\alpha \\ \\text{(elementwise)}, \\qquad
     w = \\alpha \\cdot \\min\\!\\big(1, \\text{max\\_norm} / \\sqrt{\\alpha^\\top G \\alpha}\\big)

  ``Gα = 1/α`` is the stationarity condition of the strictly convex
  ``½ αᵀGα − Σ_k log α_k``, which is minimised here by damped Newton with a
  fixed budget (``num_iters``) on the trace-normalised Gramian plus the
  relative ridge ``reg_eps·diag(Ĝ_kk + reg_eps)`` (so that a solution exists
  even when the gradients are linearly dependent, e.g. opposite), then
  rescaled to ``G``: ``α(sG) = α(G)/√s``. At the solution ``‖Jᵀα‖² = K``, and the
  update is clipped to ``max_norm`` as in the paper's code (which clips the
  gradient norm of the shared parameters); ``max_norm <= 0`` disables it.

  The paper's code instead solves a sequence of 20 linearised convex problems
  with cvxpy/ECOS from the previous step's α, normalising ``G`` by its
  Frobenius norm; it silently keeps the previous α when the solver fails. The
  solution it approximates is the same.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    max_norm: largest norm of the update ``Jᵀw``; ``<= 0`` for no clipping.
    reg_eps: relative ridge on the normalised Gramian.
    num_iters: Newton steps (a Python int).

  Returns:
    ``[K]`` positive weights ``w``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal: α_k = 1/‖g_k‖
    >>> [round(a, 4) for a in wx.weightings.nash_mtl(G, max_norm=0.0).tolist()]
    [1.0, 0.5]

  References:
    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
  """
  g, trace = normalize_gramian(gramian)
  dtype = g.dtype
  alpha_hat = _solve_alpha(jacobi_ridge(g, reg_eps), num_iters)
  safe = jnp.where(trace > jnp.finfo(dtype).tiny, trace, jnp.ones_like(trace))
  alpha = alpha_hat / jnp.sqrt(safe)
  norm = jnp.sqrt(jnp.maximum(alpha_hat @ (g @ alpha_hat), 0.0))  # ‖Jᵀα‖, scale-free
  max_norm = jnp.asarray(max_norm, dtype)
  clip = (max_norm > 0) & (norm > max_norm)
  factor = jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0)
  return alpha * factor
