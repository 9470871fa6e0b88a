"""Analysis, plots and summary of GradNorm's synthetic study (``gradnorm_synthetic.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from weightax.runs import write_json  # noqa: E402

COLORS = {"equal": "tab:gray", "gradnorm": "tab:red", "uncertainty": "tab:blue"}
TAIL = 0.1  # "final" = mean over the last 10% of the evaluations


def _tail(x: np.ndarray) -> np.ndarray:
  """Mean over the last ``TAIL`` fraction of axis 1 (the evaluations)."""
  n = max(1, int(round(TAIL * (x.shape[1] - 1))))
  return x[:, -n:].mean(axis=1)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman's rank correlation (no ties expected)."""
  if len(a) < 3:
    return math.nan
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def analyse(results: dict, sigmas: dict) -> dict:
  """Per T and method: final loss ratios, weights, and stability numbers."""
  out = {}
  for (t, name), m in results.items():
    sig = np.asarray(sigmas[t])
    small, large = int(np.argmin(sig)), int(np.argmax(sig))
    losses, w = m["test_losses"], m["weights"]  # [S, E+1, T]
    ratio = losses / losses[:, :1]
    wn = w * t / w.sum(axis=-1, keepdims=True)  # comparable across methods: Σ w = T
    final_ratio = _tail(ratio)  # [S, T]
    final_w = _tail(wn)
    half = w.shape[1] // 2
    w_small = wn[:, half:, small]
    cv = float(np.mean(w_small.std(axis=1) / np.maximum(np.abs(w_small.mean(axis=1)), 1e-12)))
    entry = {
        "sigmas": sig.tolist(),
        "final_sum_ratio": float(final_ratio.sum(-1).mean()),
        "final_sum_ratio_per_seed": final_ratio.sum(-1).tolist(),
        "final_task_ratio": final_ratio.mean(0).tolist(),
        "final_weights": final_w.mean(0).tolist(),
        "final_weight_small_sigma": float(final_w[:, small].mean()),
        "final_weight_large_sigma": float(final_w[:, large].mean()),
        "weight_rank_corr_with_sigma": _rank_corr(sig, final_w.mean(0)),
        "min_weight_ever": float(np.nanmin(w)),
        "fraction_evals_with_negative_weight": float(np.mean((w < 0).any(axis=-1))),
        "small_sigma_weight_cv_last_half": cv,
        "finite": bool(np.isfinite(losses).all() and np.isfinite(w).all()),
    }
    out.setdefault(str(t), {})[name] = entry
  return out


def verdicts(analysis: dict) -> dict:
  """Per T: does GradNorm raise the small-σ task's weight, is it stable, does it help?"""
  out = {}
  for t, methods in analysis.items():
    g = methods.get("gradnorm")
    if g is None:
      continue
    eq = methods.get("equal")
    raises = g["final_weight_small_sigma"] > 1.0 and (
        g["final_weight_small_sigma"] > g["final_weight_large_sigma"])
    stable = g["finite"] and g["small_sigma_weight_cv_last_half"] < 0.2
    out[t] = {
        "raises_small_sigma_weight": bool(raises),
        "stable": bool(stable),
        "weights_stay_positive": g["fraction_evals_with_negative_weight"] == 0.0,
        "beats_equal_on_sum_ratio": (None if eq is None else
                                     bool(g["final_sum_ratio"] < eq["final_sum_ratio"])),
    }
  return out


def answer_text(summary: dict) -> str:
  """Numbers behind the paper's claims, per T."""
  lines = ["GradNorm on Chen et al.'s synthetic regression (final = mean of the last 10% of "
           "evaluations, over seeds; weights normalised to sum T):"]
  for t, methods in summary["analysis"].items():
    sig = methods[next(iter(methods))]["sigmas"]
    lines.append(f"  T={t} (σ from {min(sig):g} to {max(sig):g}):")
    for name, e in methods.items():
      lines.append(
          f"    {name:>11}: Σ L_i/L_i(0) = {e['final_sum_ratio']:.3f}; "
          f"w(σ={min(sig):g}) = {e['final_weight_small_sigma']:.3f}, "
          f"w(σ={max(sig):g}) = {e['final_weight_large_sigma']:.3f}; "
          f"L/L0 of σ={min(sig):g} task = {e['final_task_ratio'][int(np.argmin(sig))]:.3f}")
    v = summary["verdicts"].get(t)
    if v:
      lines.append(f"    -> GradNorm raises the small-σ weight: {v['raises_small_sigma_weight']}; "
                   f"stable: {v['stable']}; weights stay positive: {v['weights_stay_positive']}; "
                   f"lower Σ L_i/L_i(0) than equal weights: {v['beats_equal_on_sum_ratio']}")
  return "\n".join(lines)


def write_all(out: Path, results: dict, args, sigmas: dict, elapsed: float) -> dict:
  """Writes curves.csv, final.csv, summary.json, summary.md and the plots."""
  analysis = analyse(results, sigmas)
  summary = {
      "question": "Does GradNorm raise the weight of the small-σ task and stay stable "
                  "(Chen et al. 2018, §4)?",
      "steps": args.steps, "seeds": args.seeds, "seconds": elapsed,
      "sigmas": {str(t): np.asarray(s).tolist() for t, s in sigmas.items()},
      "analysis": analysis,
      "verdicts": verdicts(analysis),
      "settings": {k: v for k, v in vars(args).items()},
  }
  write_json(out / "summary.json", summary)
  with (out / "curves.csv").open("w") as f:
    f.write("T,method,seed,step,task,sigma,test_loss,loss_ratio,weight\n")
    for (t, name), m in results.items():
      losses, w = m["test_losses"], m["weights"]
      for s in range(losses.shape[0]):
        for e in range(losses.shape[1]):
          for k in range(t):
            f.write(f"{t},{name},{s},{e * args.eval_every},{k},{sigmas[t][k]:.6g},"
                    f"{losses[s, e, k]:.6g},{losses[s, e, k] / losses[s, 0, k]:.6g},"
                    f"{w[s, e, k]:.6g}\n")
  with (out / "final.csv").open("w") as f:
    f.write("T,method,task,sigma,final_loss_ratio,final_weight_normalised\n")
    for t, methods in analysis.items():
      for name, e in methods.items():
        for k, sg in enumerate(e["sigmas"]):
          f.write(f"{t},{name},{k},{sg:.6g},{e['final_task_ratio'][k]:.6g},"
                  f"{e['final_weights'][k]:.6g}\n")
  plot_weights(out / "weights.png", results, sigmas, args)
  plot_ratios(out / "loss_ratio.png", results, sigmas, args)
  (out / "summary.md").write_text(summary_markdown(summary, args))
  return summary


def plot_weights(path: Path, results: dict, sigmas: dict, args) -> None:
  """Task weights over time (median over seeds), one row per T, one column per method."""
  ts = sorted({t for t, _ in results})
  names = [n for n in args.methods if n != "equal"] or list(args.methods)
  fig, axes = plt.subplots(len(ts), len(names), figsize=(5.5 * len(names), 3.8 * len(ts)),
                           squeeze=False)
  cmap = plt.get_cmap("viridis")
  for i, t in enumerate(ts):
    sig = np.asarray(sigmas[t])
    lo, hi = np.log(sig.min()), np.log(sig.max())
    for j, name in enumerate(names):
      ax = axes[i, j]
      w = results[(t, name)]["weights"]
      w = w * t / w.sum(-1, keepdims=True)
      steps = np.arange(w.shape[1]) * args.eval_every
      for k in range(t):
        c = cmap(0.0 if hi == lo else (np.log(sig[k]) - lo) / (hi - lo))
        ax.plot(steps, np.median(w[:, :, k], axis=0), color=c, lw=1.6, label=f"σ={sig[k]:.3g}")
      ax.axhline(1.0, color="k", lw=0.8, ls=":")
      # Log scale unless a weight went negative (GradNorm does not keep w > 0).
      if np.all(w > 0):
        ax.set_yscale("log")
      else:
        ax.set_yscale("symlog", linthresh=1e-2)
      ax.set(title=f"{name}, T={t}", xlabel="step", ylabel="weight (normalised: Σ w = T)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7, ncol=2 if t > 4 else 1, loc="best")
  fig.suptitle("Task weights over time (median over seeds; dotted: equal weights = 1)",
               fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_ratios(path: Path, results: dict, sigmas: dict, args) -> None:
  """Σ_i L_i(t)/L_i(0) and the small-σ task's L(t)/L(0), median and min–max over seeds."""
  ts = sorted({t for t, _ in results})
  fig, axes = plt.subplots(2, len(ts), figsize=(6 * len(ts), 7.5), squeeze=False)
  for j, t in enumerate(ts):
    small = int(np.argmin(sigmas[t]))
    for name in args.methods:
      m = results[(t, name)]["test_losses"]
      r = m / m[:, :1]
      steps = np.arange(r.shape[1]) * args.eval_every
      for row, y in ((0, r.sum(-1)), (1, r[:, :, small])):
        ax = axes[row, j]
        ax.plot(steps, np.median(y, 0), color=COLORS.get(name), lw=1.8, label=name)
        ax.fill_between(steps, y.min(0), y.max(0), color=COLORS.get(name), alpha=0.15, lw=0)
    axes[0, j].set(title=f"T={t}: Σ_i L_i(t)/L_i(0) (test)", xlabel="step", ylabel="sum of ratios")
    axes[1, j].set(title=f"T={t}: the σ={sigmas[t][small]:g} task's L(t)/L(0) (test)",
                   xlabel="step", ylabel="loss ratio")
    for ax in axes[:, j]:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.suptitle("Training progress (median; band = min–max over seeds)", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summary_markdown(summary: dict, args) -> str:
  """The plain-language report."""
  md = [
      "# GradNorm's synthetic regression (Chen et al. 2018, §4)",
      "",
      f"Targets `f_i(x) = σ_i tanh((B + ε_i) x)`, x ∈ R^250 (uniform on [-1, 1]^250, unit "
      f"norm), outputs R^100; `B` and `ε_i` have entries N(0, 10) and N(0, 3.5) read as "
      f"**{args.normal_param}** (`--normal-param`; the paper does not say whether 10 and 3.5 "
      f"are variances or standard deviations, and the PyTorch reimplementations use them as "
      f"standard deviations). A {args.depth}-layer ReLU trunk of width {args.width} shared by "
      f"T affine heads, squared loss, Adam (lr {args.lr:g}) on the network, "
      f"{args.train_size} training and {args.test_size} test examples, batch "
      f"{args.batch_size}, {summary['steps']} steps, {summary['seeds']} seeds (initialisation "
      f"and batches; the problem is fixed by `--problem-seed`). GradNorm: α = {args.alpha:g}, "
      f"weights trained by Adam at lr {args.weight_lr:g}, gradient norms on the last shared "
      f"layer's kernel (`layer=` mask). Uncertainty weighting: log-variances trained by Adam "
      f"at lr {args.weight_lr:g}. Equal weights: `linear_scalarization` (w = 1). The trunk's "
      f"per-task Jacobian comes from `weightax.mtl.shared_jacobian`; each head gets its own "
      f"task's gradient. Each (T, method) is one compiled sweep over the seeds. Total "
      f"{summary['seconds']:.0f} s.",
      "",
      "## Answer",
      "",
      "```",
      answer_text(summary),
      "```",
      "",
      "| T | method | Σ L_i/L_i(0) (per seed) | w of smallest σ | w of largest σ | "
      "L/L0 of smallest-σ task | min raw weight | evals with a negative weight | "
      "CV of small-σ weight (last half) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for t, methods in summary["analysis"].items():
    for name, e in methods.items():
      small = int(np.argmin(e["sigmas"]))
      per_seed = ", ".join(f"{x:.3f}" for x in e["final_sum_ratio_per_seed"])
      md.append(
          f"| {t} | {name} | {e['final_sum_ratio']:.3f} ({per_seed}) | "
          f"{e['final_weight_small_sigma']:.3f} | {e['final_weight_large_sigma']:.3f} | "
          f"{e['final_task_ratio'][small]:.3f} | {e['min_weight_ever']:.3g} | "
          f"{100 * e['fraction_evals_with_negative_weight']:.0f}% | "
          f"{e['small_sigma_weight_cv_last_half']:.3f} |")
  md += [
      "",
      "Weights are normalised to sum T (GradNorm's own convention; uncertainty weighting's "
      "coefficients `½e^{-s}` are rescaled). 'Final' is the mean over the last 10% of "
      f"evaluations (every {args.eval_every} steps), averaged over seeds. 'Stable' in the "
      "answer means finite throughout and a coefficient of variation of the small-σ task's "
      "weight below 0.2 over the second half of training.",
      "",
  ]
  for t, methods in summary["analysis"].items():
    e = methods.get("gradnorm")
    if e is not None and len(e["sigmas"]) > 2:
      md.append(f"T={t}: GradNorm's final weights by σ: " + ", ".join(
          f"σ={s:.3g}: {w:.3f}" for s, w in zip(e["sigmas"], e["final_weights"], strict=True))
          + f" (rank correlation with σ: {e['weight_rank_corr_with_sigma']:+.2f}).")
      md.append("")
  md += [
      "Plots: `weights.png` (task weights over time), `loss_ratio.png` (Σ L_i/L_i(0) and the "
      "small-σ task's ratio). Data: `curves.csv`, `final.csv`, `summary.json`.",
      "",
      f"Command: `{args.command}`",
      "",
  ]
  return "\n".join(md)
