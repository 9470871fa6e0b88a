#!/usr/bin/env python
"""Does a smaller loss weight make descent slower? Measured on digits.

A small MLP is trained on ``w · cross_entropy`` for ``w`` on a log grid, under
seven optimizers, with several seeds, as ONE compiled sweep (`weightax.sweep`).
For each optimizer we measure the number of steps until the (unweighted)
training cross-entropy first reaches a target, and fit the log-log slope of
steps against ``w``. Theory (see docs/design.md, question 1):

* SGD and SGD+momentum are linear in the gradient, so ``w`` is a learning-rate
  multiplier: steps ∝ 1/w, a slope of -1 while the run stays in the small-step
  regime.
* Adam/AdamW divide by the gradient's RMS, so they are invariant to ``w`` until
  ``w·|g|`` approaches their epsilon; RMSProp (epsilon inside the square root in
  Optax) and Adagrad (initial accumulator 0.1 in Optax) leave that regime at
  larger ``w``.
* Coupled L2 (``w·CE + λ/2 |θ|²`` under SGD) weighs relatively more as ``w``
  shrinks; AdamW's decoupled decay does not depend on ``w``.

Run ``python experiments/loss_scale.py --help`` for every option.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import loss_scale_report as report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax.datasets import load_digits  # noqa: E402
from weightax.nn import init_mlp  # noqa: E402
from weightax.runs import run_dir  # noqa: E402

# name -> (factory of the learning rate, default learning rate, coupled L2 in the loss?)
OPTIMIZERS = {
    "sgd": (optax.sgd, 0.03, False),
    "sgd+momentum": (lambda learning_rate: optax.sgd(learning_rate, momentum=0.9), 0.003, False),
    "adam": (optax.adam, 3e-3, False),
    "adamw": (None, 3e-3, False),  # built with the --adamw-decay option below
    "rmsprop": (optax.rmsprop, 3e-3, False),
    "adagrad": (optax.adagrad, 0.1, False),
    "sgd+l2": (optax.sgd, 0.03, True),
}
ADAPTIVE = ("adam", "adamw", "rmsprop", "adagrad")
# --quick's values, set on the options the command line does not give (_report.apply_quick)
QUICK = {"w_min": 1.0, "w_max": 10.0, "num_w": 4, "seeds": 2, "steps": 1000,
         "optimizers": "sgd,adam"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=_report.HelpFormatter,
  )
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/loss_scale/<UTC time>)")
  p.add_argument("--w-min", type=float, default=1e-6, help="smallest loss weight w")
  p.add_argument("--w-max", type=float, default=10.0, help="largest loss weight w")
  p.add_argument("--num-w", type=int, default=15, help="number of w values (log-spaced)")
  p.add_argument("--seeds", type=int, default=4, help="seeds per configuration")
  p.add_argument("--steps", type=int, default=3000, help="optimizer steps per run")
  p.add_argument("--eval-every", type=int, default=10, help="steps between full-data losses")
  p.add_argument("--batch-size", type=int, default=64, help="minibatch size")
  p.add_argument("--hidden", type=int, default=32, help="width of the MLP's hidden layer")
  p.add_argument("--target", type=float, default=0.3, help="target training cross-entropy")
  p.add_argument("--l2", type=float, default=1e-2, help="coupled L2 coefficient λ of sgd+l2")
  p.add_argument("--adamw-decay", type=float, default=0.1, help="AdamW's decoupled weight decay")
  p.add_argument(
      "--optimizers", default=",".join(OPTIMIZERS), help="comma-separated subset of optimizers"
  )
  for name, (_, lr, _) in OPTIMIZERS.items():
    p.add_argument(f"--lr-{name.replace('+', '-')}", type=float, default=lr,
                   help=f"learning rate of {name}")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="configurations per compiled chunk (default: a quarter of the runs, "
                      "so a progress bar moves; measured as fast as one chunk)")
  p.add_argument("--memory-budget-mb", type=float, default=None,
                 help="instead of --chunk-size: let wx.sweep size the chunks so that one "
                      "compiled chunk (XLA's memory analysis) uses at most this many MiB")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests: sgd and adam, 4 w in [1, 10], 2 seeds, 1000 steps "
                      "(an option also given on the command line keeps its given value)")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/loss_scale.py", *(sys.argv[1:] if argv is None
                                                                  else argv)])
  _report.apply_quick(p, args, argv, **QUICK)
  check_args(p, args)
  return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Rejects bad options with ``p.error`` (exit status 2), before any output is written."""
  quick = ""
  if args.quick:
    values = ", ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float)
                       else f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
    quick = f" (with --quick, an option not given takes its quick value: {values})"
  args.optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
  unknown = [o for o in args.optimizers if o not in OPTIMIZERS]
  if unknown or not args.optimizers:
    p.error(f"--optimizers: expected a subset of {list(OPTIMIZERS)}; got {args.optimizers}")
  if len(set(args.optimizers)) != len(args.optimizers):
    p.error(f"--optimizers: each optimizer at most once; got {args.optimizers}")
  if (args.num_w < 2 or not (math.isfinite(args.w_min) and math.isfinite(args.w_max))
      or not 0 < args.w_min < args.w_max):
    p.error(f"need --num-w >= 2 and 0 < --w-min < --w-max (finite); got {args.num_w}, "
            f"{args.w_min}, {args.w_max}{quick}")
  if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
    p.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every}){quick}")
  for opt in ("seeds", "batch_size", "hidden"):
    if getattr(args, opt) < 1:
      p.error(f"--{opt.replace('_', '-')} must be a positive integer; got {getattr(args, opt)}"
              f"{quick}")
  if args.chunk_size is not None and args.chunk_size < 1:
    p.error(f"--chunk-size must be a positive integer (omit it for the default); got "
            f"{args.chunk_size}")
  if not (math.isfinite(args.target) and args.target > 0):
    p.error(f"--target must be a positive training cross-entropy; got {args.target}")
  for name in args.optimizers:
    lr = getattr(args, f"lr_{name.replace('+', '_')}")
    if not (math.isfinite(lr) and lr > 0):
      p.error(f"--lr-{name.replace('+', '-')} must be a positive learning rate; got {lr}")
  for opt in ("l2", "adamw_decay"):
    if not (math.isfinite(getattr(args, opt)) and getattr(args, opt) >= 0):
      p.error(f"--{opt.replace('_', '-')} must be >= 0; got {getattr(args, opt)}")
  if args.memory_budget_mb is not None:
    if args.chunk_size is not None:
      p.error("give --chunk-size or --memory-budget-mb, not both")
    if not (math.isfinite(args.memory_budget_mb) and args.memory_budget_mb > 0):
      p.error(f"--memory-budget-mb must be positive; got {args.memory_budget_mb}")


def make_optimizer(name: str, lr: jax.Array, args: argparse.Namespace):
  """The optimizer ``name`` with a traced learning rate (``inject_hyperparams``)."""
  if name == "adamw":
    return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=args.adamw_decay)
  return optax.inject_hyperparams(OPTIMIZERS[name][0])(learning_rate=lr)


def make_train(args: argparse.Namespace, x: jax.Array, y: jax.Array):
  """``train(hparams, key)`` for the sweep: hparams ``w`` and ``opt`` (an index)."""
  names = args.optimizers
  lrs = jnp.asarray([getattr(args, f"lr_{n.replace('+', '_')}") for n in names], jnp.float32)
  coupled = jnp.asarray([OPTIMIZERS[n][2] for n in names])

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    k_init, k_fit = jax.random.split(key)
    params, apply = init_mlp((x.shape[1], args.hidden, 10), k_init)
    opt = hp["opt"]
    # Every optimizer runs on the same gradient and the chosen one's update is
    # applied: under vmap a lax.switch would evaluate every branch anyway, and the
    # extra element-wise updates are cheap next to the MLP's matmuls.
    txs = [make_optimizer(n, lrs[i], args) for i, n in enumerate(names)]

    def update(g, states, p):
      outs = [tx.update(g, s, p) for tx, s in zip(txs, states, strict=True)]
      u = jax.tree.map(lambda *us: jnp.stack(us)[opt], *(o[0] for o in outs))
      return u, tuple(o[1] for o in outs)

    tx = optax.GradientTransformation(lambda p: tuple(t.init(p) for t in txs), update)

    def ce(p, xb, yb):
      return optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()

    def loss_fn(p, batch, _key):
      sq = sum(jnp.sum(v**2) for v in jax.tree.leaves(p))
      l2 = jnp.where(coupled[opt], 0.5 * args.l2 * sq, 0.0)
      return hp["w"] * ce(p, *batch) + l2, {}

    def evaluate(p):
      norm = jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(p)))
      return {"train_ce": ce(p, x, y), "param_norm": norm}

    res = wx.fit(loss_fn, params, tx, (x, y), key=k_fit, num_steps=args.steps,
                 batch_size=args.batch_size, eval_fn=evaluate, eval_every=args.eval_every)
    return {"curve": res.eval_metrics["train_ce"], "param_norm": res.eval_metrics["param_norm"]}

  return train


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)  # every option is checked here, before any output is written
  with run_dir("loss_scale", args.out) as out:  # removed if the run fails before writing
    return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> dict:
  train_split, _ = load_digits(seed=0)
  x, y = jnp.asarray(train_split.x), jnp.asarray(train_split.y)
  ws = np.logspace(np.log10(args.w_min), np.log10(args.w_max), args.num_w)
  grid = {"opt": list(range(len(args.optimizers))), "w": ws.tolist()}
  n_cfg = len(args.optimizers) * len(ws) * args.seeds
  print(f"loss_scale: {n_cfg} runs ({len(args.optimizers)} optimizers x {len(ws)} w x "
        f"{args.seeds} seeds) of {args.steps} steps, as one compiled sweep ...", flush=True)
  t0 = time.perf_counter()
  if args.memory_budget_mb is not None:
    sizing = {"chunk_size": None, "memory_budget": args.memory_budget_mb * 2**20,
              "progress": True}
  else:
    sizing = {"chunk_size": args.chunk_size or -(-n_cfg // 4)}
  res = wx.sweep(make_train(args, x, y), grid, seeds=args.seeds, desc="loss_scale", **sizing)
  elapsed = time.perf_counter() - t0
  print(f"loss_scale: sweep done in {elapsed:.1f} s; analysing ...", flush=True)
  summary = report.write_all(out, res, args, ws, elapsed)
  print(report.answer_text(summary))
  print(f"\nReport: {out / 'summary.md'}")
  return summary


if __name__ == "__main__":
  main()
