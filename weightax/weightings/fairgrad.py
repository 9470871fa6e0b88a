"""FairGrad: α-fair weights, the solution of ``G w = w^(−1/α)`` with ``w > 0``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import full_precision, jacobi_ridge, normalize_gramian, vary_like

__all__ = ["fairgrad", "FAIRGRAD_ITERS"]

FAIRGRAD_ITERS = 60  # damped Newton steps: ~25 doublings to reach 1/reg_eps, then quadratic
_STEPS = 2.0 ** -jnp.arange(12)  # the step sizes tried at every iteration, all at once


@functools.partial(jax.jit, static_argnames=("num_iters",))
@full_precision
def fairgrad(
    gramian: jax.Array,
    *,
    alpha: float | jax.Array = 1.0,
    reg_eps: float | jax.Array = 1e-6,
    num_iters: int = FAIRGRAD_ITERS,
) -> jax.Array:
  """FairGrad weights: ``w > 0`` with ``(Gw)_k = w_k^{−1/α}`` for every task k.

  .. math:: w = \\arg\\min_{w > 0}\\ \\tfrac12 w^\\top \\tilde G w - \\sum_k h_\\alpha(w_k),
     \\qquad h_\\alpha'(w) = w^{-1/\\alpha}

  The stationarity condition of this strictly convex problem is the paper's
  ``Gw = w^{−1/α}`` (``h_α = log`` for α = 1), so each task's gain
  ``<g_k, Jᵀw>`` is ``w_k^{−1/α} > 0``: α-fair utilities, α = 1 proportional
  fairness (LibMTL's default), α → ∞ max-min. It is solved on
  ``Ĝ = G / tr(G)`` plus the ridge ``diag(reg_eps·(Ĝ_kk + reg_eps))``, which
  keeps a solution when ``G`` has a non-negative null vector (a zero
  gradient, two opposite ones: there the exact weights diverge) and, being
  relative to each task's squared norm, keeps the gains positive for small
  tasks too: ``<g_k, u> = w_k^{−1/α} − reg_eps·(G_kk + reg_eps·tr G)·w_k``;
  then rescaled: ``w(cG) = c^{−α/(1+α)} w(G)``. The
  solver is Newton's method on that objective with the fixed budget
  ``num_iters``, each step the best of 12 halvings that keeps ``w > 0``,
  from ``w = 1/K`` as LibMTL's ``least_squares`` call (whose trust-region
  iterates it does not reproduce; the solution is the same). The weights are
  not normalised, as in LibMTL and torchjd.

  Accuracy: for α <= 5 the float32 update ``Jᵀw`` is within 1e-4 of the float64
  solution for conflicting gradients whose norms spread over up to ``e^±8``. For
  large α with widely spread norms the exact weights span dozens of orders of
  magnitude (a task whose gain must be large gets ``w_k = gain^(−α)``, e.g.
  1e-40 at α = 20), which the fixed budget, and float32, may not reach: at
  α = 20 with norms over ``e^±8`` some updates are entirely off. There, use a
  smaller α, or check the stationarity ``Gw = w^(−1/α)`` of the result.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    alpha: α > 0 (may be traced).
    reg_eps: relative ridge on ``G/tr(G)`` (may be traced).
    num_iters: the number of Newton steps; a Python int.

  Returns:
    ``[K]`` positive weights.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.diag(jnp.array([4.0, 1.0]))  # orthogonal gradients of norms 2 and 1
    >>> [round(x, 3) for x in wx.weightings.fairgrad(G).tolist()]  # 4w² = 1, w² = 1
    [0.5, 1.0]

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
  """
  g, trace = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  alpha = jnp.asarray(alpha, dtype)
  q = jacobi_ridge(g, reg_eps)  # relative to each task's squared norm, so small tasks keep it
  p = 1.0 / alpha
  log_log = alpha == 1.0  # h = log w for α = 1, else w^(1 − 1/α) / (1 − 1/α)

  def objective(w: jax.Array) -> jax.Array:
    safe = jnp.where(w > 0, w, 1.0)
    h = jnp.where(log_log, jnp.log(safe),
                  safe ** (1.0 - p) / jnp.where(log_log, 1.0, 1.0 - p))
    value = 0.5 * jnp.einsum("...i,ij,...j->...", w, q, w) - jnp.sum(h, axis=-1)
    return jnp.where(jnp.all(w > 0, axis=-1), value, jnp.inf)

  def residual(w: jax.Array) -> jax.Array:
    safe = jnp.where(w > 0, w, 1.0)
    r = jnp.sum((w @ q - safe ** (-p)) ** 2, axis=-1)
    return jnp.where(jnp.all(w > 0, axis=-1), r, jnp.inf)

  def step(_: int, w: jax.Array) -> jax.Array:
    grad = q @ w - w ** (-p)
    hess = q + jnp.diag(p * w ** (-p - 1.0))
    d = -jnp.linalg.solve(hess, grad)
    trial = w[None, :] + _STEPS.astype(dtype)[:, None] * d[None, :]
    values = objective(trial)
    best = jnp.argmin(values)
    # Far from the solution, take the step that lowers the objective most; once float32
    # no longer resolves its decrease (near the solution, where it is quadratic), the one
    # that lowers the residual most, so the weights converge to rounding, not to √eps.
    current = objective(w)
    descent = values[best] < current - 64 * jnp.finfo(dtype).eps * jnp.abs(current)
    res = residual(trial)
    closest = jnp.argmin(res)
    nearer = res[closest] < residual(w)
    return jnp.where(descent, trial[best], jnp.where(nearer, trial[closest], w))

  w0 = vary_like(jnp.full((k,), 1.0 / k, dtype), q)
  w = lax.fori_loop(0, num_iters, step, w0)
  # Undo the normalisation: G = tr(G)·Ĝ gives w(G) = tr(G)^(−α/(1+α)) w(Ĝ).
  safe_trace = jnp.where(trace > jnp.finfo(dtype).tiny, trace, 1.0)
  return w * jnp.exp(-alpha / (1.0 + alpha) * jnp.log(safe_trace))
