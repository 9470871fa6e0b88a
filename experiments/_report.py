"""Statistics, verdicts and formatting shared by every study in ``experiments/``.

One place decides what a study may claim, so that no verdict contradicts its table:

* :func:`describe` summarises per-seed values (mean, sample std, n);
* :func:`t_interval` is the two-sided t-interval of a mean, ``mean ± t_{1-a/2, n-1} · std/√n``
  with the sample standard deviation (``ddof=1``) and Student's t quantile (not 1.96);
* :func:`verdict` turns per-seed *paired* differences (positive = better) into
  ``"better"`` / ``"worse"`` only when that interval excludes 0, and ``"tie"`` otherwise
  (always ``"tie"`` with fewer than 2 finite values: no interval, no claim);
* :func:`compare` does both for two arrays of per-seed results of the same seeds;
* :func:`fmt`, :func:`range_label` format numbers and grid ranges for reports (a range
  label is always built from the values actually run, never typed in);
* :func:`refuse_direct_run` makes a helper module of a study say so when run as a script;
* :func:`apply_quick` sets a study's ``--quick`` values on the options the command line
  left alone (an option given explicitly is kept, so the report's command says what ran);
* :class:`HelpFormatter` is the studies' argparse formatter: every option shows its
  default exactly once.

Studies import this module as ``import _report`` after putting ``experiments/`` on
``sys.path`` (each study script does). Example::

  >>> import numpy as np
  >>> import _report
  >>> a = np.array([0.91, 0.93, 0.92, 0.94])   # method, per seed
  >>> b = np.array([0.89, 0.90, 0.90, 0.91])   # baseline, same seeds
  >>> _report.compare(a, b)["verdict"]
  'better'
  >>> _report.verdict(np.array([0.01]))         # one seed: no interval, no claim
  'tie'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LEVEL", "describe", "t_interval", "verdict", "compare", "fmt", "range_label",
           "refuse_direct_run", "apply_quick", "given_options", "interval", "check_minimums",
           "check_out_option", "check_digits_split", "HelpFormatter"]

LEVEL = 0.95
"""Default confidence level of every interval and verdict."""


def describe(values: Any) -> dict[str, Any]:
  """Mean, sample standard deviation (``ddof=1``), ``n`` and the values, of the finite values.

  Args:
    values: per-seed numbers (any array-like; NaN and inf are left out of the statistics
      and counted in ``n_nonfinite``).

  Returns:
    ``{"mean", "std", "n", "n_nonfinite", "per_seed"}``; ``std`` is NaN when ``n < 2`` and
    ``mean`` is NaN when ``n == 0``. ``per_seed`` keeps every value, in order.
  """
  x = np.asarray(values, np.float64).ravel()
  ok = x[np.isfinite(x)]
  n = int(ok.size)
  return {
      "mean": float(ok.mean()) if n else math.nan,
      "std": float(ok.std(ddof=1)) if n > 1 else math.nan,
      "n": n,
      "n_nonfinite": int(x.size - n),
      "per_seed": x.tolist(),
  }


def _as_stats(x: Any) -> dict[str, Any]:
  return x if isinstance(x, dict) else describe(x)


def t_interval(x: Any, level: float = LEVEL) -> tuple[float, float]:
  """Two-sided ``level`` t-interval of the mean: ``mean ± t_{(1+level)/2, n-1} · std/√n``.

  Args:
    x: per-seed values, or a :func:`describe` dict (``mean``, ``std``, ``n``).
    level: confidence level in (0, 1).

  Returns:
    ``(low, high)``; ``(nan, nan)`` when ``n < 2`` (no interval exists). A zero standard
    deviation gives the zero-width interval ``(mean, mean)``.
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1); got {level}")
  s = _as_stats(x)
  n, mean, std = int(s["n"]), float(s["mean"]), float(s["std"])
  if n < 2 or not (math.isfinite(mean) and math.isfinite(std)):
    return math.nan, math.nan
  from scipy import stats  # a test and study dependency (scikit-learn needs it too)

  half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
  return mean - half, mean + half


def verdict(diff: Any, level: float = LEVEL) -> str:
  """``"better"`` / ``"worse"`` when the t-interval of the paired differences excludes 0.

  Args:
    diff: per-seed paired differences, oriented so that positive means better (for a
      loss or a step count pass ``baseline - method``), or their :func:`describe` dict.
    level: confidence level of the interval.

  Returns:
    ``"better"`` if the interval lies above 0, ``"worse"`` if below, otherwise ``"tie"``
    (also with fewer than 2 finite differences, where no interval exists).
  """
  lo, hi = t_interval(diff, level)
  if lo > 0:
    return "better"
  if hi < 0:
    return "worse"
  return "tie"


def compare(a: Any, b: Any, *, higher_is_better: bool = True,
            level: float = LEVEL) -> dict[str, Any]:
  """Paired comparison of ``a`` against ``b`` (per-seed results of the same seeds).

  Args:
    a: per-seed results of the method, shape ``[n]``.
    b: per-seed results of the baseline on the same seeds, shape ``[n]``.
    higher_is_better: whether larger results are better (accuracy) or smaller (a loss).
    level: confidence level.

  Returns:
    :func:`describe` of ``a - b`` (always ``a - b``, whatever the orientation) with
    ``ci_low``, ``ci_high`` (its t-interval) and ``verdict`` (of ``a`` against ``b``).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired results need the same shape; got {a.shape} and {b.shape}")
  d = describe(a - b)
  lo, hi = t_interval(d, level)
  sign = 1.0 if higher_is_better else -1.0
  return d | {"ci_low": lo, "ci_high": hi, "level": level,
              "verdict": verdict(describe(sign * (a - b)), level)}


def fmt(x: Any, spec: str = ".3g") -> str:
  """``format(x, spec)``, or an em dash for None, NaN and inf (a missing number)."""
  if x is None:
    return "—"
  x = float(x)
  return format(x, spec) if math.isfinite(x) else "—"


def range_label(values: Sequence[float] | np.ndarray, spec: str = "g") -> str:
  """``"[min, max]"`` of the values actually run (``"—"`` when there are none)."""
  v = np.asarray(values, np.float64).ravel()
  v = v[np.isfinite(v)]
  if v.size == 0:
    return "—"
  return f"[{format(float(v.min()), spec)}, {format(float(v.max()), spec)}]"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """``ArgumentDefaultsHelpFormatter`` that shows each default once.

  An option whose help already states its default in words (``"(default: runs/<study>/
  <UTC time>)"``) keeps that text instead of gaining a second ``(default: None)``.
  """

  def _get_help_string(self, action: argparse.Action) -> str | None:
    text = action.help or ""
    if "default" in text.lower():
      return text
    return super()._get_help_string(action)


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
  """The ``dest`` names of the options that ``argv`` (None: ``sys.argv[1:]``) gives."""
  saved = [(a, a.default) for a in parser._actions]
  try:
    for a, _ in saved:
      a.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
  finally:
    for a, default in saved:
      a.default = default


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None, **values: Any) -> argparse.Namespace:
  """With ``args.quick``, sets ``values`` on the options the command line did not give.

  ``--quick`` shrinks a study for tests; an option given explicitly next to it (``--quick
  --seeds 5``) is kept, not silently replaced, so the report's "Reproduce" command is
  what ran. ``values`` maps option ``dest`` names to their quick values.

  >>> p = argparse.ArgumentParser()
  >>> _ = p.add_argument("--seeds", type=int, default=10)
  >>> _ = p.add_argument("--steps", type=int, default=1000)
  >>> _ = p.add_argument("--quick", action="store_true")
  >>> argv = ["--quick", "--seeds", "5"]
  >>> a = apply_quick(p, p.parse_args(argv), argv, seeds=2, steps=100)
  >>> a.seeds, a.steps
  (5, 100)
  """
  unknown = sorted(set(values) - {a.dest for a in parser._actions})
  if unknown:
    raise KeyError(f"apply_quick: no options {unknown}")
  if getattr(args, "quick", False):
    given = given_options(parser, argv)
    for name, value in values.items():
      if name not in given:
        setattr(args, name, value)
  return args


def interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
  """``[lo, hi)`` and the like, for error messages and help."""
  return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_minimums(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   minimum: dict[str, int], why: dict[str, str] | None = None) -> None:
  """``parser.error`` for the first option below its minimum (an option left None passes)."""
  for name, low in minimum.items():
    value = getattr(args, name)
    if value is not None and value < low:
      reason = (why or {}).get(name, "")
      parser.error(f"--{name.replace('_', '-')} must be at least {low}{reason}; got {value}")


def check_out_option(parser: argparse.ArgumentParser, out: Any) -> None:
  """``parser.error`` unless ``--out`` (None: a fresh ``runs/...``) can hold a new run."""
  if out is None:
    return
  from weightax.runs import check_out  # the studies put the repository on sys.path

  try:
    check_out(out)
  except FileExistsError as e:
    parser.error(str(e))


def check_digits_split(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """``parser.error`` unless ``--val-per-class < --test-per-class`` leave training data.

  For the studies on :func:`weightax.datasets.long_tailed_split` (``args.val_per_class``,
  ``args.test_per_class``, ``args.data_seed``).
  """
  from weightax.datasets import long_tailed_split  # the studies put the repository on sys.path

  if not 0 < args.val_per_class < args.test_per_class:
    parser.error(f"need 0 < --val-per-class < --test-per-class; got {args.val_per_class}, "
                 f"{args.test_per_class}")
  try:
    long_tailed_split(imbalance_ratio=1.0, test_per_class=args.test_per_class,
                      seed=args.data_seed)
  except ValueError as e:
    parser.error(f"--test-per-class: {e}")


def refuse_direct_run(module_doc: str | None, study: str) -> None:
  """The ``__main__`` of a study's helper module: help that names the study, else exit 2.

  ``python experiments/<helper>.py --help`` prints the module's purpose and the script
  to run; any other invocation is an error (exit status 2), never a silent success.
  """
  p = argparse.ArgumentParser(
      description=(module_doc or "").strip().split("\n\n")[0]
      + " This module is imported by a study script and is not run directly: run "
      f"`python experiments/{study} --help` for the study's options.")
  p.parse_args()
  p.error(f"not a script; run python experiments/{study} instead")


if __name__ == "__main__":
  refuse_direct_run(__doc__, "loss_scale.py")  # or any other study
