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


def test_bench_weightings_k_in_program(tmp_path):
  """``--in-program``: the weighting inside ``jit(lax.map)`` and the dispatch floor, per Gramian.

  Needs the ``bench`` extra (torchjd is the other side of every ratio); skipped without it.
  """
  import importlib.util
  import json

  import pytest

  if importlib.util.find_spec("torchjd") is None:
    pytest.skip("needs the bench extra (torchjd)")
  r = _run("benchmarks/bench_weightings_k.py", "--ks", "3,5", "--methods", "dualproj,imtl_g",
           "--reps", "3", "--gramians", "2", "--in-program", "4", "--out", str(tmp_path))
  assert r.returncode == 0, r.stderr
  res = json.loads((tmp_path / "summary.json").read_text())["results"]
  assert sorted((x["method"], x["k"]) for x in res) == [
      ("dualproj", 3), ("dualproj", 5), ("imtl_g", 3), ("imtl_g", 5)]
  for x in res:
    for key in ("in_program", "floor"):
      assert x[f"{key}_ms"] > 0
      assert x[f"{key}_ratio"] == pytest.approx(x[f"{key}_ms"] / x["torchjd_ms"])
      assert x[f"{key}_cpu_ratio"] == pytest.approx(x[f"{key}_cpu_ms"] / x["torchjd_cpu_ms"])
  text = (tmp_path / "summary.md").read_text()
  assert "inside `jit(lax.map)` over 4 Gramians (per Gramian)" in text

  bad = _run("benchmarks/bench_weightings_k.py", "--quick", "--in-program", "-1")
  assert bad.returncode == 2 and "--in-program must be >= 0; got -1" in bad.stderr


def test_bench_call_overhead_quick():
  r = _run("benchmarks/bench_call_overhead.py", "--quick", "--methods", "dualproj")
  assert r.returncode == 0, r.stderr
  rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| ")][1:]
  assert [row[0].strip() for row in rows] == ["trivial jit (G's first row)", "cholesky",
                                              "dualproj"]
  sizes = {row[0].strip(): [int(c) for c in row[4:]] for row in rows}
  # The trivial program is at most one fusion; DualProj's pivoting and fallback are while loops,
  # its Cholesky and triangular solves LAPACK calls on the CPU.
  fusions, loops, calls = sizes["trivial jit (G's first row)"]
  assert fusions <= 1 and loops == 0 and calls == 0
  assert sizes["cholesky"][2] >= 1 and sizes["dualproj"][1] >= 2 and sizes["dualproj"][2] >= 3
  for row in rows:
    assert all(float(c) > 0 for c in row[1:4])

  both = _run("benchmarks/bench_call_overhead.py", "--quick", "--methods", "imtl_g",
              "--without-guard")
  assert both.returncode == 0, both.stderr
  assert "| imtl_g without the NaN guard |" in both.stdout

  bad = _run("benchmarks/bench_call_overhead.py", "--methods", "dualproj,nope")
  assert bad.returncode == 2 and "['nope'] are not in weightax.weightings" in bad.stderr


def test_gpu_suite_reports_passes_failures_skips_and_bad_shards(tmp_path):
  """``gpu_suite.sh`` (the suite on an accelerator) on the CPU, on a file with one test of
  each outcome: pytest's exit status comes through, and summary.md counts each outcome and
  names the failure with its message. A wrong ``SHARD`` is refused before pytest runs."""
  probe = tmp_path / "test_probe.py"
  probe.write_text("import pytest\n\ndef test_ok():\n  pass\n\n"
                   "def test_bad():\n  assert 1 == 2, 'one is not two'\n\n"
                   "def test_later():\n  pytest.skip('not here')\n")
  out = tmp_path / "out"
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PY": sys.executable,
         "OUT": str(out), "FILES": str(probe), "WORKERS": "0"}
  r = subprocess.run(["bash", "benchmarks/gpu_suite.sh"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stdout + r.stderr  # pytest's status: a test failed
  summary = (out / "summary.md").read_text()
  assert "| 1 | 1 | 0 | 1 | 0 |" in summary  # passed, failed, errors, skipped, interrupted
  bad = [line for line in summary.splitlines() if "test_bad" in line]
  assert len(bad) == 1 and bad[0].startswith("| failed |") and "one is not two" in bad[0]
  assert not any("test_ok" in line or "test_later" in line for line in summary.splitlines())
  assert (out / "env.txt").read_text().count("jax") >= 1
  r = subprocess.run(["bash", "benchmarks/gpu_suite.sh"], cwd=ROOT,
                     env={**env, "SHARD": "3/2", "OUT": str(tmp_path / "o2")},
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 2 and "SHARD must be i/n" in r.stderr
  assert not list((tmp_path / "o2").glob("junit-*.xml"))


def test_fairgrad_accuracy_table(tmp_path):
  """``fairgrad_accuracy.py`` (the table of FairGrad's float32 error in the stop notes): one
  row per α and spread with counts no larger than the problems solved, errors within the
  documented 1e-4 at α = 1, norms over e^±2; bad options refused."""
  r = _run("benchmarks/fairgrad_accuracy.py", "--alphas", "1,20", "--spreads", "2",
           "--problems", "3")
  assert r.returncode == 0, r.stderr
  rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "e^±" in line]
  assert [row.split("|")[1].strip() for row in rows] == ["1", "20"]
  for row in rows:
    _, alpha, spread, solved, first, n_first, default, n_default, _ = row.split("|")
    assert spread.strip() == "e^±2" and 0 < int(solved) <= 3
    assert 0 <= int(n_first) <= int(solved) and 0 <= int(n_default) <= int(solved)
    if alpha.strip() == "1":
      assert float(default) < 1e-4 and int(n_default) == 0
  bad = _run("benchmarks/fairgrad_accuracy.py", "--alphas", "0", "--problems", "1")
  assert bad.returncode == 2 and "α > 0" in bad.stderr
