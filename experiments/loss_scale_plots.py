"""Plots of the loss-scale study."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MARKERS = {"sgd": "o", "sgd+momentum": "s", "sgd+l2": "^", "adam": "o", "adamw": "s"}
COLORS = {
    "sgd": "tab:blue", "sgd+momentum": "tab:cyan", "adam": "tab:red", "adamw": "tab:orange",
    "rmsprop": "tab:green", "adagrad": "tab:purple", "sgd+l2": "tab:gray",
}


def plot_all(out: Path, curves, steps, norms, ws, names, args) -> None:
  plot_steps(out / "steps_vs_w.png", steps, ws, names, args)
  plot_curves(out / "loss_curves.png", curves, ws, names, args)
  plot_decay(out / "decay.png", curves, norms, ws, names)


def plot_steps(path: Path, steps, ws, names, args) -> None:
  fig, ax = plt.subplots(figsize=(8, 5.5))
  for o, name in enumerate(names):
    s = steps[o]
    med = np.median(s, axis=1)
    ok = np.isfinite(med)
    c = COLORS.get(name)
    ls = "--" if name in ("sgd+momentum", "sgd+l2", "adamw") else "-"
    ax.plot(ws[ok], med[ok], ls, marker=MARKERS.get(name, "o"), color=c, label=name, lw=1.6,
            ms=5, mfc="none" if ls == "--" else c)
    lo, hi = np.min(s, axis=1), np.max(s, axis=1)
    ax.fill_between(ws[ok], lo[ok], hi[ok], color=c, alpha=0.15, lw=0)
  # a reference line of slope -1 through SGD's largest-w point
  if "sgd" in names:
    med = np.median(steps[names.index("sgd")], axis=1)
    ok = np.flatnonzero(np.isfinite(med))
    if ok.size:
      w0, s0 = ws[ok[-1]], med[ok[-1]]
      ref_w = np.array([w0 * 10 ** -2.5, w0])
      ax.plot(ref_w, s0 * w0 / ref_w, "k:", lw=1, label="slope -1 (steps ∝ 1/w)")
  ax.axhline(args.steps, color="k", lw=0.8, ls="--")
  ax.text(ws[0], args.steps * 1.08, f"budget: {args.steps} steps (points above are not reached)",
          fontsize=8, va="bottom")
  ax.set(xscale="log", yscale="log", xlabel="loss weight w",
         ylabel=f"steps until training CE ≤ {args.target} (median, band = min–max over seeds)",
         title="Steps to target vs loss weight")
  ax.set_ylim(top=args.steps * 2)
  ax.grid(True, which="both", alpha=0.25)
  ax.legend(fontsize=8, loc="lower left", ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def plot_curves(path: Path, curves, ws, names, args) -> None:
  n = len(names)
  cols = min(4, n)
  rows = int(np.ceil(n / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.3 * rows), sharey=True,
                           squeeze=False, layout="constrained")
  t = np.arange(curves.shape[-1]) * args.eval_every
  cmap = plt.get_cmap("viridis")
  lw = np.log10(ws)
  norm = plt.Normalize(lw.min(), lw.max())
  for o, name in enumerate(names):
    ax = axes.flat[o]
    for i in range(len(ws)):
      ax.plot(t, np.median(curves[o, i], axis=0), color=cmap(norm(lw[i])), lw=1.2)
    ax.axhline(args.target, color="k", ls="--", lw=0.8)
    ax.set(yscale="log", title=name, xlabel="step")
    ax.grid(True, alpha=0.25)
  for ax in axes[:, 0]:
    ax.set_ylabel("training CE (median over seeds)")
  for ax in axes.flat[n:]:
    ax.axis("off")
  sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
  fig.colorbar(sm, ax=axes, label="log10 w", shrink=0.8)
  fig.suptitle(f"Training cross-entropy per loss weight w (dashed: target {args.target})")
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_decay(path: Path, curves, norms, ws, names) -> None:
  show = [n for n in ("sgd", "sgd+l2", "adam", "adamw") if n in names]
  if not show:
    return
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name in show:
    o = names.index(name)
    c = COLORS.get(name)
    ls = "--" if name in ("sgd+l2", "adamw") else "-"
    a1.plot(ws, np.median(curves[o, :, :, -1], axis=1), ls, color=c, marker="o", ms=3, label=name)
    a2.plot(ws, np.median(norms[o, :, :, -1], axis=1), ls, color=c, marker="o", ms=3, label=name)
  a1.set(xscale="log", yscale="log", xlabel="loss weight w", ylabel="final training CE",
         title="Final training loss")
  a2.set(xscale="log", xlabel="loss weight w", ylabel="final |θ|",
         title="Final parameter norm (coupled L2 shrinks it as w falls)")
  for a in (a1, a2):
    a.grid(True, which="both", alpha=0.25)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  import _report

  _report.refuse_direct_run(__doc__, "loss_scale.py")
