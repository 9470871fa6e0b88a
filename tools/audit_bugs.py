"""Re-applies the bugs of the test audit (issue 12) to a copy of weightax and runs the tests.

An audit applied realistic bugs to copies of weightax, one at a time, and found
that the suite missed four of them and caught two more with a single assertion
each. This script keeps that audit repeatable: each bug below is a one-line
source edit; it is applied to a snapshot of the committed tree (``git archive
HEAD`` under ``--work``; the checkout is never touched), and the default-suite
tests that should catch it run there, exactly as ``make test`` runs them
(``-m 'not slow'`` from ``pyproject.toml``, doctests of the edited module
included). A bug is *caught* when those tests fail; since they are a subset of
``make test``, ``make test`` then fails too. The script also checks that the
same tests pass on the unedited snapshot, so a failure is the bug's doing.

Usage::

    python tools/audit_bugs.py              # every bug
    python tools/audit_bugs.py --only dwa   # bugs whose name contains "dwa"
    python tools/audit_bugs.py --list

This is a measurement, not part of ``make test``; see TESTING.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Bug(NamedTuple):
  name: str
  why: str  # the bug, in words
  file: str
  old: str  # must occur exactly once in file
  new: str
  tests: tuple[str, ...]  # the default-suite tests that must catch it


BUGS = [
    Bug("shared_mask_ignored",
        "the Gramian over every leaf, the `shared` mask ignored",
        "weightax/aggregators/_base.py",
        "      g = _gramian(shared_grads)\n",
        "      g = _gramian(task_grads)\n",
        ("tests/test_shared_mask.py",)),
    Bug("ghm_binning_bf16",
        "GHM-C's gradient norms (its bins) computed in the input dtype (bf16), not float32",
        "weightax/losses/ghm.py",
        "g = jnp.abs(jax.nn.sigmoid(logits.astype(jnp.float32)) - labels.astype(jnp.float32))",
        "g = jnp.abs(jax.nn.sigmoid(logits) - labels.astype(logits.dtype)).astype(jnp.float32)",
        ("tests/test_losses_precision.py",)),
    Bug("gradnorm_study_state_dropped",
        "the GradNorm study's aggregator state not carried between steps",
        "experiments/gradnorm_synthetic.py",
        "u_trunk, agg_s = agg.update(jac, agg_s, p[\"trunk\"], task_losses=losses)",
        "u_trunk, _ = agg.update(jac, agg_s, p[\"trunk\"], task_losses=losses)",
        ("tests/test_gradnorm_synthetic.py",)),
    Bug("interval_without_sqrt_n",
        "the studies' t-interval without the 1/sqrt(n) of the standard error",
        "experiments/_report.py",
        "* std / math.sqrt(n)",
        "* std",
        ("tests/test_verdicts.py", "tests/test_imbalance_study.py")),
    Bug("linear_scalarization_mean",
        "linear scalarization's default weights the mean (1/K) instead of the sum (1)",
        "weightax/aggregators/linear_scalarization.py",
        "      w = jnp.ones((k,), jnp.float32)\n",
        "      w = jnp.full((k,), 1.0 / k, jnp.float32)\n",
        ("tests/test_documented_scale.py", "tests/test_loss_weighting.py",
         "tests/test_shared_mask.py", "tests/test_mtl.py")),
    Bug("dwa_period_off_by_one",
        "DWA's period closing one step early",
        "weightax/aggregators/dwa.py",
        "ends = (state.step + 1) % n == 0",
        "ends = state.step % n == 0",
        ("tests/test_loss_weighting.py",)),
]


def _snapshot(work: Path) -> None:
  if work.exists():
    shutil.rmtree(work)
  work.mkdir(parents=True)
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)


def _pytest(work: Path, bug: Bug, timeout: float,
            stop: bool = True) -> tuple[str, float, str, int]:
  """(status, seconds, the failing tests in short, how many failed) of the bug's tests."""
  env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
  cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:randomly",
         "-p", "no:cacheprovider", "-n", "0", *bug.tests]
  if stop:
    cmd.insert(3, "-x")
  if bug.file.startswith("weightax/"):
    cmd += ["--doctest-modules", bug.file]
  start = time.time()
  try:
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, "", 0
  failing = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
  status = {0: "passed", 1: "failed"}.get(proc.returncode, f"error (rc {proc.returncode})")
  if status.startswith("error"):
    failing.append(proc.stdout[-1500:] + proc.stderr[-1500:])
  count = sum(line.startswith(("FAILED", "ERROR")) for line in proc.stdout.splitlines())
  return status, time.time() - start, "; ".join(failing)[:300], count


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--work", default="/tmp/weightax-audit",
                 help="directory for the snapshot (default: %(default)s)")
  p.add_argument("--only", default="", help="run only bugs whose name contains this")
  p.add_argument("--timeout", type=float, default=1800.0,
                 help="seconds per test run (default: %(default)s)")
  p.add_argument("--list", action="store_true", help="list the bugs and exit")
  p.add_argument("--count", action="store_true",
                 help="run every test (no -x) and count how many catch each bug")
  p.add_argument("--skip-clean", action="store_true",
                 help="do not run the tests on the unedited snapshot first")
  args = p.parse_args()
  bugs = [b for b in BUGS if args.only in b.name]
  if args.list:
    for b in bugs:
      print(f"{b.name}: {b.why} ({b.file}; {', '.join(b.tests)})")
    return
  work = Path(args.work)
  _snapshot(work)
  rows, ok = [], True
  for b in bugs:
    target = work / b.file
    original = target.read_text()
    if original.count(b.old) != 1:
      sys.exit(f"{b.name}: the line to edit occurs {original.count(b.old)} times in {b.file} "
               f"(expected once); update BUGS to the current source")
    clean = ("skipped", 0.0, "", 0)
    if not args.skip_clean:
      clean = _pytest(work, b, args.timeout)
    target.write_text(original.replace(b.old, b.new))
    try:
      result = _pytest(work, b, args.timeout, stop=not args.count)
    finally:
      target.write_text(original)
    caught = result[0] == "failed" and clean[0] in ("passed", "skipped")
    ok &= caught
    rows.append((b, clean, result, caught))
    print(f"{b.name}: clean {clean[0]} ({clean[1]:.0f}s), with the bug {result[0]} "
          f"({result[1]:.0f}s): {'CAUGHT' if caught else 'MISSED'} {result[2]}", flush=True)
  print("\n| bug | tests | unedited | with the bug | caught | failing tests |")
  print("|---|---|---|---|---|---:|")
  for b, clean, result, caught in rows:
    count = str(result[3]) if args.count else f"≥ {min(result[3], 1)} (-x)"
    print(f"| {b.why} | {', '.join(t.removeprefix('tests/') for t in b.tests)} | "
          f"{clean[0]} | {result[0]} | {'yes' if caught else '**no**'} | {count} |")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
