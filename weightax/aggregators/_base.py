"""The shared machinery of every aggregator: checks, shared masks, Σ w_k g_k.

An aggregator turns per-task gradients (every leaf with a leading task axis K)
into one update shaped like the parameters. Most methods only need the Gramian
``G = J Jᵀ`` of the shared part of ``J`` and return task weights ``w``; the
update is then ``Σ_k w_k g_k`` on shared leaves. :func:`gramian_aggregator`
builds such a transform from a pure weighting function so that each method
module only writes its mathematics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from weightax.jacobian import gramian as _gramian
from weightax.jacobian import num_tasks as _num_tasks

__all__ = [
    "SharedMask",
    "WeightFn",
    "check_task_grads",
    "check_task_losses",
    "resolve_shared",
    "combine",
    "gramian_aggregator",
    "EmptyAggregatorState",
]

SharedMask = Any | Callable[[Any], Any] | None


class EmptyAggregatorState(NamedTuple):
  """State of an aggregator that keeps nothing between steps."""


class WeightFn(Protocol):
  """``(gramian [K,K], task_losses [K] | None, state, key) -> (weights [K], state)``."""

  def __call__(
      self, gramian: jax.Array, task_losses: jax.Array | None, state: Any, key: jax.Array | None
  ) -> tuple[jax.Array, Any]: ...


def check_task_grads(
    task_grads: Any, expected: int | None = None, *, name: str = "aggregator"
) -> int:
  """Returns K, the task axis of ``task_grads``; raises a clear error if it is not K."""
  k = _num_tasks(task_grads)
  if expected is not None and k != expected:
    raise ValueError(
        f"{name} was built with num_tasks={expected}, but task_grads has a leading task axis "
        f"of size {k}."
    )
  return k


def check_task_losses(
    task_losses: Any, k: int, *, required: bool = False, name: str = "aggregator"
) -> jax.Array | None:
  """Validates ``task_losses`` against K; returns it as an array (or None)."""
  if task_losses is None:
    if required:
      raise ValueError(
          f"{name} needs the task losses: call update(..., task_losses=losses) with a [K={k}] "
          "vector, as returned by weightax.value_and_jacobian."
      )
    return None
  task_losses = jnp.asarray(task_losses)
  if task_losses.shape != (k,):
    raise ValueError(
        f"{name}: task_losses must have shape ({k},) to match the {k} task gradients; "
        f"got shape {task_losses.shape}."
    )
  return task_losses


def resolve_shared(shared: SharedMask, tree: Any) -> Any:
  """The boolean mask of shared leaves for ``tree`` (all True when ``shared`` is None).

  Like ``optax.masked``: ``shared`` is either a pytree of bools with the
  structure of the parameters, or a callable returning one from the
  parameters.
  """
  if shared is None:
    return jax.tree.map(lambda _: True, tree)
  mask = shared(tree) if callable(shared) else shared
  try:
    jax.tree.map(lambda _x, _m: None, tree, mask)
  except ValueError as e:
    raise ValueError(
        "The `shared` mask must have the structure of the parameters "
        f"({jax.tree.structure(tree)}); got {jax.tree.structure(mask)}."
    ) from e
  return mask


def combine(task_grads: Any, weights: jax.Array) -> Any:
  """``Σ_k w_k g_k`` leafwise, accumulated in float32 and cast back to each leaf's dtype."""

  def one(g: jax.Array) -> jax.Array:
    acc = jnp.promote_types(g.dtype, jnp.float32)
    out = jnp.tensordot(weights.astype(acc), g.astype(acc), axes=1)
    return out.astype(g.dtype)

  return jax.tree.map(one, task_grads)


def _param_template(task_grads: Any, params: Any) -> Any:
  if params is not None:
    return params
  return jax.tree.map(lambda g: g[0], task_grads)


def split_shared(task_grads: Any, params: Any, shared: SharedMask) -> tuple[Any, Any]:
  """Returns (mask, the shared part of task_grads with non-shared leaves set to None)."""
  mask = resolve_shared(shared, _param_template(task_grads, params))
  shared_grads = jax.tree.map(lambda g, m: g if m else None, task_grads, mask)
  return mask, shared_grads


def apply_weights(task_grads: Any, weights: jax.Array, mask: Any) -> Any:
  """Shared leaves get ``Σ w_k g_k``; task-specific leaves the plain sum ``Σ_k g_k``."""
  ones = jnp.ones_like(weights)
  return jax.tree.map(
      lambda g, m: combine(g, weights if m else ones), task_grads, mask
  )


def _pow2_scale(tree: Any) -> jax.Array:
  """The power of two at or above max |x| over ``tree`` (1 if that is 0 or not finite).

  Dividing by a power of two is exact, so the rescaled Gramian loses nothing to it.
  """
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(tree)]))
  _, e = jnp.frexp(m)
  ok = jnp.isfinite(m) & (m > 0)
  return jnp.where(ok, jnp.ldexp(jnp.ones((), jnp.float32), e), jnp.ones((), jnp.float32))


# Below this largest squared norm, squares of gradient entries are near float32's
# underflow (≈1e-38) and the Gramian loses digits; above it nothing is lost.
_TINY_GRAMIAN = 2.0**-100


def _rescue_gramian(g: jax.Array, shared_grads: Any) -> tuple[jax.Array, jax.Array]:
  """``(G, 1)`` when ``G`` is usable, else the Gramian of the gradients rescaled by ``s``.

  The common case costs one Gramian: the extra passes over the gradients (their
  largest magnitude, the division) run only under ``lax.cond`` when ``G`` over-
  or underflowed. (Under ``vmap`` the cond becomes a select and both run.)
  """
  top = jnp.max(jnp.diagonal(g))
  bad = ~jnp.all(jnp.isfinite(g)) | (top < _TINY_GRAMIAN)

  def rescaled(_: Any) -> tuple[jax.Array, jax.Array]:
    scale = _pow2_scale(shared_grads)
    return _gramian(jax.tree.map(lambda x: x.astype(jnp.float32) / scale, shared_grads)), scale

  def plain(_: Any) -> tuple[jax.Array, jax.Array]:
    # ones_like(top), not a constant: inside shard_map both branches must vary alike.
    return g, jnp.ones_like(top)

  return jax.lax.cond(bad, rescaled, plain, None)


def gramian_aggregator(
    weight_fn: WeightFn,
    init_fn: Callable[[], Any] = EmptyAggregatorState,
    *,
    num_tasks: int | None = None,
    shared: SharedMask = None,
    name: str = "aggregator",
    needs_losses: bool = False,
    needs_gramian: bool = True,
    normalize_gramian: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Builds an aggregator from a weighting of the Gramian of the shared gradients.

  Args:
    weight_fn: ``(gramian, task_losses, state, key) -> (weights, new_state)``.
    init_fn: returns the initial state (shapes from constructor arguments only).
    num_tasks: K, checked against the data when given.
    shared: mask of shared parameters (pytree of bools or callable on params).
    name: used in error messages.
    needs_losses: whether ``task_losses`` is required.
    needs_gramian: set False for methods that weight from the losses alone
      (DWA, RLW, ...): ``weight_fn`` then receives ``None`` instead of the
      Gramian, so it is never computed, even without ``jit``.
    normalize_gramian: when the Gramian overflows or its largest diagonal
      entry is below 2^-100, recompute it from the shared gradients divided by
      ``s``, the power of two at or above their largest magnitude, so that
      gradients as small as 1e-30 or as large as 1e30 neither underflow nor
      overflow in ``G`` (whose entries are squares); otherwise ``s = 1``. ``weight_fn`` then gets
      ``G / s²`` and the keyword ``scale=s``; its weights still multiply the
      original gradients. A weighting invariant to rescaling ``G`` ignores
      ``scale``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update maps per-task
    gradients to one params-shaped update.
  """
  def init(params: Any) -> Any:
    del params
    return init_fn()

  def update(
      task_grads: Any,
      state: Any,
      params: Any = None,
      *,
      task_losses: Any = None,
      key: jax.Array | None = None,
      **extra: Any,
  ) -> tuple[Any, Any]:
    del extra
    k = check_task_grads(task_grads, num_tasks, name=name)
    losses = check_task_losses(task_losses, k, required=needs_losses, name=name)
    mask, shared_grads = split_shared(task_grads, params, shared)
    scale = jnp.ones((), jnp.float32)
    if not needs_gramian:
      g = None
    elif jax.tree.leaves(shared_grads):
      g = _gramian(shared_grads)
      if normalize_gramian:
        g, scale = _rescue_gramian(g, shared_grads)
    else:  # nothing is shared: every leaf is task-specific
      g = jnp.zeros((k, k), jnp.float32)
    if normalize_gramian:
      weights, state = weight_fn(g, losses, state, key, scale=scale)
    else:
      weights, state = weight_fn(g, losses, state, key)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (k,):
      raise AssertionError(f"{name}: weighting returned shape {weights.shape}, expected ({k},)")
    return apply_weights(task_grads, weights, mask), state

  return optax.GradientTransformationExtraArgs(init, update)
