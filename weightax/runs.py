"""Run directories for experiments: ``runs/<study>/<timestamp>/``, never overwritten."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["new_run_dir", "write_json"]


def new_run_dir(study: str, out: str | Path | None = None, *, root: str | Path = "runs") -> Path:
  """Creates and returns a fresh directory for one run of ``study``.

  With ``out`` given, that directory is used and must be empty or absent (so an
  earlier run is never overwritten); otherwise ``root/study/<UTC timestamp>``
  with a numeric suffix if two runs start in the same second.
  """
  if out is not None:
    path = Path(out)
    if path.exists() and any(path.iterdir()):
      raise FileExistsError(
          f"--out {path} already holds files; choose a new directory so no earlier run is "
          "overwritten."
      )
    path.mkdir(parents=True, exist_ok=True)
    return path
  stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
  base = Path(root) / study
  for i in range(1000):
    path = base / (stamp if i == 0 else f"{stamp}-{i}")
    try:
      path.mkdir(parents=True, exist_ok=False)
      return path
    except FileExistsError:
      continue
  raise FileExistsError(f"Could not create a fresh run directory under {base}.")


def _clean(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return None  # JSON has no NaN/inf
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_clean(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
    return _clean(x.item())
  if hasattr(x, "tolist"):
    return _clean(x.tolist())
  return x


def write_json(path: str | Path, data: Any) -> Path:
  """Writes ``data`` as indented JSON; NaN and inf become null."""
  path = Path(path)
  path.write_text(json.dumps(_clean(data), indent=2) + "\n")
  return path
