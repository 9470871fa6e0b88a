"""Per-task losses to a Jacobian with a leading task axis, and its Gramian."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["value_and_jacobian", "gramian", "num_tasks"]


def _check_losses(losses: Any, *, name: str = "value_and_jacobian") -> jax.Array:
  if not isinstance(losses, jax.Array | jnp.ndarray) or jnp.ndim(losses) != 1:
    shape = getattr(losses, "shape", type(losses).__name__)
    raise ValueError(
        f"{name} expects `fun` to return a vector of K task losses with shape (K,); "
        f"got {shape}. Reduce each task's per-example losses (e.g. with .mean()) and stack them."
    )
  if losses.shape[0] == 0:
    raise ValueError(f"{name} expects at least one task loss; `fun` returned an empty "
                     "vector of shape (0,).")
  return losses


def _argnums(argnums: Any, name: str) -> tuple[bool, tuple[int, ...]]:
  """``(single, argnums as a tuple)``, refusing what ``jax.value_and_grad`` refuses."""
  if isinstance(argnums, int | np.integer) and not isinstance(argnums, bool):
    return True, (int(argnums),)
  try:
    t = tuple(argnums)
  except TypeError:
    t = ()
  if not t or not all(isinstance(a, int | np.integer) and not isinstance(a, bool) for a in t):
    raise ValueError(f"{name}: argnums must be an int or a non-empty sequence of ints; got "
                     f"{argnums!r}.")
  return False, tuple(int(a) for a in t)


def _check_argnums(argnums_t: tuple[int, ...], args: tuple, argnums: Any) -> None:
  for a in argnums_t:
    if not -len(args) <= a < len(args):
      raise ValueError(f"argnums={argnums} but only {len(args)} positional arguments were given.")


def _check_differentiable(primals: Any, *, name: str) -> None:
  """Refuses integer or boolean leaves in the differentiated arguments, as ``jax.grad`` does.

  Their cotangents would be ``float0`` arrays, which no aggregator or optimiser can use,
  and the failure would come later with an error about dtypes.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(primals):
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"{name} differentiates every leaf of the argument(s) in argnums, which must be "
          f"floating point; leaf {jax.tree_util.keystr(path) or '(the argument)'} has dtype "
          f"{dtype}. Pass integer or boolean state (step counters, masks, RNG keys) as "
          "another argument, or split it off first (e.g. nnx.split(model, nnx.Param, ...)).")


def value_and_jacobian(
    fun: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
) -> Callable[..., Any]:
  """Creates a function returning K task losses and their per-task gradients.

  For ``fun(*args) -> losses`` with ``losses`` of shape ``[K]``, the returned
  function computes

  .. math:: \\ell = f(\\theta), \\qquad J = \\partial \\ell / \\partial \\theta

  with one forward pass and a vmapped vector-Jacobian product (one backward
  pass per task, batched), instead of K separate calls to ``jax.grad``.
  The Jacobian is returned as a pytree shaped like the differentiated
  argument(s), where every leaf has a leading axis of size K: leaf ``[k]`` is
  task k's gradient. This is the ``task_grads`` input of every weightax
  aggregator.

  Args:
    fun: function whose output is a ``[K]`` vector of task losses (or, with
      ``has_aux``, a pair ``(losses, aux)``).
    argnums: which positional argument(s) to differentiate, as in
      ``jax.value_and_grad``.
    has_aux: whether ``fun`` returns ``(losses, aux)``.

  Returns:
    A function with the signature of ``fun`` returning ``(losses, jac)``, or
    ``((losses, aux), jac)`` with ``has_aux``, following ``jax.value_and_grad``.
    With a sequence ``argnums``, ``jac`` is a tuple with one entry per argument.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> f = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum(3.0 * p)])
    >>> losses, jac = wx.value_and_jacobian(f)(jnp.array([1.0, 2.0]))
    >>> jac.tolist()
    [[2.0, 4.0], [3.0, 3.0]]
  """
  single, argnums_t = _argnums(argnums, "value_and_jacobian")

  def wrapped(*args: Any, **kwargs: Any) -> Any:
    _check_argnums(argnums_t, args, argnums)
    primals = tuple(args[a] for a in argnums_t)
    _check_differentiable(primals if not single else primals[0], name="value_and_jacobian")

    def f_primals(*ps: Any) -> Any:
      full = list(args)
      for a, p in zip(argnums_t, ps, strict=True):
        full[a] = p
      return fun(*full, **kwargs)

    if has_aux:
      losses, vjp_fn, aux = jax.vjp(f_primals, *primals, has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(f_primals, *primals)
    losses = _check_losses(losses)
    basis = jnp.eye(losses.shape[0], dtype=losses.dtype)
    jac = jax.vmap(vjp_fn)(basis)
    jac = jac[0] if single else jac
    return ((losses, aux), jac) if has_aux else (losses, jac)

  return wrapped


# Appended to the errors for task gradients that do not look like a Jacobian: the usual
# cause is an aggregator wrapped by something that passes parameter-shaped updates.
CHAIN_ORDER_HINT = (
    "An aggregator takes the Jacobian (every leaf [K, *param.shape]), so it comes first in an "
    "optax.chain; wrappers of parameter-shaped updates, such as optax.MultiSteps for gradient "
    "accumulation, go after it.")


def num_tasks(task_grads: Any) -> int:
  """The size K of the leading task axis shared by every leaf of ``task_grads``."""
  leaves = jax.tree.leaves(task_grads)
  if not leaves:
    raise ValueError("task_grads is an empty pytree; expected leaves with a leading task axis K.")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
        "Every leaf of task_grads must have the same leading task axis K; "
        f"got leaf shapes {shapes}. {CHAIN_ORDER_HINT}"
    )
  k = sizes.pop()
  if k == 0:
    raise ValueError("task_grads has a task axis of size K = 0; expected at least one task.")
  return k


def gramian(task_grads: Any, *, dtype: Any = None) -> jax.Array:
  """The Gramian ``G = J Jᵀ`` of the per-task gradients, shape ``[K, K]``.

  ``G[i, j] = <g_i, g_j>`` summed over every leaf. Accumulated in ``dtype``
  (by default float32, or float64 when a gradient is float64, as under
  ``jax_enable_x64``) so that bfloat16 gradients do not lose the inner
  products to rounding, and at ``Precision.HIGHEST``: on a GPU, JAX's default
  float32 product rounds its inputs to TF32 (a 10-bit mantissa), which would
  move the Gramian, and with it every guarantee a weighting gives, by ~1e-4
  relative. The cost is ``K² P`` multiply-adds, small beside the Jacobian's.

  Args:
    task_grads: pytree whose leaves all have a leading task axis K.
    dtype: accumulation dtype; ``None``: the gradients' dtype promoted to at least
      float32.

  Returns:
    The ``[K, K]`` symmetric positive semi-definite Gramian.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> wx.gramian({"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}).tolist()
    [[1.0, 1.0], [1.0, 2.0]]
  """
  k = num_tasks(task_grads)
  if dtype is None:
    dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(task_grads)), jnp.float32)
  out = jnp.zeros((k, k), dtype)
  for leaf in jax.tree.leaves(task_grads):
    flat = _task_rows(leaf, k).astype(dtype)
    out = out + jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
  return out


def _task_rows(leaf: jax.Array, k: int) -> jax.Array:
  """A ``[K, ...]`` Jacobian leaf as ``[K, n]`` rows, its entries in the order XLA stores them.

  Every use of the rows here (inner products between tasks, the largest
  magnitude) is the same whatever the order of the entries within a row, as
  long as all rows share it. Under the vmapped VJP of
  :func:`value_and_jacobian`, a dense layer's ``[K, in, out]`` weight
  Jacobian is computed as the transposed product (``δ_kᵀ x`` per task) and
  stored as ``[K, out, in]``: reading it in that order is a free reshape,
  while the ``[K, in, out]`` order costs a transposed copy of the whole leaf
  (the largest array of the step). Other leaves are read in their own order.
  """
  if jnp.ndim(leaf) == 3:
    leaf = jnp.swapaxes(leaf, 1, 2)
  return jnp.reshape(leaf, (k, -1))
