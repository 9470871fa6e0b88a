"""Memory and time of the Jacobian-free Gramian against the full Jacobian.

Two computations of ``(losses [K], G [K, K])`` on a multi-task MLP with K heads
(trunk ``in -> hidden -> hidden -> hidden``, tanh, K linear heads; by default
10.5M parameters and K = 16):

- ``value_and_jacobian + gramian``: ``weightax.value_and_jacobian`` (a vmapped
  VJP, the K × P Jacobian in memory) then ``weightax.gramian``;
- ``value_and_gramian``: ``weightax.value_and_gramian`` (one linearisation, one
  VJP + one JVP per task under ``lax.map``, never the Jacobian);

and the two whole UPGrad training steps (Gramian of the trunk, ``Σ w_k g_k`` on
the trunk, ``Σ g_k`` on the heads, Adam): ``wx.upgrad`` after
``value_and_jacobian`` vs ``wx.mtl.gramian_weighting(weightings.upgrad)``.

Memory is XLA's own account of each compiled program (``memory_analysis()``:
temporaries, arguments, outputs), which does not depend on machine load; time
is the median of interleaved repetitions of the jitted call.

Usage:
  python benchmarks/bench_gramian.py [--tasks 16] [--hidden 2048] [--reps 7] [--quick]
"""

from __future__ import annotations

import argparse
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


def build(k: int, d_in: int, hidden: int, batch: int, seed: int):
  r = np.random.default_rng(seed)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  params = {
      "trunk": {
          "w1": f32(r.normal(size=(d_in, hidden)) / np.sqrt(d_in)),
          "w2": f32(r.normal(size=(hidden, hidden)) / np.sqrt(hidden)),
          "w3": f32(r.normal(size=(hidden, hidden)) / np.sqrt(hidden)),
      },
      "heads": f32(r.normal(size=(hidden, k)) / np.sqrt(hidden)),
  }
  x = f32(r.normal(size=(batch, d_in)))
  y = f32(r.normal(size=(batch, k)))

  def losses(p):
    h = jnp.tanh(x @ p["trunk"]["w1"])
    h = jnp.tanh(h @ p["trunk"]["w2"])
    h = jnp.tanh(h @ p["trunk"]["w3"])
    return jnp.mean((h @ p["heads"] - y) ** 2, axis=0)

  return params, losses


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--tasks", type=int, default=16, help="number of tasks K")
  parser.add_argument("--d-in", type=int, default=1024, help="input width")
  parser.add_argument("--hidden", type=int, default=2048, help="trunk width (three layers)")
  parser.add_argument("--batch", type=int, default=64, help="examples")
  parser.add_argument("--reps", type=int, default=7, help="timed repetitions per row")
  parser.add_argument("--calls", type=int, default=1,
                      help="calls per timed repetition (the time reported is per call; "
                           "raise it where one call takes about a millisecond, e.g. on a GPU)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data")
  parser.add_argument("--quick", action="store_true",
                      help="a small model and 2 repetitions (for tests)")
  parser.add_argument("--out", default="", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  if args.calls < 1 or args.reps < 1:
    parser.error(f"--calls and --reps must be at least 1; got {args.calls} and {args.reps}")
  if args.quick:
    args.d_in, args.hidden, args.batch, args.reps = 32, 64, 8, 2

  params, losses = build(args.tasks, args.d_in, args.hidden, args.batch, args.seed)
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  shared = {"trunk": True, "heads": False}
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  def via_jacobian(p):
    ls, jac = wx.value_and_jacobian(losses)(p)
    return ls, wx.gramian(jac)

  via_gramian = wx.value_and_gramian(losses)
  gw = wx.mtl.gramian_weighting(wx.weightings.upgrad, num_tasks=args.tasks)
  agg_masked = wx.upgrad(num_tasks=args.tasks, shared=shared)

  def step_jacobian_masked(p, s):
    ls, jac = wx.value_and_jacobian(losses)(p)
    u, _ = agg_masked.update(jac, agg_masked.init(p), p, task_losses=ls)  # mtl.fit's split
    u, s = opt.update(u, s, p)
    return optax.apply_updates(p, u), s

  def step_gramian(p, s):
    mask = {"trunk": jax.tree.map(lambda _: True, p["trunk"]), "heads": False}
    _, u, _ = gw.value_and_update(lambda q: (losses(q), None), p, mask)
    u, s = opt.update(u, s, p)
    return optax.apply_updates(p, u), s

  rows = {
      "value_and_jacobian + gramian": (via_jacobian, (params,)),
      "value_and_gramian": (via_gramian, (params,)),
      "UPGrad step, Jacobian (wx.upgrad)": (step_jacobian_masked, (params, opt_state)),
      "UPGrad step, Jacobian-free (gramian_weighting)": (step_gramian, (params, opt_state)),
  }
  compiled, mem = {}, {}
  for name, (fn, a) in rows.items():
    print(f"compiling {name} ...", flush=True)
    c = jax.jit(fn).lower(*a).compile()
    m = c.memory_analysis()
    compiled[name] = c
    mem[name] = (m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes)
  # The two Gramians agree (a correctness check on this model, in float32).
  g_j = np.asarray(compiled["value_and_jacobian + gramian"](params)[1], np.float64)
  g_g = np.asarray(compiled["value_and_gramian"](params)[1], np.float64)
  rel = float(np.max(np.abs(g_j - g_g)) / np.max(np.abs(g_j)))
  times: dict[str, list[float]] = {n: [] for n in rows}
  for name, (_, a) in rows.items():  # warm-up
    jax.block_until_ready(compiled[name](*a))
  for r in range(args.reps):
    for name, (_, a) in rows.items():
      t0 = time.perf_counter()
      for _ in range(args.calls):
        out = compiled[name](*a)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / args.calls)
    print(f"repetition {r + 1}/{args.reps}", flush=True)

  mib = 2.0**-20
  lines = [
      f"Command: `{shlex.join([os.path.relpath(sys.executable), *sys.argv])}`",
      "",
      f"K = {args.tasks}, P = {n_params:,} parameters (trunk {args.d_in}→{args.hidden}→"
      f"{args.hidden}→{args.hidden} tanh, {args.tasks} linear heads), batch {args.batch}, "
      f"float32; JAX {jax.__version__} on {jax.devices()[0].platform} "
      f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
      f"{args.reps} interleaved repetitions of {args.calls} call(s) each. One float32 gradient: "
      f"{4 * n_params * mib:.1f} MiB; the Jacobian: {4 * n_params * args.tasks * mib:.1f} MiB. "
      f"max |G_jac − G_free| / max |G| = {rel:.1e} "
      f"(jax_default_matmul_precision: {jax.config.jax_default_matmul_precision}).",
      "",
      "| computation | temp MiB | arguments MiB | outputs MiB | temp + outputs MiB "
      "| median ms per call | min ms per call |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name in rows:
    t, a, o = mem[name]
    lines.append(f"| {name} | {t * mib:.1f} | {a * mib:.1f} | {o * mib:.1f} | "
                 f"{(t + o) * mib:.1f} | {1e3 * np.median(times[name]):.4g} | "
                 f"{1e3 * np.min(times[name]):.4g} |")
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
