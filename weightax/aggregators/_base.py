"""The shared machinery of every aggregator: checks, shared masks, Σ w_k g_k.

An aggregator turns per-task gradients (every leaf with a leading task axis K)
into one update shaped like the parameters. Most methods only need the Gramian
``G = J Jᵀ`` of the shared part of ``J`` and return task weights ``w``; the
update is then ``Σ_k w_k g_k`` on shared leaves. :func:`gramian_aggregator`
builds such a transform from a pure weighting function so that each method
module only writes its mathematics, and records the weights it applied in the
state's ``task_weights`` field when K is known (``num_tasks``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightax.jacobian import CHAIN_ORDER_HINT, _task_rows
from weightax.jacobian import gramian as _gramian
from weightax.jacobian import num_tasks as _num_tasks

__all__ = [
    "Aggregator",
    "make_aggregator",
    "SharedMask",
    "WeightFn",
    "check_task_grads",
    "check_task_losses",
    "resolve_shared",
    "combine",
    "gramian_aggregator",
    "EmptyAggregatorState",
    "init_task_weights",
    "requires_num_tasks",
    "with_task_weights",
]

SharedMask = Any | Callable[[Any], Any] | None


class Aggregator(optax.GradientTransformationExtraArgs):
  """An aggregator's transform; its attribute ``shared`` is the mask it was built with.

  A plain subclass (no new tuple fields): it unpacks, chains and is
  ``isinstance`` of ``optax.GradientTransformationExtraArgs`` like any Optax
  transform. ``weightax.mtl.fit`` reads ``shared`` to refuse a mask given
  both to it and to the aggregator. (Wrappers such as ``optax.chain`` or
  ``optax.inject_hyperparams`` return their own transforms, without it.)
  """

  shared: SharedMask = None


def make_aggregator(init: Callable[..., Any], update: Callable[..., Any],
                    shared: SharedMask = None) -> Aggregator:
  """``Aggregator(init, update)`` that remembers its ``shared`` mask."""
  tx = Aggregator(init, update)
  tx.shared = shared
  return tx


class EmptyAggregatorState(NamedTuple):
  """State of an aggregator that keeps nothing between steps but the weights it applied.

  ``task_weights`` is ``[K]`` float32 when the aggregator is built with
  ``num_tasks=K`` (NaN until the first update), else ``None``.
  """

  task_weights: jax.Array | None = None


class WeightFn(Protocol):
  """``(gramian [K,K], task_losses [K] | None, state, key) -> (weights [K], state)``."""

  def __call__(
      self, gramian: jax.Array, task_losses: jax.Array | None, state: Any, key: jax.Array | None
  ) -> tuple[jax.Array, Any]: ...


def requires_num_tasks(why: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorates a factory whose state needs K: a missing ``num_tasks`` says what to pass.

  The signature is kept (``num_tasks`` stays a required keyword), so
  ``inspect.signature`` and ``optax.inject_hyperparams`` see the factory's own.

  Args:
    why: what the state keeps in ``[K]`` arrays, for the message.

  Returns:
    The decorator.
  """

  def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
    name = factory.__name__

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      k = kwargs.get("num_tasks")
      if k is None:
        raise TypeError(
            f"{name} needs num_tasks=K, the number of tasks (the size of the leading axis of "
            f"task_grads and of task_losses), e.g. weightax.{name}(num_tasks=3): {why} Optax's "
            "init sees only the parameters, so K must be given to the factory."
        )
      if isinstance(k, int) and not isinstance(k, bool) and k < 1:
        raise ValueError(f"{name}: num_tasks must be a positive number of tasks; got {k}.")
      return factory(*args, **kwargs)

    return wrapper

  return decorate


def check_task_grads(
    task_grads: Any, expected: int | None = None, *, name: str = "aggregator"
) -> int:
  """Returns K, the task axis of ``task_grads``; raises a clear error if it is not K."""
  k = _num_tasks(task_grads)
  if expected is not None and k != expected:
    raise ValueError(
        f"{name} was built with num_tasks={expected}, but task_grads has a leading task axis "
        f"of size {k}. {CHAIN_ORDER_HINT}"
    )
  return k


def check_state_leaves(state_part: Any, grads: list, *, name: str) -> list:
  """The leaves of a per-parameter state, refused when they do not match the shared gradients.

  Methods that keep one array per shared parameter (running averages, accumulated norms)
  build it at ``init``; a later ``update`` with other parameters or another mask would pair
  the wrong arrays, so it raises a ValueError that says how many were expected.
  """
  leaves = jax.tree.leaves(state_part)
  if len(grads) != len(leaves):
    raise ValueError(
        f"{name}: the state was built for {len(leaves)} shared parameter arrays but the "
        f"task gradients have {len(grads)}; init with the same parameters and mask."
    )
  return leaves


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


def _static_bool(m: Any) -> bool:
  """A mask leaf as a Python bool; a clear error for anything that is not a static bool."""
  if isinstance(m, bool | np.bool_):
    return bool(m)
  if (isinstance(m, np.ndarray | jax.Array) and not isinstance(m, jax.core.Tracer)
      and m.shape == () and m.dtype == bool):
    return bool(m)
  raise TypeError(
      "The `shared` mask's leaves must be static bools (True for shared parameters), as in "
      f"optax.masked; got {m!r} of type {type(m).__name__}."
  )


def resolve_shared(shared: SharedMask, tree: Any) -> Any:
  """The boolean mask of shared leaves for ``tree``: one Python bool per leaf of ``tree``.

  ``shared`` takes the forms ``optax.masked`` takes: ``None`` (every leaf is
  shared), a pytree of bools with the structure of the parameters *or a prefix
  of it* (a bool at an inner node applies to its whole subtree, e.g.
  ``{"trunk": True, "heads": False}``), or a callable returning either from
  the parameters. The leaves must be static (Python or NumPy bools).

  Args:
    shared: the mask, its prefix, a callable, or None.
    tree: the parameters (or any pytree with their structure).

  Returns:
    A pytree with the structure of ``tree`` whose leaves are Python bools.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> params = {"trunk": {"w": jnp.ones(2), "b": jnp.ones(())}, "heads": [jnp.ones(3)]}
    >>> wx.aggregators.resolve_shared({"trunk": True, "heads": False}, params)
    {'heads': [False], 'trunk': {'b': True, 'w': True}}
  """
  if shared is None:
    return jax.tree.map(lambda _: True, tree)
  mask = shared(tree) if callable(shared) else shared
  try:
    # The mask goes first, as in optax.masked: each of its leaves meets a whole subtree.
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "The `shared` mask must have the structure of the parameters or a prefix of it (as in "
        f"optax.masked); parameters: {jax.tree.structure(tree)}; mask: "
        f"{jax.tree.structure(mask)}."
    ) from e
  return jax.tree.map(_static_bool, full)


def init_task_weights(num_tasks: int | None) -> jax.Array | None:
  """A fresh state's ``task_weights``: ``[K]`` NaN (no update yet) with ``num_tasks=K``, else None.

  ``optax``'s ``init`` sees only the parameters, so a state can only hold a
  ``[K]`` array when K is given to the factory.
  """
  if num_tasks is None:
    return None
  return jnp.full((num_tasks,), jnp.nan, jnp.float32)


def with_task_weights(state: Any, weights: jax.Array | None, num_tasks: int | None) -> Any:
  """``state`` with its ``task_weights`` field set to the ``[K]`` weights just applied.

  Left as is without ``num_tasks`` (the field then stays None, so that the
  state's structure never depends on the data) or when the state has no such
  field (a custom ``init_fn`` of :func:`gramian_aggregator`).
  """
  if num_tasks is None or "task_weights" not in getattr(state, "_fields", ()):
    return state
  if weights is None:  # not a weighting: say so with NaN rather than a made-up number
    weights = jnp.full((num_tasks,), jnp.nan, jnp.float32)
  return state._replace(task_weights=jnp.asarray(weights, jnp.float32))


def combine(task_grads: Any, weights: jax.Array) -> Any:
  """``Σ_k w_k g_k`` leafwise, accumulated in float32 and cast back to each leaf's dtype.

  At ``Precision.HIGHEST``, so that a GPU does not round the gradients to TF32 in
  the sum (see :func:`weightax.gramian`): the weights were chosen for these rows.
  """

  highest = jax.lax.Precision.HIGHEST

  def one(g: jax.Array) -> jax.Array:
    acc = jnp.promote_types(g.dtype, jnp.float32)
    if g.ndim == 3:
      # A dense layer's weight Jacobian is stored as [K, out, in] (see
      # weightax.jacobian._task_rows): combining in that order and transposing the
      # [out, in] result copies a K-th of what transposing the Jacobian would.
      out = jnp.swapaxes(jnp.tensordot(weights.astype(acc), jnp.swapaxes(g, 1, 2).astype(acc),
                                       axes=1, precision=highest), 0, 1)
    else:
      out = jnp.tensordot(weights.astype(acc), g.astype(acc), axes=1, precision=highest)
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
  leaves = jax.tree.leaves(tree)
  # float32, or float64 for float64 gradients, whose magnitudes float32 may not hold.
  acc = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(acc) for x in leaves]))
  _, e = jnp.frexp(m)
  ok = jnp.isfinite(m) & (m > 0)
  return jnp.where(ok, jnp.ldexp(jnp.ones((), acc), e), jnp.ones((), acc))


# Below this largest squared norm, squares of gradient entries are near float32's
# underflow (≈1e-38) and the Gramian loses digits; above it nothing is lost.
_TINY_GRAMIAN = 2.0**-100


def _rescue_gramian(g: jax.Array, shared_grads: Any) -> tuple[jax.Array, jax.Array]:
  """``(G, 1)`` when ``G`` is usable, else the Gramian of the gradients rescaled by ``s``.

  The common case costs one Gramian: the extra passes over the gradients (their
  largest magnitude, the division) run only under ``lax.cond`` when ``G`` over-
  or underflowed. (Under ``vmap`` the cond becomes a select and both run.) The
  cond receives the gradients as the ``[K, n]`` rows of the Gramian
  (``_task_rows``), which XLA passes without a copy; the leaves themselves, in a
  transposed layout, were copied whole into the cond on every step.
  """
  top = jnp.max(jnp.diagonal(g))
  bad = ~jnp.all(jnp.isfinite(g)) | (top < _TINY_GRAMIAN)
  k = g.shape[0]
  rows = [_task_rows(x, k) for x in jax.tree.leaves(shared_grads)]

  def rescaled(_: Any) -> tuple[jax.Array, jax.Array]:
    scale = _pow2_scale(rows)
    scale = scale.astype(g.dtype)
    return _gramian([x.astype(g.dtype) / scale for x in rows]), scale

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

  .. math:: w = \\text{weight\\_fn}(G_{shared}, L, \\text{state}, \\text{key}), \\qquad
     u_{shared} = \\sum_k w_k g_k, \\qquad u_{task\\text{-}specific} = \\sum_k g_k

  ``G`` is the Gramian of the shared leaves only (``shared`` mask). When the
  state (a NamedTuple) has a field ``task_weights`` and ``num_tasks=K`` is
  given, that field holds the ``[K]`` float32 weights applied at the last
  update (NaN before the first), so
  ``optax.tree_utils.tree_get(opt_state, "task_weights")`` finds them in any
  chain; without ``num_tasks`` it stays ``None`` (``init`` sees only the
  parameters, so it cannot size a ``[K]`` array). Declare it in a custom
  state as ``task_weights: jax.Array | None = None``.

  Args:
    weight_fn: ``(gramian, task_losses, state, key) -> (weights, new_state)``.
    init_fn: returns the initial state (shapes from constructor arguments only).
    num_tasks: K, checked against the data when given; sizes ``task_weights``.
    shared: mask of shared parameters, in ``optax.masked``'s forms (a pytree of
      bools, a prefix of the parameters' structure, or a callable on params).
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

  Example:
    >>> import jax.numpy as jnp, optax, weightax as wx
    >>> def halves(gramian, task_losses, state, key):  # a fixed weighting
    ...   return jnp.full(gramian.shape[0], 0.5), state
    >>> tx = optax.chain(wx.gramian_aggregator(halves, num_tasks=2), optax.sgd(1.0))
    >>> params = {"w": jnp.zeros(2)}
    >>> u, state = tx.update({"w": jnp.eye(2)}, tx.init(params), params)
    >>> optax.tree_utils.tree_get(state, "task_weights").tolist()
    [0.5, 0.5]
  """
  def init(params: Any) -> Any:
    del params
    state = init_fn()
    if "task_weights" in getattr(state, "_fields", ()):
      state = state._replace(task_weights=init_task_weights(num_tasks))
    return state

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
    # float32, or float64 when the weighting computed them so (a float64 Gramian).
    weights = jnp.asarray(weights)
    weights = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))
    if weights.shape != (k,):
      raise AssertionError(f"{name}: weighting returned shape {weights.shape}, expected ({k},)")
    return apply_weights(task_grads, weights, mask), with_task_weights(state, weights, num_tasks)

  return make_aggregator(init, update, shared)
