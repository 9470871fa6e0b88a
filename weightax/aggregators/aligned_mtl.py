"""Aligned-MTL aggregator: orthogonal task gradients of equal norm, then summed."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from weightax import weightings
from weightax.aggregators._base import SharedMask, gramian_aggregator

__all__ = ["aligned_mtl", "AlignedMTLState"]

_NAME = "aligned_mtl"


class AlignedMTLState(NamedTuple):
  """Aligned-MTL keeps nothing between steps but the weights it applied (``num_tasks`` given)."""

  task_weights: jax.Array | None = None  # [K] weights of the last update (None without num_tasks)


def aligned_mtl(
    *,
    pref_vector: jax.Array | None = None,
    scale_mode: str = "min",
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL: align the task gradients into an orthogonal, equal-norm system, then sum.

  .. math:: G = V \\Lambda V^\\top, \\quad B = \\sqrt{\\sigma} V \\Lambda^{-1/2} V^\\top,
     \\qquad u = (BJ)^\\top p = J^\\top B p

  The rows of ``BJ`` are the gradients closest to J whose Gramian is ``σ·I``
  on the span of J (condition number 1, so no task dominates); ``σ`` is the
  smallest eigenvalue of ``G`` kept above ``λ_max·K·eps`` (``scale_mode``).
  Following the authors' code and LibMTL the aligned gradients are summed
  (``p = 1``); torchjd's mean is ``pref_vector=jnp.full(K, 1/K)``. Rank-0
  Gramians (all gradients zero) give ``B = I``, as torchjd. See
  :func:`weightax.weightings.aligned_mtl`. Computed on the Gramian of the
  shared leaves; with a ``shared`` mask, task-specific leaves receive
  ``Σ_k g_k``. On K identical gradients ``g`` the update is ``K·g`` (a rank-1
  Gramian: B projects ``p`` onto ``1/√K``). With ``num_tasks=K`` the state's
  ``task_weights`` holds the ``[K]`` weights ``w = Bp`` of the last update.

  Args:
    pref_vector: ``[K]`` weights ``p`` of the aligned gradients; ``None``
      means ones (the sum). May be traced.
    scale_mode: ``"min"`` (the paper's), ``"median"`` or ``"rmse"`` (the mean
      of the kept eigenvalues), as torchjd; a Python string.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}  # orthogonal, norms 2 and 1
    >>> u, _ = wx.aligned_mtl().update(grads, wx.aligned_mtl().init(None))
    >>> [round(x, 4) for x in u["w"].tolist()]  # both rescaled to the smaller norm
    [1.0, 1.0]
    >>> tx = optax.chain(wx.aligned_mtl(), optax.adam(1e-3))
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)

  References:
    Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023.
  """
  if scale_mode not in weightings.ALIGNED_MTL_SCALE_MODES:
    raise ValueError(
        f"{_NAME}: scale_mode must be one of {weightings.ALIGNED_MTL_SCALE_MODES}; "
        f"got {scale_mode!r}.")

  def weight_fn(
      gramian: jax.Array, task_losses: Any, state: AlignedMTLState, key: Any, *,
      scale: jax.Array
  ) -> tuple[jax.Array, AlignedMTLState]:
    del task_losses, key, scale  # B does not change when G is rescaled
    return weightings.aligned_mtl(gramian, pref_vector=pref_vector, scale_mode=scale_mode), state

  return gramian_aggregator(
      weight_fn, AlignedMTLState, num_tasks=num_tasks, shared=shared, name=_NAME,
      normalize_gramian=True,
  )
