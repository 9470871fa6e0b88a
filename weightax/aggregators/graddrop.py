"""GradDrop aggregator: per coordinate, keep only the task gradients of one randomly chosen sign."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax.aggregators._base import (
    SharedMask,
    check_task_grads,
    check_task_losses,
    init_task_weights,
    make_aggregator,
    split_shared,
    with_task_weights,
)

__all__ = ["graddrop", "GradDropState"]

_NAME = "graddrop"


class GradDropState(NamedTuple):
  """GradDrop keeps nothing; ``task_weights`` is NaN: the update is not ``Σ_k w_k g_k``."""

  task_weights: jax.Array | None = None  # [K] NaN with num_tasks (not a weighting), else None


def _drop(g: jax.Array, key: jax.Array, leak: Any) -> jax.Array:
  """One leaf ``[K, ...]``: GradDrop's sign-consistency masking, accumulated in float32."""
  acc = jnp.promote_types(g.dtype, jnp.float32)
  x = g.astype(acc)
  total = jnp.sum(x, axis=0)
  mass = jnp.sum(jnp.abs(x), axis=0)
  # P = ½(1 + Σg/Σ|g|): the purity of the positive sign (½ where every task is 0).
  p = 0.5 * (1.0 + total / jnp.where(mass > 0, mass, 1.0))
  u = jax.random.uniform(key, total.shape, acc)  # one draw per coordinate, shared by the tasks
  keep = ((p > u) & (x > 0)) | ((p < u) & (x < 0))
  leak = jnp.asarray(leak, acc)
  return jnp.sum((leak + (1.0 - leak) * keep.astype(acc)) * x, axis=0).astype(g.dtype)


def graddrop(
    *,
    leak: float | jax.Array = 0.0,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradient sign dropout: at every coordinate keep the task gradients of one sign.

  .. math:: P = \\tfrac12\\Big(1 + \\frac{\\sum_i g_i}{\\sum_i |g_i|}\\Big), \\quad
     M_i = [P > U][g_i > 0] + [P < U][g_i < 0], \\qquad
     u = \\sum_i (\\ell + (1 - \\ell) M_i)\\, g_i

  elementwise, with one ``U ~ Uniform(0, 1)`` per coordinate shared by all
  tasks: the positive values survive with probability ``P`` (the purity of
  the positive sign), else the negative ones, so ``E[u] = Σ_i (P g_i⁺ − (1 −
  P) g_i⁻)``. ``leak = ℓ`` lets a fraction of every gradient through (0: the
  paper's default). This is torchjd's form on the rows of the Jacobian (no
  epsilon; a coordinate where every task is 0 stays 0) and the sum of the
  masked gradients. LibMTL applies it to representation gradients summed
  over the batch (use :mod:`weightax.mtl`'s representation-level helpers for
  that). Each coordinate takes its own subset of tasks, so the update is
  **not a weighting** ``Σ_k w_k g_k``: with ``num_tasks=K`` the state's
  ``task_weights`` is NaN. ``update`` needs ``key=``: leaf ``l`` (in
  ``jax.tree.leaves`` order) draws ``U`` from ``jax.random.fold_in(key, l)``.
  Shared leaves are masked; with a ``shared`` mask, task-specific leaves
  receive ``Σ_k g_k``. On K identical gradients ``g`` (or any gradients with
  one sign at every coordinate, or one task) nothing is dropped: ``u = K·g``.

  Args:
    leak: ``ℓ`` in ``[0, 1]``, the fraction of every gradient kept whatever
      the mask; may be traced.
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``key=``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 2.0], [-3.0, 1.0]])}
    >>> u, _ = wx.graddrop().update(grads, wx.graddrop().init(None), key=jax.random.key(0))
    >>> u["w"][1].item()  # both positive: nothing to drop
    3.0
    >>> u["w"][0].item() in (1.0, -3.0)  # the positive part (P = 1/4) or the negative one
    True

  References:
    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020.
  """
  if isinstance(leak, int | float) and not 0.0 <= leak <= 1.0:
    raise ValueError(f"{_NAME}: leak must lie in [0, 1]; got {leak}.")

  def init(params: Any) -> GradDropState:
    del params
    return GradDropState(task_weights=init_task_weights(num_tasks))

  def update(
      task_grads: Any,
      state: GradDropState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, GradDropState]:
    del extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    if key is None:
      raise ValueError(
          f"{_NAME} draws a uniform threshold per coordinate at every step and needs a random "
          "key: call update(..., key=jax.random.key(step_seed)) with a fresh key each step; "
          "got key=None."
      )
    mask, _ = split_shared(task_grads, params, shared)
    leaves, treedef = jax.tree.flatten(task_grads)
    flags = treedef.flatten_up_to(mask)
    out = []
    for i, (g, m) in enumerate(zip(leaves, flags, strict=True)):
      if m:
        out.append(_drop(g, jax.random.fold_in(key, i), leak))
      else:
        acc = jnp.promote_types(g.dtype, jnp.float32)
        out.append(jnp.sum(g.astype(acc), axis=0).astype(g.dtype))
    return jax.tree.unflatten(treedef, out), with_task_weights(state, None, num_tasks)

  return make_aggregator(init, update, shared)
