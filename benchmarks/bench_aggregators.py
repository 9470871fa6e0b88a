"""Per-step cost of every aggregator against linear scalarization and the bare Jacobian.

A training step is ``jax.jit`` of: ``weightax.value_and_jacobian`` of K task losses ->
aggregator (first in the chain) -> Adam -> ``optax.apply_updates``, on a shared-trunk MLP
(trunk ``in -> hidden -> hidden``, ReLU, K linear heads; the heads are task-specific via the
``shared`` mask). The reference rows are the same step with ``linear_scalarization`` and the
jitted ``value_and_jacobian`` alone (returning the losses and the Jacobian). Repetitions are
interleaved round-robin across all rows so that machine-load drift affects every row alike;
the table reports medians. Two diagnostic rows time ``gramian_aggregator`` with uniform weights
(the Gramian and the update ``Σ w_k g_k`` alone, with and without the rescaling pass), so that
a method's gap above them is its solver's cost.

Usage:
  python benchmarks/bench_aggregators.py [--reps 30] [--batch 256] \
      [--out benchmarks/results_aggregators.md]
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import weightax as wx

METHODS = [
    "linear_scalarization", "random_loss_weighting", "dwa", "uncertainty_weighting",
    "gradnorm", "mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "nash_mtl",
]
GRAMIAN = {"mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "nash_mtl"}
JACOBIAN = "value_and_jacobian alone"
# The same step with no aggregation at all (Adam on task 0's gradient): what every method's
# step costs besides its aggregation, so that (method - this) / Jacobian is the aggregation's
# own share.
NO_AGG = "Jacobian + Adam, no aggregation"
# Diagnostic rows: a Gramian aggregator whose weighting is free (uniform weights), with and
# without the rescaling pass that the Gramian methods use; the gap between these and a method is
# the cost of its solver.
FLOOR = "floor: Gramian + uniform w"
FLOOR_NORM = "floor: rescaled Gramian + uniform w"


def build_problem(k: int, d_in: int, hidden: int, batch: int, seed: int):
  """Parameters, a batch and the per-task loss function of a K-head regression MLP."""
  r = np.random.default_rng(seed)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  params = {
      "trunk": {
          "w1": f32(r.normal(size=(d_in, hidden)) / np.sqrt(d_in)), "b1": f32(np.zeros(hidden)),
          "w2": f32(r.normal(size=(hidden, hidden)) / np.sqrt(hidden)),
          "b2": f32(np.zeros(hidden)),
      },
      "heads": {"w": f32(r.normal(size=(k, hidden)) / np.sqrt(hidden)), "b": f32(np.zeros(k))},
  }
  x = f32(r.normal(size=(batch, d_in)))
  y = f32(r.normal(size=(batch, k)) * np.arange(1, k + 1))  # tasks on different scales

  def losses_fn(p, x, y):
    h = jax.nn.relu(x @ p["trunk"]["w1"] + p["trunk"]["b1"])
    h = jax.nn.relu(h @ p["trunk"]["w2"] + p["trunk"]["b2"])
    pred = h @ p["heads"]["w"].T + p["heads"]["b"]  # [batch, K]: column k is head k
    return jnp.mean((pred - y) ** 2, axis=0)

  shared = {"trunk": jax.tree.map(lambda _: True, params["trunk"]),
            "heads": jax.tree.map(lambda _: False, params["heads"])}
  return params, (x, y), losses_fn, shared


def make_factory_kwargs(name: str, k: int, shared) -> dict:
  sig = inspect.signature(getattr(wx.aggregators, name))
  kw = {"shared": shared}
  if "num_tasks" in sig.parameters:
    kw["num_tasks"] = k
  return kw


def make_rows(args):
  """``{row: (step_fn, carry)}``; ``step_fn(carry, key) -> carry`` is jitted."""
  params, batch, losses_fn, shared = build_problem(args.tasks, args.d_in, args.hidden,
                                                   args.batch, args.seed)
  vjac = wx.value_and_jacobian(losses_fn)
  rows, missing = {}, []

  jac_only = jax.jit(lambda p, x, y: vjac(p, x, y))
  rows[JACOBIAN] = (lambda carry, key: (carry[0], jac_only(carry[0], *batch)), (params, None))

  def uniform(g, losses, state, key, **_):
    # Depends on every entry of G, so that jit cannot drop the Gramian as dead code.
    return jnp.where(jnp.all(jnp.isfinite(g)), 1.0 / args.tasks, 0.0) * jnp.ones(args.tasks), state

  aggs = {
      FLOOR: wx.gramian_aggregator(uniform, shared=shared),
      FLOOR_NORM: wx.gramian_aggregator(uniform, shared=shared, normalize_gramian=True),
  }
  for name in METHODS:
    if hasattr(wx.aggregators, name):
      aggs[name] = getattr(wx.aggregators, name)(**make_factory_kwargs(name, args.tasks, shared))
    else:
      missing.append(name)

  opt0 = optax.adam(1e-3)

  def no_agg(carry, key):
    p, opt_state, agg_state = carry
    _, jac = vjac(p, *batch)
    upd, opt_state = opt0.update(jax.tree.map(lambda g: g[0], jac), opt_state, p)
    return optax.apply_updates(p, upd), opt_state, agg_state

  rows[NO_AGG] = (jax.jit(no_agg), (params, opt0.init(params), None))

  for name, agg in aggs.items():
    opt = optax.adam(1e-3)

    def step(carry, key, agg=agg, opt=opt):
      p, opt_state, agg_state = carry
      losses, jac = vjac(p, *batch)
      u, agg_state = agg.update(jac, agg_state, p, task_losses=losses, key=key)
      upd, opt_state = opt.update(u, opt_state, p)
      return optax.apply_updates(p, upd), opt_state, agg_state

    rows[name] = (jax.jit(step), (params, opt.init(params), agg.init(params)))
  return rows, missing


def run(args) -> tuple[dict[str, float], list[str]]:
  rows, missing = make_rows(args)
  carries = {name: c for name, (_, c) in rows.items()}
  key = jax.random.key(args.seed)
  for i in range(args.warmup):  # compile and warm up every row
    for name, (fn, _) in rows.items():
      carries[name] = jax.block_until_ready(fn(carries[name], jax.random.fold_in(key, i)))
  times: dict[str, list[float]] = {name: [] for name in rows}
  for i in range(args.reps):
    k = jax.random.fold_in(key, 1000 + i)
    for name, (fn, _) in rows.items():
      t0 = time.perf_counter()
      carries[name] = jax.block_until_ready(fn(carries[name], k))
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}, missing


def table(med: dict[str, float]) -> str:
  ls, jac, base = med.get("linear_scalarization"), med[JACOBIAN], med[NO_AGG]
  lines = ["| method | median ms/step | × linear_scalarization | × Jacobian alone | "
           "aggregation / Jacobian | Gramian method: aggregation ≤ 10% of Jacobian? |",
           "|---|---:|---:|---:|---:|:---:|"]
  for name, t in med.items():
    vs_ls = f"{t / ls:.2f}" if ls else "n/a"
    agg = "" if name in (JACOBIAN, NO_AGG) else f"{100 * (t - base) / jac:+.0f}%"
    bar = ("yes" if (t - base) / jac <= 0.10 else "**no**") if name in GRAMIAN else ""
    lines.append(f"| {name} | {1e3 * t:.3f} | {vs_ls} | {t / jac:.2f} | {agg} | {bar} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--tasks", type=int, default=4, help="number of tasks K")
  parser.add_argument("--d-in", type=int, default=64, help="input width")
  parser.add_argument("--hidden", type=int, default=256, help="trunk width (two layers)")
  parser.add_argument("--batch", type=int, default=256, help="examples per step")
  parser.add_argument("--reps", type=int, default=30, help="timed repetitions per row")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="",
                      help="markdown file to write ('' to skip)")
  args = parser.parse_args(argv)
  if args.reps < 20:
    parser.error(f"--reps must be at least 20 for a stable median; got {args.reps}")

  med, missing = run(args)
  command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
  dev = jax.devices()[0]
  header = (
      f"K={args.tasks}, trunk {args.d_in}→{args.hidden}→{args.hidden} (ReLU), {args.tasks} "
      f"linear heads, batch {args.batch}, float32; medians of {args.reps} interleaved reps "
      f"after {args.warmup} warm-up steps.\n\n"
      f"Device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
      f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
      f"jax {jax.__version__}, "
      f"optax {optax.__version__}; Python {platform.python_version()}."
  )
  body = table(med)
  note = ("\n\nNot yet available (skipped): " + ", ".join(missing)) if missing else ""
  print(header + "\n\n" + body + note)
  if args.out:
    with open(args.out, "w") as f:
      f.write("# Aggregator step cost\n\n"
              f"Command: `{command}`\n\n{header}\n\n{body}{note}\n\n"
              "Each method row times the jitted step value_and_jacobian → aggregator → Adam → "
              "apply_updates; 'Jacobian alone' times the jitted value_and_jacobian only. The bar "
              "for Gramian methods is ≤ 10% over the Jacobian alone. The two 'floor' rows use "
              "gramian_aggregator with uniform weights (no solver), without and with "
              "normalize_gramian=True (the rescaling pass that the Gramian methods use): a "
              "method's gap above the second floor is its solver's cost. Absolute times move "
              "with the load of the machine; the ratios of one run are comparable.\n")


if __name__ == "__main__":
  main()
