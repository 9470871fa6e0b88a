"""DualProj: project the (preference-weighted) mean gradient onto the dual cone of all of them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import (
  nnqp,
  normalize_gramian,
  preference_vector,
  pure_weighting,
  relative_ridge_system,
)

__all__ = ["dualproj", "DUALPROJ_RIDGES"]

DUALPROJ_RIDGES = ("trace", "relative")


@functools.partial(jax.jit, static_argnames=("ridge",))
@pure_weighting
def dualproj(
    gramian: jax.Array,
    *,
    pref_vector: jax.Array | None = None,
    reg_eps: float | jax.Array = 1e-4,
    ridge: str = "trace",
) -> jax.Array:
  """DualProj weights: the projection of ``Jᵀu`` onto the dual cone of J's rows.

  .. math:: w = \\arg\\min_{v \\succeq u} v^\\top \\tilde G v, \\qquad
     \\tilde G = \\hat G + \\epsilon R, \\quad \\hat G = G / \\operatorname{tr}(G)

  with ``R = I`` (``ridge="trace"``, the default, torchjd's) or
  ``R = diag(Ĝ)`` (``ridge="relative"``). Without the ridge (ε = 0), ``Jᵀw``
  is the projection of ``Jᵀu`` onto the dual cone
  ``{d : <g_k, d> >= 0 ∀k}`` (GEM's dual problem, eq. 11 of Lopez-Paz &
  Ranzato), so the update conflicts with no task. Unlike UPGrad, which
  projects every ``u_k g_k`` separately and sums, DualProj projects their sum
  once. The default follows torchjd's ``DualProjWeighting``: ``u = 1/K`` (the
  mean) unless given, ``G`` normalised by its trace, ``reg_eps = 1e-4`` on the
  diagonal. As in :func:`weightax.weightings.upgrad`, torchjd's ``norm_eps``
  cut-off (a Gramian of trace below 1e-4 treated as zero) is dropped, so the
  weights do not depend on the gradients' scale; only an exactly zero Gramian
  gives ``w = u``. The QP (in ``x = w − u``, ``x >= 0``) is solved exactly by
  block principal pivoting (a few ``K x K`` solves, stopping at the KKT
  point) instead of quadprog.

  The KKT conditions give ``G̃w >= 0``, so for every task k:
  ``<g_k, Jᵀw> >= −ε·tr(G)·w_k`` with ``ridge="trace"`` (a task whose squared
  gradient norm is small against ``ε·tr(G)`` is not protected), and
  ``<g_k, Jᵀw> >= −ε·‖g_k‖²·w_k`` with ``ridge="relative"`` (κ_k <= ε for
  every task down to ``‖g_k‖ = 1.1e-19·max_j‖g_j‖``, below which a task counts
  as a zero gradient; the QP is then solved on the cosine matrix plus ``εI``, so
  float32 is accurate for any spread of the norms, and a task with a zero
  gradient keeps ``w_k = u_k``).

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    pref_vector: ``[K]`` preference vector ``u``; ``None`` means ``1/K``.
    reg_eps: the ridge ε (may be traced).
    ridge: ``"trace"`` (``ε·I`` on ``G/tr(G)``, as torchjd) or
      ``"relative"`` (``ε·G_kk`` on each task); a Python string.

  Returns:
    ``[K]`` weights ``w`` (with ``w >= u``).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # no conflict: the mean
    >>> wx.weightings.dualproj(J @ J.T).tolist()
    [0.5, 0.5]
    >>> J = jnp.array([[1.0, 0.0], [-2.0, 1.0]])  # the mean conflicts with task 1
    >>> w = wx.weightings.dualproj(J @ J.T, ridge="relative")
    >>> bool(J[0] @ (w @ J) >= -1e-4 * (J[0] @ J[0]) * w[0])
    True

  References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017; torchjd (https://github.com/TorchJD/torchjd).
  """
  if ridge not in DUALPROJ_RIDGES:
    raise ValueError(f"dualproj: ridge must be one of {DUALPROJ_RIDGES}; got {ridge!r}.")
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  u = preference_vector(pref_vector, k, dtype, "dualproj")
  eps = jnp.asarray(reg_eps, dtype)
  if ridge == "trace":
    # min (u + x)ᵀQ(u + x), x >= 0  <=>  min ½xᵀQx + (Qu)ᵀx.
    q = g + eps * jnp.eye(k, dtype=dtype)
    return u + nnqp(q, q @ u, cholesky=True)
  # ridge="relative": Q = D^½(C + εI)D^½ with C the cosine matrix. With
  # y = D^½v the QP is min yᵀ(C + εI)y s.t. y >= D^½u; the common factor
  # max_k √d_k drops out, so we use s = √d / max √d and map back v = y / s.
  # A zero gradient conflicts with nothing (an isolated unit row of C), so it
  # keeps y_k = u_k and enters no other task's constraint.
  q, safe_s, _ = relative_ridge_system(g, eps)
  y0 = safe_s * u
  y = y0 + nnqp(q, q @ y0, cholesky=True)
  return y / safe_s
