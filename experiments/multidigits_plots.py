"""Plots of the MultiDigits benchmark (``multidigits.py``): Δm%, tasks, weights, sensitivity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import _report
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from weightax.datasets.multidigits import HIGHER_IS_BETTER, TASKS  # noqa: E402

STL = "single_task"
TASK_COLORS = ("tab:blue", "tab:orange", "tab:green")


def _bar_colors(a: dict[str, Any], names: list[str]) -> list[str]:
  v = {"better": "tab:green", "worse": "tab:red", "tie": "tab:gray", "baseline": "black"}
  return [v[a["methods"][n]["verdict"]] for n in names]


def delta_m_plot(path: Path, a: dict[str, Any]) -> None:
  """Δm% per method (ranked), mean ± std over seeds; colour = verdict against single-task."""
  names = a["order"]
  m = a["methods"]
  mu = np.array([m[n]["delta_m"] for n in names])
  sd = np.nan_to_num(np.array([m[n]["delta_m_std"] for n in names]))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.2))
  ax.bar(range(len(names)), mu, yerr=sd, capsize=3, color=_bar_colors(a, names))
  ax.axhline(0.0, color="black", lw=0.8)
  ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
  ax.set_ylabel("Δm% vs single-task (higher is better)")
  ax.set_title("Δm% per method, mean ± std over seeds\ngreen/red: better/worse than "
               "single-task (95% t-interval); gray: tie", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def tasks_plot(path: Path, a: dict[str, Any]) -> None:
  """Each task's test metric per method, mean ± std; the dashed line is single-task learning."""
  names = [n for n in a["order"] if n != STL]
  m = a["methods"]
  fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 4.0))
  for i, (t, ax) in enumerate(zip(TASKS, np.atleast_1d(axes), strict=True)):
    mu = np.array([m[n]["tasks"][t] for n in names])
    sd = np.nan_to_num(np.array([m[n]["tasks_std"][t] for n in names]))
    ax.errorbar(mu, range(len(names)), xerr=sd, fmt="o", color=TASK_COLORS[i], capsize=3)
    ax.axvline(a["baseline"][i], color="black", ls="--", lw=1, label="single-task")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    better = "higher" if HIGHER_IS_BETTER[i] else "lower"
    ax.set_xlabel(f"test {'accuracy' if HIGHER_IS_BETTER[i] else 'MAE'} ({better} is better)")
    ax.set_title(t)
    ax.legend(loc="best", fontsize=8)
  fig.suptitle("MultiDigits: test metric per task (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
  """Moving average along axis 0 (valid part), so noisy weights (random, DWA) stay readable."""
  if window <= 1 or x.shape[0] <= window:
    return x
  c = np.cumsum(np.concatenate([np.zeros((1,) + x.shape[1:]), x]), axis=0)
  return (c[window:] - c[:-window]) / window


def weights_plot(path: Path, runs: dict[str, Any], steps: int) -> None:
  """Task weights over training of every method, normalised to sum to K (equal weights = 1)."""
  names = [n for n in runs if n != STL]
  if not names:
    return
  cols = min(4, len(names))
  rows = math.ceil(len(names) / cols)
  # Wide enough for the title with a single panel. The constrained layout keeps the title
  # clear of the top row (tight_layout let a tall grid's panel titles run into it).
  fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 7.0), 2.8 * rows),
                           squeeze=False, sharex=True, layout="constrained")
  window = max(1, steps // 50)
  k = len(TASKS)
  for ax, n in zip(axes.ravel(), names, strict=False):
    w = np.asarray(runs[n].metrics["task_weights"], np.float64)  # [S, steps, K]
    total = w.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
      share = np.where(np.abs(total) > 0, k * w / total, np.nan)
    if not np.isfinite(share).any():
      ax.text(0.5, 0.5, "no task weights\n(not a weighting)", ha="center", va="center",
              transform=ax.transAxes)
    else:
      mean = _smooth(np.nanmean(share, axis=0), window)
      x = np.arange(mean.shape[0]) + (window - 1 if mean.shape[0] < w.shape[1] else 0)
      for i, t in enumerate(TASKS):
        ax.plot(x, mean[:, i], color=TASK_COLORS[i], label=t, lw=1.2)
    ax.axhline(1.0, color="black", lw=0.5, ls=":")
    ax.set_title(n, fontsize=10)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  # The lowest panel of each column carries the step axis: with sharex, matplotlib labels
  # only the bottom row, whose slots past the last method are switched off.
  for col in range(cols):  # cols <= len(names): every column has a method
    lowest = axes[(len(names) - 1 - col) // cols, col]
    lowest.xaxis.set_tick_params(labelbottom=True)
    lowest.set_xlabel("step")
  for ax in axes[:, 0]:
    ax.set_ylabel("K·w_k / Σ w")
  axes.ravel()[0].legend(fontsize=8, loc="best")
  smoothing = f", moving average of {window} steps" if window > 1 else ""
  fig.suptitle(f"Task weights over training (mean over seeds{smoothing})")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sensitivity_plot(path: Path, a: dict[str, Any]) -> None:
  """Δm% (mean ± std over seeds) against each method's main hyperparameter."""
  sens = a["sensitivity"]
  names = list(sens)
  fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.4), squeeze=False)
  for ax, n in zip(axes[0], names, strict=True):
    s = sens[n]
    v = np.asarray(s["values"], np.float64)
    ax.errorbar(v, s["delta_m"], yerr=np.nan_to_num(s["delta_m_std"]), fmt="o-", capsize=3)
    positive = v > 0
    if positive.all() and v.max() / v.min() > 20:
      ax.set_xscale("log")
    if s["default"] is not None:
      ax.axvline(float(s["default"]), color="gray", ls=":", lw=1, label="default")
      ax.legend(fontsize=8, loc="best")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel(s["param"])
    ax.set_title(n, fontsize=10)
  axes[0][0].set_ylabel("Δm% vs single-task")
  fig.suptitle("Sensitivity: Δm% against the main hyperparameter (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  _report.refuse_direct_run(__doc__, "multidigits.py")
