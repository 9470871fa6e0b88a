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


def test_to_pandas_of_a_scalar_metric_has_one_row_per_configuration():
  pytest.importorskip("pandas")
  df = make().to_pandas("final")
  assert list(df.columns) == ["lr", "seed", "final"] and len(df) == 6
  # Configurations in grid order (lr-major), final = 2·lr + seed.
  expect = [(float(lr), int(s), float(lr) * 2 + s) for lr in LR for s in SEEDS]
  got = list(zip(df["lr"], df["seed"], df["final"], strict=True))
  for (lr, s, f), (glr, gs, gf) in zip(expect, got, strict=True):
    assert (glr, gs) == (pytest.approx(lr), s) and gf == pytest.approx(f, rel=1e-6)
  with pytest.raises(ValueError, match="names 1 axes"):
    make().to_pandas("final", dims=("x",))


def test_curves_to_csv_writes_array_valued_axes(tmp_path):
  v = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  curve = np.array([[0.0, 3.0, 6.0], [0.0, 7.0, 14.0]], np.float32)  # (v[0] + v[1]) · step
  res = SweepResult(axes={"v": v, "seed": np.array([0])}, coords={"v": v, "seed": np.zeros(2, int)},
                    metrics={"curve": curve}, shape=(2, 1))
  rows = _rows(res.curves_to_csv(tmp_path / "c.csv"))
  assert rows == [["v[0]", "v[1]", "seed", "step", "curve"],
                  ["1.0", "2.0", "0", "0", "0.0"], ["1.0", "2.0", "0", "1", "3.0"],
                  ["1.0", "2.0", "0", "2", "6.0"], ["3.0", "4.0", "0", "0", "0.0"],
                  ["3.0", "4.0", "0", "1", "7.0"], ["3.0", "4.0", "0", "2", "14.0"]]
  with pytest.raises(ValueError, match=r"\['step'\] would appear twice"):
    make(step=np.zeros((6, T), np.float32)).curves_to_csv(tmp_path / "x.csv", names=["step"])


def test_to_xarray_calls_an_axis_task_only_at_the_number_of_tasks():
  pytest.importorskip("xarray")
  M = 3
  norms = np.arange(6 * T * M, dtype=np.float32).reshape(6, T, M)  # [T, M], M != K
  res = make(layer_norms=norms)
  ds = res.to_xarray()
  assert ds["task_losses"].dims == ("lr", "seed", "step", "task")
  assert ds["layer_norms"].dims == ("lr", "seed", "step", "layer_norms_dim1")
  assert ds.sizes["task"] == K and ds.sizes["layer_norms_dim1"] == M
  # lr=0.3, seed=2 is configuration 1·3 + 2 = 5; its step 3 holds 5·T·M + 3·M + m.
  got = ds["layer_norms"].sel(lr=np.float32(0.3), seed=2, step=3).values
  np.testing.assert_array_equal(got, 5 * T * M + 3 * M + np.arange(M))
  df = res.to_pandas("layer_norms")
  assert list(df.columns) == ["lr", "seed", "step", "layer_norms_dim1", "layer_norms"]
  # An axis that dims names "task" sets the number of tasks instead.
  ds = make(layer_norms=norms, per_layer=np.zeros((6, M), np.float32)).to_xarray(
      dims={"per_layer": ("task",)})
  assert ds["layer_norms"].dims[-1] == "task" and ds["task_losses"].dims[-1] == "task_losses_dim1"

  def second_dims(**metrics):
    r = SweepResult(axes={"seed": np.arange(2)}, coords={"seed": np.arange(2)},
                    metrics={k: np.zeros((2, T, n), np.float32) for k, n in metrics.items()},
                    shape=(2,))
    return {k: d[-1] for k, d in r._trailing_dims(None).items()}

  # Without task_losses / task_weights: the size most curves share; on a tie, the first curve's.
  assert second_dims(a=2, b=3, c=3) == {"a": "a_dim1", "b": "task", "c": "task"}
  assert second_dims(a=2, b=3) == {"a": "task", "b": "b_dim1"}
  # A leaf named task_weights (at any depth) decides over the majority.
  r = SweepResult(axes={"seed": np.arange(2)}, coords={"seed": np.arange(2)},
                  metrics={"a": np.zeros((2, T, 3)), "b": np.zeros((2, T, 3)),
                           "mtl": {"task_weights": np.zeros((2, T, 2))}}, shape=(2,))
  assert r.to_xarray()["mtl/task_weights"].dims == ("seed", "step", "task")
  assert r.to_xarray()["a"].dims == ("seed", "step", "a_dim1")


@pytest.mark.parametrize("metrics, name", [
    ({"train/loss": np.ones(6), "train": {"loss": np.zeros(6)}}, "train/loss"),
    ({"h": [np.ones(6), np.ones(6)], "h/1": np.zeros(6)}, "h/1"),
])
def test_metric_leaves_with_one_name_are_refused(tmp_path, metrics, name):
  res = make(**metrics)
  with pytest.raises(ValueError, match=f"both named '{name}'"):
    res.to_dict()
  with pytest.raises(ValueError, match=f"both named '{name}'"):
    res.to_csv(tmp_path / "r.csv")
