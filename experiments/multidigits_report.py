"""Model selection, Δm%, verdicts and the summary of the MultiDigits benchmark (``multidigits.py``).

Δm% follows LibMTL: ``Δm = (100/T) Σ_t s_t (M_t − B_t)/B_t`` with ``B_t`` the
single-task baseline's mean test metric and ``s_t = +1`` when higher is better,
``−1`` when lower is better. Model selection uses the validation split only.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import _report
import numpy as np

from weightax.datasets.multidigits import HIGHER_IS_BETTER, TASKS
from weightax.runs import write_json

STL = "single_task"
METRIC_NAMES = {"left": "accuracy", "right": "accuracy", "sum": "MAE"}
SIGNS = np.array([1.0 if h else -1.0 for h in HIGHER_IS_BETTER])


def delta_m(metrics: np.ndarray, baseline: np.ndarray) -> np.ndarray:
  """LibMTL's Δm% of ``metrics [..., T]`` against ``baseline [T]``: positive is better."""
  metrics = np.asarray(metrics, np.float64)
  baseline = np.asarray(baseline, np.float64)
  return 100.0 * np.mean(SIGNS * (metrics - baseline) / baseline, axis=-1)


def select_stl(val: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
  """Single-task selection: per task model, the evaluation with its task's best validation metric.

  Args:
    val: ``[T (trained task), S, E, T (metric)]`` validation metrics.
    test: the same for the test split.

  Returns:
    ``{"val": [T, S], "test": [T, S], "step_index": [T, S]}``: each model's own task only.
  """
  t_count, s_count = val.shape[:2]
  out = {k: np.zeros((t_count, s_count)) for k in ("val", "test")}
  out["step_index"] = np.zeros((t_count, s_count), np.int64)
  for t in range(t_count):
    v = SIGNS[t] * val[t, :, :, t]  # [S, E]: larger is better
    best = np.argmax(v, axis=1)
    out["step_index"][t] = best
    out["val"][t] = val[t, np.arange(s_count), best, t]
    out["test"][t] = test[t, np.arange(s_count), best, t]
  return out


def select_mtl(val: np.ndarray, test: np.ndarray, val_baseline: np.ndarray) -> dict[str, Any]:
  """Multi-task selection: the evaluation with the best validation Δm% against STL's validation.

  Args:
    val: ``[..., E, T]`` validation metrics of each configuration at each evaluation.
    test: the same for the test split.
    val_baseline: ``[T]`` STL's mean (selected) validation metrics.

  Returns:
    ``{"val": [..., T], "test": [..., T], "step_index": [...]}``.
  """
  dm_val = delta_m(val, val_baseline)  # [..., E]
  best = np.argmax(dm_val, axis=-1)
  take = lambda x: np.take_along_axis(x, best[..., None, None], axis=-2)[..., 0, :]
  return {"val": take(val), "test": take(test), "step_index": best}


def _stats(x: np.ndarray) -> dict[str, Any]:
  return _report.describe(x)


def analyse(runs: dict[str, Any], *, eval_every: int,
            sensitivity: dict[str, Any] | None = None) -> dict[str, Any]:
  """Selection, Δm% and verdicts of every method (and of every sensitivity value)."""
  stl = runs[STL]
  stl_sel = select_stl(stl.grid("eval/val"), stl.grid("eval/test"))
  baseline = stl_sel["test"].mean(axis=1)  # B_t: [T]
  val_baseline = stl_sel["val"].mean(axis=1)
  # STL's own per-seed Δm (seed s: the T single-task models of seed s); mean 0 by linearity.
  stl_dm = delta_m(stl_sel["test"].T, baseline)
  methods: dict[str, Any] = {
      STL: {"delta_m_seeds": stl_dm, "test": stl_sel["test"].T,
            "best_step": (stl_sel["step_index"].T * eval_every)}
  }
  for name, res in runs.items():
    if name == STL:
      continue
    sel = select_mtl(res.grid("eval/val"), res.grid("eval/test"), val_baseline)
    methods[name] = {"delta_m_seeds": delta_m(sel["test"], baseline), "test": sel["test"],
                     "best_step": sel["step_index"] * eval_every}
  for name, m in methods.items():
    d = _stats(m["delta_m_seeds"])
    m["delta_m"], m["delta_m_std"] = d["mean"], d["std"]
    m["tasks"] = {t: float(np.mean(m["test"][:, i])) for i, t in enumerate(TASKS)}
    m["tasks_std"] = {t: float(np.std(m["test"][:, i], ddof=1)) if len(m["test"]) > 1
                      else math.nan for i, t in enumerate(TASKS)}
    # Paired by seed (same initialisation and batches) against STL's per-seed Δm.
    m["vs_stl"] = _report.compare(m["delta_m_seeds"], stl_dm) if name != STL else None
    m["verdict"] = m["vs_stl"]["verdict"] if name != STL else "baseline"
  order = sorted(methods, key=lambda n: -np.nan_to_num(methods[n]["delta_m"], nan=-np.inf))
  for r, n in enumerate(order, 1):
    methods[n]["rank"] = r
  sens = {}
  for name, s in (sensitivity or {}).items():
    res = s["result"]
    sel = select_mtl(res.grid("eval/val"), res.grid("eval/test"), val_baseline)
    dm = delta_m(sel["test"], baseline)  # [V, S]
    values = np.asarray(res.axes[s["param"]], np.float64)
    sens[name] = {
        "param": s["param"], "default": s["default"], "values": values,
        "delta_m_seeds": dm, "test": sel["test"], "best_step": sel["step_index"] * eval_every,
        "delta_m": dm.mean(axis=1),
        "delta_m_std": dm.std(axis=1, ddof=1) if dm.shape[1] > 1 else np.full(len(values), np.nan),
        "seconds": s["timing"]["seconds"],
    }
    sens[name]["reading"] = sensitivity_reading(sens[name])
  return {"baseline": baseline, "val_baseline": val_baseline, "methods": methods,
          "order": order, "sensitivity": sens}


def sensitivity_reading(s: dict[str, Any]) -> dict[str, Any]:
  """How much Δm moves across a hyperparameter's values, against the seed spread.

  ``sensitive`` when the range of the mean Δm across the values exceeds twice the
  largest standard deviation over seeds at any one value (a difference the seeds
  alone are unlikely to produce); otherwise the values are not told apart.
  """
  means, stds = np.asarray(s["delta_m"]), np.asarray(s["delta_m_std"])
  best = int(np.nanargmax(means))
  spread = float(np.nanmax(means) - np.nanmin(means))
  noise = float(np.nanmax(stds)) if np.isfinite(stds).any() else math.nan
  sensitive = bool(math.isfinite(noise) and spread > 2 * noise)
  return {"best_value": float(s["values"][best]), "best_delta_m": float(means[best]),
          "range": spread, "max_seed_std": noise, "sensitive": sensitive}


def _pm(mean: float, std: float, spec: str = "+.2f") -> str:
  return f"{_report.fmt(mean, spec)} ± {_report.fmt(std, '.2f')}"


def _task_cell(m: dict[str, Any], t: str) -> str:
  spec = ".3f" if METRIC_NAMES[t] == "accuracy" else ".3f"
  return f"{_report.fmt(m['tasks'][t], spec)} ± {_report.fmt(m['tasks_std'][t], '.3f')}"


def reading(a: dict[str, Any], *, seeds: int, timings: dict[str, Any],
            weight_notes: dict[str, str]) -> list[str]:
  """The plain-language reading of the table; every verdict is computed from the numbers."""
  m = a["methods"]
  names = [n for n in a["order"] if n != STL]
  if not names:
    return ["Only the single-task baselines ran (no multi-task method was selected)."]
  better = [n for n in names if m[n]["verdict"] == "better"]
  worse = [n for n in names if m[n]["verdict"] == "worse"]
  ties = [n for n in names if m[n]["verdict"] == "tie"]
  best, worst = names[0], names[-1]
  lines = [
      f"- **Best mean Δm%: `{best}`** ({_pm(m[best]['delta_m'], m[best]['delta_m_std'])}); "
      f"lowest: `{worst}` ({_pm(m[worst]['delta_m'], m[worst]['delta_m_std'])}).",
      f"- Against single-task learning (95% t-interval of the per-seed Δm difference, "
      f"{seeds} seeds paired by initialisation and, except for the meta-learned methods, "
      "batches): "
      f"{len(better)} better ({', '.join(f'`{n}`' for n in better) or 'none'}), "
      f"{len(worse)} worse ({', '.join(f'`{n}`' for n in worse) or 'none'}), "
      f"{len(ties)} not distinguishable from it"
      + (f" ({', '.join(f'`{n}`' for n in ties)})." if ties else "."),
  ]
  positive = [n for n in names if m[n]["delta_m"] > 0]
  lines.append(f"- {len(positive)} of {len(names)} methods have a positive mean Δm% "
               "(better than single-task on average over the seeds), "
               f"{len(names) - len(positive)} a negative or zero one.")
  # Per task: the average relative change over methods (signed: positive = better).
  rel = {t: float(np.mean([SIGNS[i] * (m[n]["tasks"][t] - a["baseline"][i]) / a["baseline"][i]
                           for n in names])) * 100 for i, t in enumerate(TASKS)}
  helped = [t for t in TASKS if rel[t] > 0]
  hurt = [t for t in TASKS if rel[t] < 0]
  lines.append(
      "- Per task, the test metric's relative change against single-task learning, averaged "
      "over the methods (signed so that positive is better): "
      + ", ".join(f"{t} {rel[t]:+.2f}%" for t in TASKS)
      + f". On average multi-task training helps {len(helped)} task(s)"
      + (f" ({', '.join(f'`{t}`' for t in helped)})" if helped else "")
      + f" and hurts {len(hurt)}" + (f" ({', '.join(f'`{t}`' for t in hurt)})." if hurt else "."))
  stds = [m[n]["delta_m_std"] for n in names if math.isfinite(m[n]["delta_m_std"])]
  if stds:
    span = m[best]["delta_m"] - m[worst]["delta_m"]
    lines.append(
        f"- The methods' mean Δm% span {span:.2f} points; the median seed std is "
        f"{float(np.median(stds)):.2f}, so gaps between neighbouring methods smaller than "
        "that are within seed noise and the ranking between them is not settled.")
  slow = max(names, key=lambda n: timings[n]["seconds"])
  total = sum(timings[n]["seconds"] for n in [STL, *names])
  cpu = sum(timings[n]["cpu_seconds"] for n in [STL, *names])
  lines.append(f"- Time: {total:.0f} s wall ({cpu:.0f} s of CPU time) for the single-task "
               f"baselines and the {len(names)} methods; the slowest is `{slow}` "
               f"({timings[slow]['seconds']:.0f} s, compilation included).")
  for n, note in weight_notes.items():
    lines.append(f"- `{n}`: {note}")
  return lines


def weight_notes(runs: dict[str, Any], meta: tuple[str, ...] = ()) -> dict[str, str]:
  """Methods that record no weights (NaN), and where the meta-learned weights ended, from the
  runs' own ``task_weights``."""
  notes = {}
  for n, res in runs.items():
    if n == STL:
      continue
    w = np.asarray(res.metrics["task_weights"])
    if not np.isfinite(w).any():
      notes[n] = "records no task weights (NaN): its update is not a weighting of the gradients."
    elif n in meta:
      first, last = w[:, 0].mean(axis=0), w[:, -1].mean(axis=0)  # [T], mean over seeds
      ratio = float(np.max(last) / np.min(last)) if np.min(last) > 0 else math.nan
      notes[n] = (
          "its learned λ (mean over seeds) went from "
          + ", ".join(f"{t} {v:.4g}" for t, v in zip(TASKS, first, strict=True))
          + " after the first step to "
          + ", ".join(f"{t} {v:.4g}" for t, v in zip(TASKS, last, strict=True))
          + f" at the last; largest / smallest at the last step: {_report.fmt(ratio, '.3f')}.")
  return notes


def meta_paragraph(args: Any, names: list[str]) -> list[str]:
  """How the meta-learned methods (Auto-λ) were trained: their meta-validation data."""
  if not names:
    return []
  listed = ", ".join(f"`{n}`" for n in names)
  if args.n_meta_val == args.n_train:
    data = ("draws its meta-validation batches from the training images themselves (the "
            "Auto-Lambda reference code's second shuffled pass over the training set; "
            "`--meta-val-fraction 0`)")
  else:
    data = (f"holds out {args.n_meta_val} of the {args.n_train} training images "
            f"(`--meta-val-fraction {args.meta_val_fraction:g}`) as its meta-validation set "
            f"and trains on the other {args.n_meta_train}; the validation split above is "
            "used for model selection only, as for every other method")
  return [
      f"Meta-learned task weights ({listed}, `weightax.meta`, trained through "
      f"`weightax.mtl.fit(meta=..., val_data=...)`, with its library defaults): {data}. Each "
      "step it updates λ by the exact gradient of the (all-task) meta-validation loss through "
      "one virtual Adam step (the benchmark's Adam with `eps_root=1e-16`, without which a "
      "parameter with an exactly zero gradient makes the meta-gradient NaN), then trains the "
      "whole network on Σ_k λ_k L_k (no shared mask: "
      "each head gets λ_k ∇L_k). Its batches differ from the other methods' (the same seeds "
      "give the same initialisation).",
      "",
  ]


def markdown(a: dict[str, Any], *, args: Any, timings: dict[str, Any], hyper: dict[str, Any],
             skipped: dict[str, str], conditions: dict[str, Any], notes: dict[str, str]) -> str:
  m = a["methods"]
  tasks_head = " | ".join(f"{t} ({METRIC_NAMES[t]}, {'↑' if h else '↓'})"
                          for t, h in zip(TASKS, HIGHER_IS_BETTER, strict=True))
  lines = [
      "# MultiDigits: multi-task methods against single-task learning",
      "",
      f"Command: `{args.command}`",
      "",
      f"Data: {args.n_train}/{args.n_val}/{args.n_test} train/validation/test images of "
      f"{args.canvas}×{args.canvas} pixels, two overlapping 8×8 digits each (shift ≤ "
      f"{args.max_shift}), from disjoint pools of source digits (data seed {args.data_seed}). "
      f"Tasks: left digit, right digit (accuracy), sum of the two (MAE). Model: a CNN trunk "
      f"(3×3 convolutions with {args.channels[0]} and {args.channels[1]} channels, "
      f"{args.features} features) with one linear head per task; Adam (lr {args.lr}), "
      f"{args.steps} steps of {args.batch_size} images, {args.seeds} seeds. The aggregators "
      "combine the per-task gradients of the trunk; each head gets its own task's gradient.",
      "",
      *meta_paragraph(args, [n for n in a["order"] if n in getattr(args, "meta_methods", ())]),
      f"Model selection on the validation split, at the evaluation (every {args.eval_every} "
      "steps) with the best validation Δm% against the single-task validation metrics "
      "(single-task models: their task's best validation metric). "
      "Δm% = (100/T) Σ_t s_t (M_t − B_t)/B_t on the test split, B_t the mean single-task "
      "test metric, s_t = +1 for accuracy and −1 for MAE: **positive is better than "
      "single-task learning**. Mean ± sample std over seeds; the verdict is the 95% "
      "t-interval of the per-seed Δm difference to single-task learning (same seeds).",
      "",
      f"| rank | method | Δm% | vs single-task | {tasks_head} | wall (s) | CPU (s) |",
      "|---:|---|---:|---|" + "---:|" * len(TASKS) + "---:|---:|",
  ]
  for n in a["order"]:
    cells = " | ".join(_task_cell(m[n], t) for t in TASKS)
    lines.append(f"| {m[n]['rank']} | `{n}` | {_pm(m[n]['delta_m'], m[n]['delta_m_std'])} | "
                 f"{m[n]['verdict']} | {cells} | {timings[n]['seconds']:.1f} | "
                 f"{timings[n]['cpu_seconds']:.1f} |")
  lines += ["", "## Reading", ""]
  lines += reading(a, seeds=args.seeds, timings=timings, weight_notes=notes)
  if skipped:
    lines += ["", "Not run or failed:"] + [f"- `{n}`: {why}" for n, why in skipped.items()]
  lines += ["", "Hyperparameters (the library's defaults, `num_tasks=3`):", ""]
  lines += [f"- `{n}`: " + (", ".join(f"{k}={v}" for k, v in h.items()) or "none")
            for n, h in hyper.items()]
  if a["sensitivity"]:
    lines += ["", "## Sensitivity", "",
              "Δm% (mean ± std over seeds) against each method's main hyperparameter; "
              "every value of one method ran as one sweep. *Sensitive* means the range of the "
              "mean Δm% across the values exceeds twice the largest seed std at one value.", "",
              "| method | parameter | value | Δm% | |", "|---|---|---:|---:|---|"]
    for n, s in a["sensitivity"].items():
      for v, mu, sd in zip(s["values"], s["delta_m"], s["delta_m_std"], strict=True):
        mark = "default" if s["default"] is not None and np.isclose(v, s["default"]) else ""
        lines.append(f"| `{n}` | {s['param']} | {v:g} | {_pm(mu, sd)} | {mark} |")
    lines.append("")
    for n, s in a["sensitivity"].items():
      r = s["reading"]
      lines.append(
          f"- `{n}` ({s['param']} over {_report.range_label(s['values'])}): best mean at "
          f"{r['best_value']:g} (Δm% {r['best_delta_m']:+.2f}); the means span "
          f"{r['range']:.2f} points against a largest seed std of "
          f"{_report.fmt(r['max_seed_std'], '.2f')}: "
          + ("**sensitive**." if r["sensitive"] else "the values are not told apart at "
             f"{args.seeds} seeds.") + f" ({s['seconds']:.0f} s)")
  lines += ["", "## Conditions", "",
            f"- {conditions['cpus']} CPUs visible, JAX {conditions['jax']} on "
            f"{conditions['backend']} ({conditions['platform']}).",
            f"- Machine load at start: {conditions['load_at_start']}; at end: "
            f"{conditions['load_at_end']}. Times include compilation. Wall times grow when "
            "other work shares the cores; CPU time (all threads of this process) does not, "
            "and on an idle machine with c cores the wall time is at least CPU time / c.",
            f"- Total wall time: {conditions['total_seconds']:.0f} s.",
            "", "Files: `results.csv` (one row per run), `weights.csv` (task weights per step), "
            "`summary.json`, `delta_m.png`, `tasks.png`, `task_weights.png`"
            + (", `sensitivity.png`." if a["sensitivity"] else ".")]
  return "\n".join(lines) + "\n"


def write_results_csv(path: Path, a: dict[str, Any]) -> None:
  """One row per run: method, swept parameter and value, seed, selected step, test metrics, Δm%."""
  cols = ["method", "param", "value", "seed", "best_step",
          *[f"test_{t}" for t in TASKS], "delta_m"]
  rows = []
  m = a["methods"]
  for i, t in enumerate(TASKS):  # single-task rows: one model per task, its own metric only
    for s in range(m[STL]["test"].shape[0]):
      rows.append({"method": STL, "param": "task", "value": t, "seed": s,
                   "best_step": int(m[STL]["best_step"][s, i]),
                   f"test_{t}": float(m[STL]["test"][s, i])})
  for n in a["order"]:
    if n == STL:
      continue
    for s, (row, dm) in enumerate(zip(m[n]["test"], m[n]["delta_m_seeds"], strict=True)):
      rows.append({"method": n, "param": "", "value": "", "seed": s,
                   "best_step": int(m[n]["best_step"][s]), "delta_m": float(dm),
                   **{f"test_{t}": float(row[i]) for i, t in enumerate(TASKS)}})
  for n, sa in a["sensitivity"].items():
    for v_i, v in enumerate(sa["values"]):
      for s in range(sa["test"].shape[1]):
        rows.append({"method": n, "param": sa["param"], "value": float(v), "seed": s,
                     "best_step": int(sa["best_step"][v_i, s]),
                     "delta_m": float(sa["delta_m_seeds"][v_i, s]),
                     **{f"test_{t}": float(sa["test"][v_i, s, i]) for i, t in enumerate(TASKS)}})
  with path.open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)


def write_weights_csv(path: Path, runs: dict[str, Any]) -> None:
  """Task weights at every step, per method and seed (long form)."""
  with path.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "seed", "step", *[f"w_{t}" for t in TASKS]])
    for n, res in runs.items():
      if n == STL:
        continue
      tw = np.asarray(res.metrics["task_weights"])  # [S, steps, T]
      for s in range(tw.shape[0]):
        for step in range(tw.shape[1]):
          w.writerow([n, s, step, *(f"{x:.6g}" for x in tw[s, step])])


def summary_json(a: dict[str, Any], *, args: Any, timings: dict[str, Any], hyper: dict[str, Any],
                 skipped: dict[str, str], conditions: dict[str, Any]) -> dict[str, Any]:
  m = a["methods"]
  out = {
      "tasks": list(TASKS),
      "metrics": {t: METRIC_NAMES[t] for t in TASKS},
      "higher_is_better": dict(zip(TASKS, HIGHER_IS_BETTER, strict=True)),
      "stl": {t: float(a["baseline"][i]) for i, t in enumerate(TASKS)},
      "stl_validation": {t: float(a["val_baseline"][i]) for i, t in enumerate(TASKS)},
      "methods": {},
      "ranking": [n for n in a["order"]],
      "skipped": skipped,
      "config": {k: v for k, v in vars(args).items() if k != "methods"} | {
          "methods": list(args.methods)},
      "conditions": conditions,
  }
  for n in a["order"]:
    e = m[n]
    out["methods"][n] = {
        "delta_m": e["delta_m"], "delta_m_std": e["delta_m_std"],
        "delta_m_seeds": e["delta_m_seeds"], "tasks": e["tasks"], "tasks_std": e["tasks_std"],
        "rank": e["rank"], "verdict": e["verdict"], "seconds": timings[n]["seconds"],
        "cpu_seconds": timings[n]["cpu_seconds"],
        "best_step": e["best_step"], "hyperparameters": hyper.get(n, {}),
        "baseline": n == STL,
    }
    if e["vs_stl"] is not None:
      out["methods"][n]["vs_stl"] = {k: e["vs_stl"][k] for k in ("mean", "ci_low", "ci_high")}
  out["sensitivity"] = {
      n: {"param": s["param"], "default": s["default"], "values": s["values"],
          "delta_m": s["delta_m"], "delta_m_std": s["delta_m_std"], "seconds": s["seconds"],
          **s["reading"]}
      for n, s in a["sensitivity"].items()}
  out["timings"] = timings
  return out


def write_all(out_dir: Path, *, args: Any, runs: dict[str, Any], timings: dict[str, Any],
              hyper: dict[str, Any], skipped: dict[str, str], sensitivity: dict[str, Any],
              conditions: dict[str, Any]) -> dict[str, Any]:
  """Analyses the runs and writes every output file; returns summary.json's content."""
  import multidigits_plots as plots

  a = analyse(runs, eval_every=args.eval_every, sensitivity=sensitivity)
  notes = weight_notes(runs, tuple(getattr(args, "meta_methods", ())))
  write_results_csv(out_dir / "results.csv", a)
  write_weights_csv(out_dir / "weights.csv", runs)
  summary = summary_json(a, args=args, timings=timings, hyper=hyper, skipped=skipped,
                         conditions=conditions)
  write_json(out_dir / "summary.json", summary)
  (out_dir / "summary.md").write_text(
      markdown(a, args=args, timings=timings, hyper=hyper, skipped=skipped,
               conditions=conditions, notes=notes))
  plots.delta_m_plot(out_dir / "delta_m.png", a)
  plots.tasks_plot(out_dir / "tasks.png", a)
  plots.weights_plot(out_dir / "task_weights.png", runs, args.steps)
  if a["sensitivity"]:
    plots.sensitivity_plot(out_dir / "sensitivity.png", a)
  return summary


if __name__ == "__main__":
  _report.refuse_direct_run(__doc__, "multidigits.py")
