"""The lower bound that ``bench_torchjd_step.py --floor`` reports is a sound count.

The benchmark argues that the ≤ 0.3× torchjd target of the UPGrad step is out of
reach by dividing the matrix products every exact step must compute by the best
matrix-product rate of the CPU. The argument holds only if the closed-form count
does not exceed what the compiled step really computes: XLA's own cost analysis
of the step (an independent count, from the compiled program) must be at least
the closed form, and not far above it, or the closed form misses work.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location(
      "bench_torchjd_step", ROOT / "benchmarks" / "bench_torchjd_step.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("tasks,d_in,hidden,batch", [(4, 64, 256, 256), (3, 16, 48, 32)])
def test_essential_flops_bound_xla_cost_analysis(bench, tasks, d_in, hidden, batch):
  args = argparse.Namespace(tasks=tasks, d_in=d_in, hidden=hidden, batch=batch, seed=0, fuse=2)
  one, _, carry, _ = bench.jax_steps(args)
  cost = one.lower(carry).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla = float(cost["flops"])
  closed = bench.essential_flops(args)
  # The closed form at the benchmark's shape, by hand: 2·256·(64·256 + 256² + 256·4) forward
  # and 4 · 2·256·(2·256² + 64·256) for the four Jacobian rows.
  if (tasks, d_in, hidden, batch) == (4, 64, 256, 256):
    assert closed == 2 * 256 * (64 * 256 + 256**2 + 256 * 4) + 4 * 2 * 256 * (2 * 256**2
                                                                            + 64 * 256)
  # XLA counts every product (and the elementwise work) of the step: at least the closed
  # form, and the closed form is most of it (the rest is elementwise and O(K·P) work).
  assert closed <= xla <= 1.35 * closed, (closed, xla)
