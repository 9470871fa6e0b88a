"""Training loops as one ``lax.scan``: data on the device, batches sampled inside.

A study's ``train(hparams, key)`` calls :func:`fit`; because nothing in the
loop returns to Python, ``jax.vmap`` over configurations and ``jax.jit`` of
the whole run compile to one program (see :func:`weightax.sweep`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["sample_batch", "fit", "FitResult"]


def sample_batch(data: Any, key: jax.Array, batch_size: int) -> Any:
  """Draws ``batch_size`` examples uniformly with replacement from ``data``.

  ``data`` is a pytree of arrays sharing their leading (example) axis.
  Sampling with replacement keeps the batch shape static and costs one gather.
  """
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
    loss_fn: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    eval_fn: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    loss_state: Any = None,
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

  Returns:
    A :class:`FitResult`.
  """
  _check_steps(num_steps, eval_every)
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
    return (optax.apply_updates(p, u), s, ls), {"loss": loss, **(aux or {})}

  opt_state = optimizer.init(params)
  (params, opt_state, loss_state), m, ev = _scan_steps(
      step, (params, opt_state, loss_state), key, num_steps=num_steps,
      eval_every=eval_every, eval_fn=eval_fn)
  return FitResult(params, opt_state, m, ev, loss_state)


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
