"""FairGrad: α-fair weights, the solution of ``G w = w^(−1/α)`` with ``w > 0``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import (
  jacobi_ridge,
  nnqp,
  normalize_gramian,
  pure_weighting,
  vary_like,
)

__all__ = ["fairgrad", "FAIRGRAD_ITERS", "FAIRGRAD_POLISH_ITERS"]

FAIRGRAD_ITERS = 60  # damped Newton steps: ~25 doublings to reach 1/reg_eps, then quadratic
FAIRGRAD_POLISH_ITERS = 30  # Newton steps on the log-weights after them
_STEPS = 2.0 ** -jnp.arange(12)  # the step sizes tried at every iteration, all at once


@functools.partial(jax.jit, static_argnames=("num_iters", "polish_iters"))
@pure_weighting
def fairgrad(
    gramian: jax.Array,
    *,
    alpha: float | jax.Array = 1.0,
    reg_eps: float | jax.Array = 1e-6,
    num_iters: int = FAIRGRAD_ITERS,
    polish_iters: int = FAIRGRAD_POLISH_ITERS,
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

  At large α the exact weights can span dozens of orders of magnitude (a task
  whose gain must be large gets ``w_k = gain^(−α)``, e.g. 1e-40 at α = 20),
  which halved Newton steps in ``w`` reach only slowly and the objective,
  dominated by the large weights, cannot even see. So ``polish_iters`` more
  Newton steps follow on the equations in log form, ``log (Qw)_k + log(w_k)/α = 0``
  in ``u = log w`` (each the best of 12 halvings for the sum of their squares,
  whose Jacobian is nonsingular wherever ``w > 0`` and ``Qw > 0``), started
  from the first phase's result or, when that has a non-positive gain or is
  farther, from the α → ∞ limit (the NNQP ``argmin_{x >= 0} ½xᵀQx − 1ᵀx``,
  whose gains are all >= 1); the polished weights are kept only if they solve
  the equations better. When the first phase already solves them to 1e-5
  (relative, root mean square), the polish does not run (outside ``vmap``,
  where both branches of a ``lax.cond`` run).

  Accuracy (float32 update ``Jᵀw`` against the float64 solution, conflicting
  gradients, K = 2 to 8): within 1e-4 for α <= 50 with norms spread over
  ``e^±4``, and for α <= 5 over ``e^±8``. At larger α with norms over ``e^±8``
  some weights of the exact solution lie below float32's range and a few
  updates are still far off; check ``Gw = w^(−1/α)`` there, or run in float64.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    alpha: α > 0 (may be traced).
    reg_eps: relative ridge on ``G/tr(G)`` (may be traced).
    num_iters: the number of Newton steps; a Python int.
    polish_iters: the number of Newton steps on the log-weights that follow
      (0: none); a Python int.

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
  u = jnp.log(w)
  if polish_iters:
    u = _polish(q, p, u, polish_iters)
  # Undo the normalisation: G = tr(G)·Ĝ gives w(G) = tr(G)^(−α/(1+α)) w(Ĝ).
  safe_trace = jnp.where(trace > jnp.finfo(dtype).tiny, trace, 1.0)
  return jnp.exp(u - alpha / (1.0 + alpha) * jnp.log(safe_trace))


def _log_equations(u: jax.Array, q: jax.Array,
                   p: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(Qw, e, Σ_k e_k²)`` with ``e_k = log (Qw)_k + p·u_k`` for ``w = exp(u)``
  (``[..., K]``); the sum is +inf where a gain is not positive or anything is not finite."""
  gains = jnp.exp(u) @ q
  ok = jnp.all((gains > 0) & jnp.isfinite(gains) & jnp.isfinite(u), axis=-1)
  e = jnp.log(jnp.where(gains > 0, gains, 1.0)) + p * u
  return gains, e, jnp.where(ok, jnp.sum(e * e, axis=-1), jnp.inf)


def _log_residual(u: jax.Array, q: jax.Array, p: jax.Array) -> jax.Array:
  return _log_equations(u, q, p)[2]


# The first phase's result is kept as it is when its equations hold to this (root mean
# square of log(Qw)_k + log(w_k)/α, i.e. relative error of the gains): the polish is skipped.
_POLISH_SKIP = 1e-5


def _polish(q: jax.Array, p: jax.Array, u1: jax.Array, num_iters: int) -> jax.Array:
  """Newton on ``log (Qw)_k + p·u_k = 0`` in ``u = log w`` from the better of ``u1`` and the
  α → ∞ start; returns ``u1`` unless the result has a smaller residual (or when ``u1``
  already solves the equations to ``_POLISH_SKIP``: then nothing runs, outside ``vmap``)."""
  k = q.shape[0]
  r1 = _log_residual(u1, q, p)
  return lax.cond(r1 <= k * _POLISH_SKIP**2, lambda: u1,
                  lambda: _polish_from(q, p, u1, r1, num_iters))


def _polish_from(q: jax.Array, p: jax.Array, u1: jax.Array, r1: jax.Array,
                 num_iters: int) -> jax.Array:
  k = q.shape[0]
  dtype = q.dtype
  x = nnqp(q, -jnp.ones((k,), dtype), cholesky=True)  # Qx >= 1 wherever x = 0
  floor = 0.5 / (k * jnp.max(jnp.abs(q)))  # small enough to keep every gain >= 1/2
  u2 = jnp.log(jnp.where(x > floor, x, floor))
  start = jnp.where(r1 <= _log_residual(u2, q, p), u1, u2)

  def step(_: int, u: jax.Array) -> jax.Array:
    w = jnp.exp(u)
    gains, e, now = _log_equations(u, q, p)
    # ∂e_k/∂u_j = Q_kj w_j / (Qw)_k + p δ_kj = D H W with H = Q + p·diag((Qw)/w) positive
    # definite while w, Qw > 0, so every step is a descent direction of Σe².
    jac = q * w[None, :] / gains[:, None] + p * jnp.eye(k, dtype=dtype)
    du = -jnp.linalg.solve(jac, e)
    trial = u[None, :] + _STEPS.astype(dtype)[:, None] * du[None, :]
    res = _log_residual(trial, q, p)
    best = jnp.argmin(res)
    return jnp.where(res[best] < now, trial[best], u)

  u = lax.fori_loop(0, num_iters, step, start)
  return jnp.where(_log_residual(u, q, p) < r1, u, u1)
