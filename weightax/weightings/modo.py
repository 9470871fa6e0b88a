"""MoDo: one projected step on λ from the product of two independent batches' Jacobians."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import pure_weighting
from weightax.weightings.sdmgrad import project_simplex

__all__ = ["modo", "modo_step"]


@jax.jit
@pure_weighting
def modo_step(
    gramian: jax.Array,
    weights: jax.Array,
    *,
    gamma: float | jax.Array = 0.001,
    rho: float | jax.Array = 0.1,
    log2_scale: int | jax.Array = 0,
) -> jax.Array:
  """MoDo's new ``λ`` from ``λ`` and ``A = 2^log2_scale · gramian`` (see :func:`modo`).

  Since the projection onto the simplex ignores a constant added to every
  entry, the step is formed as ``(1 − γρ)λ − γ·2^e·(Aλ − min(Aλ))``: the
  subtracted part is ``+inf`` (rather than NaN) where it overflows, which
  gives the exact limit (those tasks get 0), so gradients as large as 1e30 in
  float32 stay finite.

  Args:
    gramian: ``[K, K]`` ``J₁ J₂ᵀ`` (divided by ``2^log2_scale``).
    weights: ``[K]`` the current ``λ`` on the simplex.
    gamma: the step size γ on ``λ``.
    rho: the ℓ2 regularisation ρ of ``λ``.
    log2_scale: integer exponent of the scale the Gramian was divided by.

  Returns:
    ``[K]`` the new ``λ`` (non-negative, summing to 1).
  """
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  a = gramian.astype(dtype)
  lam = weights.astype(dtype)
  gamma = jnp.asarray(gamma, dtype)
  rho = jnp.asarray(rho, dtype)
  d = a @ lam
  delta = d - jnp.min(d)  # >= 0, and 0 for at least one task
  push = jnp.where(delta > 0, jnp.ldexp(gamma * delta, jnp.asarray(log2_scale, jnp.int32)), 0.0)
  return project_simplex((1.0 - gamma * rho) * lam - push)


def modo(
    gramian: jax.Array,
    weights: jax.Array | None = None,
    *,
    gamma: float | jax.Array = 0.001,
    rho: float | jax.Array = 0.1,
) -> jax.Array:
  """MoDo weights: ``λ ← Π_Δ(λ − γ (A λ + ρ λ))``, one step from ``λ`` (default ``1/K``).

  ``A = J₁ J₂ᵀ`` is the product of the Jacobians of two independent batches
  (an unbiased estimate of ``∇F ∇Fᵀ``; not symmetric), or the Gramian
  ``G = J Jᵀ`` of one batch when only one is at hand. ``Aλ`` is the gradient
  of ``½‖J λ‖²`` that MGDA minimises, so repeated steps move ``λ`` towards
  MGDA's min-norm weights; ρ keeps it near the centre of the simplex.
  :func:`weightax.modo` keeps ``λ`` between steps and feeds it independent
  batches.

  Args:
    gramian: ``[K, K]`` ``A``.
    weights: ``[K]`` the current ``λ`` on the simplex (default ``1/K``).
    gamma: the step size γ (may be traced).
    rho: the regularisation ρ (may be traced).

  Returns:
    ``[K]`` non-negative weights summing to 1.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> G = jnp.array([[4.0, 0.0], [0.0, 1.0]])
    >>> # λ − γ(Gλ + ρλ) = [.5 − .1(2 + .05), .5 − .1(.5 + .05)] = [.295, .445] → + .13
    >>> [round(x, 4) for x in wx.weightings.modo(G, gamma=0.1, rho=0.1).tolist()]
    [0.425, 0.575]

  References:
    Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective
    Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023.
  """
  k = gramian.shape[0]
  if weights is None:
    weights = jnp.full((k,), 1.0 / k, jnp.promote_types(gramian.dtype, jnp.float32))
  return modo_step(gramian, weights, gamma=gamma, rho=rho)
