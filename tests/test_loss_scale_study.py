"""The loss-scale study: its analysis on known curves, and a quick end-to-end run."""

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

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
  assert out["adam"]["verdict"] == "invariant_down_to"
  # the spread's range label names the grid's w inside [1e-2, 10], not a typed-in range
  assert out["adam"]["spread_range"] == f"[{ws[ws >= 1e-2 - 1e-9].min():g}, 10]"


def _steps_with_slopes(ws, slopes):
  """steps[1, w, seed] = 100·w^slope_seed (exact per-seed slopes)."""
  return np.stack([100.0 * ws ** s for s in slopes], axis=-1)[None]


def test_sgd_verdict_needs_the_slope_interval():
  ws = np.logspace(0, 1, 4)
  # two seeds at -1 ± d: the interval is -1 ± t(0.975, 1)·d·√2/√2 = -1 ± 12.71·d
  t1 = stats.t.ppf(0.975, 1)
  e = report.analyse(_steps_with_slopes(ws, [-0.99, -1.01]), ws, ["sgd"])["sgd"]
  lo, hi = e["slope_ci"]
  assert lo == pytest.approx(-1 - t1 * 0.01, rel=1e-6) and hi == pytest.approx(-1 + t1 * 0.01)
  assert e["verdict"] == "proportional"  # 12.7·0.01 = 0.127 < 0.15
  e = report.analyse(_steps_with_slopes(ws, [-0.98, -1.02]), ws, ["sgd"])["sgd"]
  assert e["verdict"] == "slower"  # interval ±0.25: slower, but ∝ 1/w not confirmed
  assert "too wide" in e["verdict_text"]
  e = report.analyse(_steps_with_slopes(ws, [-0.5, 0.3]), ws, ["sgd"])["sgd"]
  assert e["verdict"] == "no_evidence"
  e = report.analyse(_steps_with_slopes(ws, [-0.5, -0.52, -0.48]), ws, ["sgd"])["sgd"]
  assert e["verdict"] == "slower" and "not proportionally" in e["verdict_text"]
  # one seed: no interval, no claim
  e = report.analyse(_steps_with_slopes(ws, [-1.0]), ws, ["sgd"])["sgd"]
  assert e["verdict"] == "no_evidence"


def test_adaptive_verdict_follows_the_spread_on_the_grid_run():
  # The quick grid: w in [1, 10] and flat steps. It used to print "NOT invariant" next to
  # a spread of 1.00x because it only accepted invariance down to some w < 1.
  ws = np.logspace(0, 1, 4)
  flat = np.full((1, 4, 2), 120.0)
  e = report.analyse(flat, ws, ["adam"])["adam"]
  assert e["spread"] == pytest.approx(1.0) and e["verdict"] == "invariant"
  assert e["spread_range"] == "[1, 10]" and "[1, 10]" in e["verdict_text"]
  text = report.answer_text({"optimizers": {"adam": e}})
  assert "NOT" not in text and "[1e-2, 10]" not in text and "[1, 10]" in text
  # steps that double across the reference range are not invariant, and say so
  e = report.analyse(120.0 * np.stack([ws ** -0.5] * 2, -1)[None], ws, ["adam"])["adam"]
  assert e["verdict"] == "not_invariant" and "NOT" in e["verdict_text"]
  # the reference is the largest w when the grid has no w >= 1
  small = np.logspace(-3, -1, 3)
  e = report.analyse(np.full((1, 3, 2), 50.0), small, ["adam"])["adam"]
  assert e["reference_range"] == "[0.1, 0.1]" and e["verdict"] == "invariant"
  assert e["spread_range"] == "[0.01, 0.1]"


def test_quick_run_end_to_end(tmp_path):
  out = tmp_path / "run"
  summary = study.main(["--quick", "--out", str(out)])
  sgd, adam = summary["optimizers"]["sgd"], summary["optimizers"]["adam"]
  assert -1.3 <= sgd["slope"] <= -0.7, sgd
  assert adam["spread"] <= 1.2, adam
  # what the answer claims follows the numbers: SGD is slower with a slope interval below 0
  # and Adam is invariant over the quick grid
  assert sgd["verdict"] in ("proportional", "slower") and sgd["slope_ci"][1] < 0, sgd
  assert adam["verdict"] == "invariant", adam
  answer = report.answer_text(summary)
  assert "NOT invariant" not in answer and "[1e-2, 10]" not in answer
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
              "--lr-sgd-momentum", "--out", "--memory-budget-mb", "default:"):
    assert opt in text, opt


@pytest.mark.parametrize("argv", [["--chunk-size", "4", "--memory-budget-mb", "64"],
                                  ["--memory-budget-mb", "0"], ["--memory-budget-mb", "nan"]])
def test_chunk_sizing_options_are_refused_before_any_output(tmp_path, argv):
  with pytest.raises(SystemExit, match="memory-budget-mb"):
    study.main(["--quick", "--out", str(tmp_path / "run"), *argv])
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_default_run_meets_the_published_bars(tmp_path):
  """The default study (about a minute alone on two cores): issue 2's bars and verdicts."""
  summary = study.main(["--out", str(tmp_path / "run")])
  sgd, adam = summary["optimizers"]["sgd"], summary["optimizers"]["adam"]
  assert -1.15 <= sgd["slope"] <= -0.85, sgd
  assert sgd["verdict"] in ("proportional", "slower") and sgd["slope_ci"][1] < 0, sgd
  assert adam["spread"] <= 1.2, adam
  assert adam["verdict"] in ("invariant", "invariant_down_to"), adam
  assert adam["spread_range"] == "[0.01, 10]"


def test_verdict_boundaries_of_the_slope_band_and_the_invariance_tolerance():
  ws = np.logspace(0, 1, 4)
  t1 = stats.t.ppf(0.975, 1)  # two seeds: half-width = t(0.975, 1)·d for slopes -1 ± d
  for half, want in ((0.149, "proportional"), (0.151, "slower")):
    d = half / t1
    e = report.analyse(_steps_with_slopes(ws, [-1 - d, -1 + d]), ws, ["sgd"])["sgd"]
    assert e["verdict"] == want, (half, e["slope_ci"])
  # Adam: the smallest w needs 1.24x / 1.26x the steps of the reference range [1, 10]
  ws = np.logspace(-1, 1, 5)  # 0.1, 0.316, 1, 3.16, 10
  for ratio, want in ((1.24, 0.1), (1.26, ws[1])):
    steps = np.full((1, 5, 2), 100.0)
    steps[0, 0] = 100.0 * ratio
    e = report.analyse(steps, ws, ["adam"])["adam"]
    assert e["w_invariant_down_to"] == pytest.approx(want), ratio
