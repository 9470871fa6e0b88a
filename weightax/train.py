"""Training loops as one ``lax.scan``: data on the device, batches sampled inside.

A study's ``train(hparams, key)`` calls :func:`fit`; because nothing in the
loop returns to Python, ``jax.vmap`` over configurations and ``jax.jit`` of
the whole run compile to one program (see :func:`weightax.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["sample_batch", "fit", "FitResult"]


def sample_batch(data: Any, key: jax.Array, batch_size: int) -> Any:
  """Draws ``batch_size`` examples uniformly with replacement from ``data``.

  ``data`` is a pytree of arrays sharing their leading (example) axis.
  Sampling with replacement keeps the batch shape static and costs one gather.
  """
  if (not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool)
      or batch_size < 1):
    raise ValueError(f"batch_size must be a positive int (examples per step); got {batch_size!r}.")
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("data is an empty pytree; expected arrays with a leading example axis.")
  n = leaves[0].shape[0]
  if any(x.shape[0] != n for x in leaves):
    raise ValueError(
        f"All data arrays need the same number of examples; got {[x.shape[0] for x in leaves]}."
    )
  if batch_size >= n:  # full batch: no sampling noise
    return data
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return jax.tree.map(lambda x: x[idx], data)


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    params: final parameters.
    opt_state: final optimizer state.
    step_metrics: the per-step metrics of ``loss_fn``'s aux, stacked ``[num_steps, ...]``.
    eval_metrics: ``eval_fn(params)`` at steps ``0, E, 2E, ..., num_steps`` stacked
      ``[num_steps // E + 1, ...]`` (None without ``eval_fn``).
    loss_state: the final ``loss_state`` (None when ``fit`` was given none).
  """

  params: Any
  opt_state: Any
  step_metrics: Any
  eval_metrics: Any
  loss_state: Any = None


def fit(
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]] | None,
    params: Any,
    optimizer: optax.GradientTransformation | None,
    data: Any,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    eval_fn: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    loss_state: Any = None,
    meta: Any = None,
    val_data: Any = None,
    val_batch_size: int | None = None,
) -> FitResult:
  """Trains with ``optimizer`` on minibatches drawn inside a ``lax.scan``.

  Each step draws a batch with :func:`sample_batch`, takes
  ``jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)`` and
  applies the optimizer. Evaluation runs every ``eval_every`` steps through a
  nested scan (outer over evaluations, inner over steps) rather than a
  ``lax.cond``, which under ``vmap`` would evaluate at every step.

  A loss that keeps state between steps (GHM's running bin counts, a step
  counter for deferred re-weighting) passes ``loss_state``: ``loss_fn`` is then
  called as ``loss_fn(params, batch, key, loss_state)`` and returns
  ``(loss, (aux metrics, new_loss_state))``; the state is carried through the
  scan without gradients.

  **Meta-learned weights** (:mod:`weightax.meta`): with ``meta=method`` (a
  :class:`weightax.meta.MetaWeighting`, which holds its own loss and optimizer)
  and ``val_data``, pass ``loss_fn=None`` and ``optimizer=None``; each step
  splits its key into ``(k_batch, k_val, k_step)``, draws a training batch from
  ``data`` and a validation batch of ``val_batch_size`` (default
  ``batch_size``) from ``val_data`` the same way, and calls
  ``method.step(params, state, batch, val_batch, k_step)``. ``opt_state`` of
  the result is then the method's state and ``step_metrics`` its metrics
  (the example or task weights among them).

  Args:
    loss_fn: ``(params, batch, key) -> (scalar loss, aux metrics)``, or with
      ``loss_state`` ``(params, batch, key, state) -> (loss, (aux, new_state))``.
    params: initial parameters.
    optimizer: any Optax transformation.
    data: pytree of device arrays with a leading example axis.
    key: PRNG key for batches and for ``loss_fn``.
    num_steps: number of optimizer steps; a multiple of ``eval_every``.
    batch_size: examples per step (``>= n`` means full batch).
    eval_fn: optional ``params -> metrics`` run at step 0 and every ``eval_every`` steps.
    eval_every: steps between evaluations.
    loss_state: optional initial state of the loss (any pytree).
    meta: a :class:`weightax.meta.MetaWeighting` (see above), or None.
    val_data: with ``meta``, the validation pytree (leading example axis).
    val_batch_size: validation examples per step (default ``batch_size``).

  Returns:
    A :class:`FitResult`.
  """
  _check_steps(num_steps, eval_every)
  if meta is not None or val_data is not None:
    if loss_state is not None:
      raise ValueError("fit: loss_state cannot be combined with meta; a meta method keeps its "
                       "own state.")
    if loss_fn is not None or optimizer is not None:
      raise ValueError(
          "fit with meta=: pass loss_fn=None and optimizer=None; the meta method holds its "
          "own loss and optimizer (e.g. wx.meta.learning_to_reweight(loss, optax.sgd(0.1))).")
    s, m, ev = _meta_scan(meta, params, data, val_data, key=key, num_steps=num_steps,
                         batch_size=batch_size, val_batch_size=val_batch_size,
                         eval_fn=eval_fn, eval_every=eval_every, who="fit")
    return FitResult(s[0], s[1], m, ev, None)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  stateful = loss_state is not None

  def step(carry: Any, k: jax.Array) -> tuple[Any, Any]:
    p, s, ls = carry
    kb, kl = jax.random.split(k)
    batch = sample_batch(data, kb, batch_size)
    if stateful:
      (loss, (aux, ls)), g = grad_fn(p, batch, kl, ls)
      ls = jax.lax.stop_gradient(ls)
    else:
      (loss, aux), g = grad_fn(p, batch, kl)
    u, s = optimizer.update(g, s, p)
    return (optax.apply_updates(p, u), s, ls), {"loss": loss, **_aux_metrics(aux)}

  opt_state = optimizer.init(params)
  (params, opt_state, loss_state), m, ev = _scan_steps(
      step, (params, opt_state, loss_state), key, num_steps=num_steps,
      eval_every=eval_every, eval_fn=eval_fn)
  return FitResult(params, opt_state, m, ev, loss_state)


def _aux_metrics(aux: Any) -> dict[str, Any]:
  """``loss_fn``'s aux as step metrics: a dict (or None) that leaves ``"loss"`` to the loss."""
  if aux is None:
    return {}
  if not isinstance(aux, Mapping):
    raise TypeError(f"fit: loss_fn's aux must be a dict of metrics or None; got "
                    f"{type(aux).__name__}.")
  if "loss" in aux:
    raise ValueError("fit: aux may not use the reserved metric name 'loss' (the optimised "
                     "loss is recorded under it); rename the aux entry.")
  return aux


def _meta_scan(
    meta: Any,
    params: Any,
    data: Any,
    val_data: Any,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    val_batch_size: int | None,
    eval_fn: Callable[[Any], Any] | None,
    eval_every: int,
    who: str,
) -> tuple[Any, Any, Any]:
  """The scan of a meta method: ``((params, state), step metrics, eval metrics)``."""
  from weightax.meta import MetaWeighting  # here: weightax.meta is a leaf module

  if not isinstance(meta, MetaWeighting):
    raise TypeError(
        f"{who}: meta must be a weightax.meta.MetaWeighting (e.g. "
        f"wx.meta.learning_to_reweight(...)); got {type(meta).__name__}.")
  if val_data is None:
    raise ValueError(f"{who}: meta methods need val_data (a held-out pytree with a leading "
                     "example axis) to draw validation batches from.")
  vbs = batch_size if val_batch_size is None else val_batch_size

  def step(carry: Any, k: jax.Array) -> tuple[Any, Any]:
    p, s = carry
    kb, kv, ks = jax.random.split(k, 3)
    batch = sample_batch(data, kb, batch_size)
    val_batch = sample_batch(val_data, kv, vbs)
    p, s, metrics = meta.step(p, s, batch, val_batch, ks)
    return (p, s), metrics

  return _scan_steps(step, (params, meta.init(params)), key, num_steps=num_steps,
                     eval_every=eval_every, eval_fn=eval_fn)


def _check_steps(num_steps: int, eval_every: int) -> None:
  if num_steps < 1 or eval_every < 1 or num_steps % eval_every:
    raise ValueError(
        "num_steps must be a positive multiple of eval_every; "
        f"got num_steps={num_steps}, eval_every={eval_every}."
    )


def _scan_steps(
    step: Callable[[Any, jax.Array], tuple[Any, Any]],
    carry: Any,
    key: jax.Array,
    *,
    num_steps: int,
    eval_every: int,
    eval_fn: Callable[[Any], Any] | None,
) -> tuple[Any, Any, Any]:
  """Runs ``step(carry, key_t)`` ``num_steps`` times; ``carry[0]`` must be the params.

  Evaluation runs every ``eval_every`` steps through a nested scan (outer over
  evaluations, inner over steps) rather than a ``lax.cond``, which under
  ``vmap`` would evaluate at every step. Returns ``(carry, step metrics
  [num_steps, ...], eval metrics [num_steps // eval_every + 1, ...] or None)``.
  """
  n_outer = num_steps // eval_every
  keys = jax.random.split(key, num_steps)
  keys = keys.reshape((n_outer, eval_every) + keys.shape[1:])

  def outer(carry: Any, ks: jax.Array) -> tuple[Any, Any]:
    carry, m = jax.lax.scan(step, carry, ks)
    ev = eval_fn(carry[0]) if eval_fn is not None else None
    return carry, (m, ev)

  ev0 = eval_fn(carry[0]) if eval_fn is not None else None
  carry, (m, ev) = jax.lax.scan(outer, carry, keys)
  m = jax.tree.map(lambda x: x.reshape((num_steps,) + x.shape[2:]), m)
  if eval_fn is not None:
    ev = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), ev0, ev)
  return carry, m, ev
