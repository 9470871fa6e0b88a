#!/usr/bin/env python
"""Does GradNorm balance tasks of very different scales? Chen et al.'s synthetic study.

Reproduces §4 of GradNorm (Chen et al., ICML 2018): T regression tasks
``f_i(x) = σ_i tanh((B + ε_i) x)`` (``weightax.datasets.synthetic``), a
4-layer ReLU trunk of width 100 shared by T affine heads, squared loss. With
T = 2 and σ = (1, 100), equal weights let the σ = 100 task dominate the shared
trunk; the paper reports that GradNorm (α = 0.12) raises the weight of the
σ = 1 task, stays stable, and lowers ``Σ_i L_i(t)/L_i(0)``. T = 10 spreads σ_i
over a wide range. Three methods are compared: equal weights
(``linear_scalarization``), ``gradnorm`` (norms on the last shared layer's
kernel, weight lr 0.025) and ``uncertainty_weighting``.

For each T and method, every seed runs in ONE compiled, vmapped
``weightax.sweep``; the methods have different state types, so they are
looped over in Python. Seeds change the network's initialisation and the
minibatches; the problem (``B``, ``ε_i``) is fixed by ``--problem-seed``.

Run ``python experiments/gradnorm_synthetic.py --help`` for every option.
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
import gradnorm_synthetic_report as report  # noqa: E402

import weightax as wx  # noqa: E402
from weightax import mtl  # noqa: E402
from weightax.datasets.synthetic import (  # noqa: E402
    gradnorm_problem,
    gradnorm_sample,
    wide_sigmas,
)
from weightax.runs import new_run_dir  # noqa: E402

METHODS = ("equal", "gradnorm", "uncertainty")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=_report.HelpFormatter,
  )
  p.add_argument("--out", default=None,
                 help="output directory (default: runs/gradnorm_synthetic/<UTC time>)")
  p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run")
  p.add_argument("--eval-every", type=int, default=50, help="steps between test-set evaluations")
  p.add_argument("--seeds", type=int, default=3, help="seeds (initialisation and batches)")
  p.add_argument("--batch-size", type=int, default=100, help="examples per step")
  p.add_argument("--train-size", type=int, default=5000, help="training examples (fixed set)")
  p.add_argument("--test-size", type=int, default=1000, help="held-out examples")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate for the network")
  p.add_argument("--alpha", type=float, default=0.12, help="GradNorm's α (0.12 in §4)")
  p.add_argument("--weight-lr", type=float, default=0.025,
                 help="Adam's learning rate of GradNorm's weights and of uncertainty "
                      "weighting's log-variances")
  p.add_argument("--width", type=int, default=100, help="trunk width")
  p.add_argument("--depth", type=int, default=4, help="ReLU layers in the trunk")
  p.add_argument("--tasks", default="2,10", help="comma-separated task counts T to run")
  p.add_argument("--sigmas-2", default="1,100", help="σ of the T = 2 problem")
  p.add_argument("--sigma-range", default="1,100",
                 help="for T != 2: σ_i log-spaced over this range (low,high)")
  p.add_argument("--normal-param", choices=("std", "variance"), default="std",
                 help="read the paper's N(0, 10) and N(0, 3.5) as std (as the PyTorch "
                      "reimplementations) or variance")
  p.add_argument("--problem-seed", type=int, default=0, help="seed of B and ε_i")
  p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
  p.add_argument("--quick", action="store_true",
                 help="tiny run for tests: T = 3 only, 2 seeds, 200 steps (evaluated every "
                      "20), width 32, 1000/200 examples; an option given explicitly (--tasks, "
                      "--seeds, ...) is kept")
  args = p.parse_args(argv)
  args.command = " ".join(["python experiments/gradnorm_synthetic.py",
                           *(sys.argv[1:] if argv is None else argv)])
  _report.apply_quick(p, args, argv, steps=200, eval_every=20, seeds=2, width=32, tasks="3",
                      test_size=200, train_size=1000)
  try:
    args.tasks = [int(t) for t in args.tasks.split(",") if t.strip()]
    args.sigmas_2 = [float(s) for s in args.sigmas_2.split(",")]
    args.sigma_range = [float(s) for s in args.sigma_range.split(",")]
  except ValueError as e:
    p.error(f"--tasks, --sigmas-2 and --sigma-range take comma-separated numbers: {e}")
  args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  if not args.methods or any(m not in METHODS for m in args.methods):
    p.error(f"--methods: expected a subset of {list(METHODS)}; got {args.methods}")
  if not args.tasks or any(t < 2 for t in args.tasks):
    p.error(f"--tasks: every T must be >= 2; got {args.tasks}")
  if len(args.sigmas_2) != 2 or len(args.sigma_range) != 2:
    p.error("--sigmas-2 and --sigma-range take exactly two numbers each")
  if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
    p.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every})")
  for opt in ("seeds", "batch_size", "train_size", "test_size", "width", "depth"):
    if getattr(args, opt) < 1:
      p.error(f"--{opt.replace('_', '-')} must be a positive integer; got {getattr(args, opt)}")
  for opt, ok, want in (("lr", args.lr > 0, "a positive number"),
                        ("weight_lr", args.weight_lr > 0, "a positive number"),
                        ("alpha", args.alpha >= 0, "a number >= 0")):
    value = getattr(args, opt)
    if not (ok and math.isfinite(value)):
      p.error(f"--{opt.replace('_', '-')} must be {want}; got {value}")
  if not all(math.isfinite(s) and s > 0 for s in args.sigmas_2):
    p.error(f"--sigmas-2 takes two positive numbers; got {args.sigmas_2}")
  low, high = args.sigma_range
  if not (math.isfinite(high) and 0 < low <= high):
    p.error(f"--sigma-range takes low,high with 0 < low <= high; got {args.sigma_range}")
  _report.check_out_option(p, args.out)
  return args


def sigmas_for(t: int, args: argparse.Namespace) -> np.ndarray:
  """The task scales of the T-task problem."""
  if t == 2:
    return np.asarray(args.sigmas_2, np.float32)
  return wide_sigmas(t, *args.sigma_range)


def init_params(key: jax.Array, t: int, args: argparse.Namespace, in_dim: int = 250,
                out_dim: int = 100) -> dict:
  """He-normal trunk ``in_dim → width × depth`` and ``t`` affine heads ``width → out_dim``."""
  sizes = [in_dim] + [args.width] * args.depth
  keys = jax.random.split(key, args.depth + 1)
  trunk = [
      {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros((b,))}
      for k, a, b in zip(keys[:-1], sizes[:-1], sizes[1:], strict=True)
  ]
  heads = {"w": jax.random.normal(keys[-1], (t, args.width, out_dim)) * jnp.sqrt(1.0 / args.width),
           "b": jnp.zeros((t, out_dim))}
  return {"trunk": trunk, "heads": heads}


def predict(params: dict, x: jax.Array) -> jax.Array:
  """``[n, T, out]`` predictions of every head."""
  h = x
  for layer in params["trunk"]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return jnp.einsum("nh,tho->nto", h, params["heads"]["w"]) + params["heads"]["b"]


def task_losses(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """``[T]`` mean squared errors."""
  return jnp.mean(jnp.square(predict(params, x) - y), axis=(0, 2))


def last_layer_mask(trunk: list) -> list:
  """GradNorm's ``W``: the kernel of the last shared layer (Chen et al. §3.2)."""
  mask = jax.tree.map(lambda _: False, trunk)
  mask[-1]["w"] = True
  return mask


def make_aggregator(name: str, t: int, args: argparse.Namespace):
  """The aggregator (over the trunk) and a function reading its task weights from its state."""
  if name == "equal":
    agg = wx.linear_scalarization(num_tasks=t)
    return agg, lambda s: jnp.ones((t,), jnp.float32)
  if name == "gradnorm":
    agg = wx.gradnorm(alpha=args.alpha, learning_rate=args.weight_lr, layer=last_layer_mask,
                      num_tasks=t)
    return agg, lambda s: s.weights
  agg = wx.uncertainty_weighting(learning_rate=args.weight_lr, num_tasks=t)
  return agg, lambda s: 0.5 * jnp.exp(-s.log_vars)


def make_train(name: str, t: int, args: argparse.Namespace):
  """``train(hparams, key)`` for :func:`weightax.sweep` (no hyperparameter axes, seeds only).

  Only the trunk needs per-task gradients: :func:`weightax.mtl.shared_jacobian`
  gives the trunk's Jacobian and one summed gradient for the heads (head i
  only sees task i), which is exactly what an aggregator's ``shared`` mask
  would hand the heads, without forming the heads' ``[T, ...]`` Jacobian.
  """
  sig = sigmas_for(t, args)
  agg, read_weights = make_aggregator(name, t, args)
  opt = optax.adam(args.lr)
  n_eval = args.steps // args.eval_every

  def split_losses(trunk, heads, x, y):
    return task_losses({"trunk": trunk, "heads": heads}, x, y)

  def train(hp: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    del hp
    problem = gradnorm_problem(jax.random.key(args.problem_seed), sig,
                               normal_param=args.normal_param)
    k_train, k_test = jax.random.split(jax.random.key(args.problem_seed + 1))
    train_set = gradnorm_sample(problem, k_train, args.train_size)
    x_test, y_test = gradnorm_sample(problem, k_test, args.test_size)
    k_init, k_run = jax.random.split(key)
    params = init_params(k_init, t, args)

    def step(carry, k):
      p, agg_s, opt_s = carry
      x, y = wx.sample_batch(train_set, k, args.batch_size)
      losses, jac, head_g = mtl.shared_jacobian(split_losses, p["trunk"], p["heads"], x, y)
      u_trunk, agg_s = agg.update(jac, agg_s, p["trunk"], task_losses=losses)
      u, opt_s = opt.update({"trunk": u_trunk, "heads": head_g}, opt_s, p)
      return (optax.apply_updates(p, u), agg_s, opt_s), None

    def evaluate(p, agg_s):
      return {"test_losses": task_losses(p, x_test, y_test), "weights": read_weights(agg_s)}

    def block(carry, ks):
      carry, _ = jax.lax.scan(step, carry, ks)
      return carry, evaluate(*carry[:2])

    agg_state = agg.init(params["trunk"])
    ev0 = evaluate(params, agg_state)
    keys = jax.random.split(k_run, args.steps).reshape(n_eval, args.eval_every)
    _, ev = jax.lax.scan(block, (params, agg_state, opt.init(params)), keys)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), ev0, ev)

  return train


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  out = new_run_dir("gradnorm_synthetic", args.out)
  print(f"gradnorm_synthetic: T in {args.tasks} x {args.methods} x {args.seeds} seeds, "
        f"{args.steps} steps ...", flush=True)
  t0 = time.perf_counter()
  results = {}
  for t in args.tasks:
    for name in args.methods:
      t1 = time.perf_counter()
      res = wx.sweep(make_train(name, t, args), {}, seeds=args.seeds, progress=False,
                     desc=f"{name} T={t}")
      results[(t, name)] = {k: np.asarray(v) for k, v in res.metrics.items()}
      print(f"  T={t:<3d} {name:12s} {time.perf_counter() - t1:6.1f} s", flush=True)
  elapsed = time.perf_counter() - t0
  summary = report.write_all(out, results, args, {t: sigmas_for(t, args) for t in args.tasks},
                             elapsed)
  print(report.answer_text(summary))
  print(f"\nReport: {out / 'summary.md'}")
  return summary


if __name__ == "__main__":
  main()
