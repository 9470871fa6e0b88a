"""A small hard-parameter-sharing CNN in Flax NNX, used functionally (``nnx.split``/``nnx.merge``).

One convolutional trunk shared by every task and one linear head per task
(Caruana 1997's hard parameter sharing, the architecture of the MultiMNIST
experiments of Sener & Koltun 2018). The parameters are a plain dict
``{"trunk": nnx.State, "heads": nnx.State}``, so that ``{"trunk": True,
"heads": False}`` is a prefix mask of the shared leaves for
:func:`weightax.mtl.fit` and ``jax.vmap`` over configurations sees ordinary
arrays.

The 3×3 convolutions are written as patch extraction (nine slices of the
padded input) followed by a matrix product: under ``vmap`` over
configurations and over the K tasks of a Jacobian this is a batched matrix
product, several times faster on CPU than the grouped convolutions that
batching ``lax.conv`` produces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ConvTrunk", "Heads", "patches3x3", "init_hard_sharing_cnn"]


def patches3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """The 3×3 neighbourhoods of every ``stride``-th pixel, with one pixel of zero padding.

  Args:
    x: ``[n, h, w, c]``.
    stride: 1 or more; the output is ``ceil(h / stride) × ceil(w / stride)``.

  Returns:
    ``[n, ceil(h/stride), ceil(w/stride), 9 c]``, ordered (row offset,
    column offset, channel), so ``patches3x3(x, s) @ k.reshape(9 c, out)`` equals
    ``lax.conv_general_dilated(x, k, (s, s), ((1, 1), (1, 1)))`` in NHWC/HWIO
    layout (for ``s = 1``, ``"SAME"`` padding).

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> patches3x3(x)[0, 1, 1].tolist()  # the 3×3 block around (1, 1)
    [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0]
  """
  if jnp.ndim(x) != 4:
    raise ValueError(f"patches3x3 expects images [n, h, w, c]; got shape {jnp.shape(x)}.")
  if not isinstance(stride, int) or stride < 1:
    raise ValueError(f"patches3x3: stride must be a positive int; got {stride!r}.")
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = [xp[:, i:i + h:stride, j:j + w:stride, :] for i in range(3) for j in range(3)]
  return jnp.concatenate(cols, axis=-1)


class ConvTrunk(nnx.Module):
  """conv3×3(c1) → ReLU → 2×2 max-pool → conv3×3 stride 2 (c2) → ReLU → dense → ReLU.

  Input ``[n, s, s]`` (one channel, ``s`` divisible by 2), output ``[n, features]``.
  """

  def __init__(self, size: int, *, channels: tuple[int, int] = (16, 32), features: int = 64,
               rngs: nnx.Rngs):
    if not isinstance(size, int) or size < 2 or size % 2:
      raise ValueError(f"ConvTrunk needs an even image side >= 2 (for the 2×2 pool); got "
                       f"{size!r}.")
    if min(*channels, features) < 1:
      raise ValueError(f"ConvTrunk needs positive channels and features; got {channels}, "
                       f"{features}.")
    c1, c2 = channels
    self.size = size
    self.channels = (c1, c2)
    self.conv1 = nnx.Linear(9, c1, rngs=rngs)
    self.conv2 = nnx.Linear(9 * c1, c2, rngs=rngs)
    side = -(-(size // 2) // 2)  # after the pool and the stride-2 convolution
    self.dense = nnx.Linear(side * side * c2, features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if jnp.shape(x)[1:] != (self.size, self.size):
      raise ValueError(
          f"ConvTrunk expects one-channel images [n, {self.size}, {self.size}]; got shape "
          f"{jnp.shape(x)} (drop a trailing channel axis of 1 with x[..., 0]).")
    n, s, _ = x.shape
    c1, _ = self.channels
    h = jax.nn.relu(self.conv1(patches3x3(x[..., None])))
    h = h.reshape(n, s // 2, 2, s // 2, 2, c1).max(axis=(2, 4))
    h = jax.nn.relu(self.conv2(patches3x3(h, stride=2)))
    return jax.nn.relu(self.dense(h.reshape(n, -1)))


class Heads(nnx.Module):
  """One linear head per task: ``features -> out_sizes[k]``."""

  def __init__(self, features: int, out_sizes: Sequence[int], *, rngs: nnx.Rngs):
    if not out_sizes:
      raise ValueError("Heads needs at least one task; got out_sizes=().")
    self.heads = nnx.List([nnx.Linear(features, o, rngs=rngs) for o in out_sizes])

  def __call__(self, z: jax.Array) -> list[jax.Array]:
    return [head(z) for head in self.heads]


Apply = Callable[[Any, jax.Array], list[jax.Array]]


def init_hard_sharing_cnn(
    key: jax.Array,
    *,
    size: int,
    out_sizes: Sequence[int],
    channels: tuple[int, int] = (16, 32),
    features: int = 64,
) -> tuple[dict[str, Any], Apply]:
  """Initialises a :class:`ConvTrunk` with one :class:`Heads` entry per task.

  Works under ``jit``/``vmap`` (the key may be traced), so every configuration
  of a :func:`weightax.sweep` gets its own initialisation.

  Args:
    key: PRNG key of the initialisation.
    size: side of the square input images.
    out_sizes: output size of each task's head (e.g. ``(10, 10, 1)``).
    channels: channels of the two convolutions.
    features: width of the shared representation.

  Returns:
    ``(params, apply)`` with ``params = {"trunk": State, "heads": State}`` and
    ``apply(params, x) -> [outputs of head k]`` for ``x`` of shape ``[n, size, size]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params, apply = init_hard_sharing_cnn(jax.random.key(0), size=12, out_sizes=(10, 1))
    >>> [o.shape for o in apply(params, jnp.zeros((5, 12, 12)))]
    [(5, 10), (5, 1)]
  """
  k_trunk, k_heads = jax.random.split(key)
  trunk = ConvTrunk(size, channels=channels, features=features, rngs=nnx.Rngs(params=k_trunk))
  heads = Heads(features, out_sizes, rngs=nnx.Rngs(params=k_heads))
  trunk_def, trunk_params = nnx.split(trunk, nnx.Param)
  heads_def, heads_params = nnx.split(heads, nnx.Param)

  def apply(p: dict[str, Any], x: jax.Array) -> list[jax.Array]:
    z = nnx.merge(trunk_def, p["trunk"])(x)
    return nnx.merge(heads_def, p["heads"])(z)

  return {"trunk": trunk_params, "heads": heads_params}, apply
