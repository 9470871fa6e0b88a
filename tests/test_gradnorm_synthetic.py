"""GradNorm's synthetic regression: the data generator and a quick run of the study."""

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

from weightax.datasets import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
study = importlib.import_module("gradnorm_synthetic")
report = importlib.import_module("gradnorm_synthetic_report")


def test_problem_shapes_and_statistics():
  p = syn.gradnorm_problem(jax.random.key(0), [1.0, 100.0])
  assert p.b.shape == (100, 250) and p.eps.shape == (2, 100, 250) and p.sigmas.shape == (2,)
  assert float(jnp.std(p.b)) == pytest.approx(10.0, rel=0.03)
  assert float(jnp.std(p.eps)) == pytest.approx(3.5, rel=0.03)
  assert abs(float(jnp.mean(p.b))) < 0.2
  v = syn.gradnorm_problem(jax.random.key(0), [1.0, 100.0], normal_param="variance")
  assert float(jnp.std(v.b)) == pytest.approx(math.sqrt(10.0), rel=0.03)
  assert float(jnp.std(v.eps)) == pytest.approx(math.sqrt(3.5), rel=0.03)


def test_inputs_targets_and_sampling():
  p = syn.gradnorm_problem(jax.random.key(1), [1.0, 10.0, 100.0], input_dim=20, output_dim=7)
  x, y = syn.gradnorm_sample(p, jax.random.key(2), 64)
  assert x.shape == (64, 20) and y.shape == (64, 3, 7)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(x), axis=1), 1.0, rtol=1e-5)
  for i, s in enumerate([1.0, 10.0, 100.0]):
    assert float(jnp.max(jnp.abs(y[:, i]))) <= s * (1 + 1e-6)
  # One example by hand: σ_i tanh((B + ε_i) x).
  want = p.sigmas[1] * jnp.tanh((p.b + p.eps[1]) @ x[5])
  np.testing.assert_allclose(np.asarray(y[5, 1]), np.asarray(want), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="input_dim"):
    syn.gradnorm_targets(p, jnp.zeros((3, 21)))
  with pytest.raises(ValueError, match="normal_param"):
    syn.gradnorm_problem(jax.random.key(0), [1.0], normal_param="scale")


def test_wide_sigmas():
  s = syn.wide_sigmas(10, 1.0, 100.0)
  assert s.shape == (10,) and s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(100.0)
  assert np.all(np.diff(np.log(s)) > 0)
  with pytest.raises(ValueError):
    syn.wide_sigmas(0)


def test_gradnorm_layer_is_the_last_shared_kernel():
  args = study.parse_args(["--quick"])
  params = study.init_params(jax.random.key(0), 3, args)
  mask = study.last_layer_mask(params["trunk"])
  chosen = [m for m in jax.tree.leaves(mask) if m]
  assert len(chosen) == 1 and mask[-1]["w"] is True and mask[-1]["b"] is False
  assert study.predict(params, jnp.zeros((4, 250))).shape == (4, 3, 100)


def test_analysis_on_known_curves():
  # Two seeds, 11 evaluations, T = 2; weights that move to (1.9, 0.1) and stay there.
  w = np.ones((2, 11, 2))
  w[:, 1:] = [1.9, 0.1]
  losses = np.ones((2, 11, 2))
  losses[:, :, 1] = np.linspace(1.0, 0.5, 11)
  res = {(2, "gradnorm"): {"weights": w, "test_losses": losses},
         (2, "equal"): {"weights": np.ones_like(w), "test_losses": 2 * np.ones_like(losses)}}
  a = report.analyse(res, {2: np.array([1.0, 100.0])})
  g = a["2"]["gradnorm"]
  assert g["final_weight_small_sigma"] == pytest.approx(1.9)
  assert g["final_sum_ratio"] == pytest.approx(1.5)
  assert g["small_sigma_weight_cv_last_half"] == pytest.approx(0.0)
  v = report.verdicts(a)["2"]
  assert v["raises_small_sigma_weight"] and v["stable"] and v["beats_equal_on_sum_ratio"]


def test_quick_run_end_to_end(tmp_path):
  out = tmp_path / "run"
  summary = study.main(["--quick", "--out", str(out)])
  for name in ("summary.md", "summary.json", "curves.csv", "final.csv", "weights.png",
               "loss_ratio.png"):
    assert (out / name).stat().st_size > 0, name
  data = json.loads((out / "summary.json").read_text())
  assert set(data["analysis"]) == {"3"}
  assert set(data["analysis"]["3"]) == {"equal", "gradnorm", "uncertainty"}
  g = data["analysis"]["3"]["gradnorm"]
  assert {"final_sum_ratio", "final_weights", "final_weight_small_sigma",
          "min_weight_ever", "finite"} <= set(g)
  assert len(g["final_weights"]) == 3 and g["finite"]
  assert sum(g["final_weights"]) == pytest.approx(3.0, rel=1e-4)
  assert set(data["verdicts"]["3"]) >= {"raises_small_sigma_weight", "stable"}
  assert summary["steps"] == 200
  assert "GradNorm" in (out / "summary.md").read_text()
  with pytest.raises(FileExistsError):  # never overwrite an earlier run
    study.main(["--quick", "--out", str(out)])


def test_help_lists_the_options():
  text = subprocess.run([sys.executable, str(ROOT / "experiments" / "gradnorm_synthetic.py"),
                         "--help"], capture_output=True, text=True, check=True).stdout
  for opt in ("--steps", "--seeds", "--alpha", "--weight-lr", "--tasks", "--normal-param",
              "--quick", "--out", "default:"):
    assert opt in text, opt
