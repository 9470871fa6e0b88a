"""The result of :func:`weightax.sweep`: coordinates, curves, finals, exports."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["SweepResult"]


def _flat(metrics: Any) -> dict[str, np.ndarray]:
  """``{"a/b": array}`` from a nested pytree of metrics."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(metrics)[0]:
    name = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
    out[name or "value"] = np.asarray(leaf)
  return out


def _item(x: Any) -> Any:
  """A Python scalar; float32 values keep their 7 significant digits (no 0.1000000015)."""
  if isinstance(x, np.floating) and x.dtype.itemsize <= 4:
    return float(f"{x:.7g}")
  return x.item()


def _py(x: Any) -> Any:
  x = np.asarray(x)
  if x.dtype.kind == "f":
    # JSON has no NaN/inf: write them as null rather than invalid JSON.
    return np.where(np.isfinite(x), x, None).tolist() if x.ndim else (
        float(x) if np.isfinite(x) else None)
  return x.tolist()


@dataclasses.dataclass
class SweepResult:
  """Metrics of every configuration of a sweep.

  Attributes:
    axes: ``{name: values}`` of every grid axis, ``seed`` last.
    coords: ``{name: [N]}`` the value of each axis for each flattened configuration.
    metrics: the pytree ``train`` returned, every leaf with a leading axis N.
    shape: the grid shape ``(len(axis) for axis in axes)``; ``prod(shape) == N``.
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
    """One dict per configuration: coordinates and every scalar metric."""
    flat = {k: v for k, v in self.flat_metrics.items() if v.ndim == 1}
    rows = []
    for i in range(len(self)):
      row = {k: _item(v[i]) for k, v in self.coords.items() if v.ndim == 1}
      row.update({k: _item(v[i]) for k, v in flat.items()})
      rows.append(row)
    return rows

  def to_csv(self, path: str | Path) -> Path:
    """Writes one row per configuration (coordinates + scalar metrics)."""
    rows = self.records()
    path = Path(path)
    with path.open("w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
    return path

  def curves_to_csv(self, path: str | Path, names: list[str] | None = None) -> Path:
    """Writes per-step metrics in long form: coordinates, ``step``, one column per curve."""
    flat = {k: v for k, v in self.flat_metrics.items() if v.ndim == 2}
    names = sorted(flat) if names is None else names
    if not names:
      raise ValueError("There are no per-step (1-D per configuration) metrics to write.")
    lengths = {flat[k].shape[1] for k in names}
    if len(lengths) != 1:
      raise ValueError(f"Curves {names} have different lengths {lengths}; write them separately.")
    path = Path(path)
    scalar_coords = {k: v for k, v in self.coords.items() if v.ndim == 1}
    with path.open("w", newline="") as f:
      w = csv.writer(f)
      w.writerow([*scalar_coords, "step", *names])
      (length,) = lengths
      for i in range(len(self)):
        c = [_item(v[i]) for v in scalar_coords.values()]
        for t in range(length):
          w.writerow([*c, t, *(_item(flat[k][i, t]) for k in names)])
    return path

  def to_json(self, path: str | Path | None = None) -> dict[str, Any]:
    """The whole result as JSON-ready data (written to ``path`` when given)."""
    data = {
        "axes": {k: _py(v) for k, v in self.axes.items()},
        "shape": list(self.shape),
        "coords": {k: _py(v) for k, v in self.coords.items()},
        "metrics": {k: _py(v) for k, v in self.flat_metrics.items()},
    }
    if path is not None:
      Path(path).write_text(json.dumps(data))
    return data
