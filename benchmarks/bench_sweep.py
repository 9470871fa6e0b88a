#!/usr/bin/env python
"""One vmapped sweep vs a Python loop of jitted steps vs sequential jitted scans.

The same training run (the loss-scale study's MLP on digits: w · CE, Adam with a
traced learning rate, minibatches of 64, a full-data loss every 10 steps) is
executed for every configuration of a grid in three ways:

1. ``sweep``: ``weightax.sweep`` — one ``jit(vmap(train))`` over all configurations.
2. ``scans``: ``jax.jit(train)`` called once per configuration (one compiled
   ``lax.scan`` per run, reused since the hyperparameters are traced).
3. ``steps``: a Python loop over configurations and steps calling a jitted step
   (and a jitted evaluation every ``eval_every`` steps), the common hand-written loop.

Wall-clock times exclude compilation (each variant is warmed up first); the
median over ``--reps`` repetitions is reported with ratios to ``sweep``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import weightax as wx
from weightax.datasets import load_digits
from weightax.nn import init_mlp


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--num-w", type=int, default=8, help="loss weights in the grid")
  p.add_argument("--seeds", type=int, default=4, help="seeds per loss weight")
  p.add_argument("--steps", type=int, default=500, help="steps per run")
  p.add_argument("--eval-every", type=int, default=10, help="steps between full-data losses")
  p.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
  p.add_argument("--variants", default="sweep,scans,steps",
                 help="comma-separated variants to time, among sweep, scans, steps "
                      "(sweep is always timed: it is the baseline of the ratios)")
  p.add_argument("--out", default=None, help="also write the markdown table to this file")
  args = p.parse_args()
  chosen = {v.strip() for v in args.variants.split(",") if v.strip()}
  unknown = chosen - {"sweep", "scans", "steps"}
  if unknown:
    p.error(f"--variants: expected names among sweep, scans, steps; got {sorted(unknown)}")
  args.variants = chosen | {"sweep"}
  return args


def main() -> None:
  args = parse_args()
  tr, _ = load_digits()
  x, y = jnp.asarray(tr.x), jnp.asarray(tr.y)
  _, apply = init_mlp((64, 32, 10), jax.random.key(0))
  ce = lambda p, xb, yb: optax.softmax_cross_entropy_with_integer_labels(apply(p, xb), yb).mean()
  make_opt = lambda lr: optax.inject_hyperparams(optax.adam)(learning_rate=lr)

  def train(hp, key):
    k_init, k_fit = jax.random.split(key)
    params, _ = init_mlp((64, 32, 10), k_init)
    res = wx.fit(lambda p, b, _k: (hp["w"] * ce(p, *b), {}), params, make_opt(hp["lr"]), (x, y),
                 key=k_fit, num_steps=args.steps, batch_size=64,
                 eval_fn=lambda p: ce(p, x, y), eval_every=args.eval_every)
    return {"curve": res.eval_metrics}

  @jax.jit
  def init_run(key):
    k_init, k_fit = jax.random.split(key)
    params, _ = init_mlp((64, 32, 10), k_init)
    return params, make_opt(3e-3).init(params), jax.random.split(k_fit, args.steps)

  @jax.jit
  def step(params, opt_state, k, w):
    kb, _ = jax.random.split(k)
    xb, yb = wx.sample_batch((x, y), kb, 64)
    g = jax.grad(lambda p: w * ce(p, xb, yb))(params)
    u, opt_state = make_opt(3e-3).update(g, opt_state, params)
    return optax.apply_updates(params, u), opt_state

  evaluate = jax.jit(lambda p: ce(p, x, y))
  grid = {"lr": [3e-3], "w": np.logspace(-2, 1, args.num_w).tolist()}
  n = args.num_w * args.seeds

  def run_sweep():
    return wx.sweep(train, grid, seeds=args.seeds).metrics["curve"]

  jtrain = jax.jit(train)

  def run_scans():
    return [jtrain({"lr": jnp.float32(3e-3), "w": jnp.float32(w)}, jax.random.key(s))["curve"]
            for w in grid["w"] for s in range(args.seeds)]

  def run_steps():
    curves = []
    for w in grid["w"]:
      for s in range(args.seeds):
        params, opt_state, keys = init_run(jax.random.key(s))
        curve = [evaluate(params)]
        for t in range(args.steps):
          params, opt_state = step(params, opt_state, keys[t], jnp.float32(w))
          if (t + 1) % args.eval_every == 0:
            curve.append(evaluate(params))
        curves.append(jnp.stack(curve))
    return curves

  variants = {name: fn for key, name, fn in (
      ("sweep", "sweep (one jit(vmap))", run_sweep),
      ("scans", "sequential jitted scans", run_scans),
      ("steps", "Python loop of jitted steps", run_steps)) if key in args.variants}
  times = {}
  for name, fn in variants.items():
    jax.block_until_ready(fn())  # warm-up: compile
    reps = []
    for _ in range(args.reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      reps.append(time.perf_counter() - t0)
    times[name] = statistics.median(reps)
    print(f"{name}: median {times[name]:.4g} s over {args.reps} reps", flush=True)

  base = times["sweep (one jit(vmap))"]
  lines = [
      f"{n} runs ({args.num_w} loss weights × {args.seeds} seeds) × {args.steps} steps, "
      f"MLP 64-32-10 on digits, Adam, batch 64, full-data loss every {args.eval_every} steps; "
      f"{jax.devices()[0].platform}, {jax.device_count()} device(s).",
      "",
      "| variant | median wall time (s) | time / sweep | runs per second |",
      "|---|---:|---:|---:|",
  ]
  for name, t in times.items():
    lines.append(f"| {name} | {t:.4g} | {t / base:.1f}x | {n / t:,.1f} |")
  table = "\n".join(lines)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  main()
