#!/usr/bin/env python
"""Do meta-learned example weights beat fixed re-weighting losses on digits? Paired over seeds.

A small MLP is trained on scikit-learn's digits in two settings, each with a small clean,
balanced validation set (as the L2RW and MW-Net papers use):

* ``long_tailed``: class c keeps ``n_max · ρ^{-c/9}`` examples (ρ = 100 by default,
  ``weightax.datasets.long_tailed_split``);
* ``noisy``: the balanced training set with 40% symmetric label noise (each label is, with
  probability 0.4, replaced by one of the other 9 classes uniformly at random).

Methods, each with the setting of its paper (no hyperparameter search):

* ``ce``: softmax cross-entropy, the baseline;
* ``focal``: sigmoid focal loss (RetinaNet's α = 0.25, γ = 2);
* ``ghm``: GHM-C (30 bins, momentum 0.75, mmdetection's defaults), bin counts carried;
* ``cb``: class-balanced cross-entropy (β = 0.9999) from the training label counts;
* ``la``: logit-adjusted cross-entropy (τ = 1) from the training label priors;
* ``l2rw``: ``weightax.meta.learning_to_reweight`` (Ren et al. 2018);
* ``mwn``: ``weightax.meta.meta_weight_net`` (Shu et al. 2019; meta Adam 1e-3, wd 1e-4).

Every method uses the same SGD (momentum 0.9, weight decay 5e-4), batches and initialisation
per seed, so comparisons with CE are paired; the two meta methods additionally draw a batch
from the clean validation set each step (the others never see it). Reported: balanced test
accuracy at the end of training (the test set is balanced and disjoint from the validation
set), each method minus CE per seed with its 95% t-interval, and for the meta methods the
mean weight they give to corrupted (noisy) or tail-half (long-tailed) examples relative to
the others.

Run ``python experiments/meta_weighting.py --help`` for every option.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax import losses as L  # noqa: E402
from weightax.datasets import long_tailed_split  # noqa: E402
from weightax.nn import MLP  # noqa: E402
from weightax.runs import run_dir, write_json  # noqa: E402

NUM_CLASSES = 10
METHODS = ("ce", "focal", "ghm", "cb", "la", "l2rw", "mwn")
META = ("l2rw", "mwn")
TITLES = {"ce": "cross-entropy", "focal": "sigmoid focal", "ghm": "GHM-C",
          "cb": "class-balanced CE", "la": "logit adjustment",
          "l2rw": "learning to reweight", "mwn": "Meta-Weight-Net"}
SETTINGS = ("long_tailed", "noisy")
FLAG = {"long_tailed": "tail-half classes (5-9)", "noisy": "corrupted labels"}


INF = float("inf")
# option -> (low, high, low end open, high end open); NaN lies in none.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lr": (0.0, INF, True, True),
    "momentum": (0.0, 1.0, False, True),
    "weight_decay": (0.0, INF, False, True),
    "ratio": (1.0, INF, False, True),
    "noise": (0.0, 1.0, False, True),
}
# integer option -> its smallest value
MINIMUM = {"seeds": 2, "steps": 1, "eval_every": 1, "batch_size": 1, "val_batch_size": 1,
           "hidden": 1, "data_seed": 0}


interval = _report.interval


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=_report.HelpFormatter)
  r = lambda name: interval(*RANGES[name])
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/meta_weighting/<UTC time>)")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated subset of methods (must include ce)")
  p.add_argument("--seeds", type=int, default=5,
                 help="seeds per method and setting (at least 2: a paired interval needs two)")
  p.add_argument("--steps", type=int, default=1000,
                 help="SGD steps per run (a positive multiple of --eval-every)")
  p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
  p.add_argument("--batch-size", type=int, default=64, help="training minibatch size")
  p.add_argument("--val-batch-size", type=int, default=64,
                 help="clean validation batch per step of the meta methods")
  p.add_argument("--lr", type=float, default=0.02,
                 help="SGD learning rate (also MW-Net's η), > 0")
  p.add_argument("--momentum", type=float, default=0.9, help=f"SGD momentum, in {r('momentum')}")
  p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (L2), >= 0")
  p.add_argument("--hidden", type=int, default=64, help="width of the two hidden layers")
  p.add_argument("--ratio", type=float, default=100.0,
                 help=f"imbalance ratio ρ of long_tailed, in {r('ratio')}")
  p.add_argument("--noise", type=float, default=0.4,
                 help=f"symmetric label-noise rate of noisy, in {r('noise')}")
  p.add_argument("--test-per-class", type=int, default=50,
                 help="held-out examples per class (validation + test), at most 173: digits' "
                 "smallest class has 174 images, and the rest of each class trains")
  p.add_argument("--val-per-class", type=int, default=10,
                 help="of those, clean validation examples per class; at least 1 and fewer "
                 "than --test-per-class")
  p.add_argument("--data-seed", type=int, default=0,
                 help="seed of the subsets and the noise (>= 0)")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests: 2 seeds, 60 steps, evaluations every 30; options "
                 "given explicitly are kept")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/meta_weighting.py",
                           *(sys.argv[1:] if argv is None else argv)])
  _report.apply_quick(p, args, argv, seeds=2, steps=60, eval_every=30)
  args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  if (any(m not in METHODS for m in args.methods) or "ce" not in args.methods
      or len(set(args.methods)) < len(args.methods)):
    p.error(f"--methods: expected a subset of {list(METHODS)} including ce, each method once; "
            f"got {args.methods}")
  _report.check_minimums(p, args, MINIMUM, {"seeds": " (a paired interval needs two seeds)"})
  if args.steps % args.eval_every:
    p.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every})")
  _report.check_digits_split(p, args)
  for name, (lo, hi, lo_open, hi_open) in RANGES.items():
    v = getattr(args, name)
    with np.errstate(over="ignore"):
      v32 = float(np.float32(v))  # traced as a 32-bit float: 1e-50 would become 0
    if not all((x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
               for x in (v, v32)):
      p.error(f"--{name.replace('_', '-')} must be in {r(name)}; got {v!r}")
  return args


class Data(NamedTuple):
  """Both settings stacked on a leading setting axis; training sets zero-padded."""

  x: np.ndarray  # [S, n_max, 64]
  y: np.ndarray  # [S, n_max] observed (possibly noisy) labels
  flag: np.ndarray  # [S, n_max] corrupted (noisy) / tail-half class (long-tailed)
  n_train: np.ndarray  # [S]
  counts: np.ndarray  # [S, C] observed training label counts
  val: tuple[np.ndarray, np.ndarray]  # [S, n_val, 64], [S, n_val]
  test: tuple[np.ndarray, np.ndarray]  # [S, n_test, 64], [S, n_test]


def symmetric_noise(y: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Each label replaced, with probability ``rate``, by another class chosen uniformly."""
  flip = rng.random(len(y)) < rate
  other = (y + rng.integers(1, NUM_CLASSES, len(y))) % NUM_CLASSES
  return np.where(flip, other, y).astype(np.int32)


def load_data(args: argparse.Namespace) -> Data:
  """The two training sets, and per setting a clean validation / test split of held-out data."""
  rng = np.random.default_rng(args.data_seed)
  parts = []
  for name in SETTINGS:
    ratio = args.ratio if name == "long_tailed" else 1.0
    tr, te, _ = long_tailed_split(imbalance_ratio=ratio, test_per_class=args.test_per_class,
                                  seed=args.data_seed)
    if name == "noisy":
      y = symmetric_noise(tr.y, args.noise, rng)
      flag = y != tr.y
    else:
      y, flag = tr.y, tr.y >= NUM_CLASSES // 2
    rank = np.zeros(len(te.y), np.int64)
    for c in range(NUM_CLASSES):
      idx = np.flatnonzero(te.y == c)
      rank[idx] = np.arange(len(idx))
    is_val = rank < args.val_per_class
    parts.append((tr.x, y, flag, (te.x[is_val], te.y[is_val]), (te.x[~is_val], te.y[~is_val])))
  n = np.array([len(p[1]) for p in parts])
  x = np.zeros((len(parts), n.max(), 64), np.float32)
  y = np.zeros((len(parts), n.max()), np.int32)
  flag = np.zeros((len(parts), n.max()), bool)
  for i, (xi, yi, fi, _, _) in enumerate(parts):
    x[i, : n[i]], y[i, : n[i]], flag[i, : n[i]] = xi, yi, fi
  counts = np.stack([np.bincount(p[1], minlength=NUM_CLASSES) for p in parts])
  stack = lambda j, k: np.stack([p[j][k] for p in parts])
  return Data(x, y, flag, n, counts, (stack(3, 0), stack(3, 1)), (stack(4, 0), stack(4, 1)))


def balanced_accuracy(labels: jax.Array, preds: jax.Array) -> jax.Array:
  """Mean per-class recall (classes absent from ``labels`` are left out)."""
  onehot = jax.nn.one_hot(labels, NUM_CLASSES)
  hits = jnp.sum(onehot * (preds == labels)[:, None], 0)
  total = jnp.sum(onehot, 0)
  recall = hits / jnp.maximum(total, 1)
  return jnp.sum(jnp.where(total > 0, recall, 0.0)) / jnp.sum(total > 0)


def make_train(args: argparse.Namespace, data: Data, method: str) -> Callable:
  """``train(hparams, key)`` for one method; ``hparams["setting"]`` indexes the data."""
  x, y, flag = jnp.asarray(data.x), jnp.asarray(data.y), jnp.asarray(data.flag)
  n_train, counts = jnp.asarray(data.n_train), jnp.asarray(data.counts, jnp.float32)
  (xv, yv), (xt, yt) = [(jnp.asarray(a), jnp.asarray(b)) for a, b in (data.val, data.test)]
  n_outer = args.steps // args.eval_every
  bins = 30

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    s = hp["setting"]
    k_init, k_fit = jax.random.split(key)
    graphdef, params = nnx.split(
        MLP((64, args.hidden, args.hidden, NUM_CLASSES), rngs=nnx.Rngs(params=k_init)),
        nnx.Param)
    logits = lambda p, xx: nnx.merge(graphdef, p)(xx)
    opt = optax.chain(optax.add_decayed_weights(args.weight_decay),
                      optax.sgd(args.lr, momentum=args.momentum))
    n_c = counts[s]

    def ce_per_example(p, batch, k):
      return L.weighted_softmax_cross_entropy(logits(p, batch[0]), batch[1])

    def fixed_loss(p, batch, ghm_state):
      z, yb = logits(p, batch[0]), batch[1]
      if method == "ce":
        return L.weighted_softmax_cross_entropy(z, yb).mean(), ghm_state
      if method == "focal":
        return L.sigmoid_focal_loss(z, jax.nn.one_hot(yb, NUM_CLASSES), alpha=0.25,
                                    gamma=2.0).sum(-1).mean(), ghm_state
      if method == "cb":
        w = L.class_balanced_weights(n_c, beta=0.9999)
        return L.weighted_softmax_cross_entropy(z, yb, class_weights=w).mean(), ghm_state
      if method == "la":
        return L.logit_adjusted_cross_entropy(z, yb, class_priors=n_c / n_c.sum(),
                                              tau=1.0).mean(), ghm_state
      loss, ghm_state = L.ghm_c(z, jax.nn.one_hot(yb, NUM_CLASSES), ghm_state, bins=bins,
                                momentum=0.75)
      return loss.mean(), ghm_state

    if method == "l2rw":
      meta = wx.meta.learning_to_reweight(ce_per_example, opt)
    elif method == "mwn":
      meta = wx.meta.meta_weight_net(ce_per_example, opt, inner_lr=args.lr,
                                     key=jax.random.fold_in(k_init, 1))

    def evaluate(p):
      pred = lambda xx: jnp.argmax(logits(p, xx), -1)
      return {"val_bal_acc": balanced_accuracy(yv[s], pred(xv[s])),
              "test_bal_acc": balanced_accuracy(yt[s], pred(xt[s]))}

    def step(carry, k):
      p, st = carry
      kb, kv, ks = jax.random.split(k, 3)
      idx = jax.random.randint(kb, (args.batch_size,), 0, n_train[s])
      batch, fb = (x[s][idx], y[s][idx]), flag[s][idx]
      if method in META:
        vidx = jax.random.randint(kv, (args.val_batch_size,), 0, yv.shape[1])
        p, st, m = meta.step(p, st, batch, (xv[s][vidx], yv[s][vidx]), ks)
        w = m["example_weights"]
        # mean weight of flagged and of other examples in this batch (NaN when none)
        mean_in = lambda mask: jnp.sum(w * mask) / jnp.sum(mask)
        return (p, st), {"loss": m["loss"], "w_flag": mean_in(fb), "w_other": mean_in(~fb)}
      opt_state, ghm_state = st
      (loss, ghm_state), g = jax.value_and_grad(fixed_loss, has_aux=True)(p, batch, ghm_state)
      u, opt_state = opt.update(g, opt_state, p)
      nan = jnp.full((), jnp.nan)
      return (optax.apply_updates(p, u), (opt_state, jax.lax.stop_gradient(ghm_state))), {
          "loss": loss, "w_flag": nan, "w_other": nan}

    def outer(carry, ks):
      carry, m = jax.lax.scan(step, carry, ks)
      return carry, (jax.tree.map(jnp.nanmean, m), evaluate(carry[0]))

    state = meta.init(params) if method in META else (opt.init(params), L.init_ghm_state(bins))
    keys = jax.random.split(k_fit, args.steps).reshape(n_outer, args.eval_every)
    ev0 = evaluate(params)
    _, (m, ev) = jax.lax.scan(outer, (params, state), keys)
    ev = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), ev0, ev)
    return {**m, **ev}

  return train


def run_all(args: argparse.Namespace, data: Data) -> dict[str, wx.SweepResult]:
  """One sweep (settings × seeds, one compiled program) per method."""
  out = {}
  for name in args.methods:
    t0 = time.perf_counter()
    out[name] = wx.sweep(make_train(args, data, name), {"setting": list(range(len(SETTINGS)))},
                         seeds=args.seeds, progress=False, desc=f"meta_weighting {name}")
    print(f"  {name}: {len(out[name])} runs in {time.perf_counter() - t0:.1f} s", flush=True)
  return out


def analyse(results: dict[str, wx.SweepResult], args: argparse.Namespace) -> dict[str, Any]:
  """Per setting: every method's final balanced test accuracy, its paired difference to CE."""
  summary: dict[str, Any] = {"settings": {}}
  for si, setting in enumerate(SETTINGS):
    acc = {n: np.asarray(r.grid("test_bal_acc"))[si, :, -1] for n, r in results.items()}
    rows = {}
    for n in args.methods:
      row = {"test_bal_acc": _report.describe(acc[n])}
      row["ci"] = list(_report.t_interval(row["test_bal_acc"]))
      if n != "ce":
        row["vs_ce"] = _report.compare(acc[n], acc["ce"])
      if n in META:
        g = lambda k, n=n: np.asarray(results[n].grid(k))[si]  # [seeds, evals]
        tail = slice(len(g("w_flag")[0]) // 2, None)  # the second half of training
        ratio = np.nanmean(g("w_flag")[:, tail], 1) / np.nanmean(g("w_other")[:, tail], 1)
        row["weight_ratio"] = _report.describe(ratio)
      rows[n] = row
    summary["settings"][setting] = rows
  return summary


def answer_text(summary: dict[str, Any]) -> str:
  """One line per setting and method: the mean paired difference to CE and its verdict."""
  lines = []
  for setting, rows in summary["settings"].items():
    for n, row in rows.items():
      if n == "ce":
        continue
      c = row["vs_ce"]
      word = {"better": "better than", "worse": "worse than", "tie": "not distinguishable from"}
      lines.append(
          f"{setting}: {TITLES[n]} is {word[c['verdict']]} CE (balanced test accuracy "
          f"{c['mean'] * 100:+.1f} pp, 95% CI [{c['ci_low'] * 100:+.1f}, "
          f"{c['ci_high'] * 100:+.1f}] pp over {c['n']} seeds).")
  return "\n".join(lines)


def summary_markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
  md = ["# Meta-learned example weights on digits", "",
        f"Command: `{args.command}`", "",
        f"{args.seeds} seeds, {args.steps} SGD steps (lr {args.lr:g}, momentum "
        f"{args.momentum:g}, wd {args.weight_decay:g}), batch {args.batch_size}; "
        f"long_tailed: ρ = {args.ratio:g}; noisy: {args.noise:.0%} symmetric label noise; "
        f"clean validation set {args.val_per_class} per class (used in training by l2rw and "
        f"mwn only), test set {args.test_per_class - args.val_per_class} per class. "
        f"Runtime {summary['elapsed_s']:.0f} s.", "",
        "Verdicts compare each method with CE on the same seeds: better / worse only when the "
        "95% t-interval of the per-seed difference excludes zero, otherwise tie.", ""]
  for setting, rows in summary["settings"].items():
    md += [f"## {setting}", "",
           "| method | balanced test acc. (mean ± std) | − CE (pp) | 95% CI (pp) | verdict | "
           f"weight of {FLAG[setting]} / others |",
           "|---|---|---|---|---|---|"]
    for n, row in rows.items():
      a = row["test_bal_acc"]
      c = row.get("vs_ce")
      diff = ("—", "—", "baseline") if c is None else (
          f"{c['mean'] * 100:+.1f}", f"[{c['ci_low'] * 100:+.1f}, {c['ci_high'] * 100:+.1f}]",
          c["verdict"])
      wr = row.get("weight_ratio")
      wr_s = "—" if wr is None else f"{_report.fmt(wr['mean'])} ± {_report.fmt(wr['std'])}"
      md.append(f"| {TITLES[n]} | {a['mean'] * 100:.1f} ± {_report.fmt(a['std'] * 100)} | "
                f"{diff[0]} | {diff[1]} | {diff[2]} | {wr_s} |")
    md.append("")
  md += ["## Answer", "", answer_text(summary), "",
         "The weight ratio is the meta method's mean weight on flagged examples divided by its "
         "mean weight on the others over the second half of training (below 1: flagged "
         "examples are down-weighted).", "",
         "Files: `results.csv` (one row per setting, method and seed), `summary.json`, "
         "`accuracy.png` (top: balanced test accuracy per method and seed; bottom: each "
         "method minus CE per seed with the 95% t-interval of that paired difference, the "
         "interval the verdicts use), `weights.png` (the meta methods' weight ratio during "
         "training)."]
  return "\n".join(md) + "\n"


def write_csv(path: Path, results: dict[str, wx.SweepResult]) -> None:
  with open(path, "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(["setting", "method", "seed", "test_bal_acc", "val_bal_acc", "final_loss"])
    for n, r in results.items():
      test, val, loss = (np.asarray(r.grid(k)) for k in ("test_bal_acc", "val_bal_acc", "loss"))
      for si, setting in enumerate(SETTINGS):
        for j, seed in enumerate(r.axes["seed"]):
          # repr of the float: exact, so the CSV reproduces the report's statistics
          wr.writerow([setting, n, int(seed), repr(float(test[si, j, -1])),
                       repr(float(val[si, j, -1])), repr(float(loss[si, j, -1]))])


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "tie": "0.6"}


def _limits(values: list[float], pad: float = 0.08) -> tuple[float, float]:
  """``(low, high)`` around the finite values, with a margin of ``pad`` of their span."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  lo, hi = (float(v.min()), float(v.max())) if v.size else (-1.0, 1.0)
  margin = pad * (hi - lo) or 1.0
  return lo - margin, hi + margin


def plot_accuracy(path: Path, summary: dict[str, Any]) -> None:
  """``accuracy.png``: per setting, what every method reached, and what the verdicts use.

  Top: balanced test accuracy per method (bar: mean over seeds, dots: the seeds). Bottom:
  each method minus CE on the same seed (bar: mean, dots: the seeds) with the 95% t-interval
  of these paired differences, the interval that decides the verdict (named under each
  bar); the axis always holds the whole interval.
  """
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, len(SETTINGS), figsize=(5.2 * len(SETTINGS), 7.4), squeeze=False,
                           layout="constrained")
  for col, (setting, rows) in enumerate(summary["settings"].items()):
    names = list(rows)
    ax = axes[0, col]
    x = np.arange(len(names))
    colours = ["tab:gray" if n == "ce" else "tab:orange" if n in META else "tab:blue"
               for n in names]
    ax.bar(x, [100 * rows[n]["test_bal_acc"]["mean"] for n in names], color=colours, alpha=0.7)
    for i, n in enumerate(names):
      v = 100 * np.asarray(rows[n]["test_bal_acc"]["per_seed"], np.float64)
      ax.plot(np.full(v.size, i), v, ".", color="k", ms=5)
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylim(0, 100)
    ax.set_ylabel("balanced test accuracy (%)")
    ax.set_title(f"{setting}: accuracy (bar: mean, dots: seeds)", fontsize=10)

    ax = axes[1, col]
    others = [n for n in names if n != "ce"]
    c = [rows[n]["vs_ce"] for n in others]
    mean = np.array([100 * d["mean"] for d in c])
    lo, hi = (np.array([100 * d[k] for d in c]) for k in ("ci_low", "ci_high"))
    xo = np.arange(len(others))
    ax.bar(xo, mean, color=[VERDICT_COLOURS[d["verdict"]] for d in c], alpha=0.7)
    ax.errorbar(xo, mean, yerr=np.stack([mean - lo, hi - mean]), fmt="none", ecolor="k",
                capsize=4, lw=1.2)
    dots = []
    for i, d in enumerate(c):
      v = 100 * np.asarray(d["per_seed"], np.float64)
      dots += v.tolist()
      ax.plot(np.full(v.size, i), v, ".", color="k", ms=5)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_ylim(*_limits([0.0, *lo, *hi, *mean, *dots]))
    ax.set_xticks(xo, [f"{n}\n{d['verdict']}" for n, d in zip(others, c, strict=True)],
                  fontsize=9)
    ax.set_ylabel("method − CE, same seed (pp)")
    ax.set_title(f"{setting}: paired difference to CE, 95% t-interval\n(the verdict: better / "
                 "worse when it excludes 0)", fontsize=10)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot(out: Path, summary: dict[str, Any], results: dict[str, wx.SweepResult],
         args: argparse.Namespace) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  plot_accuracy(out / "accuracy.png", summary)

  meta_names = [n for n in args.methods if n in META]
  fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 3.5))
  steps = np.arange(1, args.steps // args.eval_every + 1) * args.eval_every
  for ax, (si, setting) in zip(axes, enumerate(SETTINGS), strict=True):
    for n in meta_names:
      r = results[n]
      ratio = np.asarray(r.grid("w_flag"))[si] / np.asarray(r.grid("w_other"))[si]
      ax.plot(steps, np.nanmean(ratio, 0), marker="o", label=TITLES[n])
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title(f"{setting}: weight of {FLAG[setting]} / others")
    ax.set_xlabel("step")
    if meta_names:
      ax.legend()
  fig.tight_layout()
  fig.savefig(out / "weights.png", dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)  # every check, before a run directory exists
  with run_dir("meta_weighting", args.out) as out:  # an interrupted run leaves no empty directory
    return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
  print(f"meta_weighting: {len(args.methods)} methods x {len(SETTINGS)} settings x "
        f"{args.seeds} seeds of {args.steps} steps; one compiled sweep per method ...", flush=True)
  t0 = time.perf_counter()
  data = load_data(args)
  results = run_all(args, data)
  summary = analyse(results, args)
  summary["elapsed_s"] = time.perf_counter() - t0
  summary["args"] = {k: v for k, v in vars(args).items()}
  summary["answer"] = answer_text(summary)
  write_json(out / "summary.json", summary)
  write_csv(out / "results.csv", results)
  (out / "summary.md").write_text(summary_markdown(summary, args))
  plot(out, summary, results, args)
  print(summary["answer"])
  print(f"\nReport: {out / 'summary.md'}")
  return summary


if __name__ == "__main__":
  main()
