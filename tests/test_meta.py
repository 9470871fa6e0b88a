"""weightax.meta: each method's weights against an independent float64 computation.

The references are closed forms for a linear least-squares model, written here in NumPy
from the papers' update rules (not from weightax's code): for L2RW the weights are
``max(∇ℓ_i·∇L_val, 0)`` normalised; for MW-Net and Auto-Lambda the meta-gradient through the
virtual SGD step is the chain rule written out by hand (−η ∇L_val(θ')·∇ℓ_i ∂V_i/∂φ and
−α ∇L_k(θ)·∇L_val(θ')), followed by Adam's update formula. Also: jit = eager, the methods
under ``wx.fit``/``wx.mtl.fit`` (``lax.scan``) and inside ``wx.sweep`` (``vmap``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax import meta

RTOL = 2e-4


def _linear_problem(seed: int, n: int = 12, d: int = 5, n_val: int = 7):
  rng = np.random.default_rng(seed)
  x, xv = rng.normal(size=(n, d)), rng.normal(size=(n_val, d))
  theta_true = rng.normal(size=d)
  y = x @ theta_true + rng.normal(size=n)
  y[: n // 3] *= -3.0  # corrupted examples: their gradients disagree with the clean set
  yv = xv @ theta_true
  theta = rng.normal(size=d) * 0.3
  return x, y, xv, yv, theta


def _sq_losses(p, batch, key):
  xb, yb = batch
  return 0.5 * (xb @ p - yb) ** 2


def _f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


# ----------------------------------------------------------------------------- L2RW


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2rw_weights_are_the_normalised_clipped_gradient_alignment(seed):
  x, y, xv, yv, theta = _linear_problem(seed)
  lr = 0.05
  # Independent closed form: grad of l_i = r_i x_i, grad of mean val loss = mean_j r_j x_j.
  gi = (x @ theta - y)[:, None] * x
  gv = np.mean((xv @ theta - yv)[:, None] * xv, axis=0)
  u = np.maximum(gi @ gv, 0.0)
  assert u.sum() > 0 and (u == 0).any()  # some examples are dropped, some kept
  w_ref = u / u.sum()
  theta_ref = theta - lr * (w_ref[:, None] * gi).sum(0)

  method = meta.learning_to_reweight(_sq_losses, optax.sgd(lr), inner_lr=0.3)
  tx, ty, txv, tyv, tth = _f32(x, y, xv, yv, theta)
  p, _, m = jax.jit(method.step)(tth, method.init(tth), (tx, ty), (txv, tyv), jax.random.key(0))
  np.testing.assert_allclose(m["example_weights"], w_ref, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(p, theta_ref, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(m["val_loss"], np.mean(0.5 * (xv @ theta - yv) ** 2), rtol=RTOL)
  np.testing.assert_allclose(m["loss"], np.sum(w_ref * 0.5 * (x @ theta - y) ** 2), rtol=RTOL)


def test_l2rw_all_negative_alignment_gives_zero_weights_and_no_step():
  # Every training gradient opposes the validation gradient: w = 0 (divided by 1, not 0).
  x = jnp.ones((4, 1))
  y = jnp.array([-1.0, -2.0, -3.0, -4.0])  # at θ = 0, ∇ℓ_i = -y_i > 0
  xv, yv = jnp.ones((3, 1)), jnp.array([1.0, 2.0, 3.0])  # ∇L_val < 0
  method = meta.learning_to_reweight(_sq_losses, optax.sgd(0.1))
  theta = jnp.zeros(1)
  p, _, m = method.step(theta, method.init(theta), (x, y), (xv, yv), jax.random.key(0))
  assert np.all(np.asarray(m["example_weights"]) == 0.0)
  np.testing.assert_array_equal(p, theta)


def test_l2rw_down_weights_corrupted_examples():
  x, y, xv, yv, theta = _linear_problem(3, n=30)
  theta = np.linalg.lstsq(xv, yv, rcond=None)[0] * 0.8  # near the clean solution
  method = meta.learning_to_reweight(_sq_losses, optax.sgd(0.1))
  tx, ty, txv, tyv, tth = _f32(x, y, xv, yv, theta)
  _, _, m = method.step(tth, method.init(tth), (tx, ty), (txv, tyv), jax.random.key(0))
  w = np.asarray(m["example_weights"])
  assert w[:10].mean() < w[10:].mean()


# ----------------------------------------------------------------------------- MW-Net


def _vnet_np(phi, losses):
  a = losses[:, None] * phi["w1"][0] + phi["b1"]  # [B, H]
  z = np.maximum(a, 0.0) @ phi["w2"][:, 0] + phi["b2"][0]
  return 1.0 / (1.0 + np.exp(-z)), a


@pytest.mark.parametrize("seed", [0, 1])
def test_meta_weight_net_matches_a_hand_derived_float64_transcription(seed):
  x, y, xv, yv, theta = _linear_problem(seed)
  # wd large enough to flip some meta-gradient signs, so a missing or decoupled (AdamW)
  # weight decay would show; two steps, so Adam's moments are more than sign(g).
  eta, lr, meta_lr, wd = 0.5, 0.1, 1e-2, 0.3
  b1, b2, eps = 0.9, 0.999, 1e-8
  method = meta.meta_weight_net(_sq_losses, optax.sgd(lr), inner_lr=eta, meta_lr=meta_lr,
                                meta_weight_decay=wd, hidden=7, key=jax.random.key(seed))
  tx, ty, txv, tyv, tth = _f32(x, y, xv, yv, theta)
  p, s = tth, method.init(tth)
  phi = {k: np.asarray(v, np.float64) for k, v in s.vnet.items()}
  mom = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in phi.items()}
  th, b, flips = theta.copy(), len(y), 0
  for t in range(1, 3):
    losses = 0.5 * (x @ th - y) ** 2
    gi = (x @ th - y)[:, None] * x
    v, a = _vnet_np(phi, losses)
    th_v = th - eta * (v[:, None] * gi).mean(0)  # V's input is detached: ∇ = Σ V_i ∇ℓ_i / B
    gval = np.mean((xv @ th_v - yv)[:, None] * xv, axis=0)
    dz = (-eta / b * (gi @ gval)) * v * (1 - v)  # ∂L_val(θ')/∂V_i, through the sigmoid
    act = (a > 0).astype(np.float64)
    back = dz[:, None] * act * phi["w2"][:, 0]  # ∂/∂(pre-activation a)
    grads = {"w2": (np.maximum(a, 0) * dz[:, None]).sum(0)[:, None], "b2": np.array([dz.sum()]),
             "w1": (back * losses[:, None]).sum(0)[None, :], "b1": back.sum(0)}
    for k in phi:  # PyTorch Adam(weight_decay): L2 added to the gradient, then Adam
      g = grads[k] + wd * phi[k]
      flips += int(np.sum(np.sign(g) != np.sign(grads[k])))
      m1, m2 = b1 * mom[k][0] + (1 - b1) * g, b2 * mom[k][1] + (1 - b2) * g**2
      mom[k] = (m1, m2)
      phi[k] = phi[k] - meta_lr * (m1 / (1 - b1**t)) / (np.sqrt(m2 / (1 - b2**t)) + eps)
    w_ref, _ = _vnet_np(phi, losses)
    th = th - lr * (w_ref[:, None] * gi).mean(0)

    p, s, m = jax.jit(method.step)(p, s, (tx, ty), (txv, tyv), jax.random.key(t))
    np.testing.assert_allclose(m["val_loss"], np.mean(0.5 * (xv @ th_v - yv) ** 2), rtol=RTOL)
    for k in phi:
      np.testing.assert_allclose(s.vnet[k], phi[k], rtol=RTOL, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(m["example_weights"], w_ref, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(p, th, rtol=RTOL, atol=1e-6)
  assert flips > 0


def test_vnet_init_follows_pytorch_linear_bounds():
  phi = meta.vnet_init(jax.random.key(0), 100)
  assert phi["w1"].shape == (1, 100) and phi["w2"].shape == (100, 1)
  assert float(jnp.max(jnp.abs(phi["w1"]))) <= 1.0 and float(jnp.max(jnp.abs(phi["w2"]))) <= 0.1
  assert float(jnp.max(jnp.abs(phi["w2"]))) > 0.09  # the bound is used, not a smaller one


# ----------------------------------------------------------------------------- Auto-Lambda


def _two_task_problem(seed):
  rng = np.random.default_rng(seed)
  x, xv = rng.normal(size=(10, 4)), rng.normal(size=(6, 4))
  w1, w2 = rng.normal(size=4), rng.normal(size=4)
  return x, np.stack([x @ w1, x @ w2], 1), xv, np.stack([xv @ w1, xv @ w2], 1), rng.normal(size=4)


def _task_losses(p, batch, key):
  xb, yb = batch
  return 0.5 * jnp.mean((xb @ p)[:, None] - yb, axis=0) ** 2 + 0.5 * jnp.var(
      (xb @ p)[:, None] - yb, axis=0)  # = 0.5 mean (xθ - y_k)^2, written differently


def _task_grads_np(theta, x, y):
  r = (x @ theta)[:, None] - y  # [n, K]
  return 0.5 * np.mean(r**2, 0), (r[:, :, None] * x[:, None, :]).mean(0)  # [K], [K, d]


@pytest.mark.parametrize("primary", [None, [1]])
def test_auto_lambda_matches_a_float64_sgd_momentum_transcription(primary):
  x, y, xv, yv, theta = _two_task_problem(0 if primary is None else 1)
  alpha, mu, wd, meta_lr = 0.1, 0.9, 1e-3, 1e-2
  opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(alpha, momentum=mu))
  method = meta.auto_lambda(_task_losses, opt, num_tasks=2, primary=primary, meta_lr=meta_lr)
  pri = np.ones(2) if primary is None else np.array([0.0, 1.0])
  tx, ty, txv, tyv, tth = _f32(x, y, xv, yv, theta)

  # Reference (the paper's algorithm, PyTorch SGD semantics): two steps, so the second
  # virtual step sees a non-zero momentum buffer.
  lam, buf, th = np.full(2, 0.1), np.zeros(4), theta.copy()
  m_adam, v_adam = np.zeros(2), np.zeros(2)
  b1, b2, eps = 0.9, 0.999, 1e-8
  p, s = tth, method.init(tth)
  for t in range(1, 3):
    _, gk = _task_grads_np(th, x, y)
    th_v = th - alpha * (mu * buf + lam @ gk + wd * th)
    _, gvk = _task_grads_np(th_v, xv, yv)
    g_lam = -alpha * gk @ (pri @ gvk)
    m_adam = b1 * m_adam + (1 - b1) * g_lam
    v_adam = b2 * v_adam + (1 - b2) * g_lam**2
    lam = lam - meta_lr * (m_adam / (1 - b1**t)) / (np.sqrt(v_adam / (1 - b2**t)) + eps)
    losses, gk = _task_grads_np(th, x, y)
    buf = mu * buf + lam @ gk + wd * th
    th = th - alpha * buf

    p, s, m = jax.jit(method.step)(p, s, (tx, ty), (txv, tyv), jax.random.key(t))
    np.testing.assert_allclose(m["task_weights"], lam, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(m["task_losses"], losses, rtol=RTOL)
    np.testing.assert_allclose(p, th, rtol=RTOL, atol=1e-6)
  assert not np.allclose(lam, 0.1)  # the weights did move


def test_auto_lambda_exact_gradient_agrees_with_the_reference_finite_difference():
  # The reference estimates ∇_λ L_val by -α [∇_λ L(θ+εd) - ∇_λ L(θ-εd)] / 2ε with
  # d = ∇_θ' L_val and ε = 0.01/‖d‖ (SGD without momentum); on a nonlinear model the exact
  # gradient must agree with that estimate up to its O(ε²) error.
  rng = np.random.default_rng(5)
  x = rng.normal(size=(8, 3))
  y = np.tanh(x @ rng.normal(size=(3, 2)))
  theta = rng.normal(size=(3, 2)) * 0.5

  def losses(p, batch, key):
    xb, yb = batch
    return jnp.mean((jnp.tanh(xb @ p) - yb) ** 2 * jnp.array([1.0, 3.0]), axis=0)

  alpha = 0.3
  lam = jnp.array([0.1, 0.1])
  p0, b = jnp.asarray(theta, jnp.float32), _f32(x, y)
  method = meta.auto_lambda(losses, optax.sgd(alpha), num_tasks=2,
                            meta_optimizer=optax.sgd(1.0))  # λ ← λ - g exposes g
  _, s, _ = method.step(p0, method.init(p0), b, b, jax.random.key(0))
  g_exact = np.asarray(lam - s.task_weights, np.float64)

  with jax.enable_x64():
    pp, bb = jnp.asarray(theta), (jnp.asarray(x), jnp.asarray(y))
    lam64 = jnp.asarray(lam, jnp.float64)
    g = jax.grad(lambda q: jnp.sum(lam64 * losses(q, bb, None)))(pp)
    d = jax.grad(lambda q: jnp.sum(losses(q, bb, None)))(pp - alpha * g)  # ∇_θ' L_val
    e = 0.01 / jnp.linalg.norm(d)
    # ∇_λ Σ λ_k L_k(θ) = L(θ), so the reference's estimate is -α [L(θ+εd) - L(θ-εd)] / 2ε.
    fd = -alpha * (losses(pp + e * d, bb, None) - losses(pp - e * d, bb, None)) / (2 * e)
  np.testing.assert_allclose(g_exact, np.asarray(fd), rtol=2e-3, atol=1e-6)


def test_auto_lambda_refuses_bad_arguments():
  with pytest.raises(ValueError, match="primary"):
    meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=2, primary=[2])
  with pytest.raises(ValueError, match="num_tasks"):
    meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=0)
  method = meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=3)
  x, y, xv, yv, theta = _two_task_problem(0)
  with pytest.raises(ValueError, match=r"expected \(3,\)"):
    method.step(jnp.asarray(theta), method.init(jnp.asarray(theta)), (x, y), (xv, yv),
                jax.random.key(0))


# ----------------------------------------------------------------------------- in fit / sweep


def test_fit_with_meta_runs_the_method_step_by_step():
  x, y, xv, yv, theta = _f32(*_linear_problem(0, n=40))
  method = meta.learning_to_reweight(_sq_losses, optax.sgd(0.05))
  key = jax.random.key(3)
  res = wx.fit(None, theta, None, (x, y), meta=method, val_data=(xv, yv), key=key,
               num_steps=6, batch_size=8, val_batch_size=4, eval_every=3,
               eval_fn=lambda p: jnp.mean(_sq_losses(p, (xv, yv), None)))
  # The same steps by hand: per step (batch, val batch, step) keys, batches with replacement.
  p, s, step = theta, method.init(theta), jax.jit(method.step)
  for k in jax.random.split(key, 6):
    kb, kv, ks = jax.random.split(k, 3)
    tb = wx.sample_batch((x, y), kb, 8)
    vb = wx.sample_batch((xv, yv), kv, 4)
    p, s, m = step(p, s, tb, vb, ks)
  np.testing.assert_allclose(res.params, p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(res.step_metrics["example_weights"][-1], m["example_weights"],
                             rtol=1e-5, atol=1e-6)
  assert res.step_metrics["example_weights"].shape == (6, 8)
  assert isinstance(res.opt_state, meta.LearningToReweightState)
  assert res.eval_metrics.shape == (3,)


def test_fit_meta_argument_errors():
  x, y, xv, yv, theta = _f32(*_linear_problem(0))
  method = meta.learning_to_reweight(_sq_losses, optax.sgd(0.05))
  kw = dict(key=jax.random.key(0), num_steps=2, batch_size=4)
  with pytest.raises(ValueError, match="val_data"):
    wx.fit(None, theta, None, (x, y), meta=method, **kw)
  with pytest.raises(ValueError, match="loss_fn=None"):
    wx.fit(_sq_losses, theta, None, (x, y), meta=method, val_data=(xv, yv), **kw)
  with pytest.raises(TypeError, match="MetaWeighting"):
    wx.fit(None, theta, None, (x, y), meta=optax.sgd(0.1), val_data=(xv, yv), **kw)
  with pytest.raises(ValueError, match="task_losses"):
    wx.mtl.fit(None, theta, None, None, (x, y), meta=method, val_data=(xv, yv), **kw)


def test_mtl_fit_runs_auto_lambda_and_records_its_task_weights():
  x, y, xv, yv, theta = _f32(*_two_task_problem(2))
  method = meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=2, primary=[0],
                            meta_lr=1e-2)
  res = wx.mtl.fit(None, theta, None, None, (x, y), meta=method, val_data=(xv, yv),
                   key=jax.random.key(0), num_steps=20, batch_size=10)
  w = np.asarray(res.step_metrics["task_weights"])
  assert w.shape == (20, 2) and res.step_metrics["task_losses"].shape == (20, 2)
  np.testing.assert_array_equal(w[-1], res.aggregator_state.task_weights)
  assert isinstance(res.opt_state, meta.AutoLambdaState)
  assert w[-1, 0] > w[-1, 1]  # the primary task's weight rises above the auxiliary's


def test_methods_inside_sweep_equal_single_runs():
  """vmap (wx.sweep) over a traced learning rate and seeds = the runs one at a time."""
  x, y, xv, yv, theta = _f32(*_linear_problem(1, n=24))

  def train(hp, key):
    out = {}
    for name, method in {
        "l2rw": meta.learning_to_reweight(_sq_losses, optax.sgd(hp["lr"])),
        "mwn": meta.meta_weight_net(_sq_losses, optax.sgd(hp["lr"]), inner_lr=hp["lr"],
                                    hidden=8, key=key),
    }.items():
      res = wx.fit(None, theta, None, (x, y), meta=method, val_data=(xv, yv), key=key,
                   num_steps=5, batch_size=6)
      out[name] = res.params
    return out

  sw = wx.sweep(train, {"lr": [0.02, 0.05]}, seeds=2, progress=False)
  for i in range(len(sw)):
    lr, seed = float(sw.coords["lr"][i]), int(sw.coords["seed"][i])
    single = jax.jit(train)({"lr": jnp.float32(lr)}, jax.random.key(seed))
    for name in ("l2rw", "mwn"):
      np.testing.assert_allclose(sw.metrics[name][i], single[name], rtol=1e-5, atol=1e-6)


def test_auto_lambda_inside_sweep_equals_single_runs():
  x, y, xv, yv, theta = _f32(*_two_task_problem(3))

  def train(hp, key):
    method = meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=2, primary=[0],
                              meta_lr=hp["meta_lr"])
    res = wx.mtl.fit(None, theta, None, None, (x, y), meta=method, val_data=(xv, yv), key=key,
                     num_steps=4, batch_size=5, val_batch_size=3)
    return {"w": res.step_metrics["task_weights"][-1], "p": res.params}

  sw = wx.sweep(train, {"meta_lr": [1e-3, 1e-2]}, seeds=2, progress=False)
  for i in range(len(sw)):
    hp = {"meta_lr": jnp.float32(sw.coords["meta_lr"][i])}
    single = jax.jit(train)(hp, jax.random.key(int(sw.coords["seed"][i])))
    for k in ("w", "p"):
      np.testing.assert_allclose(sw.metrics[k][i], single[k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- refused hyperparameters

BAD_RATES = [0.0, -1.0, np.nan, np.inf]


def _l2rw(lr):
  return meta.learning_to_reweight(_sq_losses, optax.sgd(0.1), inner_lr=lr)


def _mwn(**kw):
  return meta.meta_weight_net(_sq_losses, optax.sgd(0.1), **{"inner_lr": 0.1, "hidden": 8, **kw})


def _al(**kw):
  return meta.auto_lambda(_task_losses, optax.sgd(0.1), num_tasks=2, **kw)


@pytest.mark.parametrize("bad", BAD_RATES)
@pytest.mark.parametrize("make,match", [
    (_l2rw, r"learning_to_reweight: inner_lr must lie in \(0, inf\)"),
    (lambda v: _mwn(inner_lr=v), r"meta_weight_net: inner_lr must lie in \(0, inf\)"),
    (lambda v: _mwn(meta_lr=v), r"meta_weight_net: meta_lr must lie in \(0, inf\)"),
    (lambda v: _al(meta_lr=v), r"auto_lambda: meta_lr must lie in \(0, inf\)"),
])
def test_non_positive_or_non_finite_rates_are_refused(make, match, bad):
  # L2RW with inner_lr = -1 put all the weight on the examples that disagree with the
  # validation set, and 0 gave all-zero weights: no error, no training.
  with pytest.raises(ValueError, match=match):
    make(bad)
  with pytest.raises(ValueError, match=match):
    make(jnp.float32(bad))  # a concrete JAX scalar is checked too


@pytest.mark.parametrize("bad", [-1e-4, np.nan, np.inf])
def test_mwn_meta_weight_decay_must_be_non_negative(bad):
  with pytest.raises(ValueError, match=r"meta_weight_decay must lie in \[0, inf\); got"):
    _mwn(meta_weight_decay=bad)
  _mwn(meta_weight_decay=0.0)  # no decay is fine


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_mwn_hidden_must_be_a_positive_int(bad):
  # hidden = 0 gave NaN weights (an init bound 1/sqrt(0)); 2.0 failed inside jax.random.
  with pytest.raises(ValueError, match=r"hidden must be a positive int; got"):
    _mwn(hidden=bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_auto_lambda_init_weight_must_be_finite(bad):
  with pytest.raises(ValueError, match=r"init_weight must lie in \(-inf, inf\)"):
    _al(init_weight=bad)


def test_auto_lambda_meta_lr_is_unchecked_when_unused_and_may_be_a_schedule():
  _al(meta_lr=0.0, meta_optimizer=optax.sgd(1e-3))
  method = _al(meta_lr=optax.linear_schedule(1e-2, 1e-3, 10))
  x, y, xv, yv, theta = _f32(*_two_task_problem(0))
  _, _, m = method.step(theta, method.init(theta), (x, y), (xv, yv), jax.random.key(0))
  assert np.isfinite(m["task_weights"]).all()


def test_traced_invalid_rates_give_nan_instead_of_wrong_weights():
  """Inside a sweep the rates cannot be checked: an invalid member is NaN, the others exact."""
  x, y, xv, yv, theta = _f32(*_linear_problem(0))
  key = jax.random.key(0)

  def l2rw(lr):
    method = _l2rw(lr)
    return method.step(theta, method.init(theta), (x, y), (xv, yv), key)

  def mwn(lr):
    method = _mwn(inner_lr=lr)
    return method.step(theta, method.init(theta), (x, y), (xv, yv), key)

  for run in (l2rw, mwn):
    p, _, m = jax.jit(jax.vmap(run))(jnp.array([0.3, -1.0], jnp.float32))
    p1, _, m1 = run(0.3)
    np.testing.assert_allclose(m["example_weights"][0], m1["example_weights"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(p[0], p1, rtol=1e-5, atol=1e-7)
    assert np.isnan(m["example_weights"][1]).all() and np.isnan(p[1]).all()

  xt, yt, xvt, yvt, tt = _f32(*_two_task_problem(0))

  def al(meta_lr):
    method = _al(meta_lr=meta_lr)
    return method.step(tt, method.init(tt), (xt, yt), (xvt, yvt), key)[2]["task_weights"]

  lam = jax.jit(jax.vmap(al))(jnp.array([1e-2, -1e-2], jnp.float32))
  np.testing.assert_allclose(lam[0], al(1e-2), rtol=1e-5, atol=1e-7)
  assert np.isnan(lam[1]).all()
