"""One conformance suite for every aggregator, as Optax runs one over every optimizer.

Each factory is looked up by name in ``weightax.aggregators``; a missing one fails
the suite (a new method is added to ``ALL`` and gets every check for free).
"""

import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

K = 3
T = 4  # steps per sequence: DWA's weights leave 1 at the third step
ALL = [
    "linear_scalarization",
    "random_loss_weighting",
    "dwa",
    "uncertainty_weighting",
    "gradnorm",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl_g",
    "imtl",
    "famo",
    "stch",
    "gradvac",
    "excess_mtl",
    "upgrad",
    "nash_mtl",
    "dualproj",
    "aligned_mtl",
    "geometric_loss",
    "krum",
    "trimmed_mean",
    "fairgrad",
    "config",
    "graddrop",
    "db_mtl",
    "moco",
    "sdmgrad",
    "modo",
]
# Hyperparameters to inject where the first non-zero float default is not the right pick.
INJECT = {
    "linear_scalarization": ("weights", [1.0, 0.5, 0.25], [0.2, 1.0, 3.0]),
    # SDMGrad's default inner step η = 10 amplifies a 1-ulp difference between two XLA
    # programs about 10³-fold when w sits on an edge of the simplex (measured: 1.1e-4 at
    # λ = 0.15 here), beyond this test's rtol; η = 1 is well conditioned.
    "sdmgrad": ("learning_rate", 1.0, 0.5),
}
# The first K = 1 update is FACTOR · g for these methods (as their docstrings say); every
# update of every method must be a positive multiple of g.
K1_FACTOR = {
    "linear_scalarization": 1.0,
    "random_loss_weighting": 1.0,
    "dwa": 1.0,
    "uncertainty_weighting": 0.5,
    "gradnorm": 1.0,
    "mgda": 1.0,
    "pcgrad": 1.0,
    "imtl_g": 1.0,
    "imtl": 1.0,  # s_0 = 0: IMTL-G
    "famo": 1.0,  # softmax weights sum to 1
    "stch": 1.0,  # λ = 1/K = 1, softmax = 1
    "gradvac": 1.0,  # no other task to correct against
    "excess_mtl": 1.0,  # Σ w = K = 1
    "upgrad": 1.0,
    "dualproj": 1.0,
    "aligned_mtl": 1.0,
    "geometric_loss": 1.0,  # GLS/(1·L) = 1
    "graddrop": 1.0,  # one task: nothing to drop
    "sdmgrad": 1.0,  # w = 1 on the one-point simplex: (1 + λ)/(1 + λ)
    "modo": 1.0,  # λ = 1 on the one-point simplex
}

# These keep a moving average of (rescaled) task gradients, so their K = 1 update is not a
# multiple of the current g_t but the average itself, as their docstrings state:
# u_t = m_t = (1 − a_t)·m_{t−1} + a_t·c_t·g_t from m_0 = 0, with (a_t, c_t) = K1_AVERAGE[name]
# (t = 1, 2, ..., loss L_t); checked exactly instead of K1_FACTOR's multiple.
K1_AVERAGE = {
    "db_mtl": lambda t, g, loss: (1 - 0.9, 1 / (loss + 1e-8)),  # α = 1, ∇log(L + 1e-8)
    "moco": lambda t, g, loss: (0.5 / np.sqrt(t), loss / np.linalg.norm(g)),  # λ = 1
}

# The fewest tasks a method accepts with its default hyperparameters (1 unless listed): the
# robust rules need more tasks than twice what they discard. Below it, every check that would
# run the method instead asserts the clear error (_refuses_below_min_k), never a silent skip.
MIN_K = {
    "krum": 3,  # 2·n_byzantine + 2 < K with n_byzantine = 0
    "trimmed_mean": 3,  # 2·trim_number < K with trim_number = 1
}
# Not Σ_k w_k g_k: their task_weights are NaN (tested below), not weights to reproduce.
NOT_WEIGHTING = {"trimmed_mean", "graddrop", "db_mtl", "moco"}


METHODS = [pytest.param(n, id=n) for n in ALL]


def _refuses_below_min_k(name, k):
  """True (after checking the errors) when K = k is below the method's minimum."""
  if k >= MIN_K.get(name, 1):
    return False
  with pytest.raises(ValueError, match=rf"got K = {k} tasks"):
    _make(name, k=k)  # with num_tasks=k: at construction
  grads = _grads(jax.random.key(19), k=k)
  tx = _factory(name)()  # without num_tasks: at the first update
  with pytest.raises(ValueError, match=rf"got K = {k} tasks"):
    tx.update(grads, tx.init(_params()), _params(), task_losses=_losses(k=k)[0],
              key=jax.random.key(0))
  return True


def test_every_method_is_exported():
  assert [n for n in ALL if not hasattr(wx.aggregators, n) or not hasattr(wx, n)] == []


def _factory(name):
  return getattr(wx.aggregators, name)


def _kwargs(name, k):
  """num_tasks for the factories that take it (stateful ones require it)."""
  sig = inspect.signature(_factory(name))
  return {"num_tasks": k} if "num_tasks" in sig.parameters else {}


def _make(name, k=K, **overrides):
  return _factory(name)(**{**_kwargs(name, k), **overrides})


def _params(dtype=jnp.float32):
  return {"trunk": {"w": jnp.zeros((4, 3), dtype), "b": jnp.zeros((3,), dtype)},
          "head": jnp.zeros((2,), dtype)}


SHARED = {"trunk": {"w": True, "b": True}, "head": False}


def _grads(key, k=K, steps=None, dtype=jnp.float32, scale=1.0):
  """Task gradients shaped like _params with a leading K axis (and a leading steps axis)."""
  lead = (k,) if steps is None else (steps, k)
  leaves, treedef = jax.tree.flatten(_params())
  keys = jax.random.split(key, len(leaves))
  out = [(scale * jax.random.normal(kk, lead + x.shape)).astype(dtype)
         for kk, x in zip(keys, leaves, strict=True)]
  return jax.tree.unflatten(treedef, out)


def _losses(k=K, steps=T):
  """Positive losses falling at task-dependent rates, so DWA and GradNorm see real ratios."""
  t = jnp.arange(steps, dtype=jnp.float32)[:, None]
  rate = 0.6 + 0.3 * jnp.arange(k, dtype=jnp.float32) / max(k - 1, 1)
  return jnp.linspace(1.0, 2.0, k)[None, :] * rate ** t


def _at(tree, t):
  return jax.tree.map(lambda x: x[t], tree)


def _run(tx, params, grads, losses, keys, state=None):
  """T eager-or-jitted-by-caller updates; returns (stacked updates, final state)."""
  state = tx.init(params) if state is None else state
  outs = []
  for t in range(losses.shape[0]):
    u, state = tx.update(_at(grads, t), state, params, task_losses=losses[t], key=keys[t])
    outs.append(u)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs), state


def _as_numeric(x):
  x = jnp.asarray(x)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(x)
  return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


def _close(a, b, rtol=1e-4, atol=1e-5):
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(_as_numeric(x), _as_numeric(y), rtol=rtol,
                                              atol=atol),
      a, b)


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _setup(seed=0, steps=T):
  key = jax.random.key(seed)
  return _params(), _grads(key, steps=steps), _losses(steps=steps), jax.random.split(key, steps)


@pytest.mark.parametrize("name", METHODS)
def test_jit_matches_eager(name):
  tx = _make(name)
  params, grads, losses, keys = _setup()
  eager = _run(tx, params, grads, losses, keys)
  update = jax.jit(lambda g, s, p, ls, k: tx.update(g, s, p, task_losses=ls, key=k))
  state, outs = tx.init(params), []
  for t in range(T):
    u, state = update(_at(grads, t), state, params, losses[t], keys[t])
    outs.append(u)
  _close(eager[0], jax.tree.map(lambda *xs: jnp.stack(xs), *outs))
  _close(eager[1], state)


@pytest.mark.parametrize("name", METHODS)
def test_vmap_over_problems(name):
  tx, b = _make(name), 3
  params = jax.tree.map(lambda x: jnp.stack([x] * b), _params())
  grads = _grads(jax.random.key(1), steps=b)  # the leading axis indexes problems here
  losses = _losses(steps=b)
  keys = jax.random.split(jax.random.key(2), b)
  update = jax.vmap(lambda g, s, p, ls, k: tx.update(g, s, p, task_losses=ls, key=k))
  states = jax.vmap(tx.init)(params)
  for _ in range(2):  # twice, so that the state produced under vmap is consumed again
    batched, states = jax.jit(update)(grads, states, params, losses, keys)
  for i in range(b):
    one = _run(tx, _at(params, i), jax.tree.map(lambda g, i=i: jnp.stack([g[i]] * 2), grads),
               jnp.stack([losses[i]] * 2), jnp.stack([keys[i]] * 2))
    _close(_at(batched, i), _at(one[0], 1))
    _close(_at(states, i), one[1])


@pytest.mark.parametrize("name", METHODS)
def test_inside_scan(name):
  tx = _make(name)
  params, grads, losses, keys = _setup(seed=3)

  def body(state, xs):
    g, ls, k = xs
    u, state = tx.update(g, state, params, task_losses=ls, key=k)
    return state, u

  state, scanned = jax.jit(lambda s: jax.lax.scan(body, s, (grads, losses, keys)))(
      tx.init(params))
  outs, ref_state = _run(tx, params, grads, losses, keys)
  _close(scanned, outs)
  _close(state, ref_state)


def _numeric_hyperparam(name):
  if name in INJECT:
    hp, old, new = INJECT[name]
    return hp, jnp.asarray(old), jnp.asarray(new)
  for p in inspect.signature(_factory(name)).parameters.values():
    d = p.default
    if p.name != "num_tasks" and isinstance(d, float) and not isinstance(d, bool) and d != 0:
      return p.name, d, 0.5 * d
  return None


@pytest.mark.parametrize("name", METHODS)
def test_inject_hyperparams_without_recompiling(name):
  hp = _numeric_hyperparam(name)
  extra = {} if hp is None else {hp[0]: hp[1]}
  tx = optax.inject_hyperparams(_factory(name), static_args=("num_tasks",))(
      **_kwargs(name, K), **extra)
  params, grads, losses, keys = _setup(seed=4)
  traces = []

  def run(state):
    traces.append(1)
    return _run(tx, params, grads, losses, keys, state=state)

  run = jax.jit(run)
  out_old, _ = run(tx.init(params))
  _close(out_old, _run(_make(name, **extra), params, grads, losses, keys)[0])
  if hp is None:  # nothing numeric to change (e.g. RLW)
    return
  state = tx.init(params)
  hps = dict(state.hyperparams)
  hps[hp[0]] = jnp.asarray(hp[2], hps[hp[0]].dtype)
  out_new, _ = run(state._replace(hyperparams=hps))
  assert len(traces) == 1, f"changing {hp[0]} recompiled"
  _close(out_new, _run(_make(name, **{hp[0]: hp[2]}), params, grads, losses, keys)[0])


@pytest.mark.parametrize("name", METHODS)
def test_output_has_no_task_axis(name):
  params, grads, losses, keys = _setup(seed=5, steps=1)
  tx = _make(name)
  u, _ = tx.update(_at(grads, 0), tx.init(params), params, task_losses=losses[0], key=keys[0])
  assert _shapes(u) == _shapes(params)
  chained = optax.chain(_make(name), optax.sgd(1.0))
  v, _ = chained.update(_at(grads, 0), chained.init(params), params, task_losses=losses[0],
                        key=keys[0])
  assert _shapes(v) == _shapes(params)
  _close(v, jax.tree.map(jnp.negative, u))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", METHODS)
def test_dtype_preserved(name, dtype):
  tx = _make(name)
  params = _params(dtype)
  grads = _grads(jax.random.key(6), steps=T, dtype=dtype)
  keys = jax.random.split(jax.random.key(7), T)
  outs, _ = _run(tx, params, grads, _losses(), keys)
  assert _shapes(_at(outs, 0)) == _shapes(params)
  assert _finite(outs)


def _jitted_run(name, problem, dtype):
  """T jitted updates of a fresh aggregator on ``problem`` (_setup()'s) cast to ``dtype``."""
  params, grads, losses, keys = jax.tree.map(
      lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      problem)
  tx = _make(name)
  update = jax.jit(lambda g, s, p, ls, k: tx.update(g, s, p, task_losses=ls, key=k))
  state, outs = tx.init(params), []
  for t in range(T):
    u, state = update(_at(grads, t), state, params, losses[t], keys[t])
    outs.append(u)
  return jax.tree.map(lambda *xs: np.stack(xs), *outs)


@pytest.mark.parametrize("name", METHODS)
def test_float64_under_x64(name):
  """With ``jax_enable_x64`` on (a float64 reference run), float64 gradients and losses go
  through jitted updates and come out float64 and finite, and the updates are the float32
  run's up to float32 rounding. Before the fix, UPGrad, DualProj, MGDA and CAGrad raised a
  TypeError: the NNQP's while-loop carry turned from int32 into x64's default int64."""
  problem = _setup()  # drawn in float32 (under x64 the random draws would be float64)
  want = _jitted_run(name, problem, jnp.float32)
  with jax.enable_x64(True):
    got = _jitted_run(name, problem, jnp.float64)
  assert {x.dtype for x in jax.tree.leaves(got)} == {np.dtype(np.float64)}
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(got))
  if name == "graddrop":  # its uniform threshold is drawn in the gradients' dtype: another U
    return
  _close(got, want, rtol=2e-4, atol=1e-5)


def _degenerate(case):
  g = _grads(jax.random.key(8), k=1)
  if case == "zero":
    return jax.tree.map(lambda x: jnp.zeros((K,) + x.shape[1:]), g), K
  if case == "identical":
    return jax.tree.map(lambda x: jnp.concatenate([x] * K), g), K
  if case == "opposite":
    return jax.tree.map(lambda x: jnp.concatenate([x, -x]), g), 2
  scale = {"tiny": 1e-30, "huge": 1e30}[case]
  return _grads(jax.random.key(9), scale=scale), K


@pytest.mark.parametrize("case", ["zero", "identical", "opposite", "tiny", "huge"])
@pytest.mark.parametrize("name", METHODS)
def test_degenerate_gradients_give_finite_updates(name, case):
  grads, k = _degenerate(case)
  if _refuses_below_min_k(name, k):
    return
  tx = _make(name, k=k)
  params = _params()
  keys = jax.random.split(jax.random.key(10), T)
  seq = jax.tree.map(lambda x: jnp.stack([x] * T), grads)
  outs, _ = _run(tx, params, seq, _losses(k=k), keys)
  assert _finite(outs), f"{name} gave a non-finite update for {case} gradients"
  assert _shapes(_at(outs, 0)) == _shapes(params)


def _with_fill(name, grads, losses, fill_grad, fill_loss):
  """T updates of ``name`` on ``grads`` / ``losses`` with task 1's first trunk weight and
  task 1's loss set to the fills; returns (last update, last task_weights)."""
  grads = jax.tree.map(lambda x: x, grads)
  grads["trunk"]["w"] = grads["trunk"]["w"].at[:, 1, 0, 0].set(fill_grad)
  losses = losses.at[:, 1].set(fill_loss)
  keys = jax.random.split(jax.random.key(12), losses.shape[0])
  outs, state = _run(_make(name), _params(), grads, losses, keys)
  w = optax.tree_utils.tree_get(state, "task_weights")
  return _at(outs, -1), (jnp.full((K,), jnp.nan) if w is None else w)


def _nan_is_kept_or_irrelevant(name, nan_run, runs, what):
  """Where the run with a NaN gave a finite number, the NaN's value cannot have mattered:
  the runs with two other values in its place give that same number. Anything else is a
  NaN turned into an ordinary-looking value (e.g. uniform or 1e6 weights)."""
  for label, a, b, c in [("update", nan_run[0], runs[0][0], runs[1][0]),
                         ("task_weights", nan_run[1], runs[0][1], runs[1][1])]:
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c), strict=True):
      x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
      finite = np.isfinite(x)
      np.testing.assert_allclose(
          y[finite], x[finite], rtol=1e-5, atol=1e-6,
          err_msg=f"{name}: a NaN {what} gave finite {label} values that depend on it")
      np.testing.assert_allclose(
          z[finite], x[finite], rtol=1e-5, atol=1e-6,
          err_msg=f"{name}: a NaN {what} gave finite {label} values that depend on it")


@pytest.mark.parametrize("name", METHODS)
def test_a_nan_gradient_is_never_hidden(name):
  # Gramian methods used to return ordinary weights from a NaN Gramian (uniform for MGDA
  # and UPGrad, 1e6 unclipped for Nash-MTL) and trimmed_mean trimmed the NaN away.
  _, grads, losses, _ = _setup(seed=13, steps=2)
  nan_run = _with_fill(name, grads, losses, jnp.nan, 1.0)
  assert np.isnan(np.asarray(nan_run[0]["trunk"]["w"])[0, 0]), f"{name} dropped the NaN"
  runs = [_with_fill(name, grads, losses, v, 1.0) for v in (0.0, 5.0)]
  _nan_is_kept_or_irrelevant(name, nan_run, runs, "gradient entry")


@pytest.mark.parametrize("name", METHODS)
def test_a_nan_task_loss_is_never_hidden(name):
  _, grads, losses, _ = _setup(seed=14, steps=3)
  try:
    nan_run = _with_fill(name, grads, losses, 0.25, jnp.nan)
  except ValueError as e:  # refused outright (concrete losses): not hidden either
    assert "loss" in str(e), str(e)
    return
  runs = [_with_fill(name, grads, losses, 0.25, v) for v in (0.5, 3.0)]
  _nan_is_kept_or_irrelevant(name, nan_run, runs, "task loss")


def _float_hyperparams(name):
  return [p.name for p in inspect.signature(_factory(name)).parameters.values()
          if isinstance(p.default, float) and p.default != 0]


@pytest.mark.parametrize("name", METHODS)
def test_a_nan_injected_hyperparameter_is_never_hidden(name):
  # Under optax.inject_hyperparams a hyperparameter is traced, so no range check can run;
  # a NaN must then show in the update. It used to vanish: UPGrad with reg_eps = NaN gave
  # the plain mean, Nash-MTL with max_norm = NaN did not clip.
  params, grads, losses, keys = _setup(seed=15, steps=2)
  for hp in _float_hyperparams(name):
    default = inspect.signature(_factory(name)).parameters[hp].default
    tx = optax.inject_hyperparams(_factory(name), static_args=("num_tasks",))(
        **_kwargs(name, K), **{hp: default})

    def run(value, tx=tx, hp=hp):
      state = tx.init(params)
      hps = dict(state.hyperparams)
      hps[hp] = jnp.asarray(value, hps[hp].dtype)
      outs, state = _run(tx, params, grads, losses, keys, state=state._replace(hyperparams=hps))
      w = optax.tree_utils.tree_get(state, "task_weights")
      return _at(outs, -1), (jnp.full((K,), jnp.nan) if w is None else w)

    run = jax.jit(run)
    _nan_is_kept_or_irrelevant(name, run(jnp.nan), [run(0.5 * default), run(0.75 * default)],
                               f"hyperparameter {hp}")


@pytest.mark.parametrize("name", METHODS)
def test_task_losses_with_wrong_k_raise(name):
  params, grads, _, keys = _setup(seed=11, steps=1)
  tx = _make(name)
  with pytest.raises(ValueError) as err:
    tx.update(_at(grads, 0), tx.init(params), params, task_losses=jnp.ones(K - 1), key=keys[0])
  msg = str(err.value)
  assert str(K) in msg and str(K - 1) in msg, f"the message should name {K} and {K - 1}: {msg}"


@pytest.mark.parametrize("name", METHODS)
def test_empty_task_axis_raises(name):
  # K = 0 used to fail deep in a reshape (ZeroDivisionError) or, for linear scalarization,
  # to return a zero update as if every task agreed.
  params = _params()
  grads = _grads(jax.random.key(0), k=0)
  tx = _factory(name)() if name not in NEEDS_NUM_TASKS else _make(name)
  with pytest.raises(ValueError, match=r"K = 0"):
    tx.update(grads, tx.init(params), params, task_losses=jnp.ones(0), key=jax.random.key(0))


@pytest.mark.parametrize("name", METHODS)
def test_single_task_update_is_scaled_gradient(name):
  if _refuses_below_min_k(name, 1):
    return
  tx = _make(name, k=1)
  params = _params()
  grads = _grads(jax.random.key(12), k=1, steps=T)
  keys = jax.random.split(jax.random.key(13), T)
  outs, _ = _run(tx, params, grads, _losses(k=1), keys)
  u = jnp.concatenate([x.reshape(T, -1) for x in jax.tree.leaves(outs)], axis=1)
  g = jnp.concatenate([x.reshape(T, -1) for x in jax.tree.leaves(grads)], axis=1)
  if name in K1_AVERAGE:  # the stated moving average, in float64
    m, g64, losses = 0.0, np.asarray(g, np.float64), np.asarray(_losses(k=1), np.float64)
    for t in range(1, T + 1):
      a, c = K1_AVERAGE[name](t, g64[t - 1], losses[t - 1, 0])
      m = (1 - a) * m + a * c * g64[t - 1]
      np.testing.assert_allclose(u[t - 1], m, rtol=1e-5, atol=1e-6 * np.abs(m).max())
    return
  factor = jnp.sum(u * g, axis=1) / jnp.sum(g * g, axis=1)
  np.testing.assert_allclose(u, factor[:, None] * g, rtol=1e-4, atol=1e-6)
  assert bool(jnp.all(factor > 0))
  if name in K1_FACTOR:  # at the first step: learned weights (uncertainty) move afterwards
    np.testing.assert_allclose(factor[0], K1_FACTOR[name], rtol=1e-4)


@pytest.mark.parametrize("callable_mask", [False, True], ids=["pytree", "callable"])
@pytest.mark.parametrize("name", METHODS)
def test_task_specific_leaves_get_the_sum(name, callable_mask):
  shared = (lambda p: SHARED) if callable_mask else SHARED
  tx = _make(name, shared=shared)
  params, grads, losses, keys = _setup(seed=14)
  outs, _ = _run(tx, params, grads, losses, keys)
  _close(outs["head"], grads["head"].sum(axis=1), rtol=1e-5, atol=1e-6)
  assert _finite(outs["trunk"])


# ------------------------------------------------------------------ weights you can watch

WEIGHTING = [n for n in ALL if n not in NOT_WEIGHTING]  # shared leaves get Σ_k w_k g_k
# their update raises without a key
KEY_METHODS = {"random_loss_weighting", "pcgrad", "gradvac", "graddrop"}
NEEDS_NUM_TASKS = {  # their state holds [K] arrays, so num_tasks has no default
    n for n in ALL
    if inspect.signature(getattr(wx.aggregators, n)).parameters["num_tasks"].default
    is inspect.Parameter.empty}


@pytest.mark.parametrize("name", WEIGHTING)
def test_task_weights_reproduce_the_update(name):
  """Σ_k task_weights_k g_k is the update of the shared leaves, at every step; tree_get finds
  the one [K] field through nested chains and inject_hyperparams."""
  inner = optax.inject_hyperparams(_factory(name), static_args=("num_tasks", "shared"))(
      num_tasks=K, shared=SHARED)
  tx = optax.chain(optax.chain(inner, optax.identity()), optax.scale(1.0))
  params, grads, losses, keys = _setup(seed=15)
  state = tx.init(params)
  tw0 = optax.tree_utils.tree_get(state, "task_weights")
  assert tw0.shape == (K,) and tw0.dtype == jnp.float32 and bool(jnp.all(jnp.isnan(tw0)))
  update = jax.jit(lambda g, s, ls, k: tx.update(g, s, params, task_losses=ls, key=k))
  for t in range(T):
    g = _at(grads, t)
    u, state = update(g, state, losses[t], keys[t])
    w = optax.tree_utils.tree_get(state, "task_weights")
    assert w.shape == (K,) and w.dtype == jnp.float32 and _finite(w)
    # an independent Σ_k w_k g_k in float64
    want = jax.tree.map(lambda x, w=w: np.tensordot(np.asarray(w, np.float64),
                                                    np.asarray(x, np.float64), axes=1),
                        g["trunk"])
    _close(u["trunk"], want, rtol=1e-5, atol=1e-6)
    _close(u["head"], g["head"].sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ALL if n not in NEEDS_NUM_TASKS])
def test_without_num_tasks_task_weights_is_none(name):
  """init sees only the parameters, so without num_tasks there is no [K] field to fill."""
  params, grads, losses, keys = _setup(seed=17, steps=1)
  tx = optax.chain(_factory(name)(), optax.sgd(0.1))
  state = tx.init(params)
  assert optax.tree_utils.tree_get(state, "task_weights", default=None) is None
  _, state = jax.jit(lambda g, s, ls, k: tx.update(g, s, params, task_losses=ls, key=k))(
      _at(grads, 0), state, losses[0], keys[0])
  assert optax.tree_utils.tree_get(state, "task_weights", default=None) is None


@pytest.mark.parametrize("name", sorted(NEEDS_NUM_TASKS))
def test_missing_num_tasks_says_what_to_pass(name):
  with pytest.raises(TypeError, match=rf"needs num_tasks=K.*{name}\(num_tasks=3\)"):
    _factory(name)()


@pytest.mark.parametrize("name", sorted(KEY_METHODS))
def test_random_methods_refuse_to_run_without_a_key(name):
  params, grads, losses, _ = _setup(seed=18, steps=1)
  tx = _make(name)
  with pytest.raises(ValueError, match="key"):
    tx.update(_at(grads, 0), tx.init(params), params, task_losses=losses[0])


def test_pcgrad_fixed_order_is_explicit():
  """order="fixed" needs no key, ignores one, and visits 0, ..., K-1 (Algorithm 1, by hand)."""
  j = np.array([[1.0, 0.0, 0.0], [-0.9, 1.0, 0.0], [-0.5, -0.8, 1.0]])
  out = np.zeros(3)
  for i in range(3):
    gi = j[i].copy()
    for m in range(3):
      if m != i and gi @ j[m] < 0:
        gi -= (gi @ j[m]) / (j[m] @ j[m]) * j[m]
    out += gi
  tx = wx.pcgrad(order="fixed")
  grads = {"w": jnp.asarray(j, jnp.float32)}
  u, _ = tx.update(grads, tx.init(None))
  np.testing.assert_allclose(u["w"], out, rtol=1e-5)
  v, _ = tx.update(grads, tx.init(None), key=jax.random.key(0))
  np.testing.assert_allclose(v["w"], out, rtol=1e-5)
  with pytest.raises(ValueError, match="order"):
    wx.pcgrad(order="shuffled")


def test_nash_mtl_caching_needs_num_tasks():
  with pytest.raises(ValueError, match="pass num_tasks=K"):
    wx.nash_mtl(update_weights_every=2)


def test_readme_says_which_methods_require_num_tasks():
  """The README table's `num_tasks` column says "required" exactly where the signature does."""
  readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
  lines = [ln for ln in readme.split("## Multi-task methods", 1)[1].splitlines()
           if ln.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  col = header.index("`num_tasks`")
  said = {}
  for ln in lines[2:]:
    cells = [c.strip() for c in ln.strip("|").split("|")]
    said[cells[0].strip("`").split("`")[0]] = cells[col]
  for name in ALL:
    assert name in said, f"the README's method table has no row for {name}"
    assert said[name].startswith("required") == (name in NEEDS_NUM_TASKS), (name, said[name])


@pytest.mark.parametrize("name", sorted(NOT_WEIGHTING))
def test_non_weightings_report_nan_task_weights(name):
  """An update that is not Σ_k w_k g_k has no weights to report: task_weights stays NaN."""
  params, grads, losses, keys = _setup(seed=20)
  tx = _make(name)
  _, state = _run(tx, params, grads, losses, keys)
  w = optax.tree_utils.tree_get(state, "task_weights")
  assert w.shape == (K,) and bool(jnp.all(jnp.isnan(w)))


@pytest.mark.parametrize("name", METHODS)
def test_every_product_at_full_float32_precision(name):
  """No dot product of an update may round the gradients to TF32 on a GPU.

  JAX's default float32 product on an NVIDIA GPU rounds its inputs to a 10-bit
  mantissa (measured on an H200: Gramians off by 6e-5 relative, see BENCHMARKS.md),
  which breaks the float32 guarantees of the methods (no conflict, the documented
  scale). Every ``dot_general`` in the update's program, the Gramian, the weights'
  solvers and ``Σ w_k g_k``, must carry ``precision = HIGHEST``; the CPU computes in
  float32 whatever the flag, so this reads the program rather than its numbers.
  """
  params, grads, losses, keys = _setup(seed=2, steps=1)
  tx = _make(name, shared=SHARED)
  state = tx.init(params)
  text = jax.jit(
      lambda g, s, loss, key: tx.update(g, s, params, task_losses=loss, key=key)[0]
  ).lower(_at(grads, 0), state, losses[0], keys[0]).as_text()
  dots = [line.strip() for line in text.splitlines() if "stablehlo.dot_general" in line]
  if name in ("mgda", "upgrad", "cagrad", "dualproj", "imtl_g"):
    assert dots, "a Gramian method with no dot product: the check would be vacuous"
  loose = [d for d in dots if "precision = [HIGHEST, HIGHEST]" not in d]
  assert loose == [], f"{len(loose)} of {len(dots)} products at default precision: {loose[:2]}"
