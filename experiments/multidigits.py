#!/usr/bin/env python
"""MultiDigits: every multi-task method of the library against single-task baselines.

A MultiMNIST-style benchmark built from scikit-learn's bundled 8×8 digits
(``weightax.datasets.multidigits``): each 12×12 image holds two overlapping
digits, and one small CNN trunk with three heads (``weightax.nn_cnn``) learns
three tasks at once: the left digit (accuracy), the right digit (accuracy) and
the sum of the two (mean absolute error; trained with an L1 loss).

Every aggregator in ``weightax.aggregators`` (found by enumerating the
package, each with its default hyperparameters, built with ``num_tasks=3``)
trains the shared trunk through ``weightax.mtl.fit``; the heads get their own
task's gradient. Auto-λ (``weightax.meta.auto_lambda``, meta-learned task
weights, its defaults) trains through ``mtl.fit(meta=..., val_data=...)``: it
holds out a fraction of the *training* images (``--meta-val-fraction``, 10%)
as its meta-validation set, draws one batch of it per step, and trains the
whole network on ``Σ_k λ_k L_k`` from the remaining images (the benchmark's
validation split stays reserved for model selection). Single-task learning
(STL: one model per task, same trunk and optimizer) gives the baselines.
Each method's seeds (and, with ``--sensitivity``, its hyperparameter values)
run as ONE ``weightax.sweep``: one compiled program per method, since under
``vmap`` a ``lax.switch`` over methods would run every branch.

Model selection: the evaluation step with the best validation Δm (each STL
model: its task's best validation metric). Reported: test metrics per task,
``Δm% = (100/T) Σ_t s_t (M_t − B_t)/B_t`` (LibMTL's definition, ``B_t`` the
mean STL test metric, ``s_t = +1`` for accuracy and ``−1`` for MAE, so a
positive Δm is better than single-task learning), mean ± std over seeds, a
ranking, and the wall time of every method (compilation included).

Outputs under ``runs/multidigits/<UTC time>/``: summary.md, summary.json,
results.csv, curves (weights), PNG plots. Run with ``--help`` for every option.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import multidigits_report as report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax.datasets.multidigits import TASKS, load_multidigits  # noqa: E402
from weightax.nn_cnn import init_hard_sharing_cnn  # noqa: E402
from weightax.runs import new_run_dir  # noqa: E402

STL = "single_task"
NUM_TASKS = len(TASKS)
OUT_SIZES = (10, 10, 1)
SHARED = {"trunk": True, "heads": False}  # a prefix mask: the trunk is shared, the heads are not
# Meta-learned task weights (weightax.meta), run through mtl.fit(meta=..., val_data=...).
META_METHODS: dict[str, Callable[..., Any]] = {"auto_lambda": wx.meta.auto_lambda}
META_EPS_ROOT = 1e-16  # Adam's eps_root for the meta methods (see make_meta_train)

# The main hyperparameter of each method that has one, and the values --sensitivity runs.
SENSITIVITY: dict[str, tuple[str, tuple[float, ...]]] = {
    "cagrad": ("c", (0.1, 0.2, 0.4, 0.6, 0.8)),
    "dwa": ("temperature", (0.5, 1.0, 2.0, 4.0, 8.0)),
    "gradnorm": ("alpha", (0.0, 0.5, 1.0, 1.5, 2.5)),
    "nash_mtl": ("reg_eps", (1e-8, 1e-6, 1e-4, 1e-2, 1e-1)),
    "uncertainty_weighting": ("learning_rate", (1e-4, 1e-3, 1e-2, 1e-1)),
}
QUICK_SENSITIVITY_VALUES = 2  # --quick --sensitivity: the first and last value of each
# --quick without --methods: every method is its own compiled program (about 10 s of CPU each,
# mostly compilation), so a tiny run takes a representative few: the plain sum, a Gramian
# method (MGDA), a projection method (UPGrad), a loss-based weighting (DWA, which has a
# sensitivity sweep) and the meta-learned Auto-λ; the single-task baselines always run.
QUICK_METHODS = ("linear_scalarization", "mgda", "upgrad", "dwa", "auto_lambda")


def library_methods() -> dict[str, Callable[..., Any]]:
  """Every aggregator factory exported by ``weightax.aggregators``, by name.

  A factory is a public function defined in the module of its own name
  (``weightax.aggregators.<name>``) that takes ``num_tasks``: the helpers
  exported next to them (``combine``, ``gramian_aggregator``, ...) are left
  out, and a method added to the package joins the benchmark automatically.
  """
  out = {}
  for name in wx.aggregators.__all__:
    obj = getattr(wx.aggregators, name, None)
    if not callable(obj) or isinstance(obj, type) or name.startswith("_"):
      continue
    if getattr(obj, "__module__", "") != f"weightax.aggregators.{name}":
      continue
    try:
      params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
      continue
    if "num_tasks" in params:
      out[name] = obj
  return dict(sorted(out.items()))


def all_methods() -> list[str]:
  """The benchmark's methods: every library aggregator, then the meta-learned ones."""
  return [*library_methods(), *META_METHODS]


def meta_split(n_train: int, fraction: float) -> tuple[slice, slice]:
  """``(train, meta-validation)`` slices of the training images for a meta method.

  The last ``round(fraction · n_train)`` images (the images are drawn in random order,
  so this is a random subset) are held out; ``fraction = 0`` holds out nothing and the
  meta-validation batches come from the training images themselves (the Auto-Lambda
  reference code's second shuffled pass over the training set).
  """
  n_val = int(round(fraction * n_train))
  if n_val == 0:
    return slice(0, n_train), slice(0, n_train)
  if n_val >= n_train:
    raise ValueError(f"meta_split: holding out {n_val} of {n_train} training images leaves "
                     "none to train on; expected 0 <= fraction < 1.")
  return slice(0, n_train - n_val), slice(n_train - n_val, n_train)


def method_needs(name: str) -> tuple[str, ...]:
  """What the method needs besides its gradients, from the library's method table if present."""
  try:
    from weightax import _methods
  except ImportError:
    return ()
  try:
    return tuple(_methods.by_name()[name].needs)
  except (KeyError, TypeError, AttributeError):  # not (yet) in the table
    return ()


def default_hyperparameters(factory: Callable[..., Any]) -> dict[str, Any]:
  """The factory's keyword defaults other than ``num_tasks``, ``shared`` and the (meta)
  optimizer replacing the default one."""
  out = {}
  for p in inspect.signature(factory).parameters.values():
    if (p.name in ("num_tasks", "shared", "meta_optimizer")
        or p.default is inspect.Parameter.empty):
      continue
    d = p.default
    out[p.name] = d if isinstance(d, int | float | bool | str | type(None)) else repr(d)
  return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  methods = all_methods()
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=_report.HelpFormatter,
  )
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/multidigits/<UTC time>)")
  p.add_argument("--methods", default="all",
                 help=f"comma-separated subset of the library's aggregators and meta methods "
                      f"{methods}, or 'all'; the single-task baselines always run")
  p.add_argument("--seeds", type=int, default=3, help="seeds (initialisation and batches)")
  p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
  p.add_argument("--eval-every", type=int, default=100,
                 help="steps between validation/test evaluations (model selection points)")
  p.add_argument("--batch-size", type=int, default=32, help="images per step")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
  p.add_argument("--n-train", type=int, default=6000, help="training images")
  p.add_argument("--n-val", type=int, default=1000, help="validation images")
  p.add_argument("--n-test", type=int, default=2000, help="test images")
  p.add_argument("--meta-val-fraction", type=float, default=0.1,
                 help=f"fraction of the training images {sorted(META_METHODS)} hold out as their "
                      "meta-validation set (0: draw it from the training images themselves)")
  p.add_argument("--canvas", type=int, default=12, help="image side (even, >= 8 + max shift)")
  p.add_argument("--max-shift", type=int, default=1,
                 help="largest shift of a digit from its corner towards the centre, in pixels")
  p.add_argument("--data-seed", type=int, default=0, help="seed of the data set (pools, pairs)")
  p.add_argument("--channels", default="16,32", help="channels of the two convolutions")
  p.add_argument("--features", type=int, default=64, help="width of the shared representation")
  p.add_argument("--sensitivity", action="store_true",
                 help="also sweep the main hyperparameter of "
                      f"{sorted(SENSITIVITY)} (one program per method) and plot Δm%% against it")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests (1-2 minutes on two cores): 2 seeds, 60 steps, "
                      f"600/200/200 images, the methods {','.join(QUICK_METHODS)}, two values "
                      "per sensitivity sweep; an option given explicitly (--methods all, "
                      "--seeds ...) is kept")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/multidigits.py",
                           *(sys.argv[1:] if argv is None else argv)])
  _report.apply_quick(p, args, argv, seeds=2, steps=60, eval_every=20, n_train=600, n_val=200,
                      n_test=200, methods=",".join(QUICK_METHODS))
  if args.methods.strip() == "all":
    args.methods = methods
  else:
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in methods]
    if not args.methods or bad:
      p.error(f"--methods: expected 'all' or a subset of {methods}; unknown {bad}")
  args.meta_methods = [m for m in args.methods if m in META_METHODS]
  try:
    args.channels = tuple(int(c) for c in args.channels.split(","))
  except ValueError as e:
    p.error(f"--channels takes two comma-separated integers: {e}")
  if len(args.channels) != 2 or min(args.channels) < 1:
    p.error(f"--channels takes two positive integers; got {args.channels}")
  if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
    p.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every})")
  for opt in ("seeds", "batch_size", "n_train", "n_val", "n_test", "features"):
    if getattr(args, opt) < 1:
      p.error(f"--{opt.replace('_', '-')} must be a positive integer; got {getattr(args, opt)}")
  for opt in ("max_shift", "data_seed"):
    if getattr(args, opt) < 0:
      p.error(f"--{opt.replace('_', '-')} must be >= 0; got {getattr(args, opt)}")
  if not (math.isfinite(args.lr) and args.lr > 0):
    p.error(f"--lr must be a positive number; got {args.lr}")
  if args.canvas % 2 or args.canvas < 8 + args.max_shift:
    p.error(f"--canvas must be even and at least 8 + --max-shift; got {args.canvas}")
  if not 0 <= args.meta_val_fraction < 1:
    p.error(f"--meta-val-fraction must be in [0, 1); got {args.meta_val_fraction}")
  try:
    tr, va = meta_split(args.n_train, args.meta_val_fraction)
  except ValueError as e:
    p.error(f"--n-train {args.n_train} with --meta-val-fraction {args.meta_val_fraction}: {e}")
  args.n_meta_train, args.n_meta_val = tr.stop - tr.start, va.stop - va.start
  _report.check_out_option(p, args.out)
  return args


def _metrics(outputs: list[jax.Array], left: jax.Array, right: jax.Array,
             total: jax.Array) -> jax.Array:
  """``[accuracy left, accuracy right, MAE of the sum]``."""
  acc_l = jnp.mean(jnp.argmax(outputs[0], -1) == left)
  acc_r = jnp.mean(jnp.argmax(outputs[1], -1) == right)
  mae = jnp.mean(jnp.abs(outputs[2][:, 0] - total))
  return jnp.stack([acc_l, acc_r, mae]).astype(jnp.float32)


class Problem:
  """The data (as device arrays) and the model, shared by every method's ``train``."""

  def __init__(self, args: argparse.Namespace):
    tr, va, te = load_multidigits(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                                  canvas=args.canvas, max_shift=args.max_shift,
                                  seed=args.data_seed)
    as_tuple = lambda s: (jnp.asarray(s.x), jnp.asarray(s.left), jnp.asarray(s.right),
                          jnp.asarray(s.sum))
    self.train, self.val, self.test = as_tuple(tr), as_tuple(va), as_tuple(te)
    m_tr, m_va = meta_split(len(tr.x), args.meta_val_fraction)
    self.meta_train = tuple(a[m_tr] for a in self.train)
    self.meta_val = tuple(a[m_va] for a in self.train)
    self.args = args

  def init(self, key: jax.Array):
    return init_hard_sharing_cnn(key, size=self.args.canvas, out_sizes=OUT_SIZES,
                                 channels=self.args.channels, features=self.args.features)

  def losses(self, apply, params, batch) -> jax.Array:
    """``[K]``: cross-entropy of each digit, L1 of the sum."""
    x, left, right, total = batch
    out = apply(params, x)
    ce_l = optax.softmax_cross_entropy_with_integer_labels(out[0], left).mean()
    ce_r = optax.softmax_cross_entropy_with_integer_labels(out[1], right).mean()
    l1 = jnp.mean(jnp.abs(out[2][:, 0] - total))
    return jnp.stack([ce_l, ce_r, l1])

  def evaluate(self, apply, params) -> dict[str, jax.Array]:
    # The images are constants of the program; the barrier stops XLA from constant-folding
    # their convolution patches at compile time (seconds of compilation, megabytes of constants).
    x_val, x_test = jax.lax.optimization_barrier((self.val[0], self.test[0]))
    return {"val": _metrics(apply(params, x_val), *self.val[1:]),
            "test": _metrics(apply(params, x_test), *self.test[1:])}


def make_train(problem: Problem, factory: Callable[..., Any] | None, hp_names: tuple[str, ...],
               *, post_step_losses: bool = False):
  """``train(hparams, key)`` for one method (``factory=None``: single-task learning).

  Single-task learning trains the same network on one task's loss (the grid's
  ``task`` axis), as a one-task problem: ``linear_scalarization(num_tasks=1)``
  is the plain gradient, and the unused heads get zero gradients.
  """
  args = problem.args

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, Any]:
    k_init, k_fit = jax.random.split(key)
    params, apply = problem.init(k_init)
    if factory is None:
      agg = wx.linear_scalarization(num_tasks=1)
      task_losses = lambda p, b, k: (problem.losses(apply, p, b)[hp["task"]][None], None)
    else:
      agg = factory(num_tasks=NUM_TASKS, **{n: hp[n] for n in hp_names})
      task_losses = lambda p, b, k: (problem.losses(apply, p, b), None)
    kw = {"post_step_losses": True} if post_step_losses else {}
    res = wx.mtl.fit(task_losses, params, agg, optax.adam(args.lr), problem.train,
                     key=k_fit, num_steps=args.steps, batch_size=args.batch_size,
                     shared=SHARED, eval_fn=lambda p: problem.evaluate(apply, p),
                     eval_every=args.eval_every, **kw)
    out = {"eval": res.eval_metrics, "task_losses": res.step_metrics["task_losses"]}
    if factory is not None:
      out["task_weights"] = res.step_metrics["task_weights"]
    return out

  return train


def make_meta_train(problem: Problem, builder: Callable[..., Any]):
  """``train(hparams, key)`` for a meta-learned task weighting (``weightax.meta.auto_lambda``).

  The method holds the losses and the optimizer (the benchmark's Adam), updates every
  parameter with ``Σ_k λ_k ∇L_k`` (no shared mask: each head gets ``λ_k ∇L_k``), and draws
  its training batches from ``problem.meta_train`` and its meta-validation batches (same
  size) from ``problem.meta_val``; ``mtl.fit`` records λ as ``task_weights``.
  """
  args = problem.args

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, Any]:
    del hp
    k_init, k_fit = jax.random.split(key)
    params, apply = problem.init(k_init)
    # The virtual step is differentiated through Adam: with Optax's default eps_root = 0, the
    # derivative of sqrt(ν̂) at a parameter whose gradient is exactly 0 (a dead ReLU unit's
    # weights) is inf · 0 = NaN, and λ turns NaN. A tiny eps_root (Optax's option for
    # meta-gradients through Adam) keeps it finite; its effect on the step is below float32's
    # resolution wherever ν̂ > 1e-9.
    method = builder(lambda p, b, k: problem.losses(apply, p, b),
                     optax.adam(args.lr, eps_root=META_EPS_ROOT), num_tasks=NUM_TASKS)
    res = wx.mtl.fit(None, params, None, None, problem.meta_train, key=k_fit,
                     num_steps=args.steps, batch_size=args.batch_size, meta=method,
                     val_data=problem.meta_val, eval_fn=lambda p: problem.evaluate(apply, p),
                     eval_every=args.eval_every)
    return {"eval": res.eval_metrics, "task_losses": res.step_metrics["task_losses"],
            "task_weights": res.step_metrics["task_weights"]}

  return train


def _load() -> str:
  try:
    return "load average (1/5/15 min) " + " / ".join(f"{v:.2f}" for v in os.getloadavg())
  except OSError:  # not every platform has it
    return "load average unavailable"


def run_sweep(name: str, train, grid: dict[str, Any], seeds: int) -> tuple[Any, dict[str, Any]]:
  """One method's sweep, timed (compilation included), with the machine's load around it."""
  load_before = _load()
  t0, c0 = time.perf_counter(), time.process_time()
  res = wx.sweep(train, grid, seeds=seeds, progress=False, desc=name)
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  # CPU time (all threads of this process) does not grow when other processes share the
  # cores, so it bounds what the wall time would be on an idle machine: cpu / cores <= wall.
  timing = {"seconds": seconds, "cpu_seconds": cpu, "load_before": load_before,
            "load_after": _load(), "configs": len(res)}
  print(f"  {name}: {len(res)} runs in {seconds:.1f} s wall, {cpu:.1f} s CPU "
        f"({timing['load_after']})", file=sys.stderr, flush=True)
  return res, timing


def main(argv: list[str] | None = None) -> Path:
  args = parse_args(argv)
  problem = Problem(args)  # before the run directory: a data error leaves no empty directory
  out_dir = new_run_dir("multidigits", args.out)
  print(f"MultiDigits -> {out_dir}", file=sys.stderr, flush=True)
  factories = library_methods()
  conditions = {"cpus": os.cpu_count(), "platform": platform.platform(),
                "jax": jax.__version__, "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()], "load_at_start": _load()}
  t_start = time.perf_counter()

  runs: dict[str, Any] = {}
  timings: dict[str, Any] = {}
  skipped: dict[str, str] = {}
  failed: dict[str, str] = {}  # a method that raised: the others still run and are reported
  print("single-task baselines:", file=sys.stderr, flush=True)
  res, timings[STL] = run_sweep(STL, make_train(problem, None, ()),
                                {"task": list(range(NUM_TASKS))}, args.seeds)
  runs[STL] = res

  print("methods (default hyperparameters):", file=sys.stderr, flush=True)
  hyper: dict[str, dict[str, Any]] = {}
  for name in args.methods:
    if name in META_METHODS:
      try:
        runs[name], timings[name] = run_sweep(
            name, make_meta_train(problem, META_METHODS[name]), {}, args.seeds)
      except Exception as e:  # noqa: BLE001 - reported in summary.md and by the exit status
        failed[name] = f"{type(e).__name__}: {e}"
        print(f"  {name} FAILED: {failed[name]}", file=sys.stderr, flush=True)
        continue
      hyper[name] = default_hyperparameters(META_METHODS[name])
      continue
    factory = factories[name]
    needs = method_needs(name)
    if "validation data" in needs:
      skipped[name] = "needs validation batches during training, which mtl.fit does not pass"
      continue
    try:
      factory(num_tasks=NUM_TASKS)
    except TypeError as e:  # a required hyperparameter without a default
      skipped[name] = f"cannot be built with defaults only: {e}"
      continue
    train = make_train(problem, factory, (),
                       post_step_losses="extra forward pass" in needs)
    try:
      runs[name], timings[name] = run_sweep(name, train, {}, args.seeds)
    except Exception as e:  # noqa: BLE001 - reported in summary.md and by the exit status
      failed[name] = f"{type(e).__name__}: {e}"
      print(f"  {name} FAILED: {failed[name]}", file=sys.stderr, flush=True)
      continue
    hyper[name] = default_hyperparameters(factory)

  sensitivity: dict[str, Any] = {}
  if args.sensitivity:
    print("sensitivity sweeps:", file=sys.stderr, flush=True)
    for name in args.methods:
      if name not in SENSITIVITY or name not in hyper:
        continue
      hp_name, values = SENSITIVITY[name]
      if args.quick:
        values = (values[0], values[-1])
      train = make_train(problem, factories[name], (hp_name,),
                         post_step_losses="extra forward pass" in method_needs(name))
      try:
        res, t = run_sweep(f"{name}[{hp_name}]", train, {hp_name: list(values)}, args.seeds)
      except Exception as e:  # noqa: BLE001 - reported in summary.md and by the exit status
        failed[f"{name}[{hp_name}]"] = f"{type(e).__name__}: {e}"
        print(f"  {name}[{hp_name}] FAILED: {e}", file=sys.stderr, flush=True)
        continue
      sensitivity[name] = {"param": hp_name, "result": res, "timing": t,
                           "default": hyper[name].get(hp_name)}

  conditions["load_at_end"] = _load()
  conditions["total_seconds"] = time.perf_counter() - t_start
  skipped.update({n: f"FAILED: {why}" for n, why in failed.items()})
  summary = report.write_all(out_dir, args=args, runs=runs, timings=timings, hyper=hyper,
                             skipped=skipped, sensitivity=sensitivity, conditions=conditions)
  print(f"Δm% (mean over {args.seeds} seeds): " + ", ".join(
      f"{m} {v['delta_m']:+.2f}" for m, v in summary["methods"].items()), file=sys.stderr)
  print(f"wrote {out_dir}/summary.md", file=sys.stderr)
  if failed:
    raise SystemExit(f"{len(failed)} run(s) failed: {sorted(failed)}; see {out_dir}/summary.md")
  return out_dir


if __name__ == "__main__":
  main()
