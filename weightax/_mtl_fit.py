"""``weightax.mtl.fit``: the multi-task training loop as one ``lax.scan``.

Per step: sample a batch, compute the K task losses and their per-task
gradients in one pass, let the aggregator turn them into one update (with the
task losses and a fresh key), hand that update to the optimizer. Nothing
returns to Python, so ``jax.vmap`` over configurations compiles to one program
(:func:`weightax.sweep`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightax.gramian_free import GramianWeighting
from weightax.jacobian import value_and_jacobian
from weightax.train import _check_steps, _meta_scan, _scan_steps, sample_batch

__all__ = ["fit", "MTLFitResult"]


class MTLFitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    params: final parameters.
    opt_state: final optimizer state.
    aggregator_state: final aggregator state.
    step_metrics: per-step metrics stacked ``[num_steps, ...]``:
      ``"task_losses"`` ``[num_steps, K]``, ``"task_weights"`` ``[num_steps, K]``
      (NaN when the aggregator keeps none) and every entry of the user's aux.
    eval_metrics: ``eval_fn(params)`` at steps ``0, E, 2E, ..., num_steps``
      stacked ``[num_steps // E + 1, ...]`` (None without ``eval_fn``).
    loss_state: the final ``loss_state`` (None when ``fit`` was given none).
  """

  params: Any
  opt_state: Any
  aggregator_state: Any
  step_metrics: Any
  eval_metrics: Any
  loss_state: Any = None


_NO_WEIGHTS = (
    "mtl.fit: the aggregator's state has no `task_weights` field, so the recorded task weights "
    "are NaN. Build the aggregator with num_tasks=K (e.g. wx.upgrad(num_tasks=3)) to record "
    "the weights it applies; a method whose update is not a weighting keeps none."
)


def _full_mask(shared: Any, params: Any) -> Any:
  """A bool per parameter leaf from an ``optax.masked``-style mask (prefix masks included)."""
  mask = shared(params) if callable(shared) else shared
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
  except ValueError as e:
    raise ValueError(
        "mtl.fit: `shared` must be a pytree of bools with the structure of the parameters (or "
        f"a prefix of it), or a callable returning one; the parameters are "
        f"{jax.tree.structure(params)}, the mask is {jax.tree.structure(mask)}."
    ) from e

  def concrete(m: Any) -> bool:
    if isinstance(m, jax.core.Tracer):
      raise TypeError(
          "mtl.fit: the `shared` mask must hold Python bools (it decides the program's "
          "structure); got a traced value. Compute it from shapes or names, not values."
      )
    if np.ndim(m) != 0 or np.asarray(m).dtype != bool:
      raise TypeError(f"mtl.fit: `shared` mask leaves must be bools; got {m!r}.")
    return bool(m)

  full = jax.tree.map(concrete, full)
  flags = jax.tree.leaves(full)
  if not any(flags):
    raise ValueError(
        "mtl.fit: the `shared` mask selects no parameter; expected at least one shared leaf "
        "for the aggregator (every task-specific leaf already gets its own task's gradient)."
    )
  return full


def _select(mask: Any, tree: Any, keep: bool) -> Any:
  """``tree`` with the leaves whose mask is not ``keep`` replaced by None (an empty subtree)."""
  return jax.tree.map(lambda m, x: x if m == keep else None, mask, tree)


def _merge(mask: Any, shared_part: Any, head_part: Any) -> Any:
  return jax.tree.map(lambda m, a, b: a if m else b, mask, shared_part, head_part)


def _task_weights(agg_state: Any, k: int) -> jax.Array | None:
  try:
    w = optax.tree_utils.tree_get(agg_state, "task_weights", default=None)
  except KeyError as e:
    raise ValueError(
        "mtl.fit: the aggregator's state holds several `task_weights` fields (e.g. two "
        "aggregators chained); expected one."
    ) from e
  if w is None:
    return None
  w = jnp.asarray(w, jnp.float32)
  if w.shape != (k,):
    raise ValueError(
        f"mtl.fit: the aggregator's `task_weights` has shape {w.shape}; expected ({k},) for "
        f"the {k} task losses."
    )
  return w


def _num_extra_batches(aggregator: Any, given: int | None) -> int:
  """How many independent batches to draw per step for ``extra_task_grads``."""
  n = getattr(aggregator, "num_extra_batches", 0) if given is None else given
  if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
    raise ValueError(
        f"mtl.fit: num_extra_batches must be a non-negative int (extra batches per step); got "
        f"{n!r}.")
  return int(n)


def fit(
    task_losses_fn: Callable[..., tuple[jax.Array, Any]] | None,
    params: Any,
    aggregator: optax.GradientTransformation | None,
    optimizer: optax.GradientTransformation | None,
    data: Any,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    shared: Any = None,
    eval_fn: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    loss_state: Any = None,
    post_step_losses: bool = False,
    meta: Any = None,
    val_data: Any = None,
    val_batch_size: int | None = None,
    num_extra_batches: int | None = None,
) -> MTLFitResult:
  """Trains K tasks with a weightax aggregator and an Optax optimizer in one ``lax.scan``.

  Each step draws a batch (:func:`weightax.sample_batch`), splits the step's
  key into ``(k_batch, k_loss, k_agg)`` and computes, from one forward pass,

  .. math::
     \\ell = \\text{task\\_losses\\_fn}(\\theta, b, k_{loss}) \\in \\mathbb{R}^K, \\qquad
     J = \\partial \\ell / \\partial \\theta ,

  then ``u = aggregator.update(J, s, θ, task_losses=ℓ, key=k_agg)`` and
  ``θ ← θ + optimizer.update(u, ...)``.

  With ``shared`` (a mask in ``optax.masked``'s forms: a pytree of bools with
  the parameters' structure or a prefix of it, or a callable on the
  parameters), the aggregator sees only the shared leaves: their Jacobian, and
  ``params`` with every task-specific leaf replaced by ``None``; the
  task-specific leaves get :math:`\\nabla \\sum_k \\ell_k` (each head its own
  task's gradient) from the same backward pass, as
  :func:`weightax.mtl.shared_jacobian` computes it, and are merged with the
  aggregated update before the optimizer. Build the aggregator *without* its
  own ``shared`` mask then: giving both is refused (a weightax aggregator
  carries its mask as ``aggregator.shared``; one wrapped in ``optax.chain``
  cannot be checked, so do not rely on the check there). Without ``shared``
  the aggregator gets the full Jacobian (and may apply its own mask).

  **Task weights.** After each update, ``fit`` reads the aggregator's
  ``task_weights`` (``optax.tree_utils.tree_get(state, "task_weights")``, so
  it is found inside an ``optax.chain``) and records it. Aggregators keep it
  when built with ``num_tasks=K``; otherwise ``fit`` records NaN and warns once.

  **Methods that need a forward pass after the step** (FAMO compares each
  task's loss on a batch before and after the update): with
  ``post_step_losses=True``, ``fit`` re-evaluates ``task_losses_fn`` on the
  step's batch and loss key at the updated parameters (no gradient; with
  ``loss_state``, the pre-step state, and its new state discarded) and passes
  the result at the *next* update as the keyword ``post_step_losses`` ``[K]``.
  So at step ``t`` the aggregator gets ``task_losses = ℓ(θ_t, b_t)`` and
  ``post_step_losses = ℓ(θ_t, b_{t-1})``; it keeps ``ℓ(θ_{t-1}, b_{t-1})``
  (the previous ``task_losses``) in its own state to form the change. At step 0
  there is no previous update and ``post_step_losses`` equals
  ``task_losses``; such a method skips its first comparison by its own step
  count. The extra forward costs one loss evaluation per step, and is not
  computed when ``post_step_losses=False``; aggregators that do not use the
  keyword ignore it.

  **Methods that need independent batches** (:func:`weightax.sdmgrad`,
  :func:`weightax.modo`: their weights come from the product ``J₁J₂ᵀ`` of
  two batches' Jacobians, an unbiased estimate of ``∇F∇Fᵀ`` where one
  batch's Gramian is biased): such an aggregator says
  ``aggregator.num_extra_batches = n``, and each step ``fit`` then draws
  ``n`` more batches, independent of the step's batch and of each other
  (keys from ``fold_in(step_key, 1)``, so the step's own batch, loss key and
  aggregator key are those of every other method), evaluates
  ``task_losses_fn`` on each at the same parameters, each with its own loss
  key (and, with ``loss_state``, the pre-step state, its new state
  discarded), and passes their Jacobians as the keyword
  ``extra_task_grads`` — a tuple of ``n`` pytrees shaped like the step's
  Jacobian, restricted to the shared leaves exactly as it is when
  ``shared`` is given. The step's batch alone gives the recorded
  ``task_losses``, the aux metrics and the task-specific leaves' gradients.
  Each extra batch costs one forward and one backward pass. A wrapper such
  as ``optax.chain`` or ``optax.inject_hyperparams`` hides the attribute:
  then pass ``num_extra_batches=n`` to ``fit`` (it overrides the attribute;
  ``0`` turns the extra batches off, and the aggregator falls back to the
  one batch as its docstring says).

  **Meta-learned task weights** (:func:`weightax.meta.auto_lambda`): with
  ``meta=method`` and ``val_data``, pass ``task_losses_fn``, ``aggregator`` and
  ``optimizer`` as None (the method holds its losses and optimizer); each step
  draws a training batch and a validation batch (``val_batch_size``, default
  ``batch_size``) and calls ``method.step``, exactly as :func:`weightax.fit`
  does. The result's ``opt_state`` and ``aggregator_state`` are both the
  method's state; ``step_metrics`` are its metrics, which must hold
  ``"task_losses"`` and ``"task_weights"`` ``[K]``. ``shared`` and
  ``post_step_losses`` do not apply.

  Args:
    task_losses_fn: ``(params, batch, key) -> (losses [K], aux)`` with ``aux``
      a dict of metrics (or None); with ``loss_state``,
      ``(params, batch, key, state) -> (losses, (aux, new_state))``.
    params: initial parameters (any pytree, e.g. the state of ``nnx.split``).
    aggregator: a weightax aggregator (or an ``optax.chain`` starting with one),
      or a pure Gramian weighting wrapped by :func:`weightax.mtl.gramian_weighting`:
      then the Gramian of the shared leaves comes from
      :func:`weightax.value_and_gramian`, without the ``K × P`` Jacobian.
    optimizer: any Optax transformation, applied to the aggregated update.
    data: pytree of device arrays with a leading example axis.
    key: PRNG key for batches, losses and the aggregator.
    num_steps: number of steps; a positive multiple of ``eval_every``.
    batch_size: examples per step (``>= n`` means full batch).
    shared: optional mask of shared parameters (see above).
    eval_fn: optional ``params -> metrics`` run at step 0 and every ``eval_every`` steps.
    eval_every: steps between evaluations.
    loss_state: optional initial state of the losses (any pytree), as in :func:`weightax.fit`.
    post_step_losses: pass the post-step re-evaluation to the aggregator (see above).
    meta: a :class:`weightax.meta.MetaWeighting` of task weights (see above), or None.
    val_data: with ``meta``, the validation pytree (leading example axis).
    val_batch_size: validation examples per step (default ``batch_size``).
    num_extra_batches: independent batches drawn per step for the keyword
      ``extra_task_grads`` (see above); None reads
      ``aggregator.num_extra_batches`` (0 when it has none).

  Returns:
    An :class:`MTLFitResult` ``(params, opt_state, aggregator_state,
    step_metrics, eval_metrics, loss_state)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> x = jnp.linspace(-1.0, 1.0, 32)
    >>> data = (x, jnp.stack([2.0 * x, -x], axis=1))
    >>> def task_losses(p, batch, key):
    ...   xb, yb = batch
    ...   pred = xb[:, None] * p["trunk"] * p["heads"]      # [B, 2]
    ...   return jnp.mean((pred - yb) ** 2, axis=0), {}
    >>> params = {"trunk": jnp.array(1.0), "heads": jnp.array([0.5, 0.5])}
    >>> res = wx.mtl.fit(task_losses, params, wx.upgrad(num_tasks=2), optax.sgd(0.5),
    ...                  data, key=jax.random.key(0), num_steps=200, batch_size=32,
    ...                  shared={"trunk": True, "heads": False})
    >>> res.step_metrics["task_losses"].shape, res.step_metrics["task_weights"].shape
    ((200, 2), (200, 2))
    >>> bool(jnp.all(res.step_metrics["task_losses"][-1] < 1e-4))
    True
  """
  from weightax.mtl import shared_jacobian  # here: weightax.mtl imports this module

  _check_steps(num_steps, eval_every)
  if meta is not None or val_data is not None:
    if any(v is not None for v in (task_losses_fn, aggregator, optimizer, shared, loss_state)):
      raise ValueError(
          "mtl.fit with meta=: pass task_losses_fn, aggregator and optimizer as None (the meta "
          "method holds its losses and optimizer), and no shared mask or loss_state.")
    if post_step_losses:
      raise ValueError("mtl.fit: post_step_losses does not apply to meta methods.")
    if num_extra_batches:
      raise ValueError("mtl.fit: num_extra_batches does not apply to meta methods.")
    (p, s), m, ev = _meta_scan(meta, params, data, val_data, key=key, num_steps=num_steps,
                              batch_size=batch_size, val_batch_size=val_batch_size,
                              eval_fn=eval_fn, eval_every=eval_every, who="mtl.fit")
    missing = {"task_losses", "task_weights"} - set(m)
    if missing:
      raise ValueError(f"mtl.fit: the meta method's metrics lack {sorted(missing)}; use a "
                       "task-weighting method such as wx.meta.auto_lambda.")
    return MTLFitResult(p, s, s, m, ev, None)
  gramian_free = isinstance(aggregator, GramianWeighting)
  n_extra = _num_extra_batches(aggregator, num_extra_batches)
  if n_extra and gramian_free:
    raise ValueError("mtl.fit: num_extra_batches does not apply to a gramian_weighting.")
  if not gramian_free and not isinstance(aggregator, optax.GradientTransformation):
    raise TypeError(
        f"mtl.fit: `aggregator` must be a weightax aggregator (an Optax transformation) or a "
        f"weightax.mtl.gramian_weighting(...); got {type(aggregator).__name__}."
    )
  if gramian_free and post_step_losses:
    raise ValueError("mtl.fit: post_step_losses does not apply to a gramian_weighting (a pure "
                     "weighting of the Gramian sees no losses).")
  if shared is not None and getattr(aggregator, "shared", None) is not None:
    raise ValueError(
        "mtl.fit got a `shared` mask and an aggregator built with its own `shared` mask; give "
        "it once. Either build the aggregator without `shared` and pass the mask to mtl.fit "
        "(the aggregator then sees only the shared leaves' Jacobian, the cheaper choice), or "
        "pass shared=None to mtl.fit and let the aggregator split the full Jacobian."
    )
  stateful = loss_state is not None
  mask = _full_mask(shared, params) if shared is not None else None
  # A mask that shares everything is the same as no mask.
  if mask is not None and all(jax.tree.leaves(mask)):
    mask = None

  def losses_at(p: Any, batch: Any, k: jax.Array, ls: Any) -> tuple[jax.Array, Any, Any]:
    out = task_losses_fn(p, batch, k, ls) if stateful else task_losses_fn(p, batch, k)
    if not isinstance(out, tuple) or len(out) != 2:
      raise ValueError(
          "mtl.fit: task_losses_fn must return (losses [K], aux); with loss_state, (losses, "
          f"(aux, new_state)). Got {type(out).__name__}."
      )
    losses, rest = out
    aux, new_ls = rest if stateful else (rest, None)
    return losses, aux, new_ls

  def packed(p: Any, batch: Any, k: jax.Array, ls: Any) -> tuple[jax.Array, Any]:
    losses, aux, new_ls = losses_at(p, batch, k, ls)
    return losses, (aux, new_ls)

  jac_fn = value_and_jacobian(packed, has_aux=True)
  agg_params = params if mask is None else _select(mask, params, True)
  agg_state = aggregator.init(agg_params)
  opt_state = optimizer.init(params)
  warned: list[bool] = []

  def gradients(p: Any, batch: Any, k: jax.Array, ls: Any) -> tuple[Any, ...]:
    """(losses, aux, new loss state, Jacobian for the aggregator, head grads or None)."""
    if mask is None:
      (losses, (aux, new_ls)), jac = jac_fn(p, batch, k, ls)
      return losses, aux, new_ls, jac, None

    (losses, (aux, new_ls)), jac, head_grads = shared_jacobian(
        lambda sh, hd: packed(_merge(mask, sh, hd), batch, k, ls),
        _select(mask, p, True), _select(mask, p, False), has_aux=True)
    return losses, aux, new_ls, jac, head_grads

  def extra_jacobians(p: Any, k: jax.Array, ls: Any) -> tuple[Any, ...]:
    """The Jacobians (shared leaves) of ``n_extra`` more batches, each its own loss key."""
    out = []
    for ke in jax.random.split(jax.random.fold_in(k, 1), n_extra):
      kb, kl = jax.random.split(ke)
      out.append(gradients(p, sample_batch(data, kb, batch_size), kl, ls)[3])
    return tuple(out)

  def step(carry: Any, k: jax.Array) -> tuple[Any, Any]:
    p, s_agg, s_opt, ls, prev_after, first = carry
    kb, kl, ka = jax.random.split(k, 3)
    batch = sample_batch(data, kb, batch_size)
    if gramian_free:  # the Gramian of the shared leaves without their Jacobian
      (losses, (aux, new_ls)), u, s_agg = aggregator.value_and_update(
          lambda q: packed(q, batch, kl, ls), p, mask)
    else:
      losses, aux, new_ls, jac, head_grads = gradients(p, batch, kl, ls)
      extra = {}
      if post_step_losses:
        extra["post_step_losses"] = jnp.where(first, losses, prev_after)
      if n_extra:
        extra["extra_task_grads"] = extra_jacobians(p, k, ls)
      agg_p = p if mask is None else _select(mask, p, True)
      u, s_agg = aggregator.update(jac, s_agg, agg_p, task_losses=losses, key=ka, **extra)
      if mask is not None:
        u = _merge(mask, u, head_grads)
    kk = losses.shape[0]
    want = jax.tree.map(jnp.shape, p)
    if jax.tree.structure(u) != jax.tree.structure(p) or jax.tree.map(jnp.shape, u) != want:
      raise ValueError(
          "mtl.fit: the aggregator's update is not shaped like the parameters "
          f"({want}); got {jax.tree.map(jnp.shape, u)}. An aggregator must remove the task "
          "axis K."
      )
    updates, s_opt = optimizer.update(u, s_opt, p)
    new_p = optax.apply_updates(p, updates)
    if post_step_losses:
      prev_after = jax.lax.stop_gradient(losses_at(new_p, batch, kl, ls)[0])
    if stateful:
      new_ls = jax.lax.stop_gradient(new_ls)
    w = _task_weights(s_agg, kk)
    if w is None:
      if not warned:
        warnings.warn(_NO_WEIGHTS, stacklevel=4)
        warned.append(True)
      w = jnp.full((kk,), jnp.nan, jnp.float32)
    if aux is None:
      aux = {}
    if not isinstance(aux, Mapping):
      raise TypeError(f"mtl.fit: aux must be a dict of metrics or None; got {type(aux).__name__}.")
    clash = {"task_losses", "task_weights"} & set(aux)
    if clash:
      raise ValueError(f"mtl.fit: aux may not use the reserved metric names {sorted(clash)}.")
    metrics = {"task_losses": losses, "task_weights": w, **aux}
    return (new_p, s_agg, s_opt, new_ls, prev_after, jnp.zeros((), bool)), metrics

  # The first batch's shapes tell K, for the carried post-step losses.
  batch0 = jax.eval_shape(lambda k: sample_batch(data, k, batch_size), key)
  shape0 = jax.eval_shape(lambda p, b, k, ls: losses_at(p, b, k, ls)[0], params, batch0, key,
                          loss_state)
  if len(shape0.shape) != 1:
    raise ValueError(
        "mtl.fit: task_losses_fn must return a vector of K task losses with shape (K,); got "
        f"shape {shape0.shape}. Reduce each task's per-example losses and stack them."
    )
  carry = (params, agg_state, opt_state, loss_state, jnp.zeros(shape0.shape, shape0.dtype),
           jnp.ones((), bool))
  (params, agg_state, opt_state, loss_state, _, _), m, ev = _scan_steps(
      step, carry, key, num_steps=num_steps, eval_every=eval_every, eval_fn=eval_fn)
  return MTLFitResult(params, opt_state, agg_state, m, ev, loss_state)
