"""Analysis, plots and summary of the loss-scale study (``loss_scale.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import _report
import numpy as np

from weightax.runs import write_json

ADAPTIVE = ("adam", "adamw", "rmsprop", "adagrad")
SPREAD_RANGE = (1e-2, 10.0)  # the spread is taken over the w of the grid inside this range
TOL = 0.25  # "invariant": every w needs within ±25% of the steps at the reference w
SLOPE_BAND = 0.15  # "steps ∝ 1/w": the slope's interval lies within -1 ± this (issue 2's bar)
RANGE_SPEC = ".3g"  # w in range labels, as _report.fmt writes single numbers


def steps_to_target(curve: np.ndarray, eval_every: int, target: float) -> float:
  """First step at which ``curve`` (sampled every ``eval_every`` steps) reaches ``target``.

  Between the two evaluations that bracket the crossing the loss is
  interpolated linearly in log space, so the count is not quantised to
  ``eval_every``. NaN when the target is never reached.
  """
  curve = np.asarray(curve, np.float64)
  hit = np.flatnonzero(np.isfinite(curve) & (curve <= target))
  if hit.size == 0:
    return math.nan
  i = int(hit[0])
  if i == 0:
    return 0.0
  a, b = np.log(curve[i - 1]), np.log(curve[i])
  frac = (a - math.log(target)) / (a - b) if a > b else 1.0
  return (i - 1 + frac) * eval_every


def loglog_slope(w: np.ndarray, steps: np.ndarray) -> float:
  """Least-squares slope of log(steps) against log(w) over the finite, positive points."""
  ok = np.isfinite(steps) & (steps > 0)
  if ok.sum() < 2:
    return math.nan
  return float(np.polyfit(np.log(w[ok]), np.log(steps[ok]), 1)[0])


def reference_mask(ws: np.ndarray) -> np.ndarray:
  """The reference w of the invariance test: those >= 1, or the largest w if none is."""
  ref = ws >= 1.0 - 1e-6
  return ref if ref.any() else ws == ws.max()


def spread_mask(ws: np.ndarray) -> np.ndarray:
  """The w of the grid inside ``SPREAD_RANGE`` (the spread's range label comes from these)."""
  return (ws >= SPREAD_RANGE[0] * (1 - 1e-6)) & (ws <= SPREAD_RANGE[1] * (1 + 1e-6))


def analyse(steps: np.ndarray, ws: np.ndarray, names: list[str], tol: float = TOL,
            budget: int | None = None) -> dict:
  """Per-optimizer numbers from ``steps[opt, w, seed]``.

  Besides the median slope and the spread, each entry holds the t-interval of the
  per-seed slopes (``slope_ci``) and the verdict that follows from the numbers
  (:func:`classify`), so the answer can never contradict the table. ``budget`` is the
  number of steps each run had (named in the verdicts of the w that never reach the
  target).
  """
  out = {}
  in_range = spread_mask(ws)
  for o, name in enumerate(names):
    s = steps[o]  # [w, seed]
    med = np.median(s, axis=1)  # NaN where any seed failed: such a w does not count as reached
    slopes = np.array([loglog_slope(ws, s[:, k]) for k in range(s.shape[1])])
    reached = np.isfinite(med)
    r = med[in_range & reached]
    spread = float(r.max() / r.min()) if r.size >= 2 and r.min() > 0 else math.nan
    entry = {
        "slope": float(np.nanmedian(slopes)) if np.isfinite(slopes).any() else math.nan,
        "slope_per_seed": slopes.tolist(),
        "slope_ci": list(_report.t_interval(slopes)),
        "slope_min": float(np.nanmin(slopes)) if np.isfinite(slopes).any() else math.nan,
        "slope_max": float(np.nanmax(slopes)) if np.isfinite(slopes).any() else math.nan,
        "spread": spread,
        "w_reached": ws[reached].tolist(),
        "w_unreached_in_spread_range": ws[in_range & ~reached].tolist(),
        "median_steps": med.tolist(),
        "spread_range": _report.range_label(ws[in_range], RANGE_SPEC),
        "reference_range": _report.range_label(ws[reference_mask(ws)], RANGE_SPEC),
    }
    if name in ADAPTIVE:
      entry["w_invariant_down_to"] = invariant_down_to(med, ws, tol)
    entry["verdict"], entry["verdict_text"] = classify(name, entry, ws, tol, budget)
    out[name] = entry
  return out


VERDICTS = ("invariant", "invariant_down_to", "not_invariant", "proportional", "slower", "faster",
            "no_evidence", "too_few_reached", "unreached")
"""Every verdict :func:`classify` can give."""


def _within(budget: int | None) -> str:
  return f"within {budget} steps" if budget else "within the run's steps"


def _unreached_note(ws: np.ndarray, reached: np.ndarray, budget: int | None) -> str:
  """``"; not reached within N steps at w <= X (k of n w)"`` or ``""``."""
  miss = ws[~reached]
  if miss.size == 0:
    return ""
  if reached.any() and miss.max() < ws[reached].min():
    which = f"w <= {_report.fmt(miss.max())} ({miss.size} of {ws.size} w)"
  else:
    which = f"{miss.size} of {ws.size} w ({', '.join(_report.fmt(w) for w in miss)})"
  return f"; not reached {_within(budget)} at {which}"


def classify(name: str, e: dict, ws: np.ndarray, tol: float = TOL,
             budget: int | None = None) -> tuple[str, str]:
  """The verdict on one optimizer, decided from its numbers only: ``(code, sentence)``.

  A w "reaches the target" when every seed at it does (the median over seeds is then
  finite), as in the table's column of the w that reach it; ``budget`` is the number of
  steps each run had. The codes are those of :data:`VERDICTS`.

  Adaptive optimizers: ``"invariant"`` when every w of the grid needs within ±tol of the
  steps at the reference w, ``"invariant_down_to"`` when that holds from some w below the
  reference range upward, ``"not_invariant"`` when it fails within the reference range or
  already at the next w below it (invariance at the reference w alone is no invariance),
  and ``"unreached"`` when the reference is not reached.
  The others: ``"unreached"`` when no w reaches the target and ``"too_few_reached"`` when
  one does (no slope can be fitted; the sentence names the w that do not reach it);
  otherwise ``"slower"`` when the t-interval of the per-seed slopes lies below 0, with
  ``"proportional"`` instead when it lies within ``-1 ± SLOPE_BAND``; ``"faster"`` when
  above 0; ``"no_evidence"`` otherwise (including fewer than 2 seeds with a slope).
  """
  grid = _report.range_label(ws, RANGE_SPEC)
  med = np.asarray(e["median_steps"], np.float64)
  reached = np.isfinite(med)
  within = _within(budget)
  if name in ADAPTIVE:
    inv = e.get("w_invariant_down_to", math.nan)
    ref = e["reference_range"]
    ref_mask = reference_mask(ws)
    if not reached[ref_mask].all():
      return "unreached", f"does not reach the target at the reference w in {ref} {within}"
    if not np.isfinite(inv) or inv > ws[ref_mask].min() * (1 + 1e-6):
      return "not_invariant", (f"NOT invariant: steps leave ±{tol:.0%} of those at w in {ref} "
                               "already within that range")
    if inv <= ws.min() * (1 + 1e-6):
      return "invariant", (f"invariant over the whole grid run, w in {grid}: every w needs "
                           f"within ±{tol:.0%} of the steps at w in {ref}")
    below = _next_below(med, ws, inv, budget)
    if inv >= ws[ref_mask].min() * (1 - 1e-6):
      return "not_invariant", (f"NOT invariant below the reference w in {ref}: {below}")
    return "invariant_down_to", (f"steps within ±{tol:.0%} of those at w in {ref} for every "
                                 f"w >= {_report.fmt(inv)}, but not below: {below}")
  if reached.sum() < 2:
    if not reached.any():
      return "unreached", (f"no w of the grid reaches the target {within}, so no slope can "
                           "be fitted")
    w0 = _report.fmt(ws[reached][0])
    return "too_few_reached", (f"reaches the target only at w = {w0}, so no slope can be "
                               f"fitted{_unreached_note(ws, reached, budget)}")
  note = _unreached_note(ws, reached, budget)
  lo, hi = e["slope_ci"]
  ci = f"95% CI of the slope [{_report.fmt(lo, '+.2f')}, {_report.fmt(hi, '+.2f')}]"
  if hi < 0:
    extra = (" and the coupled L2 term takes over (see the decay table)" if name == "sgd+l2"
             else "")
    if -1 - SLOPE_BAND <= lo and hi <= -1 + SLOPE_BAND:
      return "proportional", (f"w acts as a learning-rate multiplier: smaller w, "
                              f"proportionally slower ({ci}){extra}{note}")
    if lo <= -1 <= hi:
      return "slower", (f"slower as w shrinks; consistent with steps ∝ 1/w, but the interval "
                        f"is too wide to confirm it ({ci}){extra}{note}")
    return "slower", f"slower as w shrinks, but not proportionally ({ci}){extra}{note}"
  among = " among the w that reach the target" if note else ""
  if lo > 0:
    return "faster", f"faster as w shrinks{among} ({ci}){note}"
  return "no_evidence", f"no significant dependence of the steps on w{among} ({ci}){note}"


def _next_below(med: np.ndarray, ws: np.ndarray, w: float, budget: int | None) -> str:
  """What happens at the grid's next w below ``w`` (relative to the reference steps)."""
  i = int(np.flatnonzero(ws <= w * (1 + 1e-6)).max()) - 1
  ref = float(np.median(med[reference_mask(ws)]))
  if not np.isfinite(med[i]):
    return f"w = {_report.fmt(ws[i])} does not reach the target {_within(budget)}"
  return f"w = {_report.fmt(ws[i])} needs {med[i] / ref:.2f}x the steps"


def invariant_down_to(med: np.ndarray, ws: np.ndarray, tol: float) -> float:
  """Smallest w such that every w' ≥ w needs within ±tol of the steps at the reference w.

  The reference is :func:`reference_mask` (w >= 1, or the largest w of the grid). NaN
  when even the reference range is not reached or not invariant.
  """
  ref = np.median(med[reference_mask(ws)])
  if not np.isfinite(ref) or ref <= 0:
    return math.nan
  ok = np.isfinite(med) & (np.abs(med / ref - 1.0) <= tol)
  w_inv = math.nan
  for i in range(len(ws) - 1, -1, -1):
    if not ok[i]:
      break
    w_inv = float(ws[i])
  return w_inv


_fmt = _report.fmt


def answer_text(summary: dict) -> str:
  """A short plain-language answer naming each optimizer."""
  lines = ["Does a smaller loss weight w make descent slower? Measured answer:"]
  for name, e in summary["optimizers"].items():
    slope = _fmt(e["slope"], "+.2f")
    spread = _fmt(e["spread"], ".2f") + "x"
    miss = len(e["w_unreached_in_spread_range"])
    if miss and math.isfinite(e["spread"]):
      spread = f"> {spread} ({miss} w never {'reaches' if miss == 1 else 'reach'} the target)"
    elif miss:
      spread = f"— ({miss} w never {'reaches' if miss == 1 else 'reach'} the target)"
    lines.append(f"  {name:>13}: slope {slope}, spread over w in {e['spread_range']} {spread}: "
                 f"{e['verdict_text']}")
  return "\n".join(lines)


def write_all(out: Path, res, args, ws: np.ndarray, elapsed: float) -> dict:
  """Writes results.csv, curves.csv, summary.json, summary.md and the plots; returns the summary."""
  names = list(args.optimizers)
  curves = res.grid("curve")  # [opt, w, seed, n_eval]
  norms = res.grid("param_norm")
  steps = np.apply_along_axis(steps_to_target, -1, curves, args.eval_every, args.target)
  analysis = analyse(steps, ws, names, budget=args.steps)

  res.coords["optimizer"] = np.asarray(names)[res.coords["opt"]]
  flat = res.flat_metrics
  with (out / "results.csv").open("w") as f:
    f.write("optimizer,w,seed,steps_to_target,final_train_ce,final_param_norm\n")
    for i in range(len(res)):
      o, wi, si = np.unravel_index(i, res.shape)
      f.write(f"{names[o]},{ws[wi]:.6g},{res.axes['seed'][si]},{steps[o, wi, si]:.6g},"
              f"{flat['curve'][i, -1]:.6g},{flat['param_norm'][i, -1]:.6g}\n")
  res.curves_to_csv(out / "curves.csv", names=["curve", "param_norm"])

  decay = {
      n: {"final_train_ce": np.median(curves[o, :, :, -1], axis=1).tolist(),
          "final_param_norm": np.median(norms[o, :, :, -1], axis=1).tolist()}
      for o, n in enumerate(names) if n in ("sgd", "sgd+l2", "adam", "adamw")
  }
  summary = {
      "question": "Does a smaller loss weight make gradient descent slower?",
      "target_train_ce": args.target,
      "w": ws.tolist(),
      "steps": args.steps,
      "seeds": args.seeds,
      "sweep_seconds": elapsed,
      "optimizers": analysis,
      "decay": decay,
      "settings": dict(vars(args)),
  }
  write_json(out / "summary.json", summary)
  # the report first, so that a failure while plotting cannot lose it
  (out / "summary.md").write_text(summary_markdown(summary, args))
  import loss_scale_plots

  loss_scale_plots.plot_all(out, curves, steps, norms, ws, names, args)
  return summary


def summary_markdown(summary: dict, args) -> str:
  """The plain-language report."""
  opt = summary["optimizers"]
  ws = np.asarray(summary["w"])
  md = [
      "# Loss scale: does a smaller loss weight make descent slower?",
      "",
      f"A 64-{args.hidden}-10 MLP on scikit-learn's digits, trained on `w · cross_entropy` "
      f"for {len(ws)} values of w from {_fmt(ws[0])} to {_fmt(ws[-1])} × {len(opt)} optimizers × "
      f"{summary['seeds']} seeds ({summary['steps']} steps, batch {args.batch_size}), "
      f"all {len(ws) * len(opt) * summary['seeds']} runs as one compiled sweep "
      f"({summary['sweep_seconds']:.0f} s). Every configuration with the same seed shares "
      "its initialisation and batches, so differences come from w alone. We count the steps "
      f"until the unweighted training cross-entropy first reaches {summary['target_train_ce']}.",
      "",
      "## Answer",
      "",
      "```",
      answer_text(summary),
      "```",
      "",
      "| optimizer | lr | slope of log steps vs log w (median [min, max] over seeds) | "
      "95% CI of the slope | spread of steps over w in the range | invariant down to w | "
      "w that reach the target | verdict |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name, e in opt.items():
    lr = getattr(args, f"lr_{name.replace('+', '_')}")
    inv = _fmt(e.get("w_invariant_down_to", math.nan)) if name in ADAPTIVE else "n/a"
    reached = e["w_reached"]
    rr = f"{len(reached)}/{len(ws)}"
    if reached:
      lo_w, hi_w = _fmt(min(reached)), _fmt(max(reached))
      rr += f" ({lo_w})" if lo_w == hi_w else f" ({lo_w}…{hi_w})"
    lo, hi = e["slope_ci"]
    md.append(f"| {name} | {lr:g} | {_fmt(e['slope'], '+.2f')} [{_fmt(e['slope_min'], '+.2f')}, "
              f"{_fmt(e['slope_max'], '+.2f')}] | [{_fmt(lo, '+.2f')}, {_fmt(hi, '+.2f')}] | "
              f"{_fmt(e['spread'], '.2f')}{'x' * math.isfinite(e['spread'])} over "
              f"{e['spread_range']} | {inv} | {rr} | "
              f"{e['verdict']} |")
  md += [
      "",
      "Reading the table: a slope of -1 means halving w doubles the steps (w is a learning-rate "
      "multiplier); a slope near 0 and a spread near 1x mean w does not matter. The slope's "
      "95% CI is the t-interval over seeds (sample std/√n, Student's t); 'slower' needs it "
      f"below 0, 'proportional' within -1 ± {SLOPE_BAND:g}. The spread is the largest over "
      "the smallest median step count among the w of the grid in the range shown that reach "
      "the target. 'Invariant down to w' is the smallest w from which upward every w needs "
      f"within ±{TOL:.0%} of the steps needed at w in "
      f"{next(iter(opt.values()))['reference_range']}; an adaptive optimizer is "
      "'not_invariant' when that fails already within that reference range or at the next w "
      "below it. A w reaches the target when every seed at it does within the "
      f"{summary['steps']} steps; with fewer than 2 such w no slope exists, and the verdict is "
      "'too_few_reached' (1 w) or 'unreached' (none).",
      "",
  ]
  theory = []  # what the theory says for each adaptive optimizer that ran
  if "adam" in opt or "adamw" in opt:
    theory.append("Adam divides by `sqrt(v) + eps`: once `w·|g|` is comparable to eps (1e-8) "
                  "the update shrinks with w, and deep in that regime Adam turns into SGD with "
                  "learning rate `lr·w/eps`.")
  if "rmsprop" in opt:
    theory.append("Optax's RMSProp puts eps (1e-8) inside the square root, an effective eps of "
                  "1e-4 in gradient units, so it leaves the invariant regime at a far larger w "
                  "than Adam.")
  if "adagrad" in opt:
    theory.append("Optax's Adagrad starts its accumulator at 0.1 (an effective eps of about 0.3 "
                  "in gradient units), so it behaves like SGD with learning rate lr/0.3 until "
                  "the squared gradients it has accumulated exceed 0.1.")
  if theory:
    md += ["## What happens below the invariant range", "", " ".join(theory), ""]
  variants = [n for n in ("sgd+l2", "adamw") if n in opt]
  if variants:
    md += ["## Coupled L2 (in the loss, SGD) vs decoupled decay (AdamW)", ""]
    if "sgd+l2" in variants:
      md.append(f"`sgd+l2` minimises `w·CE + {args.l2:g}/2·|θ|²`: relative to the data term the "
                f"decay is {args.l2:g}/w, so it dominates as w shrinks.")
    if "adamw" in variants:
      md.append(f"AdamW applies `lr·{args.adamw_decay:g}·θ` outside the adaptive step, whatever "
                "w is.")
    if len(variants) == 1:
      md.append(f"(`{({'sgd+l2', 'adamw'} - set(variants)).pop()}` did not run.)")
    md.append("Medians over seeds at the end of training:")
  elif summary["decay"]:
    md += ["## Final loss and parameter norm", "",
           "No decay variant ran (neither `sgd+l2` nor `adamw` is among the optimizers), so "
           "nothing here measures weight decay. Medians over seeds at the end of training:"]
  else:
    md += ["## Coupled L2 vs decoupled decay", "",
           "No decay variant ran (neither `sgd+l2` nor `adamw` is among the optimizers)."]
  if summary["decay"]:
    md += [
        "",
        "| w | " + " | ".join(f"{n} final CE | {n} |θ|" for n in summary["decay"]) + " |",
        "|---|" + "---|---|" * len(summary["decay"]),
    ]
    for i, w in enumerate(ws):
      cells = []
      for d in summary["decay"].values():
        cells += [f"{d['final_train_ce'][i]:.3f}", f"{d['final_param_norm'][i]:.2f}"]
      md.append(f"| {_fmt(w)} | " + " | ".join(cells) + " |")
  md += [
      "",
      "## Files",
      "",
      "- `results.csv`: one row per run (optimizer, w, seed, steps to target, final CE, |θ|).",
      "- `curves.csv`: training CE and |θ| at every evaluation of every run.",
      "- `summary.json`: the numbers above.",
      "- `steps_vs_w.png`, `loss_curves.png`" + (", `decay.png`" if summary["decay"] else "")
      + ": the plots.",
      "",
      f"Reproduce: `{args.command}` (all settings are in `summary.json`).",
      "",
  ]
  return "\n".join(md)


if __name__ == "__main__":
  _report.refuse_direct_run(__doc__, "loss_scale.py")
