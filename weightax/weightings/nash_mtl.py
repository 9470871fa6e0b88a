"""Nash-MTL: the Nash bargaining solution, α > 0 with Gα = 1/α."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import normalize_gramian, pure_weighting

__all__ = ["nash_mtl", "NASH_NEWTON_STEPS"]

# In float64, 15 steps reach |α(Qα) − 1| < 1e-8 on random Gramians with K <= 40,
# gradient norms spread over e^±8, zero and opposite gradients, rank 1..3K.
NASH_NEWTON_STEPS = 20


def _solve_alpha(c: jax.Array, ridge: jax.Array, num_iters: int) -> jax.Array:
  """``argmin_{α > 0} ½ αᵀQα − Σ log α_k`` (stationarity: ``Qα = 1/α``), ``Q = C + ridge·I``.

  The ridge is kept apart from ``C`` (a unit diagonal plus ``1e-6`` would be
  rounded to 5% in float32).

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
  dtype = c.dtype
  powers = 2.0 ** jnp.arange(-6, 11, dtype=dtype)

  def q(x: jax.Array) -> jax.Array:
    return c @ x + ridge * x

  def step(_, alpha):
    grad = q(alpha) - 1.0 / alpha
    hess = c + jnp.diag(ridge + 1.0 / (alpha * alpha))
    d = -jnp.linalg.solve(hess, grad)
    lam = jnp.sqrt(jnp.maximum(-(grad @ d), 0.0))
    ts = jnp.concatenate([(1.0 / (1.0 + lam))[None], powers])
    cands = alpha[None, :] + ts[:, None] * d[None, :]
    ok = jnp.all(cands > 0, axis=-1)
    safe = jnp.where(cands > 0, cands, 1.0)
    slope = (d @ q(alpha)) + ts * (d @ q(d)) - jnp.sum(d[None, :] / safe, axis=-1)
    ok = ok & (slope <= 0)
    t = jnp.max(jnp.where(ok, ts, 0.0))
    t = jnp.where(lam < 0.25, 1.0, jnp.maximum(t, ts[0]))  # pure Newton region: |d/α| < 1
    new = alpha + t * d
    return jnp.where(jnp.all(new > 0) & jnp.all(jnp.isfinite(new)), new, alpha)

  alpha0 = 1.0 / jnp.sqrt(jnp.diagonal(c) + ridge)  # exact for orthogonal gradients
  return lax.fori_loop(0, num_iters, step, alpha0)


@functools.partial(jax.jit, static_argnames=("num_iters",))
@pure_weighting
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
  fixed budget (``num_iters``) on the trace-normalised Gramian ``Ĝ`` plus the
  relative ridge ``reg_eps·diag(Ĝ)`` (so that a solution exists even when the
  gradients are linearly dependent, e.g. opposite), then rescaled to ``G``:
  ``α(sG) = α(G)/√s``. Newton runs on ``β_k = √Ĝ_kk·α_k`` and the cosine matrix
  ``C = D^-½ĜD^-½`` (``(C + εI)β = 1/β``), so the spread of the gradient norms
  does not enter the conditioning. At the solution
  ``<g_k, Jᵀα> = 1/α_k − reg_eps·‖g_k‖²·α_k``, positive on every
  adversarial Gramian tested (norms over e^±8, rank-deficient, nearly opposite
  pairs, K <= 10), and ``‖Jᵀα‖² = K`` up to the ridge's share; the update is
  clipped to ``max_norm`` as in the paper's code (which clips the gradient
  norm of the shared parameters); ``max_norm <= 0`` disables it. A task with
  a zero gradient gets ``α_k = 1/(reg_eps·√tr(G))`` (it multiplies zero).

  Accuracy in float32 (relative error of α against a float64 solution of the
  same equations, on those Gramians): below ``1e-5`` (measured worst
  ``2e-6``) when ``Gα = 1/α`` has a solution of its own (independent or
  identical gradients). When it has none (0 in the convex hull of dependent
  gradients, e.g. exactly or nearly opposite ones) the ridge alone fixes α,
  and float32 rounding of the cosines (~1e-7) is not small against it: α is
  only determined to about ``2e-7/reg_eps``, measured worst ``0.17`` at the
  default ``reg_eps = 1e-6`` (tested below 0.25), ``0.019`` at ``1e-5`` and
  ``0.0015`` at ``1e-4`` (tested below 2e-3). Pass a larger ``reg_eps``, or
  float64 gradients (``jax_enable_x64``), when those α matter.

  The paper's code instead solves a sequence of 20 linearised convex problems
  with cvxpy/ECOS from the previous step's α, normalising ``G`` by its
  Frobenius norm; it silently keeps the previous α when the solver fails. The
  solution it approximates is the same.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    max_norm: largest norm of the update ``Jᵀw``; ``<= 0`` for no clipping.
    reg_eps: the ridge, relative to each task's squared norm.
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
  finfo = jnp.finfo(dtype)
  eps = jnp.asarray(reg_eps, dtype)
  # Solve for β = √diag(Ĝ)·α on the cosine matrix C = D^-½ĜD^-½:
  # (Ĝ + ε·diag(Ĝ))α = 1/α  <=>  (C + εI)β = 1/β, whatever the spread of the norms.
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  alive = diag > finfo.tiny * jnp.max(diag) / finfo.eps
  root = jnp.sqrt(jnp.where(alive, diag, 1.0))
  both = alive[:, None] & alive[None, :]
  c = jnp.where(both, g / root[:, None] / root[None, :], 0.0) + jnp.diag(
      jnp.where(alive, 0.0, 1.0)
  ).astype(dtype)
  beta = _solve_alpha(c, eps, num_iters)
  # A zero gradient gets α̂ = 1/ε (the solution of ε²α² = 1 under the former ridge
  # floor); it multiplies a zero gradient, so it never changes the update.
  alpha_hat = jnp.where(alive, beta / root, 1.0 / eps)
  safe = jnp.where(trace > finfo.tiny, trace, jnp.ones_like(trace))
  alpha = alpha_hat / jnp.sqrt(safe)
  beta_alive = jnp.where(alive, beta, 0.0)
  norm = jnp.sqrt(jnp.maximum(beta_alive @ (c @ beta_alive), 0.0))  # ‖Jᵀα‖, scale-free
  max_norm = jnp.asarray(max_norm, dtype)
  clip = (max_norm > 0) & (norm > max_norm)
  factor = jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0)
  return alpha * factor
