"""A UPGrad training step: weightax against torchjd, side by side in one run.

The model, data and initial weights are those of ``bench_aggregators.py`` (a
shared trunk ``in -> hidden -> hidden``, ReLU, K linear heads, batch of
regression targets on different scales, float32, Adam with learning rate 1e-3).
One training step is:

- torchjd: the forward pass, ``torchjd.autojac.mtl_backward(losses,
  features=h)`` (the task heads' gradients into ``.grad``, the K × P Jacobian
  of the trunk into ``.jac``), ``torchjd.autojac.jac_to_grad(trunk,
  UPGrad())``, ``torch.optim.Adam.step()``, in an ordinary Python loop;
- weightax: ``jax.jit`` of ``wx.value_and_jacobian`` → ``wx.upgrad(shared=...)``
  → ``optax.adam`` → ``optax.apply_updates``, called once per step ("one step
  per call"), and the same step run ``--fuse`` times inside one ``lax.scan``
  per call ("scan-fused", the way a training loop or ``wx.sweep`` runs it).

Both compute the same thing: each head gets the plain gradient of its own loss,
the trunk gets UPGrad's aggregation (torchjd's default: mean preference vector,
``reg_eps=1e-4`` on the trace-normalised Gramian), and ``--check`` prints how
far the two trajectories are apart after a few steps. PyTorch runs with as many
intra-op threads as XLA's CPU client uses (the CPUs this process may run on),
so neither side gets more cores. Repetitions are interleaved (each repetition
times every row once, ``--fuse`` steps each), the table reports medians of the
per-step time, and the ratio of medians is the number to compare.

Usage:
  python benchmarks/bench_torchjd_step.py [--reps 30] [--fuse 10] [--check] [--floor]

``--floor`` adds the lower bound of the comparison: the matrix products any
exact step must compute (closed form, beside XLA's cost analysis) divided by the
best square matrix-product rate either library reaches on this CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import jax
import numpy as np
import optax

import weightax as wx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_aggregators import build_problem  # noqa: E402  (same init and data)

TORCHJD = "torchjd mtl_backward + jac_to_grad(UPGrad) + Adam"
TORCHJD_1 = "the same, 1 PyTorch thread"
ONE = "weightax upgrad step, one step per call"
FUSED = "weightax upgrad step, scan-fused"
LR = 1e-3


def xla_threads() -> int:
  """The size of XLA's CPU intra-op pool: the CPUs this process may be scheduled on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def jax_steps(args):
  """``(one_step, fused_steps, params, opt_state)`` of the weightax UPGrad step."""
  params, (x, y), losses_fn, shared = build_problem(args.tasks, args.d_in, args.hidden,
                                                    args.batch, args.seed)
  tx = optax.chain(wx.upgrad(shared=shared), optax.adam(LR))
  vjac = wx.value_and_jacobian(losses_fn)

  def step(carry, _=None):
    p, s = carry
    losses, jac = vjac(p, x, y)
    u, s = tx.update(jac, s, p, task_losses=losses)
    return (optax.apply_updates(p, u), s), None

  one = jax.jit(lambda c: step(c)[0])
  fused = jax.jit(lambda c: jax.lax.scan(step, c, None, length=args.fuse)[0])
  return one, fused, (params, tx.init(params)), (params, (x, y))


def torch_step_fn(args, params, batch):
  """``(step, trunk, heads)``: one torchjd training step on copies of ``params``."""
  import torch
  from torchjd.aggregation import UPGrad
  from torchjd.autojac import jac_to_grad, mtl_backward

  t = lambda a: torch.nn.Parameter(torch.tensor(np.asarray(a)))  # noqa: E731
  trunk = [t(params["trunk"][n]) for n in ("w1", "b1", "w2", "b2")]
  # One head per task, as torchjd's examples write them: row k of the weightax heads.
  heads = [(t(params["heads"]["w"][k]), t(params["heads"]["b"][k])) for k in range(args.tasks)]
  x, y = (torch.tensor(np.asarray(a)) for a in batch)
  opt = torch.optim.Adam([*trunk, *(p for h in heads for p in h)], lr=LR)
  agg = UPGrad()
  w1, b1, w2, b2 = trunk

  def step():
    opt.zero_grad()
    h = torch.relu(torch.relu(x @ w1 + b1) @ w2 + b2)
    losses = [torch.mean((h @ hw + hb - y[:, k]) ** 2) for k, (hw, hb) in enumerate(heads)]
    mtl_backward(losses, features=h)
    jac_to_grad(trunk, agg)
    opt.step()

  return step, trunk, heads


def check(args) -> str:
  """Largest difference between the two trajectories' trunk weights after a few steps."""
  one, _, carry, (params, batch) = jax_steps(args)
  step, trunk, _ = torch_step_fn(args, params, batch)
  n = 5
  for _ in range(n):
    carry = one(carry)
    step()
  p = carry[0]["trunk"]
  diffs = [float(np.max(np.abs(np.asarray(p[name]) - tp.detach().numpy())))
           for name, tp in zip(("w1", "b1", "w2", "b2"), trunk, strict=True)]
  moved = float(np.max(np.abs(np.asarray(p["w2"]) - np.asarray(params["trunk"]["w2"]))))
  return (f"after {n} steps: largest |weightax − torchjd| over the trunk = {max(diffs):.2e} "
          f"(the weights moved by up to {moved:.2e})")


def run(args, threads: int) -> dict[str, list[float]]:
  import torch

  one, fused, carry, (params, batch) = jax_steps(args)
  carries = {ONE: carry, FUSED: carry}
  step, _, _ = torch_step_fn(args, params, batch)

  def time_torch(n: int = threads) -> float:
    torch.set_num_threads(n)
    t0 = time.perf_counter()
    for _ in range(args.fuse):
      step()
    return (time.perf_counter() - t0) / args.fuse

  def time_one() -> float:
    t0 = time.perf_counter()
    for _ in range(args.fuse):
      carries[ONE] = one(carries[ONE])
    jax.block_until_ready(carries[ONE])
    return (time.perf_counter() - t0) / args.fuse

  def time_fused() -> float:
    t0 = time.perf_counter()
    carries[FUSED] = jax.block_until_ready(fused(carries[FUSED]))
    return (time.perf_counter() - t0) / args.fuse

  rows = {TORCHJD: time_torch, ONE: time_one, FUSED: time_fused}
  if threads > 1:
    # On a loaded machine PyTorch's OpenMP threads can wait on each other far longer than
    # the work takes; one thread shows what PyTorch does without that.
    rows[TORCHJD_1] = lambda: time_torch(1)
  for _ in range(args.warmup):  # compile, and let PyTorch's allocator settle
    for fn in rows.values():
      fn()
  times: dict[str, list[float]] = {name: [] for name in rows}
  for i in range(args.reps):
    # Rotate the order so that no row always runs right after the same one.
    names = list(rows)[i % len(rows):] + list(rows)[:i % len(rows)]
    for name in names:
      times[name].append(rows[name]())
  return times


def essential_flops(args) -> float:
  """The matrix products any exact UPGrad step on this model must compute, in FLOPs.

  Forward: ``x W1``, ``h1 W2`` and the heads, ``2B(d·h + h² + h·K)``. Then, per task,
  the trunk's Jacobian row: ``∂L_k/∂W2 = h1ᵀ δ_k``, ``δ_k W2ᵀ`` (the gradient at h1) and
  ``∂L_k/∂W1 = xᵀ δ'_k``, ``2B(2h² + d·h)``; the K rows are independent (UPGrad needs each
  task's gradient, or their Gramian, which costs at least as much here since B = h). The
  aggregation, the heads' gradients and Adam are elementwise or O(K·P) and left out, so
  this is a lower bound.
  """
  b, d, h, k = args.batch, args.d_in, args.hidden, args.tasks
  return 2.0 * b * (d * h + h * h + h * k) + k * 2.0 * b * (2 * h * h + d * h)


def gemm_rates(threads: int, shapes, reps: int = 15) -> dict:
  """GFLOP/s of a float32 product [m, k] @ [k, n] per library and shape (median of reps)."""
  import torch

  torch.set_num_threads(threads)
  rates = {}
  mm = jax.jit(lambda a, b: a @ b)
  for m, k, n in shapes:
    rng = np.random.default_rng(m * k + n)
    a = rng.normal(size=(m, k)).astype(np.float32)
    b = rng.normal(size=(k, n)).astype(np.float32)
    ta, tb, ja, jb = torch.tensor(a), torch.tensor(b), jax.device_put(a), jax.device_put(b)
    number = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per timing
    for lib, fn in (("torch", lambda: ta @ tb),
                    ("jax", lambda: jax.block_until_ready(mm(ja, jb)))):
      fn()
      ts = []
      for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(number):
          fn()
        ts.append((time.perf_counter() - t0) / number)
      rates[(lib, (m, k, n))] = 2 * m * k * n / float(np.median(ts)) / 1e9
  return rates


def floor_report(args, threads: int, torchjd_s: float | None) -> str:
  """How fast the step could be at the CPU's matrix-product rates: the target's floor."""
  fl = essential_flops(args)
  one, _, carry, _ = jax_steps(args)
  # The one-step program: XLA's cost analysis counts a loop's body once, whatever its length.
  xla = one.lower(carry).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  xla_flops = float(xla.get("flops", float("nan")))
  kb, h = args.tasks * args.batch, args.hidden
  # The step's own products (the K rows batched into one product, as XLA compiles them):
  # the gradient at h1 for all tasks, [K·B, h] @ [h, h], and dW2 for all tasks, [h, K·B]
  # @ [K·B, h]; then square ones for the CPU's best rate.
  step_shapes = [(kb, h, h), (h, kb, h)]
  square = [(n, n, n) for n in (256, 512, 1024, 2048)]
  rates = gemm_rates(threads, step_shapes + square)
  lines = ["| product [m, k] @ [k, n] | torch GFLOP/s | jax GFLOP/s |", "|---|---:|---:|"]
  for shape in step_shapes + square:
    tag = " (the step's)" if shape in step_shapes else ""
    lines.append(f"| {shape[0]}×{shape[1]} @ {shape[1]}×{shape[2]}{tag} | "
                 f"{rates[('torch', shape)]:.0f} | {rates[('jax', shape)]:.0f} |")
  best = max(rates.values())
  xla_step = max(rates[("jax", s)] for s in step_shapes)
  out = (f"Essential matrix products of one step: {fl / 1e9:.3f} GFLOP (closed form; XLA's cost "
         f"analysis of the compiled step: {xla_flops / 1e9:.3f} GFLOP).\n\n"
         f"float32 matrix products on {threads} thread(s), median of 15:\n\n"
         + "\n".join(lines)
         + f"\n\nThe step's products alone take at least {1e3 * fl / (best * 1e9):.2f} ms at the "
         f"best rate measured ({best:.0f} GFLOP/s) and {1e3 * fl / (xla_step * 1e9):.2f} ms at "
         f"XLA's best rate on the step's shapes ({xla_step:.0f} GFLOP/s)")
  if torchjd_s:
    out += (f": {fl / (best * 1e9) / torchjd_s:.2f}× and "
            f"{fl / (xla_step * 1e9) / torchjd_s:.2f}× torchjd's step ({1e3 * torchjd_s:.2f} ms); "
            f"0.3× needs {fl / (0.3 * torchjd_s) / 1e9:.0f} GFLOP/s sustained over the whole step")
  return out + "."


def table(times: dict[str, list[float]]) -> str:
  ref = float(np.median(times[TORCHJD]))
  lines = ["| step | median ms/step | p10–p90 ms | × torchjd (ratio of medians) |",
           "|---|---:|---:|---:|"]
  for name, t in times.items():
    med = float(np.median(t))
    p10, p90 = np.percentile(t, [10, 90])
    lines.append(f"| {name} | {1e3 * med:.3f} | {1e3 * p10:.2f}–{1e3 * p90:.2f} | "
                 f"{med / ref:.2f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--tasks", type=int, default=4, help="number of tasks K")
  parser.add_argument("--d-in", type=int, default=64, help="input width")
  parser.add_argument("--hidden", type=int, default=256, help="trunk width (two layers)")
  parser.add_argument("--batch", type=int, default=256, help="examples per step")
  parser.add_argument("--reps", type=int, default=30, help="timed repetitions per row")
  parser.add_argument("--fuse", type=int, default=10,
                      help="steps per timed repetition (and per lax.scan call)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
  parser.add_argument("--threads", type=int, default=0,
                      help="PyTorch intra-op threads (0: as many as XLA uses, the schedulable "
                           "CPUs)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data")
  parser.add_argument("--check", action="store_true",
                      help="also compare the two trajectories after 5 steps")
  parser.add_argument("--quick", action="store_true",
                      help="a small model and few repetitions (for tests)")
  parser.add_argument("--floor", action="store_true",
                      help="also measure the CPU's matrix-product rate and the step's FLOPs: "
                           "the fastest any exact step could be")
  parser.add_argument("--out", default="", help="also write the markdown table to this file")
  args = parser.parse_args(argv)
  if args.quick:
    args.hidden, args.batch, args.reps, args.fuse, args.warmup = 32, 16, 3, 2, 1
  import torch

  threads = args.threads or xla_threads()
  times = run(args, threads)
  ratio = float(np.median(times[FUSED]) / np.median(times[TORCHJD]))
  best = min(float(np.median(times[r])) for r in (TORCHJD, TORCHJD_1) if r in times)
  load = os.getloadavg()
  command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
  dev = jax.devices()[0]
  header = (
      f"K={args.tasks}, trunk {args.d_in}→{args.hidden}→{args.hidden} (ReLU), {args.tasks} "
      f"linear heads, batch {args.batch}, float32, Adam; medians of {args.reps} interleaved "
      f"repetitions of {args.fuse} steps each, after {args.warmup} untimed ones.\n\n"
      f"CPU: {platform.processor() or platform.machine()}, {xla_threads()} schedulable "
      f"CPU(s); PyTorch threads: {threads} (XLA's pool: {xla_threads()}); "
      f"jax {jax.__version__} ({dev.platform}), torch {torch.__version__}; "
      f"load average after the run: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}."
  )
  body = table(times)
  verdict = (f"\n\nscan-fused weightax / torchjd = {ratio:.2f} "
             f"({'meets' if ratio <= 0.3 else 'misses'} the ≤ 0.3 target); against the faster "
             f"torchjd row: {float(np.median(times[FUSED])) / best:.2f}")
  extra = ("\n\n" + check(args)) if args.check else ""
  if args.floor:
    extra += "\n\n" + floor_report(args, threads, float(np.median(times[TORCHJD])))
  print(header + "\n\n" + body + verdict + extra)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"# UPGrad step: weightax vs torchjd\n\nCommand: `{command}`\n\n{header}\n\n"
              f"{body}{verdict}{extra}\n")


if __name__ == "__main__":
  main()
