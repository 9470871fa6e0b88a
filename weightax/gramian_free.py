"""The Gramian of the per-task gradients without the Jacobian (torchjd's autogram, in JAX).

:func:`value_and_gramian` returns the K task losses and ``G = J Jᵀ`` from one
linearisation and, per task, one transposed (VJP) and one forward (JVP)
product, under ``lax.map``: memory ``O(P + K²)`` beyond the forward pass's
residuals, instead of the ``K × P`` Jacobian. :class:`GramianWeighting`
(built by :func:`weightax.mtl.gramian_weighting`) lets
:func:`weightax.mtl.fit` train with a pure weighting from
:mod:`weightax.weightings` on that Gramian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from weightax.aggregators._base import SharedMask, resolve_shared
from weightax.jacobian import _argnums, _check_argnums, _check_differentiable, _check_losses

__all__ = ["value_and_gramian", "GramianWeighting", "GramianWeightingState", "gramian_weighting"]


def _select(mask: Any, tree: Any, keep: bool) -> Any:
  """``tree`` with every leaf whose mask is not ``keep`` replaced by None (an empty subtree)."""
  return jax.tree.map(lambda m, x: x if m == keep else None, mask, tree)


def _merge(mask: Any, shared_part: Any, head_part: Any) -> Any:
  return jax.tree.map(lambda m, a, b: a if m else b, mask, shared_part, head_part)


def _gramian_rows(f_jvp: Callable[..., Any], f_vjp: Callable[..., Any], k: int, dtype: Any,
                  tangent: Callable[[Any], tuple[Any, ...]], batch_size: int | None) -> jax.Array:
  """``G[k] = J (Jᵀ e_k)`` for each k under ``lax.map``: one VJP and one JVP per task."""
  acc = jnp.promote_types(dtype, jnp.float32)  # float64 losses (x64) keep a float64 G

  def row(e: jax.Array) -> jax.Array:
    g = f_vjp(e)
    return f_jvp(*tangent(g)).astype(acc)

  g = jax.lax.map(row, jnp.eye(k, dtype=dtype), batch_size=batch_size)
  # The two triangles come from different products; average away their rounding.
  return 0.5 * (g + g.T)


def _batch_size(batch_size: Any, name: str) -> int | None:
  """``None`` or a positive int: tasks per ``lax.map`` iteration of the Gramian."""
  if batch_size is None:
    return None
  if (not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool)
      or batch_size < 1):
    raise ValueError(f"{name}: batch_size must be None or a positive int (tasks per lax.map "
                     f"iteration); got {batch_size!r}.")
  return int(batch_size)


def value_and_gramian(
    fun: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    *,
    shared: SharedMask = None,
    batch_size: int | None = None,
) -> Callable[..., Any]:
  """Creates a function returning K task losses and the Gramian of their gradients.

  For ``fun(*args) -> losses`` with ``losses`` of shape ``[K]`` and
  ``J = ∂ℓ/∂θ_shared`` (``K × P``), the returned function computes

  .. math:: \\ell = f(\\theta), \\qquad G = J J^\\top, \\qquad
     G_{k\\cdot} = J\\,(J^\\top e_k)

  without forming ``J``: ``jax.linearize`` runs the forward pass once, then,
  for each task under ``lax.map``, the transposed linear map gives
  ``g_k = Jᵀe_k`` (one backward pass) and the linear map itself gives the row
  ``J g_k`` (one forward-mode pass). Only one ``g_k`` (size P) is alive at a
  time, so beyond the linearisation's residuals the memory is ``O(P + K²)``
  instead of the ``K·P`` of :func:`weightax.value_and_jacobian`; the price is
  ``K`` sequential backward and forward-mode passes (``batch_size`` runs that
  many tasks at once, trading memory back for speed). This is the idea of
  torchjd's Gramian engine (autogram).

  ``G`` is returned in float32, or float64 for float64 losses (under
  ``jax_enable_x64``; the rows are cast after the JVP, which runs in the
  losses' dtype) and symmetrised as ``(G + Gᵀ)/2``. Unlike the Gramian
  aggregators, it is not recomputed from rescaled gradients when it
  overflows or underflows (squared gradient norms outside float32's range).

  Args:
    fun: function whose output is a ``[K]`` vector of task losses (or, with
      ``has_aux``, a pair ``(losses, aux)``).
    argnums: which positional argument(s) to differentiate, as in
      ``jax.value_and_grad``; with a sequence, ``shared`` applies to the tuple
      of those arguments.
    has_aux: whether ``fun`` returns ``(losses, aux)``.
    shared: optional mask in ``optax.masked``'s forms (a pytree of bools, a
      prefix of the parameters' structure, or a callable on them): ``G`` is
      the Gramian of the shared leaves only, as every Gramian aggregator uses
      it (:func:`weightax.aggregators.resolve_shared`). None: every leaf.
    batch_size: tasks per ``lax.map`` iteration (None: one at a time).

  Returns:
    A function with the signature of ``fun`` returning ``(losses, G)``, or
    ``((losses, aux), G)`` with ``has_aux``; ``G`` is ``[K, K]`` float32 (float64
    for float64 losses; float32 zeros when the mask selects no leaf).

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> f = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum(3.0 * p)])
    >>> losses, G = wx.value_and_gramian(f)(jnp.array([1.0, 2.0]))
    >>> G.tolist()  # the gradients are [2, 4] and [3, 3]
    [[20.0, 18.0], [18.0, 18.0]]

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (torchjd's ``autogram``).
  """
  single, argnums_t = _argnums(argnums, "value_and_gramian")
  batch_size = _batch_size(batch_size, "value_and_gramian")

  def wrapped(*args: Any, **kwargs: Any) -> Any:
    _check_argnums(argnums_t, args, argnums)
    tree = args[argnums_t[0]] if single else tuple(args[a] for a in argnums_t)
    mask = resolve_shared(shared, tree)
    heads = _select(mask, tree, False)

    def f_shared(sh: Any) -> Any:
      t = _merge(mask, sh, heads)
      full = list(args)
      for a, p in zip(argnums_t, (t,) if single else t, strict=True):
        full[a] = p
      return fun(*full, **kwargs)

    sh = _select(mask, tree, True)
    _check_differentiable(sh, name="value_and_gramian")
    if has_aux:
      losses, f_jvp, aux = jax.linearize(f_shared, sh, has_aux=True)
    else:
      losses, f_jvp = jax.linearize(f_shared, sh)
    losses = _check_losses(losses, name="value_and_gramian")
    k = losses.shape[0]
    if jax.tree.leaves(sh):
      f_vjp = jax.linear_transpose(f_jvp, sh)
      g = _gramian_rows(f_jvp, f_vjp, k, losses.dtype, lambda ct: ct, batch_size)
    else:
      g = jnp.zeros((k, k), jnp.float32)
    return ((losses, aux), g) if has_aux else (losses, g)

  return wrapped


class GramianWeightingState(NamedTuple):
  """What :func:`weightax.mtl.fit` keeps for a :class:`GramianWeighting`: the last weights."""

  task_weights: jax.Array  # [K] float32 weights of the last update (NaN before the first)


class GramianWeighting(NamedTuple):
  """A pure weighting ``G -> w`` with its hyperparameters, for :func:`weightax.mtl.fit`.

  Build it with :func:`weightax.mtl.gramian_weighting`. ``mtl.fit`` then
  computes the Gramian of the shared leaves with :func:`value_and_gramian`
  (never the Jacobian) and applies ``Σ_k w_k g_k`` to the shared leaves and
  ``Σ_k g_k`` to the task-specific ones, the contract of the aggregators.

  Attributes:
    weighting: ``weighting(G, **hparams) -> w [K]``, e.g. ``weightax.weightings.upgrad``.
    num_tasks: K.
    hparams: keyword arguments of ``weighting`` (may hold traced arrays).
    batch_size: tasks per ``lax.map`` iteration of the Gramian (None: one).
  """

  weighting: Callable[..., jax.Array]
  num_tasks: int
  hparams: dict[str, Any]
  batch_size: int | None = None

  def init(self, params: Any) -> GramianWeightingState:
    del params
    return GramianWeightingState(jnp.full((self.num_tasks,), jnp.nan, jnp.float32))

  def value_and_update(self, fun: Callable[[Any], Any], params: Any,
                       mask: Any) -> tuple[Any, Any, GramianWeightingState]:
    """``((losses, aux), update, state)`` for ``fun(params) -> (losses, aux)``.

    One linearisation of ``fun`` serves the Gramian of the shared leaves
    (``mask``: a full pytree of bools, or None for all shared), and the two
    transposed products of the update: ``Jᵀw`` on the shared leaves and
    ``Jᵀ1`` on the task-specific ones.
    """
    if mask is None:
      mask = jax.tree.map(lambda _: True, params)
    sh, hd = _select(mask, params, True), _select(mask, params, False)
    _check_differentiable((sh, hd), name="mtl.gramian_weighting")
    losses, f_jvp, aux = jax.linearize(lambda s, h: fun(_merge(mask, s, h)), sh, hd, has_aux=True)
    losses = _check_losses(losses, name="mtl.gramian_weighting")
    k = losses.shape[0]
    if k != self.num_tasks:
      raise ValueError(
          f"mtl.gramian_weighting was built with num_tasks={self.num_tasks}, but the loss "
          f"function returns {k} task losses."
      )
    f_vjp = jax.linear_transpose(f_jvp, sh, hd)
    zeros_hd = jax.tree.map(jnp.zeros_like, hd)
    if jax.tree.leaves(sh):
      g = _gramian_rows(f_jvp, f_vjp, k, losses.dtype, lambda ct: (ct[0], zeros_hd),
                        self.batch_size)
      w = jnp.asarray(self.weighting(g, **self.hparams))
      w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
    else:
      w = jnp.ones((k,), jnp.float32)
    if w.shape != (k,):
      raise ValueError(f"mtl.fit: the weighting returned shape {w.shape}; expected ({k},).")
    u_sh, _ = f_vjp(w.astype(losses.dtype))
    if jax.tree.leaves(hd):
      _, u_hd = f_vjp(jnp.ones((k,), losses.dtype))
    else:
      u_hd = hd
    return (losses, aux), _merge(mask, u_sh, u_hd), GramianWeightingState(w.astype(jnp.float32))


def gramian_weighting(weighting: Callable[..., jax.Array], *, num_tasks: int,
                      batch_size: int | None = None, **hparams: Any) -> GramianWeighting:
  """A pure Gramian weighting for :func:`weightax.mtl.fit`, in place of an aggregator.

  .. math:: w = \\text{weighting}(G_{shared}), \\qquad
     u_{shared} = J_{shared}^\\top w, \\qquad u_{task\\text{-}specific} = J^\\top 1

  ``mtl.fit`` then never forms the ``K × P`` Jacobian: ``G`` comes from
  :func:`weightax.value_and_gramian` (one VJP and one JVP per task) and the
  update from two transposed products of the same linearisation, so a model
  too large for ``K`` copies of its gradient trains with UPGrad, MGDA, ...
  The step equals ``mtl.fit`` with the corresponding aggregator (e.g.
  ``wx.upgrad(num_tasks=K, reg_eps=...)``) up to float32 rounding, except
  that the Gramian is not rescaled when it under- or overflows; the applied
  weights are recorded in ``step_metrics["task_weights"]``. The weighting
  is pure: it gets no losses, key or state (PCGrad's random order, the
  state of Nash-MTL's or GradNorm's aggregators are not available this way),
  and the update's backward pass runs in the losses' dtype, with ``w``
  rounded to it (the aggregators combine bfloat16 gradients in float32).

  Args:
    weighting: a pure weighting ``(G, **hparams) -> w [K]``, e.g.
      ``weightax.weightings.upgrad`` or ``weightax.weightings.mgda``.
    num_tasks: K, checked against the losses.
    batch_size: tasks per ``lax.map`` iteration of the Gramian (None: one).
    **hparams: keyword hyperparameters of ``weighting`` (may be traced).

  Returns:
    A :class:`weightax.gramian_free.GramianWeighting` for ``mtl.fit``'s ``aggregator``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> x = jnp.linspace(-1.0, 1.0, 32)
    >>> data = (x, jnp.stack([2.0 * x, -x], axis=1))
    >>> def task_losses(p, batch, key):
    ...   xb, yb = batch
    ...   return jnp.mean((xb[:, None] * p["trunk"] * p["heads"] - yb) ** 2, axis=0), {}
    >>> params = {"trunk": jnp.array(1.0), "heads": jnp.array([0.5, 0.5])}
    >>> agg = wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=2, reg_eps=1e-4)
    >>> res = wx.mtl.fit(task_losses, params, agg, optax.sgd(0.5), data,
    ...                  key=jax.random.key(0), num_steps=200, batch_size=32,
    ...                  shared={"trunk": True, "heads": False})
    >>> res.step_metrics["task_weights"].shape
    (200, 2)
    >>> bool(jnp.all(res.step_metrics["task_losses"][-1] < 1e-4))
    True
  """
  if not callable(weighting):
    raise TypeError(f"gramian_weighting: `weighting` must be callable (G -> w); got "
                    f"{type(weighting).__name__}.")
  if (not isinstance(num_tasks, int | np.integer) or isinstance(num_tasks, bool)
      or num_tasks < 1):
    raise ValueError(f"gramian_weighting: num_tasks must be a positive int; got {num_tasks!r}.")
  return GramianWeighting(weighting, int(num_tasks), dict(hparams),
                          _batch_size(batch_size, "gramian_weighting"))
