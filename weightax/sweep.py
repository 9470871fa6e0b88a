"""Grids of hyperparameters × seeds as one jitted, vmapped program.

A study is a pure ``train(hparams, key) -> metrics``. :func:`sweep` flattens the
cartesian product of the grid and the seeds into a batch of configurations,
runs ``jit(vmap(train))`` over it (in equal-sized chunks when the compiled
program would not fit the memory budget), and returns a :class:`SweepResult`.
Hyperparameters arrive in ``train`` as traced scalars, so passing them to an
``optax.inject_hyperparams`` optimizer means new grid values reuse the same
compiled program.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from weightax.sweep_result import SweepResult

__all__ = ["sweep", "SweepResult", "compile_count"]

# (train, chunk size, input avals, devices) -> compiled program. A cache of our own
# (rather than jit's) lets us read the compiled program's memory analysis before
# running it and count how many programs a sweep needed.
_COMPILED: dict[Any, Any] = {}
_COMPILE_COUNT = 0


def compile_count() -> int:
  """How many distinct programs :func:`sweep` has compiled in this process."""
  return _COMPILE_COUNT


def _axis_values(name: str, values: Any) -> np.ndarray:
  if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray | jax.Array):
    raise TypeError(
        f"Grid axis {name!r} must be a sequence of numeric values; got {type(values).__name__} "
        f"{values!r}. Wrap a single value in a list: {{{name!r}: [{values!r}]}}."
    )
  vals = list(values)
  if not vals:
    raise ValueError(f"Grid axis {name!r} is empty; every axis needs at least one value.")
  shapes = {np.shape(v) for v in vals}
  if len(shapes) > 1:
    raise ValueError(
        f"Grid axis {name!r} is ragged: its values have different shapes {sorted(shapes)}; "
        "every value on one axis must have the same shape."
    )
  arr = np.asarray(vals)
  if arr.dtype.kind not in "biuf":
    bad = next(v for v in vals if not np.issubdtype(np.asarray(v).dtype, np.number))
    raise TypeError(
        f"Grid axis {name!r} holds a non-numeric value {bad!r} (dtype {arr.dtype}); sweep "
        "values are traced arrays. Encode a choice as an integer index and select with "
        "jax.lax.switch inside train."
    )
  if arr.dtype.kind == "f":
    arr = arr.astype(np.float32)
  elif arr.dtype.kind in "iu":
    arr = arr.astype(np.int32)
  return arr


def _seeds(seeds: int | Sequence[int]) -> np.ndarray:
  if isinstance(seeds, int | np.integer):
    if seeds < 1:
      raise ValueError(f"seeds must be a positive count or a list of seeds; got {seeds}.")
    return np.arange(int(seeds))
  arr = np.asarray(list(seeds))
  if arr.size == 0 or arr.ndim != 1 or arr.dtype.kind not in "iu":
    raise ValueError(f"seeds must be a positive count or a non-empty list of ints; got {seeds!r}.")
  return arr


def _budget_bytes(compiled: Any) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend reports memory
    return None
  if m is None:
    return None
  fields = ("temp_size_in_bytes", "output_size_in_bytes", "argument_size_in_bytes")
  return int(sum(getattr(m, f, 0) or 0 for f in fields))


def _program(train: Callable, hp: dict[str, np.ndarray], keys: jax.Array, n: int, devices: Any):
  """Compiles (or fetches) ``jit(vmap(train))`` for a chunk of ``n`` configurations."""
  global _COMPILE_COUNT
  avals = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(hp.items()))
  cache_key = (train, n, avals, tuple(devices))
  if cache_key in _COMPILED:
    return _COMPILED[cache_key]
  shardings = None
  if len(devices) > 1:
    mesh = Mesh(np.asarray(devices), ("config",))
    shardings = NamedSharding(mesh, PartitionSpec("config"))
  fn = jax.jit(jax.vmap(train), in_shardings=shardings, out_shardings=shardings)
  spec_hp = {k: jax.ShapeDtypeStruct((n,) + v.shape[1:], v.dtype) for k, v in hp.items()}
  spec_keys = jax.ShapeDtypeStruct((n,) + keys.shape[1:], keys.dtype)
  compiled = fn.lower(spec_hp, spec_keys).compile()
  _COMPILE_COUNT += 1
  _COMPILED[cache_key] = compiled
  return compiled


def sweep(
    train: Callable[[dict[str, jax.Array], jax.Array], Any],
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int | Sequence[int] = 1,
    chunk_size: int | None = None,
    memory_budget: float = 4e9,
    progress: bool | None = None,
    devices: Sequence[Any] | None = None,
    desc: str = "sweep",
) -> SweepResult:
  """Runs ``train`` over the cartesian product of ``grid`` and ``seeds`` as one program.

  Configuration ``i`` gets ``hparams = {name: value_i}`` (traced scalars, or
  arrays for array-valued axes) and ``key = jax.random.key(seed_i)``, so every
  configuration with the same seed shares its random numbers (initialisation,
  batches): differences between configurations are due to the hyperparameters.

  The whole batch is compiled once as ``jit(vmap(train))``. When the compiled
  program's memory (temporaries + inputs + outputs, from XLA's memory analysis)
  exceeds ``memory_budget``, the batch is split into equal chunks (the last is
  padded by repeating configurations, and the padding dropped), so a grid of
  any size needs one program per chunk size. With several devices the
  configuration axis is sharded across them.

  Args:
    train: pure ``(hparams, key) -> metrics``, a pytree of arrays; typically a
      ``lax.scan`` training run (see :func:`weightax.train.fit`).
    grid: ``{name: values}``; numeric values of equal shape on each axis.
    seeds: a count (seeds ``0..n-1``) or a list of integer seeds.
    chunk_size: configurations per program; None chooses from ``memory_budget``.
    memory_budget: bytes one chunk may use when ``chunk_size`` is None.
    progress: show a tqdm bar over chunks (default: when there are several).
    devices: devices to shard configurations over (default: all local devices).
    desc: label of the progress bar.

  Returns:
    A :class:`SweepResult` with per-configuration coordinates and metrics.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> train = lambda hp, key: {"loss": hp["lr"] * jnp.arange(3.0)}
    >>> res = wx.sweep(train, {"lr": [0.1, 1.0]}, seeds=2)
    >>> res.metrics["loss"].shape
    (4, 3)
  """
  if not isinstance(grid, Mapping):
    raise TypeError(f"grid must be a mapping {{name: values}}; got {type(grid).__name__}.")
  if "seed" in grid:
    raise ValueError("'seed' is reserved for the seeds axis; pass seeds=... instead.")
  axes = {name: _axis_values(name, vals) for name, vals in grid.items()}
  seed_arr = _seeds(seeds)
  axes_all = {**axes, "seed": seed_arr}
  shape = tuple(len(v) for v in axes_all.values())
  index = np.array(list(itertools.product(*(range(s) for s in shape))), np.int64)
  index = index.reshape(-1, len(shape))
  n = index.shape[0]
  coords = {name: vals[index[:, i]] for i, (name, vals) in enumerate(axes_all.items())}
  hp = {name: coords[name] for name in axes}
  keys = jax.vmap(jax.random.key)(jnp.asarray(coords["seed"], jnp.uint32))

  devices = list(jax.local_devices() if devices is None else devices)
  nd = len(devices)
  round_up = lambda m: max(nd, int(math.ceil(m / nd)) * nd)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be positive; got {chunk_size}.")
  size = round_up(min(n, chunk_size) if chunk_size else n)
  compiled = _program(train, hp, keys, size, devices)
  if chunk_size is None:
    used = _budget_bytes(compiled)
    if used is not None and used > memory_budget and size > nd:
      size = round_up(max(1, int(size * memory_budget / used)))
      compiled = _program(train, hp, keys, size, devices)

  n_chunks = int(math.ceil(n / size))
  show = progress if progress is not None else n_chunks > 1
  chunks = range(n_chunks)
  if show:
    try:
      from tqdm.auto import tqdm

      chunks = tqdm(chunks, desc=f"{desc} ({n} configs, {n_chunks} chunks of {size})",
                    file=sys.stderr)
    except ImportError:  # progress is optional
      pass
  outs = []
  for c in chunks:
    idx = np.arange(c * size, (c + 1) * size) % n  # pad by wrapping around
    out = compiled({k: v[idx] for k, v in hp.items()}, keys[idx])
    keep = min(size, n - c * size)
    outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[:keep], out))
  metrics = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)
  return SweepResult(axes=axes_all, coords=coords, metrics=metrics, shape=shape)
