"""Input validation and numerically careful helpers shared by the losses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x))


def concrete(x: Any) -> np.ndarray | None:
  """A host copy of ``x`` when its values are known now, ``None`` under ``jit``/``vmap``.

  Every value check below runs only when this returns an array; under tracing the losses
  turn the same invalid inputs into NaN instead, so they show rather than pass silently.
  """
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def to_float(x: Any, dtype: Any = None, what: str = "input") -> jax.Array:
  """``x`` as a floating JAX array, without wrapping integers above 2^31.

  JAX (without x64) casts NumPy int64 to int32, so 3e9 wraps to a negative number, and a
  Python int above 2^31 raises. Host integers are therefore converted to float64 in NumPy
  first. ``dtype=None`` gives float32 for integer or boolean input and keeps a floating
  input's dtype (as ``jnp.asarray`` would).
  """
  if isinstance(x, jax.Array):
    arr = x
  else:
    host = np.asarray(x)
    if not (np.issubdtype(host.dtype, np.number) or host.dtype == np.bool_):
      raise ValueError(f"{what} must be numeric; got dtype {host.dtype}.")
    if np.issubdtype(host.dtype, np.floating):
      arr = jnp.asarray(host)
    else:
      arr = jnp.asarray(host.astype(np.float64), jnp.float32 if dtype is None else dtype)
  if dtype is not None:
    return arr.astype(dtype)
  return arr if jnp.issubdtype(arr.dtype, jnp.floating) else arr.astype(jnp.float32)


def _fmt(v: Any) -> str:
  """``v`` with every digit it has (``repr`` of the float64), so 1 + 1e-7 is not shown as 1."""
  v = float(v)
  return "NaN" if np.isnan(v) else repr(v)


def _describe(values: np.ndarray, bad: np.ndarray) -> str:
  """The offending ``values[bad]`` for an error message, digits and position included.

  ``values`` are the checked values as float64 (exactly what was compared with the bounds)
  and ``bad`` a boolean mask of their shape. A scalar is printed in full; for an array, the
  count, the range of the finite offenders, the NaNs and the first offender with its index.
  """
  values = np.asarray(values, np.float64)
  bad = np.asarray(bad, bool)
  if values.ndim == 0:
    return _fmt(values)
  picked = values[bad]
  nan = int(np.isnan(picked).sum())
  finite = picked[~np.isnan(picked)]
  first_index = tuple(int(i) for i in np.argwhere(bad)[0])
  first = values[first_index]
  if picked.size == 1:
    return f"{_fmt(first)} at index {first_index}"
  parts = []
  if finite.size == 1:
    parts.append(_fmt(finite[0]))
  elif finite.size:
    parts.append(f"{finite.size} values in [{_fmt(finite.min())}, {_fmt(finite.max())}]")
  if nan:
    parts.append(f"{nan} NaN")
  return f"{' and '.join(parts)}; the first, at index {first_index}, is {_fmt(first)}"


def check_range(
    x: Any, fn: str, name: str, *, lo: float, hi: float, lo_open: bool = False,
    hi_open: bool = False, where: Any = None,
) -> None:
  """Raises a ValueError when concrete values of ``x`` (where selected) leave [lo, hi].

  NaN is always out of range. Nothing is checked when ``x`` or ``where`` is traced.
  """
  host = concrete(x)
  if host is None or host.size == 0:
    return
  host = host.astype(np.float64)
  ok = ((host > lo) if lo_open else (host >= lo)) & ((host < hi) if hi_open else (host <= hi))
  bad = ~ok
  if where is not None:
    sel = concrete(where)
    if sel is None:
      return
    bad &= np.broadcast_to(np.asarray(sel, bool), host.shape)
  if np.any(bad):
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise ValueError(f"{fn}: {name} must lie in {interval}; got {_describe(host, bad)}.")


def check_hyperparameter(
    x: Any, fn: str, name: str, *, lo: float, hi: float, lo_open: bool = False,
    hi_open: bool = False,
) -> jax.Array | None:
  """Validates a hyperparameter that may be traced; returns the mask for ``nan_unless``.

  A concrete ``x`` is checked by ``check_range`` (a ValueError when it leaves the interval
  or is NaN) and ``None`` is returned: it is not converted or masked any further. A traced
  ``x`` cannot be inspected; the result is then the traced boolean "``x`` lies in the
  interval", with which the caller turns its output into NaN rather than a meaningless
  number.
  """
  check_range(x, fn, name, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
  if concrete(x) is not None:
    return None
  x = jnp.asarray(x)
  return ((x > lo) if lo_open else (x >= lo)) & ((x < hi) if hi_open else (x <= hi))


def nan_unless(ok: jax.Array | None, arr: jax.Array) -> jax.Array:
  """``arr`` where ``ok`` (from ``check_hyperparameter``; ``None`` is all True), else NaN."""
  if ok is None:
    return arr
  return jnp.where(ok, arr, jnp.full((), jnp.nan, arr.dtype))


def check_logits(logits: Any, fn: str, *, min_ndim: int = 0) -> jax.Array:
  """Returns ``logits`` as a floating array, or raises a ValueError naming ``fn``."""
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"{fn}: logits must have a floating dtype; got {logits.dtype}.")
  if logits.ndim < min_ndim:
    raise ValueError(
        f"{fn}: logits must have at least {min_ndim} dimension(s) [..., num_classes]; "
        f"got shape {logits.shape}."
    )
  return logits


def check_same_shape(x: Any, ref: jax.Array, name: str, ref_name: str, fn: str) -> jax.Array:
  """Returns ``x`` as an array in ``ref``'s dtype; it must have ``ref``'s shape exactly."""
  if shape_of(x) != ref.shape:
    raise ValueError(
        f"{fn}: {name} must have the shape of {ref_name} {ref.shape}; got {shape_of(x)}."
    )
  return jnp.asarray(x).astype(ref.dtype)


def check_mask(where: Any, shape: tuple[int, ...], fn: str) -> jax.Array | None:
  """Validates an optional boolean mask with the loss's output shape."""
  if where is None:
    return None
  if shape_of(where) != tuple(shape):
    raise ValueError(
        f"{fn}: where must have the shape of the per-example loss {tuple(shape)}; "
        f"got {shape_of(where)}."
    )
  return jnp.asarray(where, dtype=bool)


def apply_mask(loss: jax.Array, where: jax.Array | None) -> jax.Array:
  # jnp.where (not multiplication) so a masked entry is exactly 0 with a zero gradient.
  return loss if where is None else jnp.where(where, loss, jnp.zeros((), loss.dtype))


def check_integer_labels(
    labels: Any, logits: jax.Array, fn: str, where: Any = None
) -> tuple[jax.Array, jax.Array | None]:
  """Validates integer class labels of shape ``logits.shape[:-1]`` in ``[0, C)``.

  Returns ``(labels, mask)``. Labels masked out by ``where`` (e.g. an ignore index -100)
  are not checked and are replaced by class 0, so they give neither an error nor a NaN,
  eagerly or under ``jit``; the mask then zeroes their loss.
  """
  dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(
        f"{fn}: labels must be integer class indices; got dtype {dtype}. "
        "For one-hot or soft targets use optax.softmax_cross_entropy."
    )
  if logits.shape[-1] < 2:
    raise ValueError(f"{fn}: logits must have at least 2 classes; got shape {logits.shape}.")
  if shape_of(labels) != logits.shape[:-1]:
    raise ValueError(
        f"{fn}: labels must have the shape of logits without the class axis "
        f"{logits.shape[:-1]} (logits {logits.shape}); got {shape_of(labels)}."
    )
  num_classes = logits.shape[-1]
  mask = check_mask(where, logits.shape[:-1], fn)
  # The range check needs concrete values (labels and mask); under jit/vmap it is skipped,
  # and class_logprobs turns an out-of-range label into a NaN loss instead of a wrong number.
  host = concrete(labels)
  sel = None if mask is None else concrete(mask)
  if host is not None and (mask is None or sel is not None):
    if sel is not None:
      host = host[sel]
    if host.size:
      lo, hi = int(host.min()), int(host.max())
      if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{fn}: labels must lie in [0, {num_classes}) for {num_classes} classes; "
            f"got values in [{lo}, {hi}]."
        )
  labels = jnp.asarray(labels)
  if mask is not None:
    labels = jnp.where(mask, labels, jnp.zeros((), labels.dtype))
  return labels, mask


def check_unit_labels(
    labels: Any, logits: jax.Array, fn: str, valid: Any = None
) -> jax.Array:
  """Targets of sigmoid-type losses: the shape of ``logits``, values in ``[0, 1]``.

  Returns the labels in ``logits``' dtype. Where ``valid`` (a boolean mask, or ``None`` for
  all) is False the label is not checked and is replaced by 0, so masked entries (an ignore
  value such as -100) never raise and never produce NaN. Elsewhere a label outside
  ``[0, 1]`` (or NaN) raises a ValueError when the labels are concrete and becomes NaN
  under ``jit``/``vmap``, so that the loss is NaN rather than a meaningless number.
  """
  labels = check_same_shape(labels, logits, "labels", "logits", fn)
  check_range(labels, fn, "labels", lo=0.0, hi=1.0, where=valid)
  zero = jnp.zeros((), labels.dtype)
  if valid is not None:
    labels = jnp.where(valid, labels, zero)
  ok = (labels >= 0) & (labels <= 1)
  return jnp.where(ok, labels, jnp.full((), jnp.nan, labels.dtype))


def check_class_vector(v: Any, num_classes: int, name: str, fn: str, dtype: Any) -> jax.Array:
  """Validates a per-class vector of shape ``(C,)``."""
  if shape_of(v) != (num_classes,):
    raise ValueError(
        f"{fn}: {name} must have shape ({num_classes},), one entry per class; "
        f"got {shape_of(v)}."
    )
  return to_float(v, dtype, f"{fn}: {name}")


def check_class_weights(v: Any, num_classes: int, name: str, fn: str, dtype: Any) -> jax.Array:
  """A per-class weight vector ``(C,)`` of entries ``>= 0``, in ``dtype``.

  A negative weight would make that class's loss negative (gradient ascent on it).
  Negative or NaN entries raise when concrete and become NaN under ``jit``.
  """
  return nonnegative(check_class_vector(v, num_classes, name, fn, dtype), v, fn, name)


def nonnegative(arr: jax.Array, original: Any, fn: str, name: str) -> jax.Array:
  """Refuses negative or NaN entries of concrete ``original``; under jit they become NaN."""
  host = concrete(original)
  if host is not None and host.size:
    host = np.asarray(host, np.float64)
    bad = ~(host >= 0)
    if np.any(bad):
      raise ValueError(f"{fn}: {name} must be >= 0 and not NaN; got {_describe(host, bad)}.")
  return jnp.where(arr >= 0, arr, jnp.full((), jnp.nan, arr.dtype))


def check_class_counts(
    v: Any, num_classes: int, name: str, fn: str, dtype: Any
) -> jax.Array:
  """A per-class vector ``(C,)`` of counts or priors: converted safely, ``>= 0``."""
  return nonnegative(check_class_vector(v, num_classes, name, fn, dtype), v, fn, name)


def check_counts(counts: Any, fn: str, dtype: Any = None) -> jax.Array:
  """Returns per-class counts as a 1-D floating array (float32 unless already floating).

  Integers are converted through float64 on the host, so counts above 2^31 do not wrap.
  Negative or NaN counts raise when concrete and become NaN under ``jit``.
  """
  if np.ndim(counts) != 1 or np.shape(counts)[0] == 0:
    raise ValueError(
        f"{fn}: counts must be a non-empty vector (num_classes,); got shape "
        f"{shape_of(counts)}."
    )
  return nonnegative(to_float(counts, dtype, f"{fn}: counts"), counts, fn, "counts")


def gather_class(values: jax.Array, labels: jax.Array) -> jax.Array:
  """``values[..., labels]`` along the last axis for integer labels of shape ``values[:-1]``."""
  return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def class_logprobs(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``(log p_y, log(1 - p_y))`` of the softmax, accurate in both tails.

  With ``d = logsumexp_{j != y} z_j - z_y`` the softmax reduces to a sigmoid:
  ``p_y = sigmoid(-d)``, so ``log p_y = log_sigmoid(-d)`` and ``log(1 - p_y) =
  log_sigmoid(d)``. Unlike ``log_softmax`` (whose ``log p_y`` rounds to 0, and whose
  ``log1p(-p_y)`` would be ``-inf``, once ``p_y`` rounds to 1) both stay accurate.
  """
  num_classes = logits.shape[-1]
  others = ~jax.nn.one_hot(labels, num_classes, dtype=bool)
  d = jax.nn.logsumexp(logits, axis=-1, where=others) - gather_class(logits, labels)
  # A negative label would otherwise wrap around to a meaningless (finite) value.
  d = jnp.where((labels >= 0) & (labels < num_classes), d, jnp.nan)
  return jax.nn.log_sigmoid(-d), jax.nn.log_sigmoid(d)
