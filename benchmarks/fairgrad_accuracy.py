"""FairGrad in float32 against the float64 solution, by α and by the spread of the norms.

For each α and spread, random conflicting problems (K = 2..8 task gradients of 50
entries, norms log-uniform over ``e^±spread``) are solved by
``wx.weightings.fairgrad`` in float32, with the first phase alone
(``polish_iters=0``) and as the default (with the log-weight polish). The reference
is the float64 solution (``jax_enable_x64``, 3000 first-phase steps and the polish),
kept only where NumPy confirms it solves ``log (Qw)_k + log(w_k)/α = 0`` to 1e-9
(the problem is strictly convex: that point is the minimiser). The error is that of
the update, ``‖Jᵀ(w − w_ref)‖ / ‖Jᵀw_ref‖``.

Usage:
  python benchmarks/fairgrad_accuracy.py [--alphas 0.5,1,2,5,10,20,50] [--spreads 4,8]
                                         [--problems 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)  # the reference; the compared solves are float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import weightax as wx  # noqa: E402
from weightax.weightings.fairgrad import FAIRGRAD_POLISH_ITERS  # noqa: E402

REG = 1e-6  # fairgrad's default ridge, which the stationarity check must use too


def log_residual(g: np.ndarray, w: np.ndarray, alpha: float) -> float:
  """``max_k |log (Qw)_k + log(w_k)/α|`` on the normalised problem (inf if not defined)."""
  tr = np.trace(g)
  q = g / tr + np.diag(REG * (np.diag(g) / tr + REG))
  scaled = w * tr ** (alpha / (1.0 + alpha))
  gains = q @ scaled
  if np.any(scaled <= 0) or np.any(gains <= 0):
    return float("inf")
  return float(np.max(np.abs(np.log(gains) + np.log(scaled) / alpha)))


def errors(alpha: float, spread: float, problems: int, rng: np.random.Generator):
  """``(first phase errors, default errors, problems without a float64 reference)``."""
  first, default, unsolved = [], [], 0
  for _ in range(problems):
    k = int(rng.integers(2, 9))
    j = rng.normal(size=(k, 50)) * np.exp(rng.uniform(-spread, spread, size=(k, 1)))
    g = j @ j.T
    ref = np.asarray(wx.weightings.fairgrad(jnp.asarray(g), alpha=alpha, num_iters=3000))
    if log_residual(g, ref, alpha) > 1e-9:
      unsolved += 1
      continue
    g32 = jnp.asarray(g, jnp.float32)
    for out, polish in ((first, 0), (default, FAIRGRAD_POLISH_ITERS)):
      w = np.asarray(wx.weightings.fairgrad(g32, alpha=alpha, polish_iters=polish), np.float64)
      out.append(float(np.linalg.norm((w - ref) @ j) / np.linalg.norm(ref @ j)))
  return first, default, unsolved


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--alphas", default="0.5,1,2,5,10,20,50", help="values of α, comma-separated")
  parser.add_argument("--spreads", default="4,8",
                      help="spreads s of the norms (log-uniform over e^±s), comma-separated")
  parser.add_argument("--problems", type=int, default=30, help="random problems per cell")
  parser.add_argument("--seed", type=int, default=1, help="seed of the problems")
  args = parser.parse_args(argv)
  try:
    alphas = [float(a) for a in args.alphas.split(",") if a]
    spreads = [float(s) for s in args.spreads.split(",") if s]
  except ValueError as e:
    parser.error(f"--alphas and --spreads take comma-separated numbers: {e}")
  if not alphas or not spreads or min(alphas) <= 0 or min(spreads) < 0 or args.problems < 1:
    parser.error(f"need α > 0, spreads >= 0 and --problems >= 1; got {args.alphas!r}, "
                 f"{args.spreads!r}, {args.problems}")
  rng = np.random.default_rng(args.seed)
  print(f"JAX {jax.__version__}; {args.problems} problems per cell, seed {args.seed}; "
        "float32 update error against float64, max and count above 1e-4")
  print("| α | norms over | solved in float64 | first phase: max | > 1e-4 "
        "| default (polish): max | > 1e-4 |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for alpha in alphas:
    for spread in spreads:
      first, default, unsolved = errors(alpha, spread, args.problems, rng)
      if not first:
        print(f"| {alpha:g} | e^±{spread:g} | 0 | | | | |", flush=True)
        continue
      print(f"| {alpha:g} | e^±{spread:g} | {len(first)} | {max(first):.1e} | "
            f"{sum(e > 1e-4 for e in first)} | {max(default):.1e} | "
            f"{sum(e > 1e-4 for e in default)} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
