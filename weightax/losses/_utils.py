"""Input validation and numerically careful helpers shared by the losses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x))


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


def check_integer_labels(labels: Any, logits: jax.Array, fn: str) -> jax.Array:
  """Validates integer class labels of shape ``logits.shape[:-1]`` in ``[0, C)``."""
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
  # The range check needs concrete values; under jit/vmap it is skipped, and class_logprobs
  # turns an out-of-range label into a NaN loss instead of a silently wrong number.
  if not isinstance(labels, jax.core.Tracer) and np.size(labels):
    host = np.asarray(labels)
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(
          f"{fn}: labels must lie in [0, {num_classes}) for {num_classes} classes; "
          f"got values in [{lo}, {hi}]."
      )
  return jnp.asarray(labels)


def check_class_vector(v: Any, num_classes: int, name: str, fn: str, dtype: Any) -> jax.Array:
  """Validates a per-class vector of shape ``(C,)``."""
  if shape_of(v) != (num_classes,):
    raise ValueError(
        f"{fn}: {name} must have shape ({num_classes},), one entry per class; "
        f"got {shape_of(v)}."
    )
  return jnp.asarray(v).astype(dtype)


def check_counts(counts: Any, fn: str) -> jax.Array:
  """Returns per-class counts as a 1-D floating array (float32 unless already floating)."""
  arr = jnp.asarray(counts)
  if arr.ndim != 1 or arr.shape[0] == 0:
    raise ValueError(
        f"{fn}: counts must be a non-empty vector (num_classes,); got shape {arr.shape}."
    )
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    arr = arr.astype(jnp.float32)
  return arr


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
