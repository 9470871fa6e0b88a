"""UPGrad: project every task gradient onto the dual cone of all of them, then sum."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from weightax.weightings._solvers import full_precision, nnqp, normalize_gramian

__all__ = ["upgrad"]


@jax.jit
@full_precision
def upgrad(
    gramian: jax.Array,
    *,
    pref_vector: jax.Array | None = None,
    reg_eps: float | jax.Array = 1e-4,
) -> jax.Array:
  """UPGrad weights: the sum of the projections of ``u_i g_i`` onto the dual cone of J's rows.

  .. math:: v_i = \\arg\\min_{v \\succeq u_i e_i} v^\\top \\tilde G v, \\qquad
     w = \\sum_i v_i, \\qquad \\tilde G = G / \\operatorname{tr}(G) + \\epsilon I

  ``Jᵀv_i`` is the projection of ``u_i g_i`` onto the dual cone
  ``{d : <g_k, d> >= 0 for all k}`` (Proposition 1 of the paper), so the update
  ``Jᵀw`` has a non-negative inner product with every task gradient. This
  follows torchjd's ``UPGradWeighting``: preference vector ``u = 1/K`` (the
  mean) unless given, ``G`` normalised by its trace (the squared Frobenius norm
  of J), then ``reg_eps = 1e-4`` added to the diagonal. One deviation: torchjd
  replaces a Gramian of trace below ``norm_eps = 1e-4`` by zeros (so its
  weights fall back to ``u`` for small gradients); here only an exactly zero
  trace does, which keeps the weights invariant to the scale of the gradients.
  Each of the K non-negative QPs (in ``x = v − u_i e_i``) is solved exactly by
  an active-set method with a fixed budget of ``3K + 5`` steps, instead of
  torchjd's quadprog.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    pref_vector: ``[K]`` preference vector ``u``; ``None`` means ``1/K``.
    reg_eps: ridge added to the trace-normalised Gramian.

  Returns:
    ``[K]`` weights ``w`` (with ``w >= u``).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # no conflict: the mean
    >>> wx.weightings.upgrad(J @ J.T).tolist()
    [0.5, 0.5]

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024;
    torchjd (https://github.com/TorchJD/torchjd).
  """
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  dtype = g.dtype
  if pref_vector is None:
    u = jnp.full((k,), 1.0 / k, dtype)
  else:
    u = jnp.asarray(pref_vector, dtype)
    if u.shape != (k,):
      raise ValueError(f"upgrad: pref_vector must have shape ({k},); got {u.shape}.")
  q = g + jnp.asarray(reg_eps, dtype) * jnp.eye(k, dtype=dtype)
  starts = jnp.diag(u)  # row i is u_i e_i
  x = jax.vmap(lambda s: nnqp(q, q @ s))(starts)
  return jnp.sum(starts + x, axis=0)
