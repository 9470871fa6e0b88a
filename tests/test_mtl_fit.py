"""weightax.mtl.fit: equals a hand-written scan, one program per sweep, shared masks, weights."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax import mtl

sweep_mod = importlib.import_module("weightax.sweep")

K = 3
N, D, H = 48, 4, 6
X = jax.random.normal(jax.random.key(0), (N, D))
Y = jnp.stack([jnp.sin(X[:, 0]), X[:, 1] * X[:, 2], jnp.cos(X[:, 3])], axis=1)  # [N, K]
DATA = (X, Y)
MASK = {"trunk": {"w": True, "b": True}, "heads": {"w": False, "b": False}}
PREFIX = {"trunk": True, "heads": False}


def init(key):
  k1, k2 = jax.random.split(key)
  return {"trunk": {"w": jax.random.normal(k1, (D, H)) / 2, "b": jnp.zeros(H)},
          "heads": {"w": jax.random.normal(k2, (K, H)) / 2, "b": jnp.zeros(K)}}


def task_losses(p, batch, key):
  del key
  xb, yb = batch
  z = jnp.tanh(xb @ p["trunk"]["w"] + p["trunk"]["b"])
  pred = z @ p["heads"]["w"].T + p["heads"]["b"]  # head k only enters task k
  losses = jnp.mean((pred - yb) ** 2, axis=0)
  return losses, {"total": jnp.sum(losses)}


def reference_scan(aggregator, optimizer, params, key, num_steps, batch_size):
  """The hand-written loop mtl.fit replaces, with the Jacobian from jax.jacrev."""
  agg_state, opt_state = aggregator.init(params), optimizer.init(params)

  def step(carry, k):
    p, sa, so = carry
    kb, kl, ka = jax.random.split(k, 3)
    idx = jax.random.randint(kb, (batch_size,), 0, N)
    batch = (X[idx], Y[idx])
    losses = task_losses(p, batch, kl)[0]
    jac = jax.jacrev(lambda q: task_losses(q, batch, kl)[0])(p)
    u, sa = aggregator.update(jac, sa, p, task_losses=losses, key=ka)
    u, so = optimizer.update(u, so, p)
    return (optax.apply_updates(p, u), sa, so), losses

  (p, _, _), losses = jax.lax.scan(step, (params, agg_state, opt_state),
                                   jax.random.split(key, num_steps))
  return p, losses


def _close(a, b, rtol=2e-5, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize(("make", "masked"), [
    (lambda s: wx.pcgrad(shared=s), False),
    (lambda s: wx.pcgrad(shared=s), True),
    (lambda s: wx.cagrad(c=0.4, shared=s), True),
], ids=["pcgrad-full", "pcgrad-shared", "cagrad-shared"])
def test_fit_equals_hand_written_scan(make, masked):
  # fit(shared=mask) with a mask-free aggregator must equal the full Jacobian fed to an
  # aggregator that applies the mask itself (PCGrad also checks the aggregator's key).
  params, key = init(jax.random.key(1)), jax.random.key(2)
  opt = optax.adam(0.05)

  @jax.jit
  def both(p, k):
    ref = reference_scan(make(MASK if masked else None), opt, p, k, 12, 16)
    res = mtl.fit(task_losses, p, make(None), opt, DATA, key=k, num_steps=12, batch_size=16,
                  shared=PREFIX if masked else None)
    return ref, res

  with pytest.warns(UserWarning, match="num_tasks"):
    (ref_p, ref_losses), res = both(params, key)
  _close(res.params, ref_p)
  _close(res.step_metrics["task_losses"], ref_losses)
  _close(res.step_metrics["total"], ref_losses.sum(1))
  assert not jnp.allclose(ref_p["trunk"]["w"], params["trunk"]["w"])  # it did train


def test_shared_mask_forms_agree():
  params, key = init(jax.random.key(3)), jax.random.key(4)
  fit = lambda s: mtl.fit(task_losses, params, wx.imtl_g(num_tasks=K), optax.sgd(0.1), DATA,
                          key=key, num_steps=3, batch_size=N, shared=s).params
  full = fit(MASK)
  for form in [PREFIX, lambda p: jax.tree.map(lambda x: x.shape[0] != K, p)]:
    _close(fit(form), full, rtol=1e-6)
  # The mask matters: IMTL-G's weights from the trunk alone differ from all parameters'.
  assert not np.allclose(full["trunk"]["w"], fit(None)["trunk"]["w"], rtol=1e-4)


def test_aggregator_sees_only_shared_leaves():
  seen = {}

  def update(jac, state, params=None, *, task_losses=None, key=None, **extra):
    seen["jac"], seen["params"] = jac, params
    return jax.tree.map(lambda g: g.sum(0), jac), state

  fake = optax.GradientTransformationExtraArgs(lambda p: (), update)
  params = init(jax.random.key(5))
  with pytest.warns(UserWarning, match="num_tasks"):
    res = mtl.fit(task_losses, params, fake, optax.sgd(0.1), DATA, key=jax.random.key(6),
                  num_steps=1, batch_size=N, shared=PREFIX)
  assert not jax.tree.leaves(seen["jac"]["heads"]) and not jax.tree.leaves(seen["params"]["heads"])
  assert seen["jac"]["trunk"]["w"].shape == (K, D, H)
  # With the summed head gradient, one SGD step is plain gradient descent on Σ_k L_k.
  g = jax.grad(lambda p: task_losses(p, DATA, None)[0].sum())(params)
  _close(res.params, jax.tree.map(lambda p, d: p - 0.1 * d, params, g), rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: wx.upgrad(shared=MASK),
    lambda: wx.gradnorm(num_tasks=K, shared=PREFIX),  # builds its own transform
    lambda: wx.linear_scalarization(shared=lambda p: MASK),
], ids=["upgrad", "gradnorm", "linear_scalarization"])
def test_shared_twice_is_refused(make):
  agg = make()
  assert agg.shared is not None
  with pytest.raises(ValueError, match="give it once"):
    mtl.fit(task_losses, init(jax.random.key(0)), agg, optax.sgd(0.1), DATA,
            key=jax.random.key(0), num_steps=1, batch_size=8, shared=PREFIX)


def train(hp, key):
  params = init(key)
  opt = optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"])
  res = mtl.fit(task_losses, params, wx.cagrad(c=hp["c"], num_tasks=K), opt, DATA, key=key,
                num_steps=10, batch_size=16, shared=PREFIX,
                eval_fn=lambda p: task_losses(p, DATA, None)[0], eval_every=5)
  return {"final": res.eval_metrics[-1], "task_weights": res.step_metrics["task_weights"],
          "task_losses": res.step_metrics["task_losses"]}


def test_one_compilation_per_sweep():
  fresh = lambda hp, key: train(hp, key)  # nothing cached from other tests
  before = sweep_mod.compile_count()
  res = wx.sweep(fresh, {"lr": [0.01, 0.05], "c": [0.0, 0.5]}, seeds=2)
  assert sweep_mod.compile_count() - before == 1
  wx.sweep(fresh, {"lr": [0.02, 0.1], "c": [0.2, 0.8]}, seeds=[4, 5])
  assert sweep_mod.compile_count() - before == 1  # new values, same program
  assert res.metrics["task_losses"].shape == (8, 10, K)
  assert res.metrics["task_weights"].shape == (8, 10, K)
  # The traced hyperparameters reached the program: c changes the run, the seed the data.
  final = res.grid("final")  # (lr, c, seed, K)
  assert not np.allclose(final[0, 0, 0], final[0, 1, 0])
  assert not np.allclose(final[0, 0, 0], final[0, 0, 1])


def test_task_weights_recorded_inside_a_chain():
  w = jnp.array([0.2, 0.3, 0.5])
  agg = optax.chain(wx.linear_scalarization(weights=w, num_tasks=K), optax.clip(10.0))
  res = mtl.fit(task_losses, init(jax.random.key(0)), agg, optax.sgd(0.05), DATA,
                key=jax.random.key(1), num_steps=4, batch_size=8, shared=PREFIX)
  np.testing.assert_allclose(res.step_metrics["task_weights"], np.tile(w, (4, 1)), rtol=1e-6)


def _loss_softmax_aggregator():
  """Weights softmax(losses), kept in its state as `task_weights`."""

  def update(jac, state, params=None, *, task_losses=None, key=None, **extra):
    w = jax.nn.softmax(task_losses)
    return jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), jac), {"task_weights": w}

  return optax.GradientTransformationExtraArgs(lambda p: {"task_weights": jnp.zeros(K)}, update)


def test_task_weights_are_the_weights_of_each_step():
  res = mtl.fit(task_losses, init(jax.random.key(0)), _loss_softmax_aggregator(),
                optax.sgd(0.05), DATA, key=jax.random.key(1), num_steps=6, batch_size=8)
  losses = np.asarray(res.step_metrics["task_losses"], np.float64)
  expect = np.exp(losses) / np.exp(losses).sum(1, keepdims=True)
  np.testing.assert_allclose(res.step_metrics["task_weights"], expect, rtol=1e-5)


def test_nan_weights_and_one_warning_without_task_weights():
  def update(jac, state, params=None, *, task_losses=None, key=None, **extra):
    return jax.tree.map(lambda g: g.sum(0), jac), state

  no_weights = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  with pytest.warns(UserWarning, match="num_tasks=K") as record:
    res = mtl.fit(task_losses, init(jax.random.key(0)), no_weights, optax.sgd(0.05), DATA,
                  key=jax.random.key(1), num_steps=4, batch_size=8, eval_every=2)
  assert sum("task_weights" in str(r.message) for r in record) == 1
  tw = res.step_metrics["task_weights"]
  assert tw.shape == (4, K) and bool(jnp.all(jnp.isnan(tw)))
  assert bool(jnp.all(jnp.isfinite(res.step_metrics["task_losses"])))


def _recording_aggregator():
  """Stores the `post_step_losses` it receives as its `task_weights`, and sums the gradients."""

  def update(jac, state, params=None, *, task_losses=None, key=None, **extra):
    post = extra.get("post_step_losses", jnp.full(K, -1.0))
    return jax.tree.map(lambda g: g.sum(0), jac), {"task_weights": post}

  return optax.GradientTransformationExtraArgs(lambda p: {"task_weights": jnp.zeros(K)}, update)


@pytest.mark.parametrize("shared", [None, PREFIX], ids=["full", "shared"])
def test_post_step_losses_are_the_previous_batch_at_the_current_params(shared):
  params, key, steps, lr = init(jax.random.key(7)), jax.random.key(8), 5, 0.3
  res = mtl.fit(task_losses, params, _recording_aggregator(), optax.sgd(lr), DATA, key=key,
                num_steps=steps, batch_size=8, shared=shared, post_step_losses=True)
  got = np.asarray(res.step_metrics["task_weights"])
  # Python loop: plain SGD on Σ_k L_k, the same batches.
  sum_grad = jax.jit(jax.grad(lambda q, batch: task_losses(q, batch, None)[0].sum()))
  p, prev_batch = params, None
  for t, k in enumerate(jax.random.split(key, steps)):
    kb, _, _ = jax.random.split(k, 3)
    idx = jax.random.randint(kb, (8,), 0, N)
    batch = (X[idx], Y[idx])
    now = task_losses(p, batch, None)[0]
    expect = now if t == 0 else task_losses(p, prev_batch, None)[0]
    np.testing.assert_allclose(got[t], expect, rtol=1e-5, atol=1e-7)
    assert t == 0 or not np.allclose(expect, now)  # the batches differ: the test can tell
    g = sum_grad(p, batch)
    p, prev_batch = jax.tree.map(lambda a, b: a - lr * b, p, g), batch
  off = mtl.fit(task_losses, params, _recording_aggregator(), optax.sgd(lr), DATA, key=key,
                num_steps=2, batch_size=8, shared=shared)
  assert bool(jnp.all(off.step_metrics["task_weights"] == -1.0))  # not passed when off


def test_loss_state_and_eval():
  def stateful(p, batch, key, count):
    losses, aux = task_losses(p, batch, key)
    return losses, (aux, count + 1)

  res = mtl.fit(stateful, init(jax.random.key(0)), _loss_softmax_aggregator(), optax.sgd(0.05),
                DATA, key=jax.random.key(1), num_steps=6, batch_size=8, eval_every=3,
                eval_fn=lambda p: {"l": task_losses(p, DATA, None)[0]},
                loss_state=jnp.zeros((), jnp.int32))
  assert int(res.loss_state) == 6
  assert res.eval_metrics["l"].shape == (3, K)
  _close(res.eval_metrics["l"][0], task_losses(init(jax.random.key(0)), DATA, None)[0])


@pytest.mark.parametrize(
    ("kwargs", "fn", "err", "match"),
    [
        ({"shared": {"trunk": True}}, task_losses, ValueError, "structure of the parameters"),
        ({"shared": {"trunk": False, "heads": False}}, task_losses, ValueError,
         "selects no parameter"),
        ({"shared": {"trunk": "yes", "heads": False}}, task_losses, TypeError, "bools"),
        ({}, lambda p, b, k: (task_losses(p, b, k)[0], {"task_losses": 0.0}), ValueError,
         "reserved"),
        ({}, lambda p, b, k: task_losses(p, b, k)[0], ValueError, r"\(losses \[K\], aux\)"),
        ({}, lambda p, b, k: (task_losses(p, b, k)[0].sum(), {}), ValueError, "shape \\(K,\\)"),
        ({"eval_every": 3}, task_losses, ValueError, "multiple of eval_every"),
    ],
)
def test_clear_errors(kwargs, fn, err, match):
  with pytest.raises(err, match=match):
    mtl.fit(fn, init(jax.random.key(0)), _loss_softmax_aggregator(), optax.sgd(0.1), DATA,
            key=jax.random.key(0), num_steps=4, batch_size=8, **kwargs)
