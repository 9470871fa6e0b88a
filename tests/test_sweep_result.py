"""SweepResult exports: CSV, curves, JSON at the values' precision; xarray and pandas views."""

import csv
import itertools
import json
import sys
import warnings
from decimal import Decimal

import numpy as np
import pytest

from weightax.sweep_result import SweepResult

LR = np.array([0.01, 0.3], np.float32)
SEEDS = np.array([0, 1, 2])
T, K = 4, 2


def make(**extra_metrics):
  """A 2 (lr) x 3 (seed) result built by hand, its metrics known in closed form."""
  combos = np.array(list(itertools.product(range(2), range(3))))
  lr, seed = LR[combos[:, 0]], SEEDS[combos[:, 1]]
  step = np.arange(T, dtype=np.float32)
  task = np.arange(1, K + 1, dtype=np.float32)
  losses = (lr[:, None, None] * (step[None, :, None] + 1) * task + seed[:, None, None])
  metrics = {
      "final": (lr * 2 + seed).astype(np.float32),  # scalar per configuration
      "per_task": np.stack([lr, -lr], 1),  # [K]
      "task_losses": losses.astype(np.float32),  # [T, K]
      "eval": {"acc": np.tile(np.array([0.5, 0.75], np.float32), (6, 1))},  # [2] nested
      **extra_metrics,
  }
  return SweepResult(axes={"lr": LR, "seed": SEEDS}, coords={"lr": lr, "seed": seed},
                     metrics=metrics, shape=(2, 3))


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def test_floats_written_at_their_precision(tmp_path):
  x32 = np.float32(0.01)
  assert float(x32) != 0.01  # the float32 value is 0.009999999776482582
  vals32 = np.random.default_rng(0).standard_normal(6).astype(np.float32) * 1e-3
  res = make(f32=vals32, f64=np.full(6, 0.1 + 0.2))
  rows = _rows(res.to_csv(tmp_path / "r.csv"))
  header, first = rows[0], rows[1]
  assert first[header.index("lr")] == "0.01"
  assert first[header.index("f64")] == "0.30000000000000004"  # float64 keeps its digits
  for row, v in zip(rows[1:], vals32, strict=True):
    text = row[header.index("f32")]
    assert np.float32(float(text)) == v  # reads back to the same float32
    n = len(Decimal(text).as_tuple().digits)  # and no shorter decimal would:
    assert n <= 9 and np.float32(float(f"{float(text):.{n - 2}e}")) != v
  data = json.loads(res.to_json(tmp_path / "r.json").read_text())
  assert data["axes"]["lr"] == [0.01, 0.3]
  assert data["metrics"]["f64"][0] == 0.30000000000000004


def test_to_csv_writes_small_vectors_and_names_what_it_cannot(tmp_path):
  res = make()
  with pytest.warns(UserWarning, match=r"'task_losses' \(shape \(4, 2\)") as rec:
    path = res.to_csv(tmp_path / "r.csv", max_columns=4)
  assert path == tmp_path / "r.csv" and len(rec) == 1
  rows = _rows(path)
  # Metrics in the order of the pytree's leaves (sorted dict keys).
  assert rows[0] == ["lr", "seed", "eval/acc[0]", "eval/acc[1]", "final", "per_task[0]",
                     "per_task[1]"]
  assert len(rows) == 1 + 6
  assert rows[5] == ["0.3", "1", "0.5", "0.75", "1.6", "0.3", "-0.3"]
  with warnings.catch_warnings():  # a larger max_columns writes every metric, silently
    warnings.simplefilter("error")
    rows = _rows(res.to_csv(tmp_path / "all.csv", max_columns=8))
  assert "task_losses[3,1]" in rows[0]
  assert float(rows[2][rows[0].index("task_losses[3,1]")]) == pytest.approx(0.01 * 4 * 2 + 1)


def test_to_csv_writes_array_valued_axes(tmp_path):
  v = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  res = SweepResult(axes={"v": v, "seed": np.array([0])}, coords={"v": v, "seed": np.zeros(2, int)},
                    metrics={"s": v.sum(1)}, shape=(2, 1))
  rows = _rows(res.to_csv(tmp_path / "a.csv"))
  assert rows == [["v[0]", "v[1]", "seed", "s"], ["1.0", "2.0", "0", "3.0"],
                  ["3.0", "4.0", "0", "7.0"]]
  assert res.records()[1] == {"v": [3.0, 4.0], "seed": 0, "s": 7.0}
  df = res.to_pandas()
  assert list(df["v"]) == [0, 1]  # by position, as in to_xarray


def test_curves_to_csv_one_column_per_task(tmp_path):
  res = make()
  path = res.curves_to_csv(tmp_path / "c.csv", names=["task_losses"])
  rows = _rows(path)
  assert rows[0] == ["lr", "seed", "step", "task_losses[0]", "task_losses[1]"]
  assert len(rows) == 1 + 6 * T
  for r in rows[1:]:
    lr, seed, step = float(r[0]), int(r[1]), int(r[2])
    for k in range(K):
      expect = np.float32(lr) * (step + 1) * (k + 1) + seed
      assert float(r[3 + k]) == pytest.approx(expect, rel=1e-6)
  with pytest.raises(ValueError, match="different numbers of steps"):
    res.curves_to_csv(tmp_path / "x.csv")  # task_losses (4 steps) and per_task (2)
  with pytest.raises(KeyError, match="No curve"):
    res.curves_to_csv(tmp_path / "x.csv", names=["nope"])


def test_to_json_writes_a_file_and_returns_its_path(tmp_path):
  res = make(bad=np.array([np.nan, np.inf, 1.0, 2.0, 3.0, 4.0], np.float32))
  path = res.to_json(tmp_path / "r.json")
  assert path == tmp_path / "r.json"
  data = json.loads(path.read_text())
  assert data == res.to_dict()
  assert data["shape"] == [2, 3] and data["metrics"]["bad"][:3] == [None, None, 1.0]
  assert np.asarray(data["metrics"]["task_losses"]).shape == (6, T, K)


def test_to_xarray_dims_and_values():
  pytest.importorskip("xarray")
  res = make()
  ds = res.to_xarray()
  assert ds["task_losses"].dims == ("lr", "seed", "step", "task")
  assert ds["final"].dims == ("lr", "seed")
  assert ds["per_task"].dims == ("lr", "seed", "per_task_dim0")
  np.testing.assert_array_equal(ds["lr"].values, LR)
  np.testing.assert_array_equal(ds["step"].values, np.arange(T))
  # Selecting by value: lr=0.3, seed=2, step 3, task 1 = 0.3·4·2 + 2.
  got = ds["task_losses"].sel(lr=np.float32(0.3), seed=2, step=3, task=1).item()
  assert got == pytest.approx(0.3 * 4 * 2 + 2, rel=1e-6)
  np.testing.assert_allclose(ds["final"].mean("seed").values, LR * 2 + 1, rtol=1e-6)
  ds2 = res.to_xarray(dims={"per_task": ("task",)})
  assert ds2["per_task"].dims == ("lr", "seed", "task")
  with pytest.raises(ValueError, match="names 2 axes"):
    res.to_xarray(dims={"per_task": ("a", "b")})


def test_to_pandas_is_tidy():
  pytest.importorskip("pandas")
  res = make()
  table = res.to_pandas()
  assert list(table.columns) == ["lr", "seed", "final"] and len(table) == 6
  df = res.to_pandas("task_losses")
  assert list(df.columns) == ["lr", "seed", "step", "task", "task_losses"]
  assert len(df) == 6 * T * K
  row = df[(df.lr == np.float32(0.3)) & (df.seed == 1) & (df.step == 2) & (df.task == 0)]
  assert row["task_losses"].item() == pytest.approx(0.3 * 3 * 1 + 1, rel=1e-6)
  mean = df.groupby(["lr", "step", "task"])["task_losses"].mean()
  assert mean.loc[(np.float32(0.01), 0, 1)] == pytest.approx(0.01 * 1 * 2 + 1, rel=1e-6)


def test_missing_optional_dependency_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "xarray", None)
  with pytest.raises(ImportError, match=r"weightax\[frames\]"):
    make().to_xarray()


def test_metric_named_like_an_axis_is_refused(tmp_path):
  res = make(lr=np.zeros(6, np.float32))
  with pytest.raises(ValueError, match="twice"):
    res.to_csv(tmp_path / "r.csv")


def test_array_valued_axis_in_xarray():
  pytest.importorskip("xarray")
  v = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  res = SweepResult(axes={"v": v, "seed": np.array([0])}, coords={"v": v, "seed": np.zeros(2, int)},
                    metrics={"s": v.sum(1)}, shape=(2, 1))
  ds = res.to_xarray()
  np.testing.assert_array_equal(ds["v"].values, [0, 1])  # indexed by position
  np.testing.assert_array_equal(ds["v_value"].values, v)  # values kept beside
  np.testing.assert_array_equal(ds["s"].sel(v=1, seed=0).item(), 7.0)


def test_bfloat16_metrics_are_written_as_numbers(tmp_path):
  import ml_dtypes

  x = np.array([0.5, 0.25, 1.0, 2.0, 3.0, 0.125], ml_dtypes.bfloat16)
  res = make(bf=x)
  rows = _rows(res.to_csv(tmp_path / "r.csv"))
  col = rows[0].index("bf")
  assert [float(r[col]) for r in rows[1:]] == [0.5, 0.25, 1.0, 2.0, 3.0, 0.125]
  assert json.loads(res.to_json(tmp_path / "r.json").read_text())["metrics"]["bf"][0] == 0.5
