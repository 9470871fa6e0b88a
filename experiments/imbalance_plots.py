"""Plots of the long-tailed study (``imbalance.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COLORS = {
    "ce": "black", "focal": "tab:blue", "softmax_focal": "tab:cyan", "cb": "tab:green",
    "ldam": "tab:red", "la": "tab:purple", "ghm": "tab:orange",
}
AXIS_NAMES = {"gamma": "γ", "beta": "β", "max_margin": "largest margin", "tau": "τ",
              "momentum": "bin-count momentum"}


def plot_all(out: Path, arrays: dict, ratios: dict, args: Any) -> None:
  """Writes ``bal_acc_vs_hparam.png``, ``head_tail.png`` and ``curves.png``."""
  plot_hparams(out / "bal_acc_vs_hparam.png", arrays)
  plot_head_tail(out / "head_tail.png", arrays)
  plot_curves(out / "curves.png", arrays, args)


def plot_hparams(path: Path, arrays: dict) -> None:
  """Test balanced accuracy vs each loss's hyperparameter; CE as a mean ± std band."""
  ratios = list(arrays)
  names = [n for n in next(iter(arrays.values())) if n != "ce"]
  cols = max(1, len(names))
  # at least 8 inches wide: the title and the legend below the panels fit one or two losses
  fig, axes = plt.subplots(len(ratios), cols, figsize=(max(2.9 * cols, 8.0), 2.9 * len(ratios)),
                           squeeze=False, sharey="row", layout="constrained")
  for r, ratio in enumerate(ratios):
    ce = 100 * arrays[ratio]["ce"]["balanced_accuracy"][0]
    for j, name in enumerate(names):
      ax, a = axes[r, j], arrays[ratio][name]
      ax.axhspan(ce.mean() - ce.std(), ce.mean() + ce.std(), color="0.8", lw=0)
      ax.axhline(ce.mean(), color="k", lw=1, ls="--", label="CE (± std)")
      axis = [k for k in a["hparams"][0] if k != "drw"][0]
      values = [h[axis] for h in a["hparams"]]
      groups = sorted({h.get("drw", 0.0) for h in a["hparams"]})
      xs = sorted(set(values))
      for g in groups:
        idx = [i for i, h in enumerate(a["hparams"]) if h.get("drw", 0.0) == g]
        pos = [xs.index(values[i]) for i in idx]
        m = 100 * a["balanced_accuracy"][idx].mean(1)
        s = 100 * a["balanced_accuracy"][idx].std(1)
        lbl = ("+DRW" if g else "no DRW") if len(groups) > 1 else "test"
        ax.errorbar(pos, m, yerr=s, marker="o" if not g else "s", ms=4, capsize=3,
                    color=COLORS[name], ls="-" if not g else ":", label=lbl)
      best = a["best"]
      ax.plot(xs.index(values[best]), 100 * a["balanced_accuracy"][best].mean(), "*",
              color="gold", mec="k", ms=12, zorder=5, label="picked on val.")
      ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
      ax.set_xlabel(AXIS_NAMES.get(axis, axis))
      ax.set_title(f"{name}, ρ={ratio}", fontsize=10)
      ax.grid(True, alpha=0.3)
      if j == 0:
        ax.set_ylabel("test balanced accuracy (%)")
  # One legend below the panels, outside every axes, so it never covers a point.
  handles, labels = legend_entries(names)
  fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), max(2, cols)),
             fontsize=8, frameon=False)
  fig.suptitle("Test balanced accuracy vs hyperparameter (mean ± std over seeds; grey: CE)")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def legend_entries(names: list[str]) -> tuple[list[Any], list[str]]:
  """Legend handles and labels of :func:`plot_hparams` for the losses ``names``."""
  band = (Patch(color="0.8", lw=0), Line2D([], [], color="k", lw=1, ls="--"))
  handles, labels = [band], ["CE (mean ± std)"]
  other = [n for n in names if n != "ldam"]
  if other:
    handles.append(Line2D([], [], color="0.35", marker="o", ms=4, ls="-"))
    labels.append("loss (mean ± std; colour per loss)")
  if "ldam" in names:
    handles += [Line2D([], [], color=COLORS["ldam"], marker="o", ms=4, ls="-"),
                Line2D([], [], color=COLORS["ldam"], marker="s", ms=4, ls=":")]
    labels += ["ldam, no DRW", "ldam +DRW"]
  handles.append(Line2D([], [], color="gold", mec="k", marker="*", ms=12, ls="none"))
  labels.append("picked on validation")
  return handles, labels


def plot_head_tail(path: Path, arrays: dict) -> None:
  """Head, balanced and tail recall of CE and each loss's picked setting, per ratio."""
  ratios = list(arrays)
  fig, axes = plt.subplots(1, len(ratios), figsize=(6.5 * len(ratios), 4.2), squeeze=False,
                           sharey=True, layout="constrained")
  metrics = [("head_recall", "head recall", 0.35), ("balanced_accuracy", "balanced acc.", 1.0),
             ("tail_recall", "tail recall", 0.6)]
  for r, ratio in enumerate(ratios):
    ax = axes[0, r]
    names = list(arrays[ratio])
    x = np.arange(len(names))
    for k, (m, label, alpha) in enumerate(metrics):
      vals = [100 * arrays[ratio][n][m][arrays[ratio][n]["best"]] for n in names]
      ax.bar(x + (k - 1) * 0.27, [v.mean() for v in vals], 0.27, yerr=[v.std() for v in vals],
             capsize=2, color=[COLORS[n] for n in names], alpha=alpha,
             edgecolor="k", lw=0.5, label=label, hatch=["", "", "//"][k])
    ax.set_xticks(x, [f"{n}\n{arrays[ratio][n]['labels'][arrays[ratio][n]['best']]}"
                      for n in names], fontsize=7)
    ax.set_title(f"ρ = {ratio}: left to right head / balanced / tail (hatched)")
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
  axes[0, 0].set_ylabel("test recall (%), mean ± std over seeds")
  axes[0, 0].legend(fontsize=8, loc="lower left")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_curves(path: Path, arrays: dict, args: Any) -> None:
  """Test balanced accuracy and tail recall during training (picked settings)."""
  ratios = list(arrays)
  fig, axes = plt.subplots(2, len(ratios), figsize=(6 * len(ratios), 7), squeeze=False,
                           sharex=True, layout="constrained")
  for r, ratio in enumerate(ratios):
    for row, (m, label) in enumerate([("curve_balanced_accuracy", "test balanced accuracy (%)"),
                                      ("curve_tail_recall", "test tail recall (%)")]):
      ax = axes[row, r]
      for name, a in arrays[ratio].items():
        c = 100 * a[m][a["best"]]  # [seeds, evals]
        t = np.arange(c.shape[1]) * args.eval_every
        ax.plot(t, c.mean(0), color=COLORS[name], lw=2.2 if name == "ce" else 1.3,
                label=f"{name} ({a['labels'][a['best']]})")
        ax.fill_between(t, c.min(0), c.max(0), color=COLORS[name], alpha=0.1, lw=0)
      ax.set(ylabel=label, title=f"ρ = {ratio}")
      ax.grid(True, alpha=0.3)
      ax.set_ylim(0, 100)
    axes[1, r].set_xlabel("step")
  axes[0, -1].legend(fontsize=7, loc="lower right")
  fig.suptitle("Training curves of the picked settings (mean over seeds, band: min–max)")
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  import _report

  _report.refuse_direct_run(__doc__, "imbalance.py")
