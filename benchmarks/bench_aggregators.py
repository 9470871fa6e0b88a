"""Per-step cost of every aggregator against linear scalarization and the bare Jacobian.

A training step is ``jax.jit`` of: ``weightax.value_and_jacobian`` of K task losses ->
aggregator (first in the chain) -> Adam -> ``optax.apply_updates``, on a shared-trunk MLP
(trunk ``in -> hidden -> hidden``, ReLU, K linear heads; the heads are task-specific via the
``shared`` mask). The reference rows are the same step with ``linear_scalarization`` and the
jitted ``value_and_jacobian`` alone (returning the losses and the Jacobian). Repetitions are
interleaved round-robin across all rows so that machine-load drift affects every row alike;
the table reports medians. Two diagnostic rows time ``gramian_aggregator`` with uniform weights
(the Gramian and the update ``Σ w_k g_k`` alone, with and without the rescaling pass), so that
a method's gap above them is its solver's cost. The step without aggregation is timed twice, as
two separately compiled rows: the gap between their medians, relative to the Jacobian, is the
noise floor of the run, printed with the table (a share of the Jacobian smaller than it is not
resolved). ``--fuse N`` runs N steps inside one ``lax.scan`` per call (and reports the time per
step), as a training loop or ``wx.sweep`` does, so that the per-call dispatch cost is paid once
per N steps; ``--clock cpu`` times the CPU time of the process instead of the wall clock, which
waiting for a core on a loaded machine does not inflate.

Usage:
  python benchmarks/bench_aggregators.py [--reps 30] [--batch 256] [--fuse 1] \
      [--clock wall] [--out benchmarks/results_aggregators.md]
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
NO_AGG_AGAIN = "Jacobian + Adam, no aggregation (again)"  # the same step compiled again: noise
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

  fuse = args.fuse

  def fused(step):
    """``step`` run ``fuse`` times per call inside one ``lax.scan`` (the same key each time)."""
    if fuse == 1:
      return jax.jit(step)
    return jax.jit(lambda carry, key: jax.lax.scan(lambda c, _: (step(c, key), None), carry,
                                                    None, length=fuse)[0])

  def jac_step(carry, key):
    # The Jacobian, kept alive through the carry. Under --fuse the parameters must change from
    # step to step, or XLA hoists the loop-invariant Jacobian out of the scan: a step of size
    # 1e-30 along task 0's gradient (no change in float32 for non-zero weights) is enough.
    losses, jac = vjac(carry[0], *batch)
    if fuse == 1:
      return carry[0], (losses, jac)
    return jax.tree.map(lambda p, g: p - 1e-30 * g[0], carry[0], jac), (losses, jac)

  rows[JACOBIAN] = (fused(jac_step), (params, vjac(params, *batch)))

  def uniform(g, losses, state, key, **_):
    # Depends on every entry of G, so that jit cannot drop the Gramian as dead code.
    return jnp.where(jnp.all(jnp.isfinite(g)), 1.0 / args.tasks, 0.0) * jnp.ones(args.tasks), state

  aggs = {
      FLOOR: wx.gramian_aggregator(uniform, shared=shared),
      FLOOR_NORM: wx.gramian_aggregator(uniform, shared=shared, normalize_gramian=True),
  }
  for name in args.methods.split(",") if args.methods else METHODS:
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

  rows[NO_AGG] = (fused(no_agg), (params, opt0.init(params), None))
  # The same step compiled again (another jit object): its distance from NO_AGG is the noise.
  rows[NO_AGG_AGAIN] = (fused(lambda c, k: no_agg(c, k)), (params, opt0.init(params), None))

  for name, agg in aggs.items():
    opt = optax.adam(1e-3)

    def step(carry, key, agg=agg, opt=opt):
      p, opt_state, agg_state = carry
      losses, jac = vjac(p, *batch)
      u, agg_state = agg.update(jac, agg_state, p, task_losses=losses, key=key)
      upd, opt_state = opt.update(u, opt_state, p)
      return optax.apply_updates(p, upd), opt_state, agg_state

    rows[name] = (fused(step), (params, opt.init(params), agg.init(params)))
  return rows, missing


def run(args) -> tuple[dict[str, float], list[str]]:
  rows, missing = make_rows(args)
  carries = {name: c for name, (_, c) in rows.items()}
  key = jax.random.key(args.seed)
  for i in range(args.warmup):  # compile and warm up every row
    for name, (fn, _) in rows.items():
      carries[name] = jax.block_until_ready(fn(carries[name], jax.random.fold_in(key, i)))
  clock = time.process_time if args.clock == "cpu" else time.perf_counter
  times: dict[str, list[float]] = {name: [] for name in rows}
  names = list(rows)
  for i in range(args.reps):
    k = jax.random.fold_in(key, 1000 + i)
    # Rotate the order so that no row always runs right after the same one.
    for name in names[i % len(names):] + names[:i % len(names)]:
      fn = rows[name][0]
      t0 = clock()
      carries[name] = jax.block_until_ready(fn(carries[name], k))
      times[name].append((clock() - t0) / args.fuse)
  return {name: float(np.median(t)) for name, t in times.items()}, missing


def noise_floor(med: dict[str, float]) -> float:
  """The gap between the two compilations of the same step, as a share of the Jacobian."""
  return abs(med[NO_AGG_AGAIN] - med[NO_AGG]) / med[JACOBIAN]


def table(med: dict[str, float]) -> str:
  ls, jac, base = med.get("linear_scalarization"), med[JACOBIAN], med[NO_AGG]
  # The Jacobian-alone row writes J out in its [K, ...] layout (a transposed copy for dense
  # weights that the steps do not make), so the step without aggregation is the stricter
  # denominator; both are shown.
  lines = ["| method | median ms/step | × linear_scalarization | × Jacobian alone | "
           "aggregation / Jacobian | aggregation / step without it | "
           "Gramian method: aggregation ≤ 10% of Jacobian? |",
           "|---|---:|---:|---:|---:|---:|:---:|"]
  for name, t in med.items():
    vs_ls = f"{t / ls:.2f}" if ls else "n/a"
    own = name in (JACOBIAN, NO_AGG)
    agg = "" if own else f"{100 * (t - base) / jac:+.1f}%"
    strict = "" if own else f"{100 * (t - base) / base:+.1f}%"
    bar = ("yes" if (t - base) / jac <= 0.10 else "**no**") if name in GRAMIAN else ""
    lines.append(f"| {name} | {1e3 * t:.3f} | {vs_ls} | {t / jac:.2f} | {agg} | {strict} | "
                 f"{bar} |")
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
  parser.add_argument("--fuse", type=int, default=1,
                      help="steps per call, inside one lax.scan (times are per step)")
  parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                      help="wall-clock time, or the CPU time of the process")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data")
  parser.add_argument("--methods", default="",
                      help="comma-separated methods to time ('' for all of them)")
  parser.add_argument("--out", default="",
                      help="markdown file to write ('' to skip)")
  args = parser.parse_args(argv)
  if args.reps < 20:
    parser.error(f"--reps must be at least 20 for a stable median; got {args.reps}")
  if args.fuse < 1:
    parser.error(f"--fuse must be a positive number of steps; got {args.fuse}")

  med, missing = run(args)
  command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
  dev = jax.devices()[0]
  load = os.getloadavg()
  header = (
      f"K={args.tasks}, trunk {args.d_in}→{args.hidden}→{args.hidden} (ReLU), {args.tasks} "
      f"linear heads, batch {args.batch}, float32; medians of {args.reps} interleaved reps "
      f"after {args.warmup} warm-up steps; {args.fuse} step(s) per call; {args.clock} clock; "
      f"load average after the run {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}.\n\n"
      f"Device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
      f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s); "
      f"jax {jax.__version__}, "
      f"optax {optax.__version__}; Python {platform.python_version()}."
  )
  body = table(med) + (f"\n\nNoise floor (the same step compiled twice): "
                       f"{100 * noise_floor(med):.1f}% of the Jacobian.")
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
