"""Run directories for experiments: ``runs/<study>/<timestamp>/``, never overwritten."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["check_out", "new_run_dir", "run_dir", "write_json"]


def check_out(out: str | Path) -> Path:
  """Checks, without creating anything, that ``out`` can hold a fresh run.

  A study calls this while it checks its options (``p.error(str(e))`` turns the
  error into a one-line usage error), so a refused command leaves no directory behind.

  Returns:
    ``Path(out)``, which is absent or an empty directory.

  Raises:
    FileExistsError: ``out`` is a file, or a directory that already holds files; the
      message says what to do.
  """
  path = Path(out)
  if path.exists() and not path.is_dir():
    raise FileExistsError(
        f"--out {path} is a file, not a directory; choose a new directory (or leave --out "
        "out for a fresh runs/<study>/<UTC time>).")
  if path.is_dir() and any(path.iterdir()):
    raise FileExistsError(
        f"--out {path} already holds files; choose a new directory (or leave --out out for a "
        "fresh runs/<study>/<UTC time>) so no earlier run is overwritten.")
  return path


def new_run_dir(study: str, out: str | Path | None = None, *, root: str | Path = "runs") -> Path:
  """Creates and returns a fresh directory for one run of ``study``.

  With ``out`` given, that directory is used and must be empty or absent (so an
  earlier run is never overwritten; see :func:`check_out`, which raises
  ``FileExistsError`` otherwise); otherwise ``root/study/<UTC timestamp>``
  with a numeric suffix if two runs start in the same second.
  """
  if out is not None:
    path = check_out(out)
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


@contextlib.contextmanager
def run_dir(study: str, out: str | Path | None = None, *,
            root: str | Path = "runs") -> Iterator[Path]:
  """:func:`new_run_dir` for a ``with`` block that removes it again if the block fails
  (or is interrupted) before writing anything, so no empty run directory is left behind.
  An ``out`` directory that existed before is never removed.
  """
  existed = out is not None and Path(out).exists()
  path = new_run_dir(study, out, root=root)
  try:
    yield path
  except BaseException:
    if not existed and path.is_dir() and not any(path.iterdir()):
      path.rmdir()
    raise


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
