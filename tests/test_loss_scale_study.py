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


@pytest.mark.parametrize("argv, option", [
    (["--chunk-size", "4", "--memory-budget-mb", "64"], "--memory-budget-mb"),
    (["--memory-budget-mb", "0"], "--memory-budget-mb"),
    (["--memory-budget-mb", "nan"], "--memory-budget-mb"),
    (["--eval-every", "0"], "--eval-every"),  # was a ZeroDivisionError
    (["--steps", "-10"], "--steps"),  # was a ValueError from inside the jit trace
    (["--steps", "0"], "--steps"),
    (["--steps", "15"], "--eval-every"),  # not a multiple of --eval-every 10
    (["--seeds", "0"], "--seeds"),  # was a traceback from wx.sweep
    (["--hidden", "0"], "--hidden"),  # was a ZeroDivisionError inside jit
    (["--batch-size", "0"], "--batch-size"),
    (["--chunk-size", "-1"], "--chunk-size"),
    (["--num-w", "1"], "--num-w"),
    (["--w-max", "inf"], "--w-max"),
    (["--target", "0"], "--target"),
    (["--lr-sgd", "0"], "--lr-sgd"),
    (["--optimizers", "sgd,sgd"], "--optimizers"),
])
def test_bad_options_are_refused_at_parse_time_before_any_output(tmp_path, monkeypatch, capsys,
                                                                  argv, option):
  """An argparse error (exit status 2) naming the option, and no run directory left behind:
  neither the --out given nor runs/loss_scale/<time>/ (the default, relative to the cwd)."""
  base = ["--num-w", "2", "--seeds", "1", "--optimizers", "sgd", "--steps", "100"]
  with pytest.raises(SystemExit) as ex:
    study.main([*base, "--out", str(tmp_path / "run"), *argv])
  assert ex.value.code == 2 and option in capsys.readouterr().err
  assert not (tmp_path / "run").exists()
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as ex:
    study.main([*base, *argv])
  assert ex.value.code == 2
  assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_before_writing_leaves_no_empty_directory(tmp_path, monkeypatch):
  def broken_sweep(*_args, **_kwargs):
    raise RuntimeError("the sweep failed")

  monkeypatch.setattr(study.wx, "sweep", broken_sweep)
  monkeypatch.chdir(tmp_path)
  for argv in (["--out", str(tmp_path / "run")], []):
    with pytest.raises(RuntimeError, match="sweep failed"):
      study.main(["--num-w", "2", "--seeds", "1", "--optimizers", "sgd", "--steps", "100", *argv])
  assert not (tmp_path / "run").exists()
  assert not list((tmp_path / "runs" / "loss_scale").iterdir())
  # an empty --out the user made beforehand is theirs: it stays
  (tmp_path / "mine").mkdir()
  with pytest.raises(RuntimeError):
    study.main(["--num-w", "2", "--optimizers", "sgd", "--out", str(tmp_path / "mine")])
  assert (tmp_path / "mine").is_dir()


def test_quick_keeps_the_options_given_on_the_command_line():
  args = study.parse_args(["--quick", "--seeds", "5", "--optimizers", "adamw", "--steps", "200"])
  assert (args.seeds, args.optimizers, args.steps) == (5, ["adamw"], 200)
  assert (args.w_min, args.w_max, args.num_w) == (1.0, 10.0, 4)  # not given: quick values
  assert "--seeds 5" in args.command
  args = study.parse_args(["--quick"])
  assert (args.seeds, args.optimizers, args.steps, args.num_w) == (2, ["sgd", "adam"], 1000, 4)
  args = study.parse_args(["--seeds", "5"])  # no --quick: the defaults
  assert (args.seeds, args.steps, args.num_w, len(args.optimizers)) == (5, 3000, 15, 7)


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


# --- verdicts when few w reach the target, and the report/plots of such runs -------------------

W6 = np.logspace(-6, 1, 6)  # 1e-6, 2.5e-5, 6.3e-4, 0.0158, 0.398, 10: the audit's wide grid


def test_no_slope_claim_when_fewer_than_two_w_reach_the_target():
  # only w = 10 reaches the target: smaller w are slower than the budget, not "no dependence"
  steps = np.full((1, 6, 3), np.nan)
  steps[0, -1] = [88.0, 90.0, 92.0]
  e = report.analyse(steps, W6, ["sgd"], budget=1000)["sgd"]
  assert math.isnan(e["slope_ci"][0])  # the situation of the audit: no interval
  assert e["verdict"] == "too_few_reached", e
  assert "no significant" not in e["verdict_text"]
  # the w that miss the target are named: every w up to 10^-0.4 = 0.398, within 1000 steps
  assert "w = 10" in e["verdict_text"] and "w <= 0.398" in e["verdict_text"]
  assert "5 of 6 w" in e["verdict_text"] and "within 1000 steps" in e["verdict_text"]
  # no w at all
  e = report.analyse(np.full((1, 6, 3), np.nan), W6, ["sgd"], budget=100)["sgd"]
  assert e["verdict"] == "unreached" and "within 100 steps" in e["verdict_text"]
  # one seed missing at w = 0.398 is enough for that w not to count as reached (median)
  steps[0, -2] = [300.0, np.nan, 310.0]
  e = report.analyse(steps, W6, ["sgd"], budget=1000)["sgd"]
  assert e["verdict"] == "too_few_reached" and e["w_reached"] == [10.0]
  # with 2+ w reached but a seed interval that straddles 0, "no dependence" is only claimed
  # among the w that reach the target, and the others are named
  steps = _steps_with_slopes(W6, [-0.5, 0.3])
  steps[0, :3] = np.nan
  e = report.analyse(steps, W6, ["sgd"], budget=1000)["sgd"]
  assert e["verdict"] == "no_evidence"
  assert "among the w that reach the target" in e["verdict_text"]
  assert "w <= 0.000631 (3 of 6 w)" in e["verdict_text"]
  assert set(report.VERDICTS) >= {"too_few_reached", "unreached", "no_evidence"}


def test_invariance_at_the_reference_w_alone_is_not_invariance():
  # Adagrad in the audit: reference w = 10 (the only w >= 1); w = 0.398 needs 200/35 = 5.71x
  steps = np.full((1, 6, 2), np.nan)
  steps[0, -1], steps[0, -2] = 35.0, 200.0
  e = report.analyse(steps, W6, ["adagrad"], budget=1000)["adagrad"]
  assert e["w_invariant_down_to"] == pytest.approx(10.0)
  assert e["verdict"] == "not_invariant", e
  assert "NOT invariant" in e["verdict_text"] and f"{200 / 35:.2f}x" in e["verdict_text"]
  # the same with a reference range of several w: flat over [1, 10], 2x at the next w below
  ws = np.logspace(-1, 1, 5)  # 0.1, 0.316, 1, 3.16, 10
  steps = np.full((1, 5, 2), 100.0)
  steps[0, :2] = 200.0
  e = report.analyse(steps, ws, ["adam"], budget=1000)["adam"]
  assert e["w_invariant_down_to"] == pytest.approx(1.0)
  assert e["verdict"] == "not_invariant" and "2.00x" in e["verdict_text"]
  # and the next w below failing to reach the target is named as such
  steps[0, :2] = np.nan
  e = report.analyse(steps, ws, ["adam"], budget=1000)["adam"]
  assert e["verdict"] == "not_invariant"
  assert "w = 0.316 does not reach the target within 1000 steps" in e["verdict_text"]
  # invariance that reaches below the reference range still counts (down to 0.316)
  steps[0, 1], steps[0, 0] = 110.0, 300.0
  e = report.analyse(steps, ws, ["adam"], budget=1000)["adam"]
  assert e["verdict"] == "invariant_down_to" and "w = 0.1 needs 3.00x" in e["verdict_text"]


def _fake_run(tmp_path, names, rates, argv=(), monkeypatch=None):
  """``report.write_all`` on a sweep of closed-form curves (no training): the training CE of
  optimizer o at loss weight w is ``2.3·exp(-rates[o]·w·t)``, so it reaches 0.3 at
  ``t = ln(2.3/0.3)/(rates[o]·w)`` and never with a rate of 0. Returns (out, summary, titles)
  where titles maps each saved PNG to its axes' titles."""
  import jax.numpy as jnp
  import matplotlib.figure

  import weightax as wx

  out = tmp_path / "run"
  args = study.parse_args(["--optimizers", ",".join(names), "--num-w", "4", "--w-min", "1",
                           "--w-max", "10", "--seeds", "2", "--steps", "100", "--out", str(out),
                           *argv])
  ws = np.logspace(0, 1, 4)
  t = jnp.arange(args.steps // args.eval_every + 1) * args.eval_every

  def train(hp, _key):
    k = jnp.asarray(rates, jnp.float32)[hp["opt"]]
    return {"curve": 2.3 * jnp.exp(-k * hp["w"] * t), "param_norm": 10.0 + hp["w"] + 0 * t}

  res = wx.sweep(train, {"opt": list(range(len(names))), "w": ws.tolist()}, seeds=2,
                 progress=False)
  titles = {}
  if monkeypatch is not None:
    save = matplotlib.figure.Figure.savefig

    def record(fig, path, *a, **k):
      titles[Path(path).name] = [ax.get_title() for ax in fig.axes]
      ylims = [ax.get_ylim() for ax in fig.axes if ax.get_yscale() == "log"]
      assert all(lo > 0 for lo, _ in ylims), (path, ylims)
      lines = {ln.get_label(): ln.get_xdata() for ax in fig.axes for ln in ax.get_lines()}
      titles[Path(path).name + ":lines"] = lines
      return save(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
  out.mkdir(parents=True)
  summary = report.write_all(out, res, args, ws, 0.0)
  return out, summary, titles


def test_a_run_where_nothing_reaches_the_target_writes_its_report_and_plots(tmp_path,
                                                                           monkeypatch):
  # used to end in matplotlib's "Data cannot be log-scaled" with no summary.md
  out, summary, titles = _fake_run(tmp_path, ["sgd", "adam"], [0.0, 0.0],
                                   monkeypatch=monkeypatch)
  for name in ("summary.md", "summary.json", "steps_vs_w.png", "loss_curves.png", "decay.png"):
    assert (out / name).stat().st_size > 0, name
  data = json.loads((out / "summary.json").read_text())
  md = (out / "summary.md").read_text()
  answer = report.answer_text(summary)
  for name, want in (("sgd", "unreached"), ("adam", "unreached")):
    assert summary["optimizers"][name]["verdict"] == want
    assert data["optimizers"][name]["verdict"] == want
    assert f"| {name} |" in md and md.split(f"| {name} |")[1].split("\n")[0].rstrip().endswith(
        f"| {want} |")
    assert summary["optimizers"][name]["verdict_text"] in answer
  assert answer in md and "within 100 steps" in answer
  assert "no significant" not in md and "invariant" not in answer.lower()


def test_the_report_is_written_before_the_plots(tmp_path, monkeypatch):
  import loss_scale_plots

  def broken(*_a, **_k):
    raise RuntimeError("plotting failed")

  monkeypatch.setattr(loss_scale_plots, "plot_all", broken)
  with pytest.raises(RuntimeError, match="plotting failed"):
    _fake_run(tmp_path, ["sgd"], [0.01])
  assert "## Answer" in (tmp_path / "run" / "summary.md").read_text()


def test_decay_section_and_title_only_when_a_decay_variant_ran(tmp_path, monkeypatch):
  out, summary, titles = _fake_run(tmp_path / "a", ["sgd", "adam"], [0.05, 0.1],
                                   monkeypatch=monkeypatch)
  md = (out / "summary.md").read_text()
  assert "Coupled L2" not in md and "AdamW applies" not in md and "sgd+l2` minimises" not in md
  assert "No decay variant ran" in md
  norm_title = titles["decay.png"][1]
  assert "no decay variant ran" in norm_title and "shrinks" not in norm_title
  # the theory paragraph names only adaptive optimizers that ran
  assert "RMSProp" not in md and "Adagrad" not in md and "Adam divides" in md
  # the quick grid's w are written as in the table, not as "1e+00"
  assert "4 values of w from 1 to 10" in md and "e+00" not in md and "4/4 (1…10)" in md
  # the slope -1 guide stays inside the grid's w (it was drawn 2.5 decades below w = 10)
  guide = titles["steps_vs_w.png:lines"]["slope -1 (steps ∝ 1/w)"]
  assert min(guide) >= 1.0 - 1e-9 and max(guide) <= 10.0 + 1e-9

  out, summary, titles = _fake_run(tmp_path / "b", ["sgd", "sgd+l2"], [0.01, 0.01],
                                   monkeypatch=monkeypatch)
  md = (out / "summary.md").read_text()
  assert "## Coupled L2 (in the loss, SGD) vs decoupled decay (AdamW)" in md
  assert "sgd+l2` minimises" in md and "`adamw` did not run" in md
  assert "AdamW applies" not in md
  norm_title = titles["decay.png"][1]
  assert "sgd+l2 (coupled L2)" in norm_title and "adamw" not in norm_title
