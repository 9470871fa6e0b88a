"""The options of the sweep and Gramian benchmarks that the GPU figures of BENCHMARKS.md used.

``bench_sweep.py --variants`` times a subset of the variants (the 1024-run GPU row skips the
Python loop) and ``bench_gramian.py --calls`` divides the time of several calls by their
number (a GPU call takes about a millisecond). The tables they print are what BENCHMARKS.md
copies, so their rows, columns and arithmetic (runs per second from the time) are checked
here, and so is the agreement of the two Gramians that the benchmark reports. The division
by ``--calls`` is not: a time cannot tell one call from three without a timing assertion.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def test_bench_sweep_variants_and_runs_per_second(tmp_path):
  out = tmp_path / "sweep.md"
  r = _run("benchmarks/bench_sweep.py", "--num-w", "2", "--seeds", "2", "--steps", "20",
           "--reps", "1", "--variants", "scans", "--out", str(out))
  assert r.returncode == 0, r.stderr
  rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][1:]
  names = [row.split("|")[1].strip() for row in rows]
  # The sweep is always timed (the baseline); the loop of steps was not asked for.
  assert names == ["sweep (one jit(vmap))", "sequential jitted scans"]
  for row in rows:
    _, _, t, ratio, rps, _ = row.split("|")
    # runs per second = 4 runs / the median time, as printed (four significant digits).
    assert abs(float(rps.replace(",", "")) - 4 / float(t)) <= 0.002 * 4 / float(t) + 0.05
  assert rows[0].split("|")[3].strip() == "1.0x"

  bad = _run("benchmarks/bench_sweep.py", "--variants", "scans,loop")
  assert bad.returncode == 2 and "expected names among sweep, scans, steps" in bad.stderr
  assert "'loop'" in bad.stderr


def test_bench_gramian_calls_and_agreement(tmp_path):
  out = tmp_path / "gramian.md"
  r = _run("benchmarks/bench_gramian.py", "--quick", "--calls", "3", "--out", str(out))
  assert r.returncode == 0, r.stderr
  text = out.read_text()
  assert "2 interleaved repetitions of 3 call(s) each" in text
  assert "| median ms per call | min ms per call |" in text
  rel = float(re.search(r"max \|G_jac − G_free\| / max \|G\| = ([0-9.e+-]+)", text).group(1))
  assert rel < 1e-5  # float32 on the CPU: the two Gramians are the same matrix
  rows = [line for line in text.splitlines() if line.startswith("| ") and "MiB" not in line]
  assert len(rows) == 4
  for row in rows:
    med, lo = (float(c) for c in row.split("|")[-3:-1])
    assert 0 < lo <= med < 1e4  # milliseconds per call, not seconds per three calls

  bad = _run("benchmarks/bench_gramian.py", "--quick", "--calls", "0")
  assert bad.returncode == 2 and "--calls and --reps must be at least 1" in bad.stderr
