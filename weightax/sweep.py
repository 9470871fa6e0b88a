"""Grids of hyperparameters × seeds as one jitted, vmapped program.

A study is a pure ``train(hparams, key) -> metrics``. :func:`sweep` flattens the
cartesian product of the grid and the seeds into a batch of configurations,
runs ``jit(vmap(train))`` over it (in equal-sized chunks when the compiled
program would not fit the memory budget), and returns a :class:`SweepResult`.
Hyperparameters arrive in ``train`` as traced scalars, so passing them to an
``optax.inject_hyperparams`` optimizer means new grid values reuse the same
compiled program.

Scaling out: after ``jax.distributed.initialize()`` the configuration axis is
sharded over every process's devices and each process gets the full result.
Resuming: with ``checkpoint_dir=`` every finished chunk is stored atomically
and a rerun computes only what is missing; a :class:`Stepwise` run also
checkpoints its scan carry every ``segment_steps`` steps (orbax-checkpoint).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from weightax import _checkpoint as ckpt
from weightax.sweep_result import SweepResult

__all__ = ["sweep", "SweepResult", "Stepwise", "compile_count"]

# (kind, function, input avals, devices) -> (compiled program, sha256 of its lowered
# text, or None until a resumable sweep asks for it). A cache of our own (rather than
# jit's) lets us read the compiled program's memory analysis before running it, count
# how many programs a sweep needed, and fingerprint the program for resumable sweeps.
_COMPILED: dict[Any, tuple[Any, str | None]] = {}
_COMPILE_COUNT = 0
_CHUNKS_RUN = 0  # chunks computed (not loaded from a checkpoint) in this process; for tests
_SEGMENTS_RUN = 0  # Stepwise segments computed (not restored) in this process; for tests


def compile_count() -> int:
  """How many distinct programs :func:`sweep` has compiled in this process."""
  return _COMPILE_COUNT


@dataclasses.dataclass(frozen=True)
class Stepwise:
  """A training run split into ``init`` / ``step`` / ``finish``, for runs resumed mid-way.

  Calling it runs ``finish(scan(step, init(hparams, key), num_steps))``, the
  same run as an ordinary ``train(hparams, key) -> metrics``. Given to
  :func:`sweep` with ``segment_steps=S`` (and usually ``checkpoint_dir=``), the
  ``num_steps`` steps run as ``ceil(num_steps / S)`` compiled segments of ``S``
  steps, and the vmapped carry of the chunk is saved after every segment, so a
  killed sweep loses at most one segment of one chunk.

  Attributes:
    init: ``(hparams, key) -> carry``, a pytree of arrays (parameters, optimizer
      state, a PRNG key for later steps, a step counter, metric buffers, ...).
    step: ``(carry, hparams) -> carry``: one training step; the carry's
      structure, shapes and dtypes must not change.
    num_steps: total number of steps.
    finish: ``carry -> metrics``; None returns the carry itself. Record curves
      by writing into buffers kept in the carry (``buf.at[t].set(loss)``).

  Example:
    >>> import jax, jax.numpy as jnp, weightax as wx
    >>> run = wx.Stepwise(
    ...     init=lambda hp, key: {"w": jnp.ones(()), "t": jnp.zeros((), jnp.int32),
    ...                           "curve": jnp.zeros(4)},
    ...     step=lambda c, hp: {"w": c["w"] * (1 - hp["lr"]), "t": c["t"] + 1,
    ...                         "curve": c["curve"].at[c["t"]].set(c["w"])},
    ...     num_steps=4, finish=lambda c: {"final": c["w"], "curve": c["curve"]})
    >>> res = wx.sweep(run, {"lr": [0.5]}, segment_steps=3)   # segments of 3 + 1 steps
    >>> res.metrics["curve"][0].tolist()
    [1.0, 0.5, 0.25, 0.125]
  """

  init: Callable[[dict[str, jax.Array], jax.Array], Any]
  step: Callable[[Any, dict[str, jax.Array]], Any]
  num_steps: int
  finish: Callable[[Any], Any] | None = None

  def __post_init__(self):
    if not isinstance(self.num_steps, int | np.integer) or self.num_steps < 1:
      raise ValueError(f"Stepwise.num_steps must be a positive int; got {self.num_steps!r}.")

  def segment(self, carry: Any, hparams: dict[str, jax.Array], length: int) -> Any:
    """``length`` steps from ``carry`` as one ``lax.scan``."""
    return jax.lax.scan(lambda c, _: (self.step(c, hparams), None), carry, None,
                        length=length)[0]

  def done(self, carry: Any) -> Any:
    return carry if self.finish is None else self.finish(carry)

  def __call__(self, hparams: dict[str, jax.Array], key: jax.Array) -> Any:
    return self.done(self.segment(self.init(hparams, key), hparams, self.num_steps))


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
    bad = next((v for v in vals if np.asarray(v).dtype.kind not in "biuf"), vals[0])
    raise TypeError(
        f"Grid axis {name!r} holds a value {bad!r} (dtype {arr.dtype}) that is not a boolean, "
        "integer or real number; sweep values are traced arrays. Encode a choice as an "
        "integer index and select with jax.lax.switch inside train."
    )
  if arr.dtype.kind == "b":
    return arr
  kind = np.float32 if arr.dtype.kind == "f" else np.int32
  with np.errstate(over="ignore"):
    out = arr.astype(kind)
  # Values are traced as 32-bit arrays: refuse one that does not survive the cast rather
  # than hand train (and the exports) a wrapped integer, an infinity or a zero.
  if kind is np.int32:
    lost = out.astype(np.int64) != arr
  else:
    lost = (np.isinf(out) & np.isfinite(arr)) | ((out == 0) & (arr != 0))
  if np.any(lost):
    bad = arr[lost].flat[0]
    raise ValueError(
        f"Grid axis {name!r} holds {bad!r}, which does not fit in {np.dtype(kind).name} (sweep "
        f"values are traced as {np.dtype(kind).name}; it would become {out[lost].flat[0]!r})."
    )
  return out


def _is_int(x: Any) -> bool:
  return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def _seeds(seeds: int | Sequence[int]) -> np.ndarray:
  if _is_int(seeds):
    if seeds < 1:
      raise ValueError(f"seeds must be a positive count or a list of seeds; got {seeds}.")
    return np.arange(int(seeds))
  if not isinstance(seeds, Iterable) or isinstance(seeds, str | bytes):
    raise TypeError(
        f"seeds must be a count (an int) or a list of int seeds; got {type(seeds).__name__} "
        f"{seeds!r}.")
  seeds = list(seeds)
  arr = np.asarray(seeds)
  if arr.size == 0 or arr.ndim != 1 or not all(_is_int(s) for s in seeds):
    raise ValueError(f"seeds must be a positive count or a non-empty list of ints; got {seeds!r}.")
  if len(np.unique(arr)) != len(arr):
    dup = sorted({int(s) for s in arr if np.sum(arr == s) > 1})
    raise ValueError(f"seeds lists {dup} more than once; each seed would rerun the same "
                     "configurations with the same random numbers.")
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


def _spec(x: Any, n: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((n,) + tuple(x.shape[1:]), x.dtype)


def _compile(kind: str, fn: Callable, key: Any, args: tuple, devices: list,
             fingerprint: bool) -> tuple[Any, str | None]:
  """Compiles (or fetches) ``jit(fn)`` for abstract ``args``.

  Returns the compiled program and, when ``fingerprint``, the SHA-256 of its lowered
  text (only then: the text spells out constants captured by ``train``, e.g. a whole
  dataset, so it is worth making only for a resumable sweep).
  """
  global _COMPILE_COUNT
  avals = jax.tree.map(lambda s: (s.shape, str(s.dtype)), args)
  cache_key = (kind, key, str(jax.tree.structure(args)), str(avals), tuple(devices),
               _trace_config())
  shardings = _sharding(devices)
  lower = lambda: jax.jit(fn, in_shardings=shardings, out_shardings=shardings).lower(*args)
  if cache_key in _COMPILED:
    compiled, digest = _COMPILED[cache_key]
    if fingerprint and digest is None:  # traced again, not compiled again
      _COMPILED[cache_key] = compiled, ckpt.sha256(lower().as_text())
    return _COMPILED[cache_key]
  lowered = lower()
  entry = (lowered.compile(), ckpt.sha256(lowered.as_text()) if fingerprint else None)
  _COMPILE_COUNT += 1
  _COMPILED[cache_key] = entry
  return entry


def _programs(train: Callable | Stepwise, hp: dict[str, np.ndarray], n: int, devices: list,
              segment_steps: int | None, fingerprint: bool) -> dict[str, tuple[Any, str | None]]:
  """The compiled programs a chunk of ``n`` configurations needs, by role."""
  spec_hp = {k: _spec(v, n) for k, v in hp.items()}
  spec_seed = jax.ShapeDtypeStruct((n,), jnp.uint32)
  if segment_steps is None:  # one program: the whole run
    run = jax.vmap(lambda h, s: train(h, jax.random.key(s)))
    return {"run": _compile("run", run, train, (spec_hp, spec_seed), devices, fingerprint)}
  init = jax.vmap(lambda h, s: train.init(h, jax.random.key(s)))
  progs = {"init": _compile("init", init, train, (spec_hp, spec_seed), devices,
                                fingerprint)}
  carry = progs["init"][0].out_info
  carry = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), carry)
  lengths = {min(segment_steps, train.num_steps), train.num_steps % segment_steps}
  for length in sorted(x for x in lengths if x):
    seg = jax.vmap(lambda c, h, length=length: train.segment(c, h, length))
    progs[f"segment{length}"] = _compile(f"segment{length}", seg, train, (carry, spec_hp),
                                         devices, fingerprint)
  progs["finish"] = _compile("finish", jax.vmap(train.done), train, (carry,), devices,
                              fingerprint)
  return progs


def _bytes(progs: dict[str, tuple[Any, str | None]]) -> int | None:
  used = [_budget_bytes(c) for c, _ in progs.values()]
  return None if any(u is None for u in used) else max(used)


def _trace_config() -> Any:
  """The JAX settings a trace depends on, as ``jax.jit`` keys its own cache by.

  Without them a program compiled before ``jax.config.update(...)`` (e.g. of
  ``jax_default_matmul_precision`` or ``jax_default_prng_impl``) would be reused after it.
  """
  public = tuple(getattr(jax.config, n, None) for n in (
      "jax_default_matmul_precision", "jax_default_prng_impl", "jax_enable_x64",
      "jax_numpy_dtype_promotion", "jax_threefry_partitionable"))
  try:  # jit's own key; it leaves out the PRNG implementation, which the keys made here use
    from jax._src.config import trace_context
    return public, trace_context()
  except (ImportError, AttributeError):  # a JAX without it: the settings that change numbers
    return public


def _sharding(devices: list) -> NamedSharding | SingleDeviceSharding:
  """The configuration axis split over ``devices``, or the one device asked for."""
  if len(devices) == 1 and jax.process_count() == 1:
    return SingleDeviceSharding(devices[0])
  return NamedSharding(Mesh(np.asarray(devices), ("config",)), PartitionSpec("config"))


def _put_args(sharding: NamedSharding | None, *args: Any) -> tuple:
  """Host inputs as global arrays when several processes share the program."""
  if jax.process_count() == 1:
    return args
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.Array) else
      jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), args)


def _run_segments(train: Stepwise, progs: dict, hp: dict, seeds: np.ndarray,
                  segment_steps: int, directory: Path | None, c: int,
                  sharding: NamedSharding | None) -> Any:
  """One chunk of a Stepwise run: init, the segments (resuming from a saved carry), finish."""
  global _SEGMENTS_RUN
  lengths = [segment_steps] * (train.num_steps // segment_steps)
  if train.num_steps % segment_steps:
    lengths.append(train.num_steps % segment_steps)
  manager, start, carry = None, 0, None
  if directory is not None and len(lengths) > 1:
    ocp = _orbax()
    manager = ocp.CheckpointManager(
        ckpt.carry_path(directory, c).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             cleanup_tmp_directories=True))
    latest = manager.latest_step()
    if latest is not None:
      abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding),
                              progs["init"][0].out_info)
      carry = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
      start = int(latest)
  if carry is None:
    init = progs["init"][0]
    carry = init(*_put_args(sharding, hp, seeds))
  try:
    for s in range(start, len(lengths)):
      seg = progs[f"segment{lengths[s]}"][0]
      carry = seg(*_put_args(sharding, carry, hp))
      _SEGMENTS_RUN += 1
      if manager is not None and s + 1 < len(lengths):
        manager.save(s + 1, args=_orbax().args.StandardSave(carry))
        manager.wait_until_finished()  # durable before the next segment starts
  finally:
    if manager is not None:
      manager.close()
  return progs["finish"][0](carry)


def _fetch(x: jax.Array) -> np.ndarray:
  """The whole array on this host (gathered from every process's shards when needed)."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _broadcast(x: np.ndarray) -> np.ndarray:
  """Process 0's ``x`` on every process (same shape and dtype everywhere)."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(x))


def _broadcast_text(text: str) -> str:
  if jax.process_count() == 1:
    return text
  data = np.frombuffer(text.encode(), np.uint8)
  size = int(_broadcast(np.asarray(data.size, np.int32)))
  buf = np.zeros(size, np.uint8)
  buf[: min(size, data.size)] = data[:size]
  return _broadcast(buf).tobytes().decode()


def _orbax() -> Any:
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:
    raise ImportError(
        "Checkpointing a Stepwise sweep's carry needs orbax-checkpoint: "
        "pip install 'weightax[checkpoint]' (or pip install orbax-checkpoint)."
    ) from e
  return ocp


def sweep(
    train: Callable[[dict[str, jax.Array], jax.Array], Any] | Stepwise,
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int | Sequence[int] = 1,
    chunk_size: int | None = None,
    memory_budget: float = 4e9,
    progress: bool | None = None,
    devices: Sequence[Any] | None = None,
    desc: str = "sweep",
    checkpoint_dir: str | Path | None = None,
    segment_steps: int | None = None,
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
  configuration axis is sharded across them, the chunk size rounded up to a
  multiple of their number.

  **Several processes.** After ``jax.distributed.initialize()`` (one process
  per host or per GPU, e.g. under SLURM), call ``sweep`` identically in every
  process: the configuration axis is sharded over the global mesh of all
  processes' devices (``jax.devices()``), each process computes only the
  configurations on its own devices, and the metrics are gathered so that
  **every process returns the full result**. ``train`` needs no change.

  **Resuming.** With ``checkpoint_dir``, each finished chunk's metrics are
  written atomically under it (temporary file, ``fsync``, ``os.replace``), next
  to a manifest fingerprinting the sweep: the grid's values, the seeds, the
  chunk size, the devices and a SHA-256 of the lowered programs' text. Rerunning
  the same call after a crash or ``kill -9`` loads the finished chunks, computes
  only the others and returns results bitwise identical to an uninterrupted run
  (the same compiled program on the same inputs). A call that differs in any
  of these is refused with a ValueError naming what differs. Under several
  processes, ``checkpoint_dir`` must be on a filesystem they share; process 0
  writes the chunks.

  **Segments.** A :class:`Stepwise` ``train`` with ``segment_steps=S`` runs its
  steps ``S`` at a time; with ``checkpoint_dir`` the vmapped carry of the
  running chunk is saved after each segment with orbax-checkpoint
  (``pip install 'weightax[checkpoint]'``), so a resumed run restarts the
  chunk from its last finished segment.

  Args:
    train: pure ``(hparams, key) -> metrics``, a pytree of arrays; typically a
      ``lax.scan`` training run (see :func:`weightax.train.fit`); or a
      :class:`Stepwise` run.
    grid: ``{name: values}``; numeric values of equal shape on each axis.
    seeds: a count (seeds ``0..n-1``) or a list of integer seeds.
    chunk_size: configurations per program; None chooses from ``memory_budget``.
    memory_budget: bytes one chunk may use when ``chunk_size`` is None.
    progress: show a tqdm bar counting configurations done, with an ETA
      (default: when there are several chunks). A resumed sweep's bar starts at
      the configurations already done.
    devices: devices to shard configurations over (default: ``jax.devices()``,
      all devices of all processes).
    desc: label of the progress bar.
    checkpoint_dir: directory to persist finished chunks in and resume from.
    segment_steps: steps per compiled segment of a :class:`Stepwise` ``train``
      (None: one program for the whole run).

  Returns:
    A :class:`SweepResult` with per-configuration coordinates and metrics.

  Raises:
    ValueError: on a bad grid, or when ``checkpoint_dir`` holds a different sweep.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> train = lambda hp, key: {"loss": hp["lr"] * jnp.arange(3.0)}
    >>> res = wx.sweep(train, {"lr": [0.1, 1.0]}, seeds=2)
    >>> res.metrics["loss"].shape
    (4, 3)
  """
  global _CHUNKS_RUN
  if not isinstance(grid, Mapping):
    raise TypeError(f"grid must be a mapping {{name: values}}; got {type(grid).__name__}.")
  if "seed" in grid:
    raise ValueError("'seed' is reserved for the seeds axis; pass seeds=... instead.")
  if segment_steps is not None:
    if not isinstance(train, Stepwise):
      raise TypeError(
          "segment_steps needs train=wx.Stepwise(init, step, num_steps, finish) so that the "
          f"run can be cut into segments; got {type(train).__name__}."
      )
    if not isinstance(segment_steps, int | np.integer) or segment_steps < 1:
      raise ValueError(f"segment_steps must be a positive int; got {segment_steps!r}.")
    segment_steps = int(segment_steps)
  axes = {name: _axis_values(name, vals) for name, vals in grid.items()}
  seed_arr = _seeds(seeds)
  axes_all = {**axes, "seed": seed_arr}
  shape = tuple(len(v) for v in axes_all.values())
  index = np.array(list(itertools.product(*(range(s) for s in shape))), np.int64)
  index = index.reshape(-1, len(shape))
  n = index.shape[0]
  coords = {name: vals[index[:, i]] for i, (name, vals) in enumerate(axes_all.items())}
  hp = {name: coords[name] for name in axes}
  # Keys are made inside the program from uint32 seeds (the same keys as
  # jax.random.key(seed) outside), so inputs are plain arrays every process can shard.
  seed_u32 = np.asarray(coords["seed"]).astype(np.uint32)

  devices = list(jax.devices() if devices is None else devices)
  nd = len(devices)
  round_up = lambda m: max(nd, int(math.ceil(m / nd)) * nd)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be positive; got {chunk_size}.")
  size = round_up(min(n, chunk_size) if chunk_size else n)
  fingerprint = checkpoint_dir is not None
  progs = _programs(train, hp, size, devices, segment_steps, fingerprint)
  if chunk_size is None:
    used = _bytes(progs)
    if used is not None and used > memory_budget and size > nd:
      size = round_up(max(1, int(size * memory_budget / used)))
      # Every process must run the same chunks; process 0's choice is everyone's.
      size = int(_broadcast(np.asarray(size, np.int64)))
      progs = _programs(train, hp, size, devices, segment_steps, fingerprint)

  n_chunks = int(math.ceil(n / size))
  keeps = [min(size, n - c * size) for c in range(n_chunks)]
  last = progs["finish" if segment_steps else "run"][0]
  treedef = last.out_tree
  done = np.zeros(n_chunks, bool)
  directory = None if checkpoint_dir is None else Path(checkpoint_dir)
  if directory is not None:
    manifest = {
        "version": ckpt.VERSION,
        "kind": "stepwise" if segment_steps else "train",
        "grid": {k: ckpt.axis_record(v) for k, v in axes.items()},
        "seeds": [int(s) for s in seed_arr],
        "chunk_size": size,
        "n_configs": n,
        "num_steps": int(train.num_steps) if segment_steps else None,
        "segment_steps": segment_steps,
        "devices": f"{nd} {devices[0].platform}",
        "program": ckpt.sha256("\n".join(f"{k}:{h}" for k, (_, h) in sorted(progs.items()))),
    }
    problem = ""
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
      ckpt.clean_temporaries(directory)
      try:
        stored = ckpt.read_manifest(directory)
      except ValueError as e:  # raised below, after the other processes hear of it
        stored, problem = None, str(e)
      stray = ckpt.stray_results(directory) if stored is None and not problem else []
      if stray:
        problem = (
            f"checkpoint_dir {str(directory)!r} holds results ({', '.join(stray[:3])}"
            f"{', ...' if len(stray) > 3 else ''}) but no {ckpt.MANIFEST}, so nothing says "
            "which sweep they belong to; refusing to mix them. Pass a new (or emptied) "
            "checkpoint_dir."
        )
      elif stored is None and not problem:
        ckpt.write_manifest(directory, manifest)
      elif not problem:
        diffs = ckpt.differences(stored, manifest)
        if diffs:
          problem = (
              f"checkpoint_dir {str(directory)!r} holds a different sweep, so its results "
              "cannot be reused; refusing to mix them. What differs: " + "; ".join(diffs)
              + ". Rerun the original call, or pass a new (or emptied) checkpoint_dir."
          )
      if not problem:
        done = ckpt.done_chunks(directory, n_chunks)
        for c in np.flatnonzero(done):  # left by a crash between a chunk's save and cleanup
          ckpt.remove_carry(directory, int(c))
    problem = _broadcast_text(problem)
    if problem:
      raise ValueError(problem)
    done = _broadcast(done)

  outs: list[Any] = [None] * n_chunks
  for c in np.flatnonzero(done):
    leaves = ckpt.load_chunk(directory, int(c))
    if len(leaves) != treedef.num_leaves:
      raise ValueError(
          f"{ckpt.chunk_path(directory, int(c))} holds {len(leaves)} metric arrays; train "
          f"returns {treedef.num_leaves}. The directory was written by another program."
      )
    outs[c] = leaves

  show = progress if progress is not None else n_chunks > 1
  bar = None
  if show and jax.process_index() == 0:
    try:
      from tqdm.auto import tqdm

      bar = tqdm(total=n, initial=sum(k for k, d in zip(keeps, done, strict=True) if d),
                 unit="config", file=sys.stderr,
                 desc=f"{desc} ({n_chunks} chunks of {size})")
    except ImportError:  # progress is optional
      pass
  try:
    for c in range(n_chunks):
      if done[c]:
        continue
      idx = np.arange(c * size, (c + 1) * size) % n  # pad by wrapping around
      hp_c = {k: v[idx] for k, v in hp.items()}
      if segment_steps is None:
        prog = progs["run"][0]
        out = prog(*_put_args(_sharding(devices), hp_c, seed_u32[idx]))
      else:
        out = _run_segments(train, progs, hp_c, seed_u32[idx], segment_steps, directory, c,
                            _sharding(devices))
      leaves = [_fetch(x)[: keeps[c]] for x in jax.tree.leaves(out)]
      if directory is not None and jax.process_index() == 0:
        ckpt.save_chunk(directory, c, leaves)
        if segment_steps is not None:
          ckpt.remove_carry(directory, c)
      outs[c] = leaves
      _CHUNKS_RUN += 1
      if bar is not None:
        bar.update(keeps[c])
  finally:
    if bar is not None:
      bar.close()
  flat = [np.concatenate(xs, axis=0) for xs in zip(*outs, strict=True)]
  metrics = jax.tree.unflatten(treedef, flat)
  return SweepResult(axes=axes_all, coords=coords, metrics=metrics, shape=shape)
