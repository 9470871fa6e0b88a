#!/usr/bin/env python
"""Which multi-task methods reach the Pareto set of the two-objective toy?

Reproduces the toy of CAGrad (Liu et al. 2021, Fig. 1), Nash-MTL (Navon et al.
2022, Fig. 1) and FAMO (Liu et al. 2023, Fig. 1): a point ``x = (x1, x2)`` is
trained on two conflicting losses (``weightax.datasets.toy``) from five
starting points (those of Nash-MTL and FAMO; ``--starts cagrad`` runs CAGrad's three),
with Adam (lr 1e-3) after each aggregator. The Pareto set is
``x2 ≈ -8.3552, x1 ∈ [-7, 7]``. The papers report that linear scalarization,
PCGrad and MGDA end at the edges or away from the set from some starts (LS
and PCGrad stall in the steep valley where one gradient dominates, MGDA stops
at the first Pareto-stationary point), while CAGrad, Nash-MTL and FAMO reach
the interior from every start.

Each method is ONE compiled, vmapped run over the five starts
(``weightax.sweep`` over a start index); methods have different state types, so
they are looped over in Python. The papers train 35k-100k steps; the default
is CAGrad's 100k: at 35k steps CAGrad has not yet reached the set from the
starts (-8.5, 7.5) and (9, 9), which it first reaches after about 40k-80k
steps (the report measures the first step on the set of every run). Each
method's five runs take seconds; pass fewer ``--steps`` for a faster look.

Run ``python experiments/toy_two_objective.py --help`` for every option.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import toy_two_objective_report as report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax import mtl  # noqa: E402
from weightax.datasets.toy import STARTS, toy_losses  # noqa: E402
from weightax.runs import new_run_dir  # noqa: E402

# The starting points of each paper's figure: Nash-MTL's and FAMO's five, CAGrad's three
# (Liu et al. 2021, Fig. 1 and their toy script).
START_SETS = {
    "nash": np.asarray(STARTS, np.float32),
    "cagrad": np.array([[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]], np.float32),
}

QUICK_METHODS = "ls,mgda,gradnorm,cagrad,nash_mtl"
# short name -> (factory in weightax.aggregators, needs positive losses?)
METHODS = {
    "ls": ("linear_scalarization", False),
    "rlw": ("random_loss_weighting", False),
    "dwa": ("dwa", True),
    "uw": ("uncertainty_weighting", True),
    "gradnorm": ("gradnorm", True),
    "pcgrad": ("pcgrad", False),
    "mgda": ("mgda", False),
    "cagrad": ("cagrad", False),
    "imtl_g": ("imtl_g", False),
    "upgrad": ("upgrad", False),
    "nash_mtl": ("nash_mtl", False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=_report.HelpFormatter,
  )
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/toy_two_objective/<UTC time>)")
  p.add_argument("--steps", type=int, default=100000,
                 help="Adam steps per run (the papers use 35k-100k; CAGrad's toy 100k)")
  p.add_argument("--starts", choices=tuple(START_SETS), default="nash",
                 help="starting points: Nash-MTL's and FAMO's five, or CAGrad's three")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
  p.add_argument("--record", type=int, default=400,
                 help="at most this many trajectory points kept per run")
  p.add_argument("--l1-scale", type=float, default=0.1,
                 help="factor on L1: 0.1 as in Nash-MTL's and FAMO's code, 1 as in CAGrad")
  p.add_argument("--loss-offset", type=float, default=20.0,
                 help="added to the losses handed to loss-based methods (dwa, uw, gradnorm), "
                      "which assume positive losses; the toy's losses reach -20. Gradients are "
                      "unchanged")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated subset of methods")
  p.add_argument("--cagrad-c", type=float, default=0.4,
                 help="CAGrad's c (Nash-MTL's code: 0.4; CAGrad's toy: 0.5)")
  p.add_argument("--gradnorm-alpha", type=float, default=1.5, help="GradNorm's α")
  p.add_argument("--dwa-period", type=int, default=25,
                 help="DWA's period in steps (Nash-MTL's code uses a 25-step window)")
  p.add_argument("--x2-tol", type=float, default=0.1,
                 help="a run ends on the Pareto set if |x2 + 8.3552| <= this (the exact set "
                      "bends to x2 = -8.4345 at x1 = ±7) ...")
  p.add_argument("--x1-tol", type=float, default=0.05, help="... and x1 ∈ [-7 - tol, 7 + tol]")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests: ls, mgda and gradnorm (plus cagrad/nash_mtl when "
                      "available), 600 steps, 60 records; an option given explicitly "
                      "(--methods, --steps, --record) is kept")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/toy_two_objective.py",
                           *(sys.argv[1:] if argv is None else argv)])
  _report.apply_quick(p, args, argv, steps=600, record=60, methods=QUICK_METHODS)
  args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = [m for m in args.methods if m not in METHODS]
  if unknown or not args.methods:
    p.error(f"--methods: expected a subset of {list(METHODS)}; got {args.methods}")
  if args.steps < 1 or args.record < 1:
    p.error(f"--steps and --record must be positive; got {args.steps}, {args.record}")
  for opt, ok, want in (
      ("lr", args.lr > 0, "a positive number"),
      ("l1_scale", args.l1_scale > 0, "a positive number"),
      ("loss_offset", True, "a finite number"),
      ("cagrad_c", args.cagrad_c >= 0, "a number >= 0"),
      ("gradnorm_alpha", args.gradnorm_alpha >= 0, "a number >= 0"),
      ("x2_tol", args.x2_tol >= 0, "a number >= 0"),
      ("x1_tol", args.x1_tol >= 0, "a number >= 0"),
  ):
    value = getattr(args, opt)
    if not (ok and math.isfinite(value)):
      p.error(f"--{opt.replace('_', '-')} must be {want}; got {value}")
  if args.dwa_period < 1:
    p.error(f"--dwa-period must be a positive number of steps; got {args.dwa_period}")
  # Every method the library has is built once here, so that a hyperparameter it refuses
  # is a usage error before anything runs (the run's catch-all is for failures of a run).
  for name in args.methods:
    if find_factory(name) is not None:
      try:
        find_factory(name)(**method_kwargs(name, args))
      except (ValueError, TypeError) as e:
        p.error(f"{name}: {e}")
  _report.check_out_option(p, args.out)
  # Whole blocks of steps between records: the smallest block size that divides --steps
  # and keeps at most --record points.
  every = -(-args.steps // min(args.record, args.steps))
  while args.steps % every:
    every += 1
  args.record_every, args.record = every, args.steps // every
  args.start_points = START_SETS[args.starts]
  return args


def find_factory(name: str):
  """The factory of method ``name`` from ``weightax.aggregators`` (None if it does not exist).

  Falls back to the module ``weightax.aggregators.<factory>`` for a method that
  is written but not yet re-exported by the package.
  """
  fname = METHODS[name][0]
  factory = getattr(wx.aggregators, fname, None)
  if factory is None or inspect.ismodule(factory):
    try:
      factory = getattr(importlib.import_module(f"weightax.aggregators.{fname}"), fname, None)
    except ImportError:
      return None
  return factory if callable(factory) and not inspect.ismodule(factory) else None


def method_kwargs(name: str, args: argparse.Namespace) -> dict:
  """The hyperparameters this study sets for ``name`` (only those its factory accepts)."""
  wanted = {"num_tasks": 2}
  if name == "cagrad":
    wanted["c"] = args.cagrad_c
  elif name == "gradnorm":
    wanted["alpha"] = args.gradnorm_alpha
  elif name == "dwa":
    wanted["period"] = args.dwa_period
  params = inspect.signature(find_factory(name)).parameters
  return {k: v for k, v in wanted.items() if k in params}


def make_train(name: str, args: argparse.Namespace):
  """``train(hparams, key)`` running method ``name`` from start ``hparams['start']``.

  The loop is :func:`weightax.mtl.fit`: the point ``x`` is the parameter, the two toy
  losses are the tasks (they depend on no data, so ``data`` is one dummy example), the
  aggregator turns their Jacobian into one update and Adam applies it; ``eval_fn``
  records ``x`` every ``record_every`` steps.
  """
  agg = find_factory(name)(**method_kwargs(name, args))
  opt = optax.adam(args.lr)
  offset = args.loss_offset if METHODS[name][1] else 0.0
  starts = jnp.asarray(args.start_points)
  losses_fn = lambda x: toy_losses(x, l1_scale=args.l1_scale)
  dummy = jnp.zeros((1,), jnp.float32)

  def task_losses(x, batch, key):
    # The offset shifts the losses the aggregator sees (loss-based methods assume
    # positive losses); the Jacobian, hence the gradients, are those of the toy.
    return losses_fn(x) + offset, None

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    x0 = starts[hp["start"]]
    with warnings.catch_warnings():  # methods that keep no task weights: nothing to record
      warnings.filterwarnings("ignore", message="mtl.fit: the aggregator's state has no")
      res = mtl.fit(task_losses, x0, agg, opt, dummy, key=key, num_steps=args.steps,
                    batch_size=1, eval_fn=lambda x: {"x": x}, eval_every=args.record_every)
    xs = res.eval_metrics["x"]  # [record + 1, 2]: step 0, then every record_every steps
    return {"x": xs, "losses": jax.vmap(losses_fn)(xs)}

  return train


def run_methods(args: argparse.Namespace) -> tuple[dict, dict]:
  """Runs every available method; returns ``(results, skipped)``.

  ``results[name]`` holds ``x [S, T+1, 2]``, ``losses [S, T+1, 2]`` (S starts) and the
  wall time; ``skipped[name]`` says why a method did not run (``"FAILED: ..."`` when its
  run raised; ``main`` then exits with an error after writing the report).
  """
  results, skipped = {}, {}
  for name in args.methods:
    fname = METHODS[name][0]
    if find_factory(name) is None:
      skipped[name] = f"weightax.aggregators.{fname} does not exist (yet)"
      print(f"toy: skipping {name}: {skipped[name]}", flush=True)
      continue
    t0 = time.perf_counter()
    try:
      res = wx.sweep(make_train(name, args), {"start": list(range(len(args.start_points)))},
                     seeds=[0], progress=False, desc=name)
    except Exception as e:  # noqa: BLE001 - reported in summary.md and by the exit status
      # Only a run's own failure gets here (the options were checked by parse_args): the
      # other methods still run and are reported, and main exits with an error.
      skipped[name] = "FAILED: " + f"{type(e).__name__}: {e}".splitlines()[0][:300]
      print(f"toy: {name} {skipped[name]}", flush=True)
      continue
    wall = time.perf_counter() - t0
    results[name] = {"x": np.asarray(res.metrics["x"]), "losses": np.asarray(res.metrics["losses"]),
                     "wall_s": wall, "kwargs": method_kwargs(name, args)}
    print(f"toy: {name:9s} {wall:6.1f} s", flush=True)
  return results, skipped


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  out = new_run_dir("toy_two_objective", args.out)
  print(f"toy_two_objective: {len(args.methods)} methods x {len(args.start_points)} starts, "
        f"{args.steps} Adam steps (lr {args.lr}), L1 scale {args.l1_scale} ...", flush=True)
  t0 = time.perf_counter()
  results, skipped = run_methods(args)
  elapsed = time.perf_counter() - t0
  summary = report.write_all(out, results, skipped, args, elapsed)
  print(report.answer_text(summary))
  print(f"\nReport: {out / 'summary.md'}")
  failed = [name for name, why in skipped.items() if why.startswith("FAILED: ")]
  if failed:
    raise SystemExit(f"{len(failed)} method(s) failed: {failed}; see {out / 'summary.md'}")
  return summary


if __name__ == "__main__":
  main()
