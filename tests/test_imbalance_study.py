"""The long-tailed study: its recall helpers on a hand-computed example, and quick runs."""

import csv
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
study = importlib.import_module("imbalance")
report = importlib.import_module("imbalance_report")

def _ci(x):
  """Independent 95% t-interval of the mean of x (scipy)."""
  x = np.asarray(x, float)
  return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(len(x)))


FILES = ("summary.md", "summary.json", "results.csv", "bal_acc_vs_hparam.png", "head_tail.png",
         "curves.png")


def test_per_class_recall_on_a_hand_computed_confusion():
  # Confusion (rows true, columns predicted):
  #   class 0: 2 of 3 right (one predicted 1)   -> 2/3
  #   class 1: 2 of 2 right                     -> 1
  #   class 2: 2 of 4 right (one 0, one 3)      -> 1/2
  #   class 3: 1 of 1 right                     -> 1
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
  preds = np.array([0, 1, 0, 1, 1, 2, 0, 2, 3, 3])
  recall = np.asarray(study.per_class_recall(labels, preds, 4))
  np.testing.assert_allclose(recall, [2 / 3, 1.0, 0.5, 1.0], rtol=1e-6)
  counts = np.array([10, 5, 3, 1])  # class 0 is the head, class 3 the tail
  head, tail = report.head_tail_classes(counts, 1)
  assert (head, tail) == ([0], [3])
  s = report.recall_summary(recall, head, tail)
  assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0.5 + 1) / 4, rel=1e-6)
  assert s["head_recall"] == pytest.approx(2 / 3, rel=1e-6)
  assert s["tail_recall"] == pytest.approx(1.0)
  # plain accuracy (7/10) differs: balanced accuracy weighs every class equally
  assert s["balanced_accuracy"] != pytest.approx(np.mean(labels == preds))
  # an absent class has no recall, and must not count as perfect or zero
  assert math.isnan(float(study.per_class_recall(labels, preds, 5)[4]))


def test_head_tail_ties_break_by_class_index():
  assert report.head_tail_classes(np.array([5, 9, 9, 1, 1, 1]), 2) == ([1, 2], [4, 5])


def test_verdict_needs_the_interval_to_exclude_zero():
  assert report.verdict({"mean": 0.05, "std": 0.01, "n": 5}) == "better"
  assert report.verdict({"mean": -0.05, "std": 0.01, "n": 5}) == "worse"
  assert report.verdict({"mean": 0.01, "std": 0.02, "n": 5}) == "tie"
  # at the boundary: the t-quantile with n - 1 degrees of freedom and the 1/√n
  half = stats.t.ppf(0.975, 4) * 0.02 / math.sqrt(5)
  assert report.verdict({"mean": 1.01 * half, "std": 0.02, "n": 5}) == "better"
  assert report.verdict({"mean": 0.99 * half, "std": 0.02, "n": 5}) == "tie"
  assert report.verdict({"mean": 0.05, "std": 0.01, "n": 1}) == "tie"


def test_ldam_drw_is_the_weighted_mean_of_the_reference_code():
  # F.cross_entropy(z, y, weight=w) with mean reduction: Σ_i w_{y_i} CE_i / Σ_i w_{y_i}.
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 10)).astype(np.float32)
  y = np.array([0, 0, 0, 9, 5, 9])
  n = np.array([500, 300, 200, 120, 80, 50, 30, 20, 10, 5], np.float32)
  beta = 0.9999
  w = (1 - beta) / (1 - beta ** n.astype(np.float64))
  w = w / w.sum() * 10  # class-balanced weights, normalised to sum C
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -logp[np.arange(6), y]
  want = float((w[y] * ce).sum() / w[y].sum())
  assert want != pytest.approx(float((w[y] * ce).mean()), rel=0.05)  # not a plain mean
  args = study.parse_args(["--quick", "--drw-beta", str(beta)])
  ldam = study.loss_branches(args)[list(study.LOSSES).index("ldam")]
  hp = {"drw": np.float32(1), "max_margin": np.float32(0.0)}
  # scale 1 and margin 0 make LDAM plain CE; DRW is on from step drw_start·steps
  args.ldam_scale = 1.0
  ldam = study.loss_branches(args)[list(study.LOSSES).index("ldam")]
  t_on = int(args.drw_start * args.steps)
  got, _ = ldam(hp, z, y, None, t_on, n)
  assert float(got) == pytest.approx(want, rel=1e-5)
  got_off, _ = ldam(hp, z, y, None, t_on - 1, n)  # before DRW: the plain mean
  assert float(got_off) == pytest.approx(float(ce.mean()), rel=1e-5)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("imbalance") / "run"
  return out, study.main(["--quick", "--out", str(out)])


def test_quick_run_end_to_end(quick_run):
  out, summary = quick_run
  for name in FILES:
    assert (out / name).stat().st_size > 0, name
  data = json.loads((out / "summary.json").read_text())
  assert set(data["ratios"]) == {"10", "100"}
  for r in data["ratios"].values():
    assert set(r["losses"]) == set(study.LOSSES)
    assert len(r["head_classes"]) == len(r["tail_classes"]) == 3
    for name, e in r["losses"].items():
      assert e["best"] in e["settings"]
      for row in e["settings"]:
        for m in ("test_balanced_accuracy", "head_recall", "tail_recall",
                  "val_balanced_accuracy"):
          assert 0.0 <= row[m]["mean"] <= 1.0, (name, m, row[m])
          assert all(0.0 <= v <= 1.0 for v in row[m]["per_seed"]), (name, m)
        assert row["verdict"] in (("baseline",) if name == "ce" else ("better", "tie", "worse"))
        assert row["tail_verdict"] in (("baseline",) if name == "ce" else
                                       ("better", "tie", "worse"))
        # the verdicts follow the per-seed numbers in the same row
        if name != "ce":
          want = "tie"
          lo, hi = _ci(row["diff_vs_ce"]["per_seed"])
          want = "better" if lo > 0 else "worse" if hi < 0 else "tie"
          assert row["verdict"] == want, (name, row["diff_vs_ce"])
  # the quick grids keep two values per hyperparameter (LDAM: × DRW on/off)
  assert len(data["ratios"]["10"]["losses"]["focal"]["settings"]) == 2
  assert len(data["ratios"]["10"]["losses"]["ldam"]["settings"]) == 4
  rows = list(csv.DictReader((out / "results.csv").open()))
  assert len(rows) == 2 * (1 + 2 * 5 + 4) * 2  # ratios × settings × seeds
  assert all(0.0 <= float(r["test_balanced_accuracy"]) <= 1.0 for r in rows)
  md = (out / "summary.md").read_text()
  assert "ρ = 100" in md and "balanced acc" in md
  with pytest.raises(FileExistsError):  # never overwrite an earlier run
    study.main(["--quick", "--out", str(out)])


def test_quick_runs_are_reproducible(quick_run, tmp_path):
  out, summary = quick_run
  again = study.main(["--quick", "--out", str(tmp_path / "again")])
  assert (out / "results.csv").read_text() == (tmp_path / "again" / "results.csv").read_text()
  assert summary["ratios"] == again["ratios"]


def test_help_lists_every_option():
  text = subprocess.run([sys.executable, str(ROOT / "experiments" / "imbalance.py"), "--help"],
                        capture_output=True, text=True, check=True).stdout
  for opt in ("--out", "--ratios", "--losses", "--seeds", "--steps", "--eval-every", "--lr",
              "--focal-gammas", "--softmax-focal-gammas", "--cb-betas", "--ldam-margins",
              "--la-taus", "--ghm-momenta", "--ghm-bins", "--drw-start", "--val-per-class",
              "--quick", "default:"):
    assert opt in text, opt


@pytest.mark.slow
def test_default_run_tail_recall_claims(tmp_path):
  """The default study (~4 min on two cores): which losses beat CE on tail recall at ρ=100.

  Measured: logit adjustment and LDAM-DRW raise the tail classes' recall over CE with the
  interval of the paired difference above 0 (class-balanced CE too, at the boundary, so
  it is not asserted); sigmoid focal and GHM-C do not.
  """
  summary = study.main(["--out", str(tmp_path / "run")])
  r = summary["ratios"]["100"]["losses"]
  for name in ("la", "ldam"):
    b = r[name]["best"]
    assert b["tail_verdict"] == "better", (name, b["tail_diff_vs_ce"])
    assert _ci(b["tail_diff_vs_ce"]["per_seed"])[0] > 0
  for name in ("focal", "ghm"):
    assert r[name]["best"]["tail_verdict"] != "better", name
  assert r["la"]["best"]["verdict"] == "better"  # also on balanced accuracy


# ------------------------------------------------------------------ options and run directories

BAD_OPTIONS = [  # (argv, the option the error must name)
    (["--eval-every", "0"], "--eval-every"),
    (["--steps", "-50"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--steps", "120"], "--steps"),  # not a multiple of --eval-every 50
    (["--seeds", "0"], "--seeds"),
    (["--seeds", "1"], "--seeds"),
    (["--batch-size", "0"], "--batch-size"),
    (["--hidden", "0"], "--hidden"),
    (["--data-seed", "-1"], "--data-seed"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--ghm-bins", "0"], "--ghm-bins"),
    (["--head-tail-k", "0"], "--head-tail-k"),
    (["--head-tail-k", "6"], "--head-tail-k"),  # head and tail would overlap
    (["--test-per-class", "174"], "--test-per-class"),  # digits' smallest class has 174
    (["--val-per-class", "0"], "--val-per-class"),
    (["--val-per-class", "50"], "--val-per-class"),
    (["--ratios", "0.5"], "--ratios"),
    (["--ratios", "nan"], "--ratios"),
    (["--ratios", "10,10"], "--ratios"),
    (["--losses", "ce,ce"], "--losses"),
    (["--focal-gammas", "abc"], "--focal-gammas"),
    (["--focal-gammas", "-1"], "--focal-gammas"),
    (["--focal-gammas", "1,1"], "--focal-gammas"),
    (["--softmax-focal-gammas", "inf"], "--softmax-focal-gammas"),
    (["--cb-betas", "1.5"], "--cb-betas"),
    (["--cb-betas", "0.99999999"], "--cb-betas"),  # 1.0 as the 32-bit float it is traced as
    (["--ldam-margins", "-0.5"], "--ldam-margins"),
    (["--la-taus", "nan"], "--la-taus"),
    (["--ghm-momenta", "1"], "--ghm-momenta"),
    (["--lr", "0"], "--lr"),
    (["--lr", "1e-50"], "--lr"),  # 0 as a 32-bit float
    (["--focal-alpha", "1.5"], "--focal-alpha"),
    (["--ldam-scale", "0"], "--ldam-scale"),
    (["--drw-start", "1.5"], "--drw-start"),
    (["--drw-beta", "1"], "--drw-beta"),
]


@pytest.mark.parametrize("argv,option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_are_argparse_errors(argv, option, capsys):
  with pytest.raises(SystemExit) as e:
    study.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "error:" in err and option in err, err


def test_the_ends_of_every_range_are_accepted():
  args = study.parse_args(["--seeds", "2", "--steps", "1", "--eval-every", "1", "--head-tail-k",
                           "5", "--test-per-class", "173", "--val-per-class", "172",
                           "--ratios", "1", "--cb-betas", "0", "--ghm-momenta", "0",
                           "--focal-gammas", "0", "--la-taus", "-1", "--drw-start", "1",
                           "--focal-alpha", "0", "--chunk-size", "1", "--data-seed", "0"])
  assert args.ratios == [1.0] and args.hparams["cb"] == [0.0] and args.head_tail_k == 5


@pytest.mark.parametrize("argv", [
    ["--losses", "ce", "--ratios", "10", "--steps", "50", "--seeds", "0"],
    ["--losses", "ce", "--ratios", "10", "--steps", "-50"],
    ["--losses", "ce", "--ratios", "10", "--steps", "50", "--cb-betas", "1.5"],
])
def test_a_refused_run_creates_no_run_directory(argv, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the default output is runs/imbalance/<time> under the cwd
  with pytest.raises(SystemExit):
    study.main(argv)
  assert not (tmp_path / "runs").exists()
  with pytest.raises(SystemExit):
    study.main([*argv, "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()


def test_an_interrupted_run_leaves_no_empty_directory(tmp_path, monkeypatch):
  def interrupted(*_):
    raise KeyboardInterrupt

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(study, "run_all", interrupted)
  with pytest.raises(KeyboardInterrupt):
    study.main(["--quick", "--losses", "ce"])
  assert list((tmp_path / "runs" / "imbalance").iterdir()) == []
  kept = tmp_path / "mine"
  kept.mkdir()  # an empty --out the user made stays
  with pytest.raises(KeyboardInterrupt):
    study.main(["--quick", "--losses", "ce", "--out", str(kept)])
  assert kept.is_dir()


def test_quick_keeps_the_options_given_explicitly():
  # --quick: 2 seeds, 100 steps, evaluations every 50, the 2nd and 3rd default value of
  # each hyperparameter (focal γ 0.5,1,2,5 -> 1,2; cb β 0.9,0.99,0.999,0.9999 -> 0.99,0.999)
  a = study.parse_args(["--quick"])
  assert (a.seeds, a.steps, a.eval_every) == (2, 100, 50)
  assert a.hparams["focal"] == [1.0, 2.0] and a.hparams["cb"] == [0.99, 0.999]
  a = study.parse_args(["--quick", "--seeds", "4", "--steps", "200", "--focal-gammas", "3"])
  assert (a.seeds, a.steps, a.eval_every) == (4, 200, 50)
  assert a.hparams["focal"] == [3.0] and a.hparams["cb"] == [0.99, 0.999]
  a = study.parse_args(["--quick", "--eval-every", "25", "--ratios", "5"])
  assert (a.steps, a.eval_every, a.ratios) == (100, 25, [5.0])
  # without --quick, nothing changes
  a = study.parse_args(["--focal-gammas", "3"])
  assert (a.seeds, a.steps, a.eval_every, a.hparams["focal"]) == (5, 1000, 50, [3.0])
  assert a.hparams["cb"] == [0.9, 0.99, 0.999, 0.9999]


def test_head_and_tail_classes_for_every_k():
  rng = np.random.default_rng(1)
  counts = rng.integers(1, 6, 10)  # many ties
  # independently: classes by decreasing count, ties by increasing index
  ranked = sorted(range(10), key=lambda c: (-counts[c], c))
  for k in range(11):
    head, tail = report.head_tail_classes(counts, k)
    assert head == sorted(ranked[:k]) and tail == sorted(ranked[10 - k:]), k
    assert len(head) == len(tail) == k
    if k <= 5:
      assert not set(head) & set(tail)
  assert report.head_tail_classes(counts, 0) == ([], [])  # not every class as the tail
  for k in (-1, 11):
    with pytest.raises(ValueError):
      report.head_tail_classes(counts, k)


def _fake_arrays():
  """What ``plot_hparams`` reads, for two ratios: CE, focal (one low point) and LDAM ± DRW."""
  rng = np.random.default_rng(0)

  def loss(hp, means, best):
    acc = np.array(means)[:, None] + 0.01 * rng.standard_normal((len(means), 3))
    return {"hparams": hp, "balanced_accuracy": acc, "best": best}

  one = lambda: {
      "ce": loss([{}], [0.89], 0),
      "focal": loss([{"gamma": 1.0}, {"gamma": 2.0}], [0.70, 0.79], 1),
      "ldam": loss([{"max_margin": m, "drw": d} for m in (0.25, 0.5) for d in (0.0, 1.0)],
                   [0.90, 0.92, 0.89, 0.92], 1),
  }
  return {"10": one(), "100": one()}


def test_the_hparam_legend_covers_no_data(tmp_path, monkeypatch):
  import matplotlib.figure

  plots = importlib.import_module("imbalance_plots")
  saved = []
  real = matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                      lambda fig, path, **kw: (saved.append(fig), real(fig, path, **kw)))
  plots.plot_hparams(tmp_path / "h.png", _fake_arrays())
  fig = saved[0]
  fig.canvas.draw()
  legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
  assert legends
  boxes = [leg.get_window_extent() for leg in legends]
  for ax in fig.axes:
    if not ax.has_data():
      continue
    for box in boxes:  # outside every panel, so it can cover no point nor whisker
      assert not box.overlaps(ax.get_window_extent()), ax.get_title()
    for line in ax.lines:
      for x, y in ax.transData.transform(line.get_xydata()):
        assert not any(box.contains(x, y) for box in boxes), (ax.get_title(), x, y)
