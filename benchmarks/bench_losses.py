"""Throughput of weightax.losses against Optax's plain cross-entropies.

Each loss is timed as a jitted forward+backward pass,
``jax.jit(jax.grad(lambda z: loss(z, y).mean()))``, on float32 logits: softmax-type losses on
``[batch, classes_softmax]`` against ``optax.softmax_cross_entropy_with_integer_labels`` and
sigmoid-type (and GHM-R) losses on ``[batch, classes_sigmoid]`` against
``optax.sigmoid_binary_cross_entropy``. Repetitions are interleaved round-robin across all
losses so that machine-load drift affects every row alike; the table reports medians and
the ratio to the baseline of the same group.

Usage:
  python benchmarks/bench_losses.py [--batch 4096] [--reps 50] [--out benchmarks/results_losses.md]
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightax import losses as L


def build(batch: int, c_soft: int, c_sig: int, seed: int):
  """Returns ``[(group, name, jitted grad fn, logits)]``, each group's baseline first."""
  r = np.random.default_rng(seed)
  z_soft = jnp.asarray(r.normal(size=(batch, c_soft)), jnp.float32)
  y_soft = jnp.asarray(r.integers(0, c_soft, size=batch), jnp.int32)
  z_sig = jnp.asarray(r.normal(size=(batch, c_sig)), jnp.float32)
  y_sig = jnp.asarray(r.uniform(size=(batch, c_sig)) < 0.05, jnp.float32)
  t_reg = jnp.asarray(r.normal(size=(batch, c_sig)) * 0.1, jnp.float32)
  counts = jnp.asarray(np.round(1000 * 0.5 ** np.arange(c_soft)) + 1, jnp.float32)
  cw = L.class_balanced_weights(counts, beta=0.999)

  softmax: dict[str, Callable[[jax.Array], jax.Array]] = {
      "optax.softmax_cross_entropy_with_integer_labels (baseline)":
          lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y_soft),
      "softmax_focal_loss (γ=2)": lambda z: L.softmax_focal_loss(z, y_soft, gamma=2.0),
      "weighted_softmax_cross_entropy (class weights)":
          lambda z: L.weighted_softmax_cross_entropy(z, y_soft, class_weights=cw),
      "ldam_loss": lambda z: L.ldam_loss(z, y_soft, class_counts=counts),
      "logit_adjusted_cross_entropy (τ=1)":
          lambda z: L.logit_adjusted_cross_entropy(z, y_soft, class_priors=counts),
  }
  sigmoid: dict[str, Callable[[jax.Array], jax.Array]] = {
      "optax.sigmoid_binary_cross_entropy (baseline)":
          lambda z: optax.sigmoid_binary_cross_entropy(z, y_sig),
      "optax.sigmoid_focal_loss (α=0.25, γ=2)":
          lambda z: optax.sigmoid_focal_loss(z, y_sig, alpha=0.25, gamma=2.0),
      "sigmoid_focal_loss (α=0.25, γ=2)": lambda z: L.sigmoid_focal_loss(z, y_sig),
      "asymmetric_loss (γ+=1, γ-=4, clip=0.05)": lambda z: L.asymmetric_loss(z, y_sig),
      "ghm_c (bins=30, momentum=0.75)":
          lambda z: L.ghm_c(z, y_sig, bins=30, momentum=0.75)[0],
      "ghm_r (bins=10, μ=0.02; regression targets)":
          lambda z: L.ghm_r(z, t_reg, bins=10, momentum=0.7)[0],
  }
  rows = []
  for group, z, fns in (("softmax", z_soft, softmax), ("sigmoid", z_sig, sigmoid)):
    for name, loss in fns.items():
      grad = jax.jit(jax.grad(lambda x, loss=loss: loss(x).mean()))
      rows.append((group, name, grad, z))
  return rows


def run(args: argparse.Namespace) -> str:
  rows = build(args.batch, args.classes_softmax, args.classes_sigmoid, args.seed)
  for _, _, fn, z in rows:  # compile and warm up
    for _ in range(args.warmup):
      fn(z).block_until_ready()
  times: list[list[float]] = [[] for _ in rows]
  for _ in range(args.reps):
    for i, (_, _, fn, z) in enumerate(rows):
      t0 = time.perf_counter()
      fn(z).block_until_ready()
      times[i].append(time.perf_counter() - t0)

  medians = [float(np.median(t)) * 1e6 for t in times]
  base = {g: medians[i] for i, (g, *_) in enumerate(rows) if "(baseline)" in rows[i][1]}
  shape = {"softmax": (args.batch, args.classes_softmax),
           "sigmoid": (args.batch, args.classes_sigmoid)}
  lines = [
      "| loss | logits | median µs (fwd+bwd) | p10–p90 µs | × baseline |",
      "|---|---|---:|---:|---:|",
  ]
  for i, (group, name, _, _) in enumerate(rows):
    p10, p90 = np.percentile(np.asarray(times[i]) * 1e6, [10, 90])
    lines.append(
        f"| {name} | {list(shape[group])} | {medians[i]:.1f} | {p10:.0f}–{p90:.0f} | "
        f"{medians[i] / base[group]:.2f} |"
    )
  dev = jax.devices()[0]
  header = (
      f"Device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
      f"jax {jax.__version__}, optax {optax.__version__}, Python {platform.python_version()}; "
      f"float32; median of {args.reps} interleaved repetitions after {args.warmup} warm-up "
      "calls."
  )
  return header + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=4096, help="examples per batch (4096)")
  parser.add_argument("--classes-softmax", type=int, default=10,
                      help="classes for softmax-type losses (10)")
  parser.add_argument("--classes-sigmoid", type=int, default=80,
                      help="labels for sigmoid-type losses and GHM-R outputs (80)")
  parser.add_argument("--reps", type=int, default=50, help="timed repetitions, >= 20 (50)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling (3)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help="also write the table and the command to this markdown file")
  args = parser.parse_args(argv)
  if args.reps < 20:
    parser.error(f"--reps must be at least 20 for a stable median; got {args.reps}")
  table = run(args)
  print(table)
  if args.out:
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_losses.py",
                                                *sys.argv[1:]])
    with open(args.out, "w") as f:
      f.write("## Sample-weighting losses: throughput (jitted forward+backward)\n\n")
      f.write(f"Command: `{command}`\n\n{table}\n")


if __name__ == "__main__":
  main()
