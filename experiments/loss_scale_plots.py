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
  shown = []  # every finite, positive value drawn (medians and seed bands)
  for o, name in enumerate(names):
    s = steps[o]
    med = np.median(s, axis=1)
    ok = np.isfinite(med)
    c = COLORS.get(name)
    hollow = name in ("sgd+momentum", "sgd+l2", "adamw")
    # hollow markers are drawn larger, so one that coincides with a filled one stays visible
    ax.plot(ws[ok], med[ok], "--" if hollow else "-", marker=MARKERS.get(name, "o"), color=c,
            label=name, lw=1.6, ms=8 if hollow else 5, mfc="none" if hollow else c)
    lo, hi = np.min(s, axis=1), np.max(s, axis=1)
    ax.fill_between(ws[ok], lo[ok], hi[ok], color=c, alpha=0.15, lw=0)
    shown += [v for v in (*med[ok], *lo[ok], *hi[ok]) if np.isfinite(v) and v > 0]
  # a reference line of slope -1 through SGD's largest-w point, within the grid's w
  if "sgd" in names:
    med = np.median(steps[names.index("sgd")], axis=1)
    ok = np.flatnonzero(np.isfinite(med) & (med > 0))
    if ok.size:
      w0, s0 = ws[ok[-1]], med[ok[-1]]
      ref_w = np.array([max(ws.min(), w0 * 10 ** -2.5), w0])
      if ref_w[0] < ref_w[1]:
        ax.plot(ref_w, s0 * w0 / ref_w, "k:", lw=1, label="slope -1 (steps ∝ 1/w)")
  ax.axhline(args.steps, color="k", lw=0.8, ls="--")
  ax.text(ws[0], args.steps * 1.08, f"budget: {args.steps} steps (a w at which a seed does not "
          "reach the target has no marker)", fontsize=8, va="bottom")
  if not shown:
    ax.text(np.sqrt(ws[0] * ws[-1]), args.steps / 10,
            f"no w reaches training CE ≤ {args.target} within {args.steps} steps",
            ha="center", va="center", fontsize=10)
  ax.set(xscale="log", yscale="log", xlabel="loss weight w",
         ylabel=f"steps until training CE ≤ {args.target} (median, band = min–max over seeds)",
         title="Steps to target vs loss weight")
  # explicit limits on both axes: when no w reaches the target nothing is plotted, and a log
  # x axis without data kept its (0, 1) default: 'Data cannot be log-scaled' in tight_layout
  bottom = min([*shown, args.steps / 10]) / 2
  ax.set_ylim(bottom=bottom, top=args.steps * 2)
  ax.set_xlim(ws[0] / 1.5, ws[-1] * 1.5)
  ax.grid(True, which="both", alpha=0.25)
  if ax.get_legend_handles_labels()[0]:
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


def decay_title(names) -> str:
  """The parameter-norm panel's title: it names a decay only when a decay variant ran."""
  ran = [f"{n} ({kind})" for n, kind in (("sgd+l2", "coupled L2"), ("adamw", "decoupled decay"))
         if n in names]
  if not ran:
    return "Final parameter norm\n(no decay variant ran: neither sgd+l2 nor adamw)"
  return "Final parameter norm\n(decay: " + ", ".join(ran) + ")"


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
  a2.set(xscale="log", xlabel="loss weight w", ylabel="final |θ|", title=decay_title(names))
  for a in (a1, a2):
    a.grid(True, which="both", alpha=0.25)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  import _report

  _report.refuse_direct_run(__doc__, "loss_scale.py")
