"""Trimmed mean aggregator: per coordinate, drop the extreme task gradients and average."""

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

__all__ = ["trimmed_mean", "TrimmedMeanState"]

_NAME = "trimmed_mean"


class TrimmedMeanState(NamedTuple):
  """Trimmed mean keeps nothing; ``task_weights`` is NaN: the update is not ``Σ_k w_k g_k``."""

  task_weights: jax.Array | None = None  # [K] NaN with num_tasks (not a weighting), else None


def _check(k: int | None, trim_number: Any) -> None:
  """A clear error for a concrete trim_number that K tasks (None: unknown yet) cannot carry."""
  if isinstance(trim_number, jax.core.Tracer):
    return
  b = int(trim_number)
  if b < 0:
    raise ValueError(f"{_NAME}: trim_number must be a non-negative integer; got {b}.")
  if k is not None and not 2 * b < k:
    raise ValueError(
        f"{_NAME} needs more tasks than the 2·trim_number = {2 * b} values it drops at "
        f"every coordinate; got K = {k} tasks with trim_number = {b}."
    )


def trimmed_mean(
    *,
    trim_number: int | jax.Array = 1,
    num_tasks: int | None = None,
    shared: SharedMask = None,
) -> optax.GradientTransformationExtraArgs:
  """Coordinate-wise trimmed mean: drop the ``b`` largest and ``b`` smallest values, average.

  .. math:: u_p = \\frac{1}{K - 2b} \\sum_{i = b + 1}^{K - b} g_{(i), p}

  where ``g_{(1),p} <= ... <= g_{(K),p}`` are the K tasks' values at
  coordinate p, sorted (``b = trim_number``), as torchjd's ``TrimmedMean``: a
  Byzantine-robust rule. It needs more tasks than the ``2b`` values it drops,
  ``K >= 2b + 1`` (the default ``b = 1`` needs ``K >= 3``): ``update`` raises
  a ``ValueError`` below that, and so does the factory when ``num_tasks`` is
  given. ``b = 0`` is the mean. Each coordinate takes its own tasks, so the
  update is **not a weighting** ``Σ_k w_k g_k``: with ``num_tasks=K`` the
  state's ``task_weights`` is NaN (there are no such weights to report). Shared
  leaves are aggregated; with a ``shared`` mask, task-specific leaves receive
  ``Σ_k g_k``. On K identical gradients ``g`` the update is ``g``. A NaN is
  not trimmed away: a coordinate where some task's gradient is NaN is NaN
  (an infinity is a value like any other, and is trimmed when extreme).

  Args:
    trim_number: ``b``, how many values are dropped at each end of every
      coordinate; an integer (may be injected; a traced value goes unchecked).
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree
      of bools, a prefix of the parameters' structure, or a callable on params).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain.

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> grads = {"w": jnp.array([[1.0, 5.0], [2.0, -9.0], [30.0, 6.0]])}
    >>> tx = wx.trimmed_mean(trim_number=1)
    >>> u, _ = tx.update(grads, tx.init(None))  # each coordinate's median here
    >>> u["w"].tolist()
    [2.0, 5.0]

  References:
    Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018; torchjd (https://github.com/TorchJD/torchjd).
  """
  _check(num_tasks, trim_number)

  def init(params: Any) -> TrimmedMeanState:
    del params
    return TrimmedMeanState(task_weights=init_task_weights(num_tasks))

  def one(g: jax.Array) -> jax.Array:
    k = g.shape[0]
    acc = jnp.promote_types(g.dtype, jnp.float32)
    b = jnp.asarray(trim_number)
    ranked = jnp.sort(g.astype(acc), axis=0)
    i = jnp.arange(k).reshape((k,) + (1,) * (g.ndim - 1))
    keep = (i >= b) & (i < k - b)
    out = jnp.sum(jnp.where(keep, ranked, 0.0), axis=0) / (k - 2 * b).astype(acc)
    # A sort puts NaN last, where it would be trimmed as an extreme value: keep it instead.
    out = jnp.where(jnp.any(jnp.isnan(g), axis=0), jnp.nan, out)
    return out.astype(g.dtype)

  def update(
      task_grads: Any,
      state: TrimmedMeanState,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, TrimmedMeanState]:
    del key, extra
    k = check_task_grads(task_grads, num_tasks, name=_NAME)
    check_task_losses(task_losses, k, name=_NAME)
    _check(k, trim_number)
    mask, _ = split_shared(task_grads, params, shared)

    def leaf(g: jax.Array, m: bool) -> jax.Array:
      if m:
        return one(g)
      acc = jnp.promote_types(g.dtype, jnp.float32)
      return jnp.sum(g.astype(acc), axis=0).astype(g.dtype)

    out = jax.tree.map(leaf, task_grads, mask)
    return out, with_task_weights(state, None, num_tasks)

  return make_aggregator(init, update, shared)
