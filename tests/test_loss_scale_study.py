"""The loss-scale study: its analysis on known curves, and a quick end-to-end run."""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
study = importlib.import_module("loss_scale")
report = importlib.import_module("loss_scale_report")


def test_steps_to_target_interpolates_in_log_space():
  # loss = exp(-t/100) sampled every 10 steps reaches 0.3 at t = 100·ln(1/0.3) exactly.
  t = np.arange(0, 500, 10)
  s = report.steps_to_target(np.exp(-t / 100.0), 10, 0.3)
  assert s == pytest.approx(100 * math.log(1 / 0.3), rel=1e-9)
  assert math.isnan(report.steps_to_target(np.full(5, 1.0), 10, 0.3))
  assert report.steps_to_target(np.array([0.1, 0.05]), 10, 0.3) == 0.0


def test_slope_and_invariance_on_synthetic_steps():
  ws = np.logspace(-6, 1, 15)
  sgd_like = 200.0 / ws  # steps ∝ 1/w
  adam_like = np.where(ws >= 1e-4, 150.0, 150.0 * (1e-4 / ws) ** 0.5)
  steps = np.stack([sgd_like, adam_like])[:, :, None].repeat(3, axis=2)
  steps[0][steps[0] > 3000] = np.nan
  out = report.analyse(steps, ws, ["sgd", "adam"])
  assert out["sgd"]["slope"] == pytest.approx(-1.0, abs=1e-9)
  assert out["adam"]["spread"] == pytest.approx(1.0)
  assert out["adam"]["w_invariant_down_to"] == pytest.approx(1e-4)


def test_quick_run_end_to_end(tmp_path):
  out = tmp_path / "run"
  summary = study.main(["--quick", "--out", str(out)])
  sgd, adam = summary["optimizers"]["sgd"], summary["optimizers"]["adam"]
  assert -1.3 <= sgd["slope"] <= -0.7, sgd
  assert adam["spread"] <= 1.2, adam
  for name in ("summary.md", "summary.json", "results.csv", "curves.csv", "steps_vs_w.png",
               "loss_curves.png", "decay.png"):
    assert (out / name).stat().st_size > 0, name
  data = json.loads((out / "summary.json").read_text())
  assert set(data["optimizers"]) == {"sgd", "adam"}
  assert {"slope", "spread"} <= set(data["optimizers"]["sgd"])
  assert "slope" in (out / "summary.md").read_text()
  with pytest.raises(FileExistsError):  # never overwrite an earlier run
    study.main(["--quick", "--out", str(out)])


def test_help_lists_every_option():
  text = subprocess.run([sys.executable, str(ROOT / "experiments" / "loss_scale.py"), "--help"],
                        capture_output=True, text=True, check=True).stdout
  for opt in ("--w-min", "--num-w", "--seeds", "--steps", "--target", "--l2", "--quick",
              "--lr-sgd-momentum", "--out", "default:"):
    assert opt in text, opt
