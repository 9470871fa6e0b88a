"""The result of :func:`weightax.sweep`: coordinates, curves, finals, exports.

Exports: :meth:`SweepResult.to_csv` (one row per configuration),
:meth:`SweepResult.curves_to_csv` (one row per configuration and step),
:meth:`SweepResult.to_json` (everything), and, with the optional ``xarray`` /
``pandas`` packages (``pip install weightax[frames]``),
:meth:`SweepResult.to_xarray` (a labelled ``Dataset`` whose dimensions are the
grid's axes and ``seed``) and :meth:`SweepResult.to_pandas` (a tidy
``DataFrame``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SweepResult"]


def _flat(metrics: Any) -> dict[str, np.ndarray]:
  """``{"a/b": array}`` from a nested pytree of metrics.

  Raises:
    ValueError: two leaves get the same name (a key ``"a/b"`` next to
      ``{"a": {"b": ...}}``), which would drop one of them from every export.
  """
  out: dict[str, np.ndarray] = {}
  paths: dict[str, str] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(metrics)[0]:
    name = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
    name = name or "value"
    if name in out:
      raise ValueError(
          f"Metric leaves {paths[name]} and {jax.tree_util.keystr(path)} are both named "
          f"{name!r}; every leaf needs a name of its own, so rename one of them."
      )
    out[name] = np.asarray(leaf)
    paths[name] = jax.tree_util.keystr(path)
  return out


def _is_float(dtype: Any) -> bool:
  return bool(jnp.issubdtype(dtype, jnp.floating))  # also bfloat16, unlike NumPy's own test


def _item(x: Any) -> Any:
  """A Python scalar written at the precision it has.

  A float narrower than float64 becomes the shortest decimal that reads back
  to the same value in its own dtype (NumPy's ``str``), so float32 ``0.01`` is
  written ``0.01``, not ``0.009999999776482582``; NaN and inf stay floats.
  """
  x = np.asarray(x)[()]
  if _is_float(x.dtype) and x.dtype.itemsize < 8:  # float32, float16, bfloat16
    return float(str(x))
  if isinstance(x, np.generic):
    return x.item()
  return x


def _py(x: Any) -> Any:
  """JSON-ready nested lists; floats at their own precision, NaN/inf as null (JSON has none)."""
  x = np.asarray(x)
  if _is_float(x.dtype):
    flat = [(_item(v) if np.isfinite(v) else None) for v in x.reshape(-1)]
    return np.asarray(flat, dtype=object).reshape(x.shape).tolist() if x.ndim else flat[0]
  if x.dtype.kind in "biu":
    return x.tolist()
  raise TypeError(f"Cannot write an array of dtype {x.dtype} as JSON.")


def _columns(name: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """``[(column, [N])]``: ``name`` for a scalar per configuration, ``name[i,j]`` per element."""
  if x.ndim == 1:
    return [(name, x)]
  flat = x.reshape(x.shape[0], -1)
  return [(f"{name}[{','.join(map(str, idx))}]", flat[:, j])
          for j, idx in enumerate(np.ndindex(*x.shape[1:]))]


def _check_unique(columns: list[str]) -> None:
  dup = {c for c in columns if columns.count(c) > 1}
  if dup:
    raise ValueError(
        f"Columns {sorted(dup)} would appear twice (a metric named like a grid axis?); "
        "rename the metric."
    )


def _import(module: str) -> Any:
  try:
    return __import__(module)
  except ImportError as e:
    raise ImportError(
        f"This export needs the optional package {module!r}: pip install 'weightax[frames]' "
        f"(or pip install {module})."
    ) from e


@dataclasses.dataclass
class SweepResult:
  """Metrics of every configuration of a sweep.

  Attributes:
    axes: ``{name: values}`` of every grid axis, ``seed`` last.
    coords: ``{name: [N]}`` the value of each axis for each flattened configuration.
    metrics: the pytree ``train`` returned, every leaf with a leading axis N.
    shape: the grid shape ``(len(axis) for axis in axes)``; ``prod(shape) == N``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> res = wx.sweep(lambda hp, k: {"loss": hp["lr"] * jnp.arange(3.0)}, {"lr": [0.1, 1.0]})
    >>> res.grid("loss").shape      # (lr, seed, step)
    (2, 1, 3)
    >>> res.records()[0]
    {'lr': 0.1, 'seed': 0}
  """

  axes: dict[str, np.ndarray]
  coords: dict[str, np.ndarray]
  metrics: Any
  shape: tuple[int, ...]

  def __len__(self) -> int:
    return int(np.prod(self.shape))

  @property
  def flat_metrics(self) -> dict[str, np.ndarray]:
    """Metrics as ``{"path/to/leaf": [N, ...]}``."""
    return _flat(self.metrics)

  def grid(self, name: str) -> np.ndarray:
    """Metric ``name`` reshaped to ``shape + metric_shape`` (axes in ``self.axes`` order)."""
    flat = self.flat_metrics
    if name not in flat:
      raise KeyError(f"No metric {name!r}; metrics are {sorted(flat)}.")
    x = flat[name]
    return x.reshape(self.shape + x.shape[1:])

  def records(self) -> list[dict[str, Any]]:
    """One dict per configuration: its coordinates and every scalar metric.

    An array-valued grid axis gives its value as a list.
    """
    flat = {k: v for k, v in self.flat_metrics.items() if v.ndim == 1}
    _check_unique([*self.coords, *flat])
    rows = []
    for i in range(len(self)):
      row = {k: (_item(v[i]) if v.ndim == 1 else _py(v[i])) for k, v in self.coords.items()}
      row.update({k: _item(v[i]) for k, v in flat.items()})
      rows.append(row)
    return rows

  def _table_coords(self) -> dict[str, np.ndarray]:
    """``{axis: [N]}``; an array-valued axis by its position on the axis (as in to_xarray)."""
    pos = np.unravel_index(np.arange(len(self)), self.shape)
    return {k: (self.coords[k] if v.ndim == 1 else pos[i])
            for i, (k, v) in enumerate(self.axes.items())}

  def to_csv(self, path: str | Path, *, max_columns: int = 16) -> Path:
    """Writes one row per configuration: its coordinates and metrics; returns ``path``.

    A scalar metric is one column; a metric with at most ``max_columns``
    values per configuration (a final loss per task ``[K]``, ...) is one
    column per value, ``name[i]`` (``name[i,j]`` for more axes); the same for
    array-valued grid axes. Larger metrics (curves) are not written: a warning
    names each one and points to :meth:`curves_to_csv` and :meth:`to_json`.

    Args:
      path: the CSV file to write.
      max_columns: the most columns one metric may take.

    Returns:
      ``path`` as a ``Path``.
    """
    cols: list[tuple[str, np.ndarray]] = []
    skipped = []
    for kind, items in (("axis", self.coords), ("metric", self.flat_metrics)):
      for name, x in items.items():
        if int(np.prod(x.shape[1:])) <= max_columns:
          cols.extend(_columns(name, x))
        else:
          skipped.append(f"{kind} {name!r} (shape {x.shape[1:]} per configuration)")
    _check_unique([c for c, _ in cols])
    if skipped:
      warnings.warn(
          f"to_csv wrote no column for {', '.join(skipped)}: more than max_columns="
          f"{max_columns} values per configuration. Write curves with curves_to_csv (one row "
          "per step), everything with to_json, or raise max_columns.",
          stacklevel=2,
      )
    path = Path(path)
    with path.open("w", newline="") as f:
      w = csv.writer(f)
      w.writerow([c for c, _ in cols])
      for i in range(len(self)):
        w.writerow([_item(v[i]) for _, v in cols])
    return path

  def curves_to_csv(self, path: str | Path, names: Sequence[str] | None = None) -> Path:
    """Writes per-step metrics in long form and returns ``path``.

    One row per configuration and step: the coordinates, ``step``, then one
    column per curve; a curve with values per step ``[steps, K]`` (task
    losses, task weights) gets one column per task, ``name[k]`` (``name[i,j]``
    for more axes). An array-valued grid axis is one column per value,
    ``axis[i]``, as in :meth:`to_csv`.

    Args:
      path: the CSV file to write.
      names: the curves to write (default: every metric with at least one
        axis per configuration); they must share their number of steps.

    Returns:
      ``path`` as a ``Path``.
    """
    flat = {k: v for k, v in self.flat_metrics.items() if v.ndim >= 2}
    if names is None:
      names = sorted(flat)
    else:
      missing = [n for n in names if n not in flat]
      if missing:
        raise KeyError(f"No curve {missing}; metrics with a step axis are {sorted(flat)}.")
    if not names:
      raise ValueError("There are no per-step metrics (an axis beyond the configuration) to write.")
    lengths = {k: flat[k].shape[1] for k in names}
    if len(set(lengths.values())) != 1:
      raise ValueError(
          f"Curves have different numbers of steps {lengths}; pass names= to write those of "
          "one length at a time."
      )
    (length,) = set(lengths.values())
    cols = []
    for k in names:
      x = flat[k]
      x = x.reshape(x.shape[0] * length, *x.shape[2:])  # (config, step) rows
      cols.extend(_columns(k, x))
    coord_cols = [c for k, v in self.coords.items() for c in _columns(k, v)]
    header = [*(c for c, _ in coord_cols), "step", *(c for c, _ in cols)]
    _check_unique(header)
    path = Path(path)
    with path.open("w", newline="") as f:
      w = csv.writer(f)
      w.writerow(header)
      for i in range(len(self)):
        c = [_item(v[i]) for _, v in coord_cols]
        for t in range(length):
          w.writerow([*c, t, *(_item(v[i * length + t]) for _, v in cols)])
    return path

  def to_dict(self) -> dict[str, Any]:
    """The whole result as JSON-ready data: axes, shape, coordinates, every metric."""
    return {
        "axes": {k: _py(v) for k, v in self.axes.items()},
        "shape": list(self.shape),
        "coords": {k: _py(v) for k, v in self.coords.items()},
        "metrics": {k: _py(v) for k, v in self.flat_metrics.items()},
    }

  def to_json(self, path: str | Path) -> Path:
    """Writes :meth:`to_dict` as JSON (NaN and inf as null) and returns ``path``."""
    path = Path(path)
    path.write_text(json.dumps(self.to_dict()))
    return path

  def _trailing_dims(self, dims: Mapping[str, Sequence[str]] | None) -> dict[str, tuple]:
    """The names of every metric's axes after the configuration axis (rule in :meth:`to_xarray`)."""
    flat = self.flat_metrics
    dims = dict(dims or {})
    unknown = sorted(set(dims) - set(flat))
    if unknown:
      raise KeyError(f"dims names unknown metrics {unknown}; metrics are {sorted(flat)}.")
    out = {}
    for k, names in dims.items():
      names = tuple(names)
      if len(names) != flat[k].ndim - 1:
        raise ValueError(
            f"dims[{k!r}] = {names} names {len(names)} axes; the metric has {flat[k].ndim - 1} "
            f"beyond the configuration (shape {flat[k].shape[1:]})."
        )
      out[k] = names
    firsts = [v.shape[1] for k, v in flat.items() if v.ndim >= 2 and k not in dims]
    steps = max(firsts, default=None)
    curves = {k: v for k, v in flat.items()
              if k not in dims and v.ndim >= 2 and v.shape[1] == steps}
    # The number of tasks: the size of an axis dims calls "task", else that of the second
    # axis of task_losses / task_weights, else the most common second-axis size (ties: first).
    pools = (
        [flat[k].shape[1 + i] for k, names in out.items() for i, d in enumerate(names)
         if d == "task"],
        [v.shape[2] for k, v in curves.items()
         if v.ndim >= 3 and k.rsplit("/", 1)[-1] in ("task_losses", "task_weights")],
        [v.shape[2] for v in curves.values() if v.ndim >= 3],
    )
    pool = next((p for p in pools if p), [])
    tasks = max(pool, key=pool.count, default=None)
    for k, v in flat.items():
      if k in dims:
        continue
      if k in curves:
        task = "task" if v.ndim >= 3 and v.shape[2] == tasks else f"{k}_dim1"
        names = ("step", task, *(f"{k}_dim{i}" for i in range(2, v.ndim - 1)))[: v.ndim - 1]
      else:
        names = tuple(f"{k}_dim{i}" for i in range(v.ndim - 1))
      out[k] = names
    return {k: out[k] for k in flat}

  def to_xarray(self, dims: Mapping[str, Sequence[str]] | None = None) -> Any:
    """The result as an ``xarray.Dataset`` labelled by the grid's axes and ``seed``.

    Every metric becomes a variable with dimensions ``(*axes, seed, ...)``,
    the grid axes carrying their values as coordinates. The axes after the
    configuration are named by ``dims`` where given; otherwise, in the metrics
    with the most steps (the longest first axis: per-step curves such as
    ``"task_losses"``), they are ``("step", "task")`` with ``step`` numbered
    from 0, and in any other metric ``<name>_dim0, <name>_dim1, ...``. A
    curve's second axis is called ``task`` only if its size is the number of
    tasks: the size of an axis ``dims`` names ``task``, else that of the
    second axis of the curves named ``task_losses`` or ``task_weights`` (at
    any depth of the metrics), else the size most curves' second axes share
    (on a tie, that of the first curve); another size is ``<name>_dim1``. An
    array-valued grid axis is indexed by position, its values kept in the
    coordinate ``<axis>_value``. Needs the optional ``xarray`` package.

    Args:
      dims: optional ``{metric: names of its axes after the configuration}``,
        e.g. ``{"eval": ("eval_step", "task")}``.

    Returns:
      An ``xarray.Dataset``; ``ds.sel(lr=0.1).mean("seed")`` averages seeds.
    """
    xr = _import("xarray")
    trailing = self._trailing_dims(dims)
    grid_dims = tuple(self.axes)
    coords: dict[str, Any] = {}
    for name, vals in self.axes.items():
      if vals.ndim == 1:
        coords[name] = vals
      else:
        coords[name] = np.arange(len(vals))
        coords[f"{name}_value"] = ((name, *(f"{name}_dim{i}" for i in range(1, vals.ndim))),
                                   vals)
    data_vars = {}
    for k, v in self.flat_metrics.items():
      data_vars[k] = (grid_dims + trailing[k], v.reshape(self.shape + v.shape[1:]))
      for d, n in zip(trailing[k], v.shape[1:], strict=True):
        if d == "step":
          coords.setdefault("step", np.arange(n))
    return xr.Dataset(data_vars, coords=coords)

  def to_pandas(self, name: str | None = None,
                dims: Sequence[str] | None = None) -> Any:
    """A tidy ``pandas.DataFrame``: one row per observation, one column per variable.

    Without ``name``: one row per configuration, with the grid coordinates
    and every scalar metric (an array-valued grid axis by its position on
    the axis, as in :meth:`to_xarray`). With ``name``: one row per
    configuration and element of that metric (one per configuration for a
    scalar metric), the coordinates, one column per axis of the metric (named
    as in :meth:`to_xarray`, e.g. ``step`` and ``task``, or by ``dims``) and
    the value in a column ``name``, ready for ``df.groupby(["step", "task"])``
    or a seaborn ``lineplot``. Needs the optional ``pandas`` package.

    Args:
      name: a metric, or None for the per-configuration table.
      dims: names of ``name``'s axes after the configuration.

    Returns:
      A ``pandas.DataFrame``.
    """
    pd = _import("pandas")
    flat = self.flat_metrics
    coords = self._table_coords()
    if name is None:
      scalars = {k: v for k, v in flat.items() if v.ndim == 1}
      _check_unique([*coords, *scalars])
      return pd.DataFrame({**coords, **scalars})
    if name not in flat:
      raise KeyError(f"No metric {name!r}; metrics are {sorted(flat)}.")
    x = flat[name]
    names = self._trailing_dims({name: dims} if dims is not None else None)[name]
    per = int(np.prod(x.shape[1:]))
    cols: dict[str, Any] = {k: np.repeat(v, per) for k, v in coords.items()}
    _check_unique([*cols, *names, name])
    idx = np.indices(x.shape[1:]).reshape(len(names), per)  # shape (0, 1) for a scalar metric
    for d, ix in zip(names, idx, strict=True):
      cols[d] = np.tile(ix, x.shape[0])
    cols[name] = x.reshape(-1)
    return pd.DataFrame(cols)
