"""What a standalone call of a jitted weighting costs, against its computation.

For each program (a trivial ``jit`` returning the Gramian's first row, a
Cholesky factorisation, and the chosen weightings) on random K x K Gramians,
three medians in milliseconds:

- ``call``: one jitted call from Python, called back to back;
- ``call, cold``: the same call after a NumPy sum over ``--sweep-mb`` MB in between,
  which evicts the CPU caches as another library's work would;
- ``in a program``: inside one ``jit(lax.map(weighting))`` over ``--n`` Gramians,
  per Gramian, i.e. the computation itself with no dispatch;

and the size of the standalone call's compiled program: its fusions, while loops and
library calls (LAPACK on the CPU), counted in XLA's optimised HLO text.

``--without-guard`` adds, for each weighting, a row of the same function without
its common entry's checks (``weightings._solvers.pure_weighting``: the NaN/inf test
of the Gramian and the arguments, the dtype promotion), at full matmul precision as
before: what the "NaN in, NaN out" rule costs.

``--sync`` turns JAX's asynchronous CPU dispatch off for the process
(``jax_cpu_enable_async_dispatch``); XLA flags are taken from ``XLA_FLAGS`` as
usual. Needs no torch.

Usage:
  python benchmarks/bench_call_overhead.py [--k 40] [--methods dualproj,imtl_g] [--sync]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import jax
import numpy as np


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--k", type=int, default=40, help="number of tasks K")
  parser.add_argument("--methods", default="dualproj,imtl_g",
                      help="weightings of weightax.weightings, comma-separated")
  parser.add_argument("--n", type=int, default=60, help="Gramians in the lax.map program")
  parser.add_argument("--reps", type=int, default=101, help="timed calls per median")
  parser.add_argument("--sweep-mb", type=float, default=32.0,
                      help="MB of float64 summed between the calls of 'call, cold'")
  parser.add_argument("--sync", action="store_true",
                      help="jax_cpu_enable_async_dispatch = False for this process")
  parser.add_argument("--without-guard", action="store_true",
                      help="also time each weighting without its NaN guard (pure_weighting)")
  parser.add_argument("--quick", action="store_true", help="K = 4, n = 3, 5 reps (a smoke test)")
  args = parser.parse_args(argv)
  if args.quick:
    args.k, args.n, args.reps, args.sweep_mb = 4, 3, 5, 1.0
  if args.k < 1 or args.n < 1 or args.reps < 1 or args.sweep_mb < 0:
    parser.error(f"--k, --n and --reps must be >= 1 and --sweep-mb >= 0; got {args.k}, "
                 f"{args.n}, {args.reps} and {args.sweep_mb}")
  jax.config.update("jax_cpu_enable_async_dispatch", not args.sync)
  import jax.numpy as jnp

  from weightax import weightings as ww

  methods = [m for m in args.methods.split(",") if m]
  unknown = [m for m in methods if not callable(getattr(ww, m, None))]
  if unknown:
    parser.error(f"--methods: {unknown} are not in weightax.weightings")
  rng = np.random.default_rng(0)
  gs = []
  for _ in range(args.n):
    j = rng.normal(size=(args.k, max(2 * args.k, 64))) * np.exp(rng.normal(size=(args.k, 1)))
    gs.append((j @ j.T).astype(np.float32))
  singles = [jnp.asarray(g) for g in gs[:3]]
  stack = jnp.asarray(np.stack(gs))
  big = np.ones(int(args.sweep_mb * 2**20 / 8))
  eye = jnp.eye(args.k, dtype=jnp.float32)
  from weightax.weightings._solvers import full_precision

  def unguarded(fn):
    while hasattr(fn, "__wrapped__"):  # jax.jit and pure_weighting both wrap
      fn = fn.__wrapped__
    return jax.jit(full_precision(fn))

  programs = {"trivial jit (G's first row)": jax.jit(lambda g: g[0]),
              "cholesky": jax.jit(lambda g: jnp.linalg.cholesky(g + eye))}
  for m in methods:
    programs[m] = getattr(ww, m)
    if args.without_guard:
      programs[f"{m} without the NaN guard"] = unguarded(getattr(ww, m))
  print(f"K = {args.k}, JAX {jax.__version__} on {jax.devices()[0].platform}, async dispatch "
        f"{'off' if args.sync else 'on'}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
        f"medians of {args.reps} calls, ms", file=sys.stderr)
  rows = ["| program | call | call, cold | in a program (per Gramian) | fusions | while loops "
          "| library calls |", "|---|---:|---:|---:|---:|---:|---:|"]
  for name, fn in programs.items():
    mapped = jax.jit(lambda s, f=fn: jax.lax.map(f, s))
    for g in singles:
      jax.block_until_ready(fn(g))
    jax.block_until_ready(mapped(stack))
    med = {}
    for mode in ("call", "cold"):
      t = []
      for r in range(args.reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(singles[r % len(singles)]))
        t.append(time.perf_counter() - t0)
        if mode == "cold":
          big.sum()
      med[mode] = 1e3 * float(np.median(t))
    t = []
    for _ in range(max(3, args.reps // 5)):
      t0 = time.perf_counter()
      jax.block_until_ready(mapped(stack))
      t.append((time.perf_counter() - t0) / args.n)
    med["program"] = 1e3 * float(np.median(t))
    hlo = jax.jit(fn).lower(singles[0]).compile().as_text()
    size = (len(re.findall(r" fusion\(", hlo)), len(re.findall(r" while\(", hlo)),
            len(re.findall(r"custom_call_target=", hlo)))
    rows.append(f"| {name} | {med['call']:.3f} | {med['cold']:.3f} | {med['program']:.4f} | "
                + " | ".join(map(str, size)) + " |")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
