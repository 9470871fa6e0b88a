"""A small Flax NNX MLP used functionally (``nnx.split`` / ``nnx.merge``).

The studies keep parameters as plain pytrees so that ``jax.vmap`` over
configurations and ``lax.scan`` over steps see ordinary arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

__all__ = ["MLP", "init_mlp"]


class MLP(nnx.Module):
  """ReLU MLP: ``sizes = (in, hidden..., out)``."""

  def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
    if len(sizes) < 2 or min(sizes) < 1:
      raise ValueError(f"MLP needs at least (in, out) sizes, each a positive int; got "
                       f"{tuple(sizes)}.")
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


Apply = Callable[[Any, jax.Array], jax.Array]


def init_mlp(sizes: Sequence[int], key: jax.Array) -> tuple[Any, Apply]:
  """Initialises an :class:`MLP` and returns ``(params, apply)``.

  ``params`` is a plain pytree (an ``nnx.State``); ``apply(params, x)`` merges
  it with the static graph definition. Works under ``jit`` and ``vmap`` (the
  key may be traced), so each configuration of a sweep gets its own init.
  """
  model = MLP(sizes, rngs=nnx.Rngs(params=key))
  graphdef, params = nnx.split(model, nnx.Param)

  def apply(p: Any, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, p)(x)

  return params, apply
