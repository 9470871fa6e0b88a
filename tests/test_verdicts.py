"""The studies' shared verdicts (experiments/_report.py) at their decision boundaries.

Expected values come from scipy.stats.t and hand-built samples whose mean sits just inside
or just outside the t-interval, so a 1.96 instead of the t-quantile, a missing 1/√n, a
population instead of a sample standard deviation, or a claim from fewer than 2 seeds
each flips a verdict here.
"""

import doctest
import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
R = importlib.import_module("_report")


def _sample(n: int, mean: float, std: float) -> np.ndarray:
  """n values with exactly this sample mean and sample standard deviation (ddof=1)."""
  z = np.linspace(-1.0, 1.0, n)
  z = (z - z.mean()) / z.std(ddof=1)
  return mean + std * z


def _half(n: int, std: float, level: float = 0.95) -> float:
  return stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_interval_is_the_t_interval_with_sample_std(n):
  x = _sample(n, 0.3, 0.2)
  lo, hi = R.t_interval(x)
  h = _half(n, 0.2)
  assert lo == pytest.approx(0.3 - h, rel=1e-12) and hi == pytest.approx(0.3 + h, rel=1e-12)
  lo90, _ = R.t_interval(x, level=0.9)
  assert lo90 == pytest.approx(0.3 - _half(n, 0.2, 0.9), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_verdict_flips_exactly_at_the_t_quantile(n):
  std = 1.0
  h = _half(n, std)
  for sign, word in ((1, "better"), (-1, "worse")):
    assert R.verdict(_sample(n, sign * h * 1.01, std)) == word
    assert R.verdict(_sample(n, sign * h * 0.99, std)) == "tie"


@pytest.mark.parametrize("n", [3, 5, 10])
def test_verdict_uses_the_t_quantile_not_1_96_and_divides_by_sqrt_n(n):
  std = 1.0
  z_half = 1.96 * std / math.sqrt(n)  # a normal quantile would call this 'better'
  mean = 0.5 * (z_half + _half(n, std))
  assert z_half < mean < _half(n, std)
  assert R.verdict(_sample(n, mean, std)) == "tie"
  # without the 1/√n the interval would be √n times wider and this would be a tie
  mean = 1.01 * _half(n, std)
  assert mean < stats.t.ppf(0.975, n - 1) * std
  assert R.verdict(_sample(n, mean, std)) == "better"


def test_verdict_uses_the_sample_standard_deviation():
  # Between the ddof=0 and ddof=1 half-widths: only the sample std (ddof=1) gives a tie.
  n, std1 = 4, 1.0
  x = _sample(n, 0.0, std1)
  std0 = x.std(ddof=0)
  t = stats.t.ppf(0.975, n - 1)
  mean = 0.5 * (t * std0 + t * std1) / math.sqrt(n)
  assert R.verdict(x + mean) == "tie"


def test_fewer_than_two_values_never_claim():
  assert R.verdict(np.array([5.0])) == "tie"
  assert R.verdict(np.array([])) == "tie"
  assert all(math.isnan(v) for v in R.t_interval(np.array([5.0])))
  # NaN values are left out, not counted as seeds
  assert R.verdict(np.array([5.0, np.nan])) == "tie"
  d = R.describe([1.0, np.nan, 3.0])
  assert d["n"] == 2 and d["n_nonfinite"] == 1 and d["mean"] == 2.0
  assert d["std"] == pytest.approx(math.sqrt(2.0))
  assert math.isnan(R.describe([1.0])["std"])


def test_zero_spread_gives_a_zero_width_interval():
  assert R.t_interval(np.full(4, 0.2)) == (pytest.approx(0.2), pytest.approx(0.2))
  assert R.verdict(np.full(4, 0.2)) == "better"
  assert R.verdict(np.zeros(4)) == "tie"


def test_compare_is_paired_and_oriented():
  base = np.array([10.0, 20.0, 30.0, 40.0])  # large spread between seeds ...
  better = base + np.array([0.9, 1.0, 1.1, 1.0])  # ... but a consistent paired gain
  c = R.compare(better, base)
  assert c["verdict"] == "better" and c["mean"] == pytest.approx(1.0)
  lo, hi = c["ci_low"], c["ci_high"]
  h = _half(4, np.std([0.9, 1.0, 1.1, 1.0], ddof=1))
  assert lo == pytest.approx(1.0 - h) and hi == pytest.approx(1.0 + h)
  # an unpaired comparison (independent means) could not separate them
  assert abs(better.mean() - base.mean()) < base.std(ddof=1)
  # for losses lower is better: the same numbers mean 'worse'
  assert R.compare(better, base, higher_is_better=False)["verdict"] == "worse"
  with pytest.raises(ValueError, match="same shape"):
    R.compare(np.zeros(3), np.zeros(4))


def test_formatting_helpers():
  assert R.fmt(math.nan) == "—" and R.fmt(None) == "—" and R.fmt(0.12345) == "0.123"
  assert R.range_label(np.logspace(0, 1, 4)) == "[1, 10]"
  assert R.range_label([0.01, 3.0, np.nan]) == "[0.01, 3]"
  assert R.range_label([]) == "—"


def test_doctest_of_the_module():
  assert doctest.testmod(R).failed == 0


HELPERS = sorted(p.name for p in (ROOT / "experiments").glob("*.py")
                 if p.name.endswith(("_report.py", "_plots.py")))


def test_every_helper_module_is_listed():
  assert {"_report.py", "loss_scale_report.py", "loss_scale_plots.py", "imbalance_report.py",
          "imbalance_plots.py", "gradnorm_synthetic_report.py",
          "toy_two_objective_report.py"} <= set(HELPERS)


_RUN_ALL = """
import contextlib, io, json, runpy, sys
out = {}
help_only = sys.argv[1] == "--help-only"
for path in sys.argv[2:]:
  for argv in (["--help"],) if help_only else (["--help"], []):
    sys.argv = [path, *argv]
    o, e = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
      try:
        runpy.run_path(path, run_name="__main__")
      except SystemExit as ex:
        code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    out[path + " " + " ".join(argv)] = [code, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helper_runs():
  """Every helper run as a script, with --help and without, in ONE interpreter (fast)."""
  paths = [str(ROOT / "experiments" / n) for n in HELPERS]
  proc = subprocess.run([sys.executable, "-c", _RUN_ALL, "--both", *paths], capture_output=True,
                        text=True, check=True, cwd=ROOT / "experiments")
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", HELPERS)
def test_helper_modules_say_they_are_not_scripts(name, helper_runs):
  path = str(ROOT / "experiments" / name)
  code, out, err = helper_runs[path + " --help"]
  assert code == 0, err
  text = " ".join(out.split())  # argparse wraps lines
  assert "not run directly" in text and "python experiments/" in text
  code, out, err = helper_runs[path + " "]
  assert code == 2 and "not a script" in err, (code, out, err)


STUDIES = ("loss_scale.py", "imbalance.py", "gradnorm_synthetic.py", "toy_two_objective.py",
           "meta_weighting.py")


@pytest.fixture(scope="module")
def study_help():
  paths = [str(ROOT / "experiments" / n) for n in STUDIES]
  # --help only: a study run without arguments would start its default (long) run
  proc = subprocess.run([sys.executable, "-c", _RUN_ALL, "--help-only", *paths],
                        capture_output=True, text=True, check=True, cwd=ROOT / "experiments",
                        env={**os.environ, "COLUMNS": "100"})
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", STUDIES)
def test_study_help_shows_each_default_once(name, study_help):
  code, out, err = study_help[str(ROOT / "experiments" / name) + " --help"]
  assert code == 0, err
  options = re.split(r"\n  (?=-)", out.split("options:", 1)[1])[1:]
  assert len(options) > 5
  for opt in options:
    text = " ".join(opt.split())
    if text.startswith("-h, --help"):
      continue
    assert text.lower().count("default") == 1, text


def test_apply_quick_keeps_what_the_command_line_gave():
  import argparse

  p = argparse.ArgumentParser()
  p.add_argument("--seeds", type=int, default=10)
  p.add_argument("--methods", default="a,b,c")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--quick", action="store_true")
  quick = {"seeds": 2, "methods": "a", "steps": 100}
  for argv, expected in [
      (["--quick"], (2, "a", 100)),
      (["--quick", "--seeds", "5", "--methods=b"], (5, "b", 100)),
      (["--quick", "--steps", "1000"], (2, "a", 1000)),  # the default, but given: kept
      (["--seeds", "5"], (5, "a,b,c", 1000)),  # without --quick nothing changes
  ]:
    a = R.apply_quick(p, p.parse_args(argv), argv, **quick)
    assert (a.seeds, a.methods, a.steps) == expected, argv
  assert p.get_default("seeds") == 10  # the parser's defaults are restored
  with pytest.raises(KeyError, match="no options"):
    R.apply_quick(p, p.parse_args([]), [], epochs=3)
