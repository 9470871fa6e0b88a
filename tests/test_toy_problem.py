"""The two-objective toy (CAGrad / Nash-MTL / FAMO): formulas, Pareto set, quick study run."""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightax.datasets import toy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
study = importlib.import_module("toy_two_objective")


def _by_hand(x1: float, x2: float) -> tuple[float, float]:
  """The DESIGN.md formulas in plain Python floats."""
  f1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6
  f2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6
  c1, c2 = max(math.tanh(0.5 * x2), 0.0), max(math.tanh(-0.5 * x2), 0.0)
  f1s = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  f2s = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  return c1 * f1 + c2 * f1s, c1 * f2 + c2 * f2s


@pytest.mark.parametrize("x", [(0.0, 0.0), (-8.5, 7.5), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0),
                               (0.0, -8.3552), (3.0, 2.0)])
def test_losses_match_the_formulas(x):
  got = toy.toy_losses(jnp.array(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), _by_hand(*x), rtol=1e-5, atol=1e-5)
  scaled = toy.toy_losses(jnp.array(x, jnp.float32), l1_scale=0.1)
  np.testing.assert_allclose(np.asarray(scaled), [0.1 * got[0], got[1]], rtol=1e-6, atol=1e-7)


def test_hand_computed_points():
  # x = (0, 0): c1 = c2 = 0, so both losses vanish.
  np.testing.assert_allclose(toy.toy_losses(jnp.zeros(2)), [0.0, 0.0], atol=1e-7)
  # x = (7, -8): f1s = -20 exactly, f2s = 196/10 - 20 = -0.4; c2 = tanh(4).
  c2 = math.tanh(4.0)
  np.testing.assert_allclose(toy.toy_losses(jnp.array([7.0, -8.0])), [-20 * c2, -0.4 * c2],
                             rtol=1e-5)
  # x = (-7, 2): 0.5(-x1-7) = 0, so f1 = log|tanh 2| + 6 and f2 = log|5 - tanh 2 + 2| + 6;
  # c1 = tanh(1), c2 = 0.
  t = toy.toy_loss_terms(jnp.array([-7.0, 2.0]))
  assert float(t["f1"]) == pytest.approx(math.log(math.tanh(2.0)) + 6, rel=1e-6)
  assert float(t["f2"]) == pytest.approx(math.log(7 - math.tanh(2.0)) + 6, rel=1e-6)
  assert float(t["c1"]) == pytest.approx(math.tanh(1.0), rel=1e-6) and float(t["c2"]) == 0.0


def test_lower_floor_keeps_the_log_finite():
  # On the zero line of f1's |·| (x1 = -7 - 2 tanh(-x2)) the floor LOWER applies.
  x2 = 1.0
  x1 = -7.0 - 2.0 * math.tanh(-x2)
  t = toy.toy_loss_terms(jnp.array([x1, x2], jnp.float32))
  assert float(t["f1"]) >= math.log(toy.LOWER) + 6 - 1e-4
  assert np.isfinite(np.asarray(jax.grad(lambda x: toy.toy_losses(x).sum())(jnp.array([x1, x2]))
                                )).all()


def test_pareto_set_gradients_are_antiparallel_in_x1():
  # On x2 = -8.3552, x1 ∈ (-7, 7): the x1-components of the two gradients have opposite signs
  # (neither loss can improve along x1 without the other getting worse).
  jac = jax.vmap(jax.jacrev(toy.toy_losses))
  x1 = jnp.linspace(-6.9, 6.9, 31)
  g = jac(jnp.stack([x1, jnp.full_like(x1, toy.PARETO_X2)], 1))  # [n, 2 losses, 2 coords]
  assert bool(jnp.all(g[:, 0, 0] * g[:, 1, 0] < 0))
  # ... and the x2-components nearly vanish there (the published x2 is exact at x1 = 0).
  assert float(jnp.max(jnp.abs(g[15, :, 1]))) < 1e-4
  # Outside [-7, 7] both x1-components agree: not Pareto optimal.
  g_out = jac(jnp.array([[8.0, toy.PARETO_X2], [-8.0, toy.PARETO_X2]]))
  assert bool(jnp.all(g_out[:, 0, 0] * g_out[:, 1, 0] > 0))


def test_exact_pareto_set_is_stationary_and_close_to_the_published_line():
  ps = toy.pareto_set(41)
  assert ps[20, 1] == pytest.approx(toy.PARETO_X2, abs=2e-3)  # x1 = 0
  assert np.all(np.abs(ps[:, 1] - toy.PARETO_X2) <= 0.1)
  stat = jax.vmap(toy.pareto_stationarity)(jnp.asarray(ps, jnp.float32))
  assert float(jnp.max(stat)) < 1e-3
  assert float(toy.pareto_stationarity(jnp.array([0.0, 0.0]))) > 1.0


def test_starts_and_shape_errors():
  assert toy.STARTS.shape == (5, 2)
  with pytest.raises(ValueError, match="shape"):
    toy.toy_losses(jnp.zeros(3))


def test_quick_run_end_to_end(tmp_path):
  out = tmp_path / "run"
  summary = study.main(["--quick", "--out", str(out)])
  assert "ls" in summary["methods"]
  for name in ("summary.md", "summary.json", "final_points.csv", "trajectories.csv",
               "trajectories_params.png", "trajectories_losses.png"):
    assert (out / name).stat().st_size > 0, name
  data = json.loads((out / "summary.json").read_text())
  for e in data["methods"].values():
    assert len(e["starts"]) == 5
    assert {"final_x", "final_losses", "on_pareto", "stationarity"} <= set(e["starts"][0])
  rows = (out / "final_points.csv").read_text().splitlines()
  assert len(rows) == 1 + 5 * len(data["methods"])
  assert "Pareto" in (out / "summary.md").read_text()
  with pytest.raises(FileExistsError):  # never overwrite an earlier run
    study.main(["--quick", "--out", str(out)])


def test_help_lists_the_options():
  text = subprocess.run([sys.executable, str(ROOT / "experiments" / "toy_two_objective.py"),
                         "--help"], capture_output=True, text=True, check=True).stdout
  for opt in ("--steps", "--lr", "--l1-scale", "--methods", "--quick", "--out", "default:"):
    assert opt in text, opt
