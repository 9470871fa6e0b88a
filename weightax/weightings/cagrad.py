"""CAGrad: the best worst-case improvement within a ball around the mean gradient."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import (
  jacobi_ridge,
  masked_solve,
  min_norm_simplex,
  nnqp_budget,
  normalize_gramian,
  pure_weighting,
  vary_like,
)

__all__ = ["cagrad"]


def _projection_path(
    g: jax.Array, q: jax.Array, p: jax.Array, radius: jax.Array, nu_cap: jax.Array
) -> jax.Array:
  """The x >= 0 of ``d = g0 + Jᵀx``, the CAGrad update, by a homotopy in ν.

  ``x(ν) = argmin_{x >= 0} ½ xᵀQx + xᵀ(p − ν1)`` (``Q`` = ``G`` plus a small
  ridge) is the dual of projecting ``g0`` onto ``{d : <g_k, d> >= ν ∀k}``, so
  ``‖Jᵀx(ν)‖ = dist(g0, that set)`` grows with ν. While the free set is
  fixed, ``x(ν) = a + νe`` is affine, so we walk ν up from ``min p`` (where
  x = 0) through the breakpoints where a coordinate enters or leaves the free
  set, and stop where ``xᵀGx = radius²``: one ``K x K`` solve per breakpoint
  (a ``while_loop`` that ends there, capped at ``3K + 5`` breakpoints),
  exact at the end. Tasks with a zero gradient never enter (``<0, d> = 0``
  whatever d is, so they cannot change the max-min). ν stops at ``nu_cap``,
  an upper bound on the optimal ν: past it the set is empty (0 is in the
  hull of the gradients) and only the ridge keeps x finite.
  """
  k = p.shape[0]
  dtype = q.dtype
  ones = jnp.ones((k,), dtype)
  inf = jnp.asarray(jnp.inf, dtype)
  r2 = radius * radius
  alive = jnp.diagonal(g) > 0

  def affine(free: jax.Array) -> tuple[jax.Array, jax.Array]:
    ae = masked_solve(q, free, jnp.stack([-p, ones], axis=1))
    return ae[:, 0], ae[:, 1]

  def step(carry):
    it, nu, free, done = carry
    a, e = affine(free)
    qa, qe = q @ a, q @ e
    # Target: (a + νe)ᵀG(a + νe) = r², the larger root (G is PSD, so the
    # parabola opens upwards, or is a line when Ge = 0).
    ge = g @ e
    aa, bb, cc = e @ ge, a @ ge, a @ (g @ a) - r2
    disc = jnp.maximum(bb * bb - aa * cc, 0.0)
    quad = (-bb + jnp.sqrt(disc)) / jnp.where(aa > 0, aa, 1.0)
    line = -cc / jnp.where(bb > 0, 2 * bb, 1.0)
    nu_t = jnp.where(aa > 0, quad, jnp.where(bb > 0, line, inf))
    # Breakpoints: a free x_i = a_i + νe_i falls to 0, or a bound gradient
    # (Qa + p)_i + ν((Qe)_i − 1) falls to 0.
    slope = qe - 1.0
    leave = free & (e < 0)
    enter = ~free & alive & (slope < 0)
    nu_leave = jnp.where(leave, -a / jnp.where(leave, e, 1.0), inf)
    nu_enter = jnp.where(enter, -(qa + p) / jnp.where(enter, slope, 1.0), inf)
    events = jnp.maximum(jnp.where(free, nu_leave, nu_enter), nu)
    i = jnp.argmin(events)
    nu_ev = events[i]
    nu_t = jnp.maximum(jnp.minimum(nu_t, nu_cap), nu)
    finish = nu_t <= nu_ev
    toggle = ~done & ~finish & (jnp.arange(k) == i)
    nu = jnp.where(done, nu, jnp.where(finish, nu_t, nu_ev))
    return it + 1, nu, free ^ toggle, done | finish

  nu0 = jnp.min(jnp.where(alive, p, inf))
  done0 = ~(radius > 0) | ~jnp.any(alive) | ~(nu_cap > nu0)
  init = vary_like((jnp.zeros((), jnp.int32), nu0, jnp.zeros((k,), bool), done0), g)
  # Stop at the target (typically after a fraction of K breakpoints), not at the cap.
  _, nu, free, _ = lax.while_loop(
      lambda carry: (carry[0] < nnqp_budget(k)) & ~carry[3], step, init)
  a, e = affine(free)
  x = jnp.where(free, jnp.maximum(a + nu * e, 0.0), 0.0)
  return jnp.where(done0, jnp.zeros_like(x), x)


@functools.partial(jax.jit, static_argnames=("rescale",))
@pure_weighting
def cagrad(
    gramian: jax.Array,
    *,
    c: float | jax.Array = 0.4,
    rescale: bool = True,
    reg_eps: float | jax.Array = 1e-6,
) -> jax.Array:
  """CAGrad weights: maximise the worst task improvement near the mean gradient.

  .. math:: w^* = \\arg\\min_{w \\in \\Delta}
     \\langle g_w, g_0 \\rangle + \\sqrt{\\phi}\\,\\|g_w\\|,
     \\quad d = g_0 + \\frac{\\sqrt{\\phi}}{\\|g_{w^*}\\|} g_{w^*},
     \\quad g_0 = \\tfrac{1}{K}\\sum_k g_k,\\ \\phi = c^2\\|g_0\\|^2

  and the update ``d / (1 + c²)`` when ``rescale`` (the default of the
  official code, LibMTL and the Nash-MTL code). ``d`` solves the primal
  problem ``max_{‖d − g0‖ <= c‖g0‖} min_k <g_k, d>``. The update is on the
  scale of the *mean* gradient, as in the paper and LibMTL; the Nash-MTL code
  multiplies it by K (to match a summed loss). ``c = 0.4`` is the Nash-MTL
  code's default (LibMTL's is 0.5); ``c = 0`` gives the mean gradient.

  Instead of SciPy's SLSQP on the simplex, ``d = g0 + Jᵀx`` is computed as the
  projection of ``g0`` onto ``{d : <g_k, d> >= ν ∀k}`` for the ν at which
  ``‖Jᵀx‖ = c‖g0‖`` (the two problems share their KKT conditions, with
  ``x = (√φ/‖g_w*‖)·w*``), by an exact homotopy in ν that stops at the target,
  capped at ``3K + 5`` breakpoints. The dual QP adds the relative ridge
  ``reg_eps·diag(Ĝ_kk + reg_eps)`` to ``Ĝ = G / tr(G)``; tasks with a zero
  gradient are left out (their inner product with any d is 0). When
  ``g_{w*} = 0`` (e.g. ``g0 = 0``) the update is ``g0``, as in the official
  code's ``+ 1e-8`` guard.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    c: the radius of the ball around ``g0``, relative to ``‖g0‖`` (``c >= 0``).
    rescale: divide the update by ``1 + c²``.
    reg_eps: relative ridge in the dual QP.

  Returns:
    ``[K]`` weights ``w`` with update ``Jᵀw = d`` (or ``d / (1 + c²)``).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> wx.weightings.cagrad(J @ J.T, c=0.0).tolist()  # the mean gradient
    [0.5, 0.5]

  References:
    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021.
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  c = jnp.asarray(c, dtype)
  b = jnp.full((k,), 1.0 / k, dtype)
  p = g @ b  # <g_k, g0>
  g0_norm = jnp.sqrt(jnp.maximum(b @ p, 0.0))
  radius = c * g0_norm
  # ν* <= max_{‖d‖ <= ‖g0‖ + r} min_k <g_k, d> = (‖g0‖ + r)·min_{λ∈Δ} ‖Jᵀλ‖,
  # and any λ bounds the last factor from above.
  lam = min_norm_simplex(g, reg_eps=reg_eps)
  nu_cap = (g0_norm + radius) * jnp.sqrt(jnp.maximum(lam @ (g @ lam), 0.0))
  x = _projection_path(g, jacobi_ridge(g, reg_eps), p, radius, nu_cap)
  w = b + x
  return w / (1.0 + c * c) if rescale else w
