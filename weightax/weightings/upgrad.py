"""UPGrad: project every task gradient onto the dual cone of all of them, then sum."""

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

__all__ = ["upgrad", "UPGRAD_RIDGES"]

UPGRAD_RIDGES = ("trace", "relative")


@functools.partial(jax.jit, static_argnames=("ridge",))
@pure_weighting
def upgrad(
    gramian: jax.Array,
    *,
    pref_vector: jax.Array | None = None,
    reg_eps: float | jax.Array = 1e-4,
    ridge: str = "trace",
) -> jax.Array:
  """UPGrad weights: the sum of the projections of ``u_i g_i`` onto the dual cone of J's rows.

  .. math:: v_i = \\arg\\min_{v \\succeq u_i e_i} v^\\top \\tilde G v, \\qquad
     w = \\sum_i v_i, \\qquad \\tilde G = \\hat G + \\epsilon R, \\quad
     \\hat G = G / \\operatorname{tr}(G)

  with ``R = I`` (``ridge="trace"``, the default) or ``R = diag(Ĝ)``
  (``ridge="relative"``). Without the ridge (ε = 0), ``Jᵀv_i`` is the
  projection of ``u_i g_i`` onto the dual cone ``{d : <g_k, d> >= 0 ∀k}``
  (Proposition 1 of the paper), so the update ``Jᵀw`` conflicts with no task.
  The default follows torchjd's ``UPGradWeighting``: preference vector
  ``u = 1/K`` (the mean) unless given, ``G`` normalised by its trace (the
  squared Frobenius norm of J), then ``reg_eps = 1e-4`` added to the diagonal.
  One deviation: torchjd replaces a Gramian of trace below ``norm_eps = 1e-4``
  by zeros (so its weights fall back to ``u`` for small gradients); here only
  an exactly zero trace does, which keeps the weights invariant to the scale
  of the gradients. Each of the K non-negative QPs (in ``x = v − u_i e_i``) is
  solved exactly, instead of torchjd's quadprog, by block principal pivoting
  (a few ``K x K`` solves each, the K problems batched, stopping at the KKT
  point).

  **What the ridge does to the guarantee.** The KKT conditions of the QPs
  give ``G̃w >= 0``, i.e. for every task k, with ``u = Jᵀw`` and ``w >= u``:

  - ``ridge="trace"``: ``<g_k, u> >= −ε·tr(G)·w_k``. The conflict
    ``κ_k = −<g_k, u> / (‖g_k‖·Σ_j w_j‖g_j‖)`` (at most 1, the cosine when no
    contributions cancel) is at most ``ε·tr(G)/‖g_k‖²``: the guarantee holds
    for tasks whose squared gradient norm is large against ``ε·tr(G)``, and
    exactly when no two tasks conflict (then ``w = u``). A task below that
    is not protected: for ``J = [[1,0,0],[0,1,0],[-0.01,-0.01,0.003]]``,
    ``<g_3, u> = −0.0043`` (cosine −0.92), as in torchjd; on adversarial
    Gramians (norms over e^±8, rank-deficient, nearly opposite pairs,
    K <= 10) the worst measured κ is 1.00: an update straight against a
    small task.
  - ``ridge="relative"``: ``<g_k, u> >= −ε·‖g_k‖²·w_k``, so ``κ_k <= ε``
    whatever the norms (up to float32 rounding, below ``1e-5``), down to
    ``‖g_k‖ = 1.1e-19·max_j‖g_j‖`` (√ of float32's smallest normal number): a
    task below that ratio is treated as a zero gradient and not protected;
    the worst
    measured κ on the same Gramians is ``5.0e-5`` for ``ε = 1e-4``. The
    cosine can still be near −1 when the gradients (nearly) cancel, i.e.
    when ``‖u‖`` is itself within a factor ε of ``Σ_j w_j‖g_j‖``. The QPs
    are solved on the cosine matrix ``C = D^-½ Ĝ D^-½`` plus ``εI``, so
    float32 is accurate for any spread of the gradient norms; tasks with a
    zero gradient keep ``w_k = u_k``.

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
    >>> wx.weightings.upgrad(J @ J.T).tolist()
    [0.5, 0.5]
    >>> J = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-0.01, -0.01, 0.003]])
    >>> for ridge in ("trace", "relative"):  # <g_3, u>: a conflict, then none
    ...   u = wx.weightings.upgrad(J @ J.T, ridge=ridge) @ J
    ...   print(ridge, bool(J[2] @ u >= 0))
    trace False
    relative True

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
    torchjd (https://github.com/TorchJD/torchjd).
  """
  if ridge not in UPGRAD_RIDGES:
    raise ValueError(f"upgrad: ridge must be one of {UPGRAD_RIDGES}; got {ridge!r}.")
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  u = preference_vector(pref_vector, k, dtype, "upgrad")
  eps = jnp.asarray(reg_eps, dtype)
  starts = jnp.diag(u)  # row i is u_i e_i
  if ridge == "trace":
    q = g + eps * jnp.eye(k, dtype=dtype)
    x = jax.vmap(lambda s: nnqp(q, q @ s, cholesky=True))(starts)
    return jnp.sum(starts + x, axis=0)
  # ridge="relative": Q = Ĝ + ε·diag(Ĝ) = D^½(C + εI)D^½ with C the cosine
  # matrix. With y = D^½v the i-th QP becomes min yᵀ(C + εI)y s.t.
  # y >= √d_i·u_i e_i, whose solution is √d_i times the one for u_i e_i; so we
  # solve on C + εI (condition number <= (K + ε)/ε whatever the norms) and
  # map back with v_i = (√d_i / √d) ⊙ y_i.
  # A zero gradient conflicts with nothing (an isolated unit row of C), so
  # y_k = 0 in every other task's projection and its own keeps y = u_k e_k.
  q, safe_s, alive = relative_ridge_system(g, eps)
  both = alive[:, None] & alive[None, :]
  y = starts + jax.vmap(lambda s: nnqp(q, q @ s, cholesky=True))(starts)
  ratio = jnp.where(both, safe_s[:, None] / safe_s[None, :], 0.0) + jnp.diag(
      jnp.where(alive, 0.0, 1.0)
  ).astype(dtype)
  return jnp.sum(ratio * y, axis=0)
