"""Durable state of a resumable :func:`weightax.sweep`: manifest, finished chunks, carries.

A checkpoint directory holds

- ``manifest.json``: the sweep's fingerprint (grid values, seeds, chunk size,
  number of configurations, devices and a SHA-256 of the lowered programs'
  text). A later call with the same directory must match it field by field.
- ``chunk-000007.npz``: the metrics of finished chunk 7, trimmed of padding,
  each written atomically (temporary file, ``fsync``, ``os.replace``, ``fsync``
  of the directory), so a file that exists is complete.
- ``carry-000007/``: for a :class:`weightax.Stepwise` sweep, the vmapped scan
  carry of unfinished chunk 7 after its last finished segment, saved with
  orbax-checkpoint (which also finalises by an atomic rename, and saves
  arrays sharded over several processes with each process writing its
  shards). It is deleted once the chunk's metrics are written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

MANIFEST = "manifest.json"
VERSION = 1
_CHUNK_RE = re.compile(r"^chunk-(\d{6})\.npz$")


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
  """Writes ``data`` to ``path`` so that ``path`` is either absent or complete.

  A crash (even ``kill -9`` or a power cut after the call returns) leaves at
  most a stray ``.tmp-*`` file, which :func:`clean_temporaries` removes.
  """
  path = Path(path)
  tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  # The rename itself is durable only once the directory entry is flushed.
  fd = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def clean_temporaries(directory: Path) -> None:
  for p in Path(directory).glob(".tmp-*"):
    p.unlink(missing_ok=True)


def chunk_path(directory: Path, c: int) -> Path:
  return Path(directory) / f"chunk-{c:06d}.npz"


def carry_path(directory: Path, c: int) -> Path:
  return Path(directory) / f"carry-{c:06d}"


def save_chunk(directory: Path, c: int, leaves: list[np.ndarray]) -> None:
  """Stores one chunk's metric leaves as raw bytes plus dtype and shape (exact for any dtype)."""
  meta = [{"dtype": np.asarray(x).dtype.name, "shape": list(np.shape(x))} for x in leaves]
  arrays = {f"leaf{i}": np.ascontiguousarray(x).reshape(-1).view(np.uint8)
            for i, x in enumerate(leaves)}
  buf = io.BytesIO()
  np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
  atomic_write(chunk_path(directory, c), buf.getvalue())


def load_chunk(directory: Path, c: int) -> list[np.ndarray]:
  path = chunk_path(directory, c)
  try:
    with np.load(path) as z:
      meta = json.loads(z["meta"].tobytes().decode())
      return [z[f"leaf{i}"].view(jnp.dtype(m["dtype"])).reshape(m["shape"])
              for i, m in enumerate(meta)]
  except Exception as e:  # noqa: BLE001 - a damaged file fails in zipfile, json or numpy
    # weightax writes chunks atomically; a damaged one comes from a copy or a sync.
    raise ValueError(
        f"{path} is unreadable ({type(e).__name__}: {e}); delete it and rerun to recompute "
        "that chunk.") from e


def stray_results(directory: Path) -> list[str]:
  """Names of chunk and carry entries in ``directory`` (results of some sweep)."""
  return sorted(p.name for p in Path(directory).iterdir()
                if _CHUNK_RE.match(p.name) or p.name.startswith("carry-"))


def done_chunks(directory: Path, n_chunks: int) -> np.ndarray:
  """``[n_chunks]`` bool: which chunks have a (complete, by atomicity) metrics file."""
  done = np.zeros(n_chunks, bool)
  for p in Path(directory).iterdir():
    m = _CHUNK_RE.match(p.name)
    if m and int(m.group(1)) < n_chunks:
      done[int(m.group(1))] = True
  return done


def remove_carry(directory: Path, c: int) -> None:
  shutil.rmtree(carry_path(directory, c), ignore_errors=True)


def _describe(a: Any) -> str:
  a = np.asarray(a)
  text = np.array2string(a.reshape(-1)[:6], separator=", ")
  return f"{text[:-1]}{', ...' if a.size > 6 else ''}] ({a.dtype}, {a.size} values)"


def axis_record(values: np.ndarray) -> dict[str, Any]:
  return {"dtype": values.dtype.name, "shape": list(values.shape), "values": values.tolist()}


def axis_from_record(rec: dict[str, Any]) -> np.ndarray:
  return np.asarray(rec["values"], dtype=rec["dtype"]).reshape(rec["shape"])


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
  """Human-readable list of what differs between two manifests (empty when they match)."""
  out = []
  s_axes, n_axes = stored.get("grid", {}), now["grid"]
  if list(s_axes) != list(n_axes):
    out.append(f"grid axes: stored {list(s_axes)}, now {list(n_axes)}")
  for name in n_axes:
    if name in s_axes:
      a, b = axis_from_record(s_axes[name]), axis_from_record(n_axes[name])
      if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
        out.append(f"grid axis {name!r}: stored {_describe(a)}, now {_describe(b)}")
  if stored.get("seeds") != now["seeds"]:
    out.append(f"seeds: stored {_describe(stored.get('seeds'))}, now {_describe(now['seeds'])}")
  for key, label in [("kind", "train kind"), ("chunk_size", "chunk size"),
                     ("num_steps", "num_steps"), ("segment_steps", "segment_steps"),
                     ("devices", "devices")]:
    if stored.get(key) != now.get(key):
      out.append(f"{label}: stored {stored.get(key)!r}, now {now.get(key)!r}")
  if stored.get("program") != now["program"]:
    out.append(
        "program: the lowered program's text differs (sha256 stored "
        f"{str(stored.get('program'))[:12]}…, now {now['program'][:12]}…): train, its "
        "constants (data captured by closure) or the metrics' structure changed"
    )
  if stored.get("version") != now["version"]:
    out.append(f"format version: stored {stored.get('version')!r}, now {now['version']!r}")
  return out


def read_manifest(directory: Path) -> dict[str, Any] | None:
  p = Path(directory) / MANIFEST
  if not p.exists():
    return None
  try:
    return json.loads(p.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
        f"{p} is unreadable ({type(e).__name__}: {e}), so the results next to it cannot be "
        "matched to this sweep; pass a new (or emptied) checkpoint_dir.") from e


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
  atomic_write(Path(directory) / MANIFEST, json.dumps(manifest, indent=1).encode())
