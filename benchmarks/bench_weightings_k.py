"""Cost of the Gramian weightings as the number of tasks K grows, against torchjd.

For every K and method, weightax's jitted weighting and torchjd's ``Weighting``
of the same method are called on the same float32 Gramian ``G = J Jᵀ``, side
by side in one process: every repetition times each method once on each side,
in turn, so the two see the same machine load; the table reports medians.
Each repetition uses the next of ``--gramians`` random Gramians (``J`` has
``K`` rows of ``max(2K, 64)`` Gaussian entries, row norms spread by
``exp(spread·N(0, 1))``), so the medians average over problem instances.

torchjd 0.18's Gramian weightings take ``G`` directly (``UPGradWeighting``,
``DualProjWeighting`` with quadprog, ``MGDAWeighting``: Frank–Wolfe,
``CAGradWeighting``: cvxpy/Clarabel, ``IMTLGWeighting``, ``AlignedMTLWeighting``,
``FairGradWeighting``: SciPy ``least_squares``). Its Nash-MTL weighting takes a
matrix, so it gets the ``K × K`` Cholesky factor ``L`` of ``G`` (``LLᵀ = G``;
its own ``LLᵀ`` is then negligible) and is reset before each call, so that
it solves from scratch as weightax does (it would otherwise warm-start from
the previous call). weightax is called with torchjd's conventions where they
differ in the weights only (CAGrad ``rescale=False``, Aligned-MTL
``pref_vector = 1/K``); ``max |Δw| / max |w|`` reports how far the two sides'
weights are apart (torchjd's MGDA is an approximate Frank–Wolfe solver, so
it differs by its own tolerance).

Compilation is excluded (each weighting is called once per K before timing).
By default every call is interleaved with the other side's, so each call
starts with caches that the other library (and the other methods) used
last; ``--block N`` times N consecutive calls of one side instead (the cost
of a weighting called repeatedly, as in a loop of its own).
``--in-program N`` adds two more sides to every repetition: weightax's weighting
inside one compiled program, ``jit(lax.map(weighting))`` over ``N`` other
Gramians (time per Gramian: the cost a training step that calls the weighting
inside its own ``jit`` pays), and the floor of any jitted call from Python, a
``jit`` that returns ``G``'s first row (``dispatch floor``). A standalone call
costs at least the floor, whatever the weighting computes.
Both wall-clock and process CPU time are recorded (the latter is robust to a
loaded machine; it sums the threads of both libraries). torch runs on one
thread (``--torch-threads``), ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` and
``OPENBLAS_NUM_THREADS`` to 1 here, so that no thread pool of one library
spins after its call on the cores the other library's next call needs.
Needs the ``bench`` extra: torch (CPU), torchjd, quadprog, qpsolvers, cvxpy
with Clarabel and ECOS.

Usage:
  python benchmarks/bench_weightings_k.py [--ks 2,4,8,16,32,40,64] [--reps 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import warnings

# Thread pools that spin after a parallel region (OpenMP's default wait
# policy, OpenBLAS) bill their spinning to, and take cores from, the next
# call of the other library; on 2 shared cores, torch's second thread made the
# next weightax call 2-45x slower (wall). Every problem here is at most 64 x 64.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from weightax import weightings as ww  # noqa: E402

METHODS = ("upgrad", "dualproj", "mgda", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "fairgrad")
# torchjd methods too slow to repeat --reps times at large K (seconds a call).
SLOW = ("nash_mtl", "fairgrad")


def gramians(k: int, count: int, spread: float, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng([seed, k])
  out = []
  for _ in range(count):
    j = rng.normal(size=(k, max(2 * k, 64))) * np.exp(spread * rng.normal(size=(k, 1)))
    out.append((j @ j.T).astype(np.float32))
  return out


def weightax_fn(method: str, k: int):
  if method == "cagrad":
    return lambda g: ww.cagrad(g, c=0.4, rescale=False)
  if method == "aligned_mtl":
    pref = jnp.full((k,), 1.0 / k, jnp.float32)
    return lambda g: ww.aligned_mtl(g, pref_vector=pref)
  if method == "fairgrad":
    return lambda g: ww.fairgrad(g, alpha=1.0)
  return getattr(ww, method)


def torchjd_fn(method: str, k: int):
  import torch
  import torchjd.aggregation as tja
  from torchjd.aggregation import _nash_mtl

  if method == "nash_mtl":
    weighting = _nash_mtl._NashMTLWeighting(
        n_tasks=k, max_norm=1.0, update_weights_every=1, optim_niter=20)

    def nash(g):
      factor = torch.linalg.cholesky(
          g.double() + 1e-12 * torch.trace(g.double()) * torch.eye(k, dtype=torch.float64)).float()
      weighting.reset()
      return weighting(factor)

    return nash
  return {
      "upgrad": lambda: tja.UPGradWeighting(),
      "dualproj": lambda: tja.DualProjWeighting(),
      "mgda": lambda: tja.MGDAWeighting(),
      "cagrad": lambda: tja.CAGradWeighting(c=0.4),
      "imtl_g": lambda: tja.IMTLGWeighting(),
      "aligned_mtl": lambda: tja.AlignedMTLWeighting(),
      "fairgrad": lambda: tja.FairGradWeighting(alpha=1.0),
  }[method]()


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--ks", default="2,4,8,16,32,40,64",
                      help="numbers of tasks K, comma-separated")
  parser.add_argument("--methods", default=",".join(METHODS), help="methods, comma-separated")
  parser.add_argument("--reps", type=int, default=15, help="timed repetitions per method and K")
  parser.add_argument("--slow-reps", type=int, default=3,
                      help=f"repetitions of torchjd's {' and '.join(SLOW)} at K >= 32 "
                      "(seconds each)")
  parser.add_argument("--gramians", type=int, default=3, help="random Gramians per K, cycled")
  parser.add_argument("--spread", type=float, default=1.0,
                      help="log-normal spread of the gradient norms")
  parser.add_argument("--seed", type=int, default=0, help="seed of the Gramians")
  parser.add_argument("--block", type=int, default=1,
                      help="time this many consecutive calls of one side, then of the other "
                      "(per-call mean of each block): 1 interleaves every call")
  parser.add_argument("--in-program", type=int, default=0,
                      help="also time the weighting inside jit(lax.map) over this many "
                      "Gramians (per Gramian) and a trivial jitted call (the dispatch floor); "
                      "0: off")
  parser.add_argument("--torch-threads", type=int, default=1,
                      help="torch.set_num_threads (0: torch's default)")
  parser.add_argument("--quick", action="store_true",
                      help="K = 2, 4, 8, 3 repetitions, 1 Gramian (a smoke test)")
  parser.add_argument("--out", default="",
                      help="also write summary.md and summary.json into this directory")
  args = parser.parse_args(argv)
  if args.quick:
    args.ks, args.reps, args.gramians = "2,4,8", 3, 1
  if args.in_program < 0:
    parser.error(f"--in-program must be >= 0; got {args.in_program}")
  ks = [int(s) for s in args.ks.split(",")]
  methods = [m for m in args.methods.split(",") if m]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    parser.error(f"unknown methods {unknown}; choose from {METHODS}")
  import torch

  if args.torch_threads > 0:
    torch.set_num_threads(args.torch_threads)
  warnings.filterwarnings("ignore")  # cvxpy/ECOS chatter
  results = {}
  for k in ks:
    gs = gramians(k, args.gramians, args.spread, args.seed)
    g_jax = [jnp.asarray(g) for g in gs]
    g_torch = [torch.from_numpy(g) for g in gs]
    fns = {m: (weightax_fn(m, k), torchjd_fn(m, k)) for m in methods}
    n_prog = args.in_program
    if n_prog:
      stack = jnp.asarray(np.stack(gramians(k, n_prog, args.spread, args.seed + 1)))
      mapped = {m: jax.jit(lambda s, f=fw: jax.lax.map(f, s)) for m, (fw, _) in fns.items()}
      floor_fn = jax.jit(lambda g: g[0])
      jax.block_until_ready(floor_fn(g_jax[0]))
      for m in methods:  # compile; check against the standalone calls on the same Gramians
        w_map = np.asarray(mapped[m](stack))
        w_one = np.stack([np.asarray(fns[m][0](g)) for g in stack])
        if not np.allclose(w_map, w_one, rtol=1e-4, atol=1e-6 * np.abs(w_one).max()):
          raise SystemExit(f"{m} at K={k}: lax.map's weights differ from the standalone "
                           f"calls' by {np.abs(w_map - w_one).max():.2e}")
    diff = {}
    for m, (fw, ft) in fns.items():
      errs = []
      for gj, gt in zip(g_jax, g_torch, strict=True):
        w = np.asarray(jax.block_until_ready(fw(gj)), np.float64)  # compiles
        wt = np.asarray(ft(gt), np.float64)
        errs.append(np.max(np.abs(w - wt)) / max(np.max(np.abs(wt)), 1e-30))
      diff[m] = float(max(errs))
    times = {m: ([], [], [], []) for m in methods}
    for rep in range(args.reps):
      i = rep % len(gs)
      for m, (fw, ft) in fns.items():
        calls = [(0, lambda: jax.block_until_ready(fw(g_jax[i])))]
        if not (m in SLOW and k >= 32 and rep >= args.slow_reps):
          calls.append((1, lambda: ft(g_torch[i])))
        if n_prog:
          calls.append((2, lambda: jax.block_until_ready(mapped[m](stack))))
          calls.append((3, lambda: jax.block_until_ready(floor_fn(g_jax[i]))))
        for side, call in calls[::1 if rep % 2 == 0 else -1]:  # alternate which side goes first
          n = 1 if (m in SLOW and side == 1) else args.block
          per = n * (n_prog if side == 2 else 1)
          t0, c0 = time.perf_counter(), time.process_time()
          for _ in range(n):
            call()
          times[m][side].append(((time.perf_counter() - t0) / per,
                                 (time.process_time() - c0) / per))
    for m in methods:
      (tw, cw), (tt, ct) = (1e3 * np.median(np.asarray(t), axis=0) for t in times[m][:2])
      results[(m, k)] = {"method": m, "k": k, "weightax_ms": tw, "torchjd_ms": tt,
                         "ratio": tw / tt, "weightax_cpu_ms": cw, "torchjd_cpu_ms": ct,
                         "cpu_ratio": cw / ct, "max_rel_diff": diff[m],
                         "reps": [len(times[m][0]), len(times[m][1])]}
      if n_prog:
        (tp, cp), (tf, cf) = (1e3 * np.median(np.asarray(t), axis=0) for t in times[m][2:])
        results[(m, k)].update({
            "in_program_ms": tp, "in_program_cpu_ms": cp, "in_program_ratio": tp / tt,
            "in_program_cpu_ratio": cp / ct, "floor_ms": tf, "floor_cpu_ms": cf,
            "floor_ratio": tf / tt, "floor_cpu_ratio": cf / ct})
        print(f"K={k:3d} {m:12s} in lax.map of {n_prog}: {tp:9.4f} ms per Gramian "
              f"(ratio {tp / tt:7.3f}); dispatch floor {tf:7.4f} ms (ratio {tf / tt:6.3f})",
              file=sys.stderr, flush=True)
      print(f"K={k:3d} {m:12s} weightax {tw:9.3f} ms  torchjd {tt:9.3f} ms  "
            f"ratio {tw / tt:7.3f}  (CPU time {cw:9.3f} / {ct:9.3f} ms, {cw / ct:7.3f})  "
            f"max|Δw|/max|w| {diff[m]:.1e}", file=sys.stderr, flush=True)
  results = {key: {n: float(v) if isinstance(v, np.floating) else v for n, v in r.items()}
             for key, r in results.items()}

  load = os.getloadavg()
  lines = [
      f"`{shlex.join(['python', 'benchmarks/bench_weightings_k.py', *(argv or sys.argv[1:])])}`",
      "",
      f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__}, "
      f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), float32; "
      "load average at the end "
      f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).",
      "",
  ]
  for clock, suffix in (("wall-clock", ""), ("process CPU time", "cpu_")):
    lines += [
        "",
        f"Median {clock} ms per call, weightax / torchjd (ratio); the target is a ratio "
        "<= 0.5 at K >= 40 (a bold ratio misses it).",
        "",
        "| method | " + " | ".join(f"K = {k}" for k in ks) + " | max Δw (rel.) |",
        "|---|" + "---:|" * len(ks) + "---:|",
    ]
    for m in methods:
      cells = []
      for k in ks:
        r = results[(m, k)]
        ratio = r[suffix + "ratio"]
        mark = "**" if k >= 40 and ratio > 0.5 else ""
        cells.append(f"{r['weightax_' + suffix + 'ms']:.2f} / {r['torchjd_' + suffix + 'ms']:.2f}"
                     f" ({mark}{ratio:.2g}{mark})")
      worst = max(results[(m, k)]["max_rel_diff"] for k in ks)
      lines.append(f"| {m} | " + " | ".join(cells) + f" | {worst:.1e} |")
  if args.in_program:
    for clock, suffix in (("wall-clock", ""), ("process CPU time", "cpu_")):
      lines += [
          "",
          f"Median {clock} ms, weightax inside `jit(lax.map)` over {args.in_program} Gramians "
          "(per Gramian) / torchjd's call (ratio), and the dispatch floor (a jitted call "
          "returning G's first row) / torchjd's call (ratio).",
          "",
          "| method | " + " | ".join(f"K = {k}" for k in ks) + " |",
          "|---|" + "---:|" * len(ks),
      ]
      for m in methods:
        cells = []
        for k in ks:
          r = results[(m, k)]
          cells.append(f"{r['in_program_' + suffix + 'ms']:.3f} / "
                       f"{r['torchjd_' + suffix + 'ms']:.2f} "
                       f"({r['in_program_' + suffix + 'ratio']:.2g}); floor "
                       f"{r['floor_' + suffix + 'ms']:.3f} ({r['floor_' + suffix + 'ratio']:.2g})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
  text = "\n".join(lines)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
      f.write(text + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
      json.dump({"argv": argv or sys.argv[1:], "load": load, "results": list(results.values())},
                f, indent=1)


if __name__ == "__main__":
  main()
