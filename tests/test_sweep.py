"""sweep: equals one-by-one runs, compiles once, chunks, exports, rejects bad grids."""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

X = jax.random.normal(jax.random.key(0), (64, 5))
Y = X @ jnp.arange(1.0, 6.0) + 0.1 * jax.random.normal(jax.random.key(1), (64,))
TRACES = []
# `wx.sweep` is the function; the module keeps the compile counter.
sweep_mod = importlib.import_module("weightax.sweep")


def train(hp, key):
  """A small regression run: adam with a traced lr, a traced loss weight, minibatches."""
  TRACES.append(1)
  params = {"w": 0.1 * jax.random.normal(key, (5,))}
  opt = optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"])

  def loss_fn(p, batch, _k):
    xb, yb = batch
    return hp["w"] * jnp.mean((xb @ p["w"] - yb) ** 2), {}

  res = wx.fit(loss_fn, params, opt, (X, Y), key=key, num_steps=20, batch_size=16,
               eval_fn=lambda p: jnp.mean((X @ p["w"] - Y) ** 2), eval_every=5)
  return {"curve": res.eval_metrics, "final": res.eval_metrics[-1], "w": res.params["w"]}


GRID = {"lr": [0.01, 0.1, 0.3], "w": [0.5, 2.0]}


def test_sweep_equals_runs_one_by_one():
  res = wx.sweep(train, GRID, seeds=[3, 7])
  assert res.shape == (3, 2, 2) and len(res) == 12
  one = jax.jit(train)
  for i in range(len(res)):
    hp = {"lr": jnp.float32(res.coords["lr"][i]), "w": jnp.float32(res.coords["w"][i])}
    out = one(hp, jax.random.key(int(res.coords["seed"][i])))
    np.testing.assert_allclose(res.metrics["curve"][i], out["curve"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(res.metrics["w"][i], out["w"], rtol=2e-5, atol=1e-6)


def test_one_compilation_and_no_recompile_for_new_values():
  fresh = lambda hp, key: train(hp, key)  # a new function: nothing cached from other tests
  TRACES.clear()
  before = sweep_mod.compile_count()
  wx.sweep(fresh, GRID, seeds=2)
  assert sweep_mod.compile_count() - before == 1
  assert len(TRACES) == 1  # the body was traced once for all 12 configurations
  wx.sweep(fresh, {"lr": [0.02, 0.2, 0.5], "w": [1.0, 3.0]}, seeds=[5, 6])
  assert sweep_mod.compile_count() - before == 1  # same shapes: same program
  assert len(TRACES) == 1


def test_chunks_match_unchunked_and_budget_forces_chunks():
  full = wx.sweep(train, GRID, seeds=2)
  chunked = wx.sweep(train, GRID, seeds=2, chunk_size=5, progress=False)  # 5+5+2(padded)
  np.testing.assert_allclose(chunked.metrics["curve"], full.metrics["curve"], rtol=2e-5)
  before = sweep_mod.compile_count()
  tiny = wx.sweep(train, GRID, seeds=2, memory_budget=1.0, progress=False)
  assert sweep_mod.compile_count() - before >= 1
  np.testing.assert_allclose(tiny.metrics["final"], full.metrics["final"], rtol=2e-5)


def test_grid_reshape_and_exports(tmp_path):
  res = wx.sweep(train, GRID, seeds=2)
  g = res.grid("curve")
  assert g.shape == (3, 2, 2, 5)
  np.testing.assert_array_equal(g[1, 0, 1], res.metrics["curve"][1 * 4 + 0 * 2 + 1])
  csv_text = res.to_csv(tmp_path / "r.csv").read_text().splitlines()
  header = csv_text[0].split(",")
  assert header[:4] == ["lr", "w", "seed", "curve[0]"] and len(csv_text) == 13
  assert "final" in header and "w[4]" in header  # the metric w, beside the axis w
  assert csv_text[1].startswith("0.01,0.5,0,")
  long = res.curves_to_csv(tmp_path / "c.csv", names=["curve"]).read_text().splitlines()
  assert long[0] == "lr,w,seed,step,curve" and len(long) == 1 + 12 * 5
  path = res.to_json(tmp_path / "r.json")
  data = json.loads(path.read_text())
  assert data["shape"] == [3, 2, 2] and len(data["metrics"]["curve"]) == 12


def test_array_valued_axis():
  res = wx.sweep(lambda hp, k: {"s": jnp.sum(hp["v"])}, {"v": [[1.0, 2.0], [3.0, 4.0]]})
  np.testing.assert_allclose(res.metrics["s"], [3.0, 7.0])


@pytest.mark.parametrize(
    ("grid", "kwargs", "err", "match"),
    [
        ({"lr": []}, {}, ValueError, "'lr' is empty"),
        ({"v": [[1.0, 2.0], [3.0]]}, {}, ValueError, "ragged"),
        ({"opt": ["adam", "sgd"]}, {}, TypeError, "value 'adam' .*not a boolean, integer or real"),
        ({"lr": 0.1}, {}, TypeError, "sequence of numeric values"),
        ({"seed": [1, 2]}, {}, ValueError, "reserved"),
        ({"lr": [0.1]}, {"seeds": 0}, ValueError, "positive count"),
        ({"lr": [0.1]}, {"chunk_size": 0}, ValueError, "chunk_size must be positive"),
        ([("lr", [0.1])], {}, TypeError, "mapping"),
        # values are traced as int32 / float32: one that does not survive the cast is refused
        ({"n": [1, 3_000_000_000]}, {}, ValueError, "3000000000.*does not fit in int32"),
        ({"lr": [1e-50, 0.1]}, {}, ValueError, "1e-50.*does not fit in float32"),
        ({"lr": [1e39]}, {}, ValueError, "1e\\+39.*does not fit in float32"),
        ({"c": [1 + 2j]}, {}, TypeError, "not a boolean, integer or real number"),
        ({"lr": [0.1]}, {"seeds": 2.0}, TypeError, "got float 2.0"),
        ({"lr": [0.1]}, {"seeds": True}, TypeError, "got bool True"),
        ({"lr": [0.1]}, {"seeds": [0, 1.5]}, ValueError, "list of ints"),
        ({"lr": [0.1]}, {"seeds": [3, 0, 3]}, ValueError, r"\[3\] more than once"),
    ],
)
def test_bad_grids_raise_clear_errors(grid, kwargs, err, match):
  with pytest.raises(err, match=match):
    wx.sweep(lambda hp, k: {"x": jnp.zeros(())}, grid, **kwargs)


def test_values_that_fit_are_passed_exactly():
  # The largest int32 and the smallest normal float32 survive the cast unchanged.
  res = wx.sweep(lambda hp, k: {"n": hp["n"], "lr": hp["lr"]},
                 {"n": [-(2**31), 2**31 - 1], "lr": [1.1754944e-38]})
  assert res.metrics["n"].tolist() == [-(2**31), 2**31 - 1]
  assert res.metrics["lr"].tolist() == [np.float32(1.1754944e-38)] * 2


def test_a_config_change_is_not_hidden_by_the_program_cache():
  # jax.jit keys its cache by JAX's settings; the sweep's own cache of compiled programs
  # must too, or a program compiled before jax.config.update(...) runs after it.
  train = lambda hp, key: {"x": jax.random.normal(key) * hp["s"]}
  impl = jax.config.jax_default_prng_impl
  before = wx.sweep(train, {"s": [1.0]}, seeds=[0]).metrics["x"]
  try:
    jax.config.update("jax_default_prng_impl", "rbg")
    expected = float(jax.random.normal(jax.random.key(0)))  # independent of the sweep
    after = wx.sweep(train, {"s": [1.0]}, seeds=[0]).metrics["x"]
  finally:
    jax.config.update("jax_default_prng_impl", impl)
  assert float(before[0]) != expected
  np.testing.assert_allclose(after, [expected], rtol=1e-6)
  assert wx.sweep(train, {"s": [1.0]}, seeds=[0]).metrics["x"].tolist() == before.tolist()
