"""DB-MTL and MoCo against float64 NumPy transcriptions of their updates, over several steps.

The references below are written from the papers' update rules and from LibMTL's
``DB_MTL.py`` / ``MoCo.py`` (the authors' code), not from weightax: loops over
steps in float64, the simplex projection by bisection on its threshold (weightax
sorts). Each method runs several steps on random and adversarial Jacobians
(row norms over e^±8, nearly opposite rows, a zero row, 1e±30 scales) and must
match the reference's update *and* its state (the averages / tracked gradients
and λ) at every step. One jitted ``vmap(scan)`` program per configuration.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx

T = 5
LEAVES = {"a": (3, 2), "b": (4,)}  # two shared leaves: norms and Gramians span both
N = 10


# ------------------------------------------------------------------ float64 references


def db_mtl_ref(js, losses, beta=0.9, sigma=0.0, norm_eps=0.0):
  """DB-MTL: ĝ ← ∇log(L + 1e-8) + β_t(ĝ − ∇log(L + 1e-8)), u = Σ_k max‖ĝ‖/‖ĝ_k‖·ĝ_k.

  ``norm_eps=1e-8`` is LibMTL's ``‖ĝ_k‖ + 1e-8``; 0 the paper's exact ratio."""
  js, losses = np.asarray(js, np.float64), np.asarray(losses, np.float64)
  buf = np.zeros(js.shape[1:])
  outs, bufs, terms = [], [], []
  for t in range(1, js.shape[0] + 1):
    g = js[t - 1] / (losses[t - 1] + 1e-8)[:, None]
    buf = g + beta / t**sigma * (buf - g)
    n = np.linalg.norm(buf, axis=1)
    if norm_eps:
      alpha = n.max() / (n + norm_eps)
    else:
      alpha = np.divide(n.max(), n, out=np.zeros_like(n), where=n > 0)
    outs.append(alpha @ buf)
    bufs.append(buf.copy())
    terms.append(np.abs(alpha[:, None] * buf).sum(0).max())
  return np.stack(outs), np.stack(bufs), np.array(terms)


def simplex_ref(v):
  """Euclidean projection onto the simplex: max(v − τ, 0) with Σ = 1, τ by bisection."""
  lo, hi = v.min() - 1.0, v.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if np.maximum(v - mid, 0).sum() > 1:
      lo = mid
    else:
      hi = mid
  return np.maximum(v - 0.5 * (lo + hi), 0)


def moco_ref(js, losses, beta=0.5, bsig=0.5, gamma=0.1, gsig=0.5, rho=0.0, softmax=False,
             norm_eps=0.0):
  """MoCo: y ← y − β_t(y − L g/‖g‖); λ ← Π(λ − γ_t(YYᵀ + ρI)λ); u = Yᵀλ.

  ``softmax=True, norm_eps=1e-8`` is LibMTL's ``MoCo`` line by line."""
  js, losses = np.asarray(js, np.float64), np.asarray(losses, np.float64)
  k = js.shape[1]
  y, lam = np.zeros(js.shape[1:]), np.full(k, 1.0 / k)
  outs, ys, lams, terms = [], [], [], []
  for t in range(1, js.shape[0] + 1):
    g, loss = js[t - 1], losses[t - 1]
    n = np.linalg.norm(g, axis=1)
    if norm_eps:
      h = g / (n + norm_eps)[:, None] * loss[:, None]
    else:
      h = np.divide(g * loss[:, None], n[:, None], out=np.zeros_like(g), where=n[:, None] > 0)
    y = y - beta / t**bsig * (y - h)
    v = lam - gamma / t**gsig * (y @ y.T + rho * np.eye(k)) @ lam
    if softmax:
      e = np.exp(v - v.max())
      lam = e / e.sum()
    else:
      lam = simplex_ref(v)
    outs.append(y.T @ lam)
    ys.append(y.copy())
    lams.append(lam.copy())
    terms.append(np.abs(lam[:, None] * y).sum(0).max())
  return np.stack(outs), np.stack(ys), np.stack(lams), np.array(terms)


# ------------------------------------------------------------------ inputs


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def jacobians(k, seed=0):
  """``{family: ([B, T, K, N] Jacobians, [B, T, K] losses)}``, float32, B = 4 per family."""
  rng = np.random.default_rng(seed + 10 * k)
  b = 4
  losses = np.exp(rng.uniform(-2, 2, size=(b, T, k)))
  fam = {"random": rng.normal(size=(b, T, k, N))}
  logn = rng.uniform(-8, 8, size=(b, T, k, 1))
  fam["spread"] = np.exp(logn) * _unit(rng, (b, T, k, N))
  opp = rng.normal(size=(b, T, k, N))
  if k > 1:
    opp[:, :, 1] = -opp[:, :, 0] * rng.uniform(0.5, 2.0, size=(b, T, 1)) + 1e-3 * rng.normal(
        size=(b, T, N))
  fam["opposite"] = opp
  zero = rng.normal(size=(b, T, k, N))
  zero[:, 1:3, 0] = 0.0  # task 0 has a zero gradient at steps 2 and 3
  fam["zero_row"] = zero
  fam["tiny"] = 1e-30 * rng.normal(size=(b, T, k, N))
  fam["huge"] = 1e30 * rng.normal(size=(b, T, k, N))
  return {name: (j.astype(np.float32), losses.astype(np.float32)) for name, j in fam.items()}


def _tree(j):
  """[..., K, N] -> the pytree of LEAVES with the same leading axes."""
  lead = j.shape[:-1]
  out, i = {}, 0
  for name, shape in LEAVES.items():
    n = int(np.prod(shape))
    out[name] = j[..., i:i + n].reshape(lead + shape)
    i += n
  return out


def _flat(tree, lead):
  return jnp.concatenate([tree[n].reshape(tree[n].shape[:lead] + (-1,)) for n in LEAVES], -1)


def _program(tx):
  """jit(vmap(scan)) over [B, T, K, N] Jacobians: (updates [B,T,N], the state's [K, N] arrays
  per step, the state's [K] arrays per step)."""
  params = {n: jnp.zeros(s) for n, s in LEAVES.items()}

  def one(js, losses):
    def step(state, xs):
      j, loss = xs
      u, state = tx.update(_tree(j), state, params, task_losses=loss)
      tracked = state.averages if hasattr(state, "averages") else state.tracked
      lam = getattr(state, "lambdas", state.task_weights)
      return state, (_flat(u, 0), _flat(tracked, 1), lam, state.task_weights)

    _, out = jax.lax.scan(step, tx.init(params), (js, losses))
    return out

  return jax.jit(jax.vmap(one))


def _check(got, want, what, scale=None, rtol=2e-5):
  """Each step's update [N] / state [K, N] close to float64, relative to ``scale`` [T] (for
  an update: max Σ_k |c_k y_k| over its terms, as float32 rounds the terms before they
  cancel) or to the step's largest entry."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape and np.all(np.isfinite(got)), what
  if scale is None:
    scale = np.abs(want).max(axis=tuple(range(1, want.ndim)))
  scale = np.reshape(scale, (-1,) + (1,) * (want.ndim - 1))  # per step
  bound = np.broadcast_to(rtol * scale + 1e-300, want.shape)
  np.testing.assert_array_less(np.abs(got - want), bound, err_msg=what)


# ------------------------------------------------------------------ DB-MTL


@pytest.mark.parametrize("k", [2, 3, 5])
def test_db_mtl_matches_the_paper_over_steps(k):
  run = _program(wx.db_mtl(num_tasks=k))
  for fam, (js, losses) in jacobians(k).items():
    us, avgs, _, tw = run(jnp.asarray(js), jnp.asarray(losses))
    assert bool(jnp.all(jnp.isnan(tw))), "the update is not Σ w g: task_weights stays NaN"
    for b in range(js.shape[0]):
      want_u, want_avg, terms = db_mtl_ref(js[b], losses[b])
      _check(us[b], want_u, f"{fam} update, K={k}", terms)
      _check(avgs[b], want_avg, f"{fam} averages, K={k}")


def test_db_mtl_matches_libmtl_where_its_epsilon_is_negligible_and_beta_sigma():
  """LibMTL's ‖ĝ‖ + 1e-8 and a decaying β_t = β/t^σ (σ = 0.5, β = 0.6)."""
  k = 3
  run = _program(wx.db_mtl(num_tasks=k, beta=0.6, beta_sigma=0.5))
  js, losses = jacobians(k, seed=1)["random"]
  us, avgs, _, _ = run(jnp.asarray(js), jnp.asarray(losses))
  for b in range(js.shape[0]):
    want_u, want_avg, terms = db_mtl_ref(js[b], losses[b], beta=0.6, sigma=0.5,
                                         norm_eps=1e-8)
    _check(us[b], want_u, "update", terms)
    _check(avgs[b], want_avg, "averages")
  # ... and the decay matters: a constant β = 0.6 gives another second update
  other = db_mtl_ref(js[0], losses[0], beta=0.6, sigma=0.0)[0]
  assert np.abs(other[1] - np.asarray(us[0, 1])).max() > 1e-2 * np.abs(other[1]).max()


def test_db_mtl_is_invariant_to_loss_scales():
  """L_k -> c_k L_k (g_k -> c_k g_k) leaves every update unchanged: the log transform."""
  k = 3
  js, losses = jacobians(k, seed=2)["random"]
  c = np.exp(np.random.default_rng(0).uniform(-3, 3, size=(1, 1, k))).astype(np.float32)
  run = _program(wx.db_mtl(num_tasks=k))
  u1 = np.asarray(run(jnp.asarray(js), jnp.asarray(losses))[0])
  u2 = np.asarray(run(jnp.asarray(js * c[..., None]), jnp.asarray(losses * c))[0])
  np.testing.assert_allclose(u2, u1, rtol=1e-4, atol=1e-5 * np.abs(u1).max())


def test_db_mtl_negative_loss_gives_nan_not_a_silent_ascent():
  tx = wx.db_mtl(num_tasks=2)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.ones((2, 3))}
  update = jax.jit(lambda ls: tx.update(grads, tx.init(params), params, task_losses=ls)[0])
  assert bool(jnp.all(jnp.isnan(update(jnp.array([1.0, -0.5]))["w"])))
  assert bool(jnp.all(jnp.isfinite(update(jnp.array([1.0, 0.0]))["w"])))  # L = 0: g/1e-8


# ------------------------------------------------------------------ MoCo


@pytest.mark.parametrize("k", [2, 3, 5])
def test_moco_matches_the_paper_over_steps(k):
  run = _program(wx.moco(num_tasks=k))
  for fam, (js, losses) in jacobians(k).items():
    us, ys, lams, tw = run(jnp.asarray(js), jnp.asarray(losses))
    assert bool(jnp.all(jnp.isnan(tw)))
    for b in range(js.shape[0]):
      want_u, want_y, want_lam, terms = moco_ref(js[b], losses[b])
      _check(us[b], want_u, f"{fam} update, K={k}", terms)
      _check(ys[b], want_y, f"{fam} tracked, K={k}")
      np.testing.assert_allclose(lams[b], want_lam, rtol=0, atol=2e-6, err_msg=f"{fam} λ")


def test_moco_softmax_is_libmtl_and_rho_gamma_beta_act():
  """simplex="softmax" with LibMTL's ‖g‖ + 1e-8 (negligible here), and every step size."""
  k = 3
  kw = dict(beta=0.7, beta_sigma=0.3, gamma=2.0, gamma_sigma=0.2, rho=0.5)
  js, losses = jacobians(k, seed=4)["random"]
  outs = {}
  for simplex in ("softmax", "projection"):
    run = _program(wx.moco(num_tasks=k, simplex=simplex, **kw))
    us, ys, lams, _ = run(jnp.asarray(js), jnp.asarray(losses))
    for b in range(js.shape[0]):
      want_u, want_y, want_lam, terms = moco_ref(
          js[b], losses[b], beta=0.7, bsig=0.3, gamma=2.0, gsig=0.2, rho=0.5,
          softmax=simplex == "softmax", norm_eps=1e-8 if simplex == "softmax" else 0.0)
      _check(us[b], want_u, f"{simplex} update", terms)
      _check(ys[b], want_y, f"{simplex} tracked")
      np.testing.assert_allclose(lams[b], want_lam, rtol=0, atol=2e-6)
    outs[simplex] = np.asarray(lams)
  # the two maps differ (γ = 2 pushes the projection to the simplex's boundary)
  assert np.abs(outs["softmax"] - outs["projection"]).max() > 1e-2
  assert (outs["projection"] == 0).any()


def test_moco_single_task_is_the_tracked_gradient():
  """K = 1 (the docstring): λ = 1 with either map, u_t = (1 − β_t) u_{t−1} + β_t L_t g_t/‖g_t‖
  (the conformance suite checks the default map at K = 1; this, softmax)."""
  js, losses = jacobians(1, seed=5)["random"]
  for simplex in ("softmax",):
    us, _, lams, _ = _program(wx.moco(num_tasks=1, simplex=simplex))(
        jnp.asarray(js), jnp.asarray(losses))
    np.testing.assert_array_equal(np.asarray(lams), 1.0)
    for b in range(js.shape[0]):
      m = np.zeros(N)
      for t in range(1, T + 1):
        g = js[b, t - 1, 0].astype(np.float64)
        bt = 0.5 / np.sqrt(t)
        m = (1 - bt) * m + bt * losses[b, t - 1, 0] * g / np.linalg.norm(g)
        np.testing.assert_allclose(us[b, t - 1], m, rtol=1e-5, atol=1e-7 * np.abs(m).max())


def test_simplex_projection_against_bisection():
  from weightax.aggregators.moco import project_to_simplex

  rng = np.random.default_rng(6)
  vs = np.concatenate([rng.normal(size=(50, 5)) * rng.uniform(0.01, 10, size=(50, 1)),
                       np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2, 0.2],
                                 [5.0, -5.0, 0.0, 0.0, 0.0]])])
  got = np.asarray(jax.jit(jax.vmap(project_to_simplex))(jnp.asarray(vs, jnp.float32)))
  want = np.stack([simplex_ref(v) for v in vs.astype(np.float32).astype(np.float64)])
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert bool(jnp.all(jnp.isnan(project_to_simplex(jnp.array([0.5, jnp.nan])))))


def test_moco_refuses_an_unknown_simplex_map():
  with pytest.raises(ValueError, match="simplex must be one of"):
    wx.moco(num_tasks=2, simplex="sparsemax")


# ------------------------------------------------------------------ both


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_init_needs_the_parameters_and_update_the_losses(name):
  tx = getattr(wx, name)(num_tasks=2)
  with pytest.raises(ValueError, match="init needs the parameters"):
    tx.init(None)
  params = {"w": jnp.zeros(3)}
  with pytest.raises(ValueError, match="task_losses"):
    tx.update({"w": jnp.ones((2, 3))}, tx.init(params), params)
  with pytest.raises(ValueError, match="state was built for 1"):
    tx.update({"w": jnp.ones((2, 3)), "v": jnp.ones((2, 1))}, tx.init(params),
              task_losses=jnp.ones(2))


@pytest.mark.parametrize("name", ["db_mtl", "moco"])
def test_shared_mask_averages_only_the_shared_leaves(name):
  """Shared leaves follow the reference on their own gradients; the head gets Σ_k g_k."""
  k = 3
  js, losses = jacobians(k, seed=7)["random"]
  js, losses = js[0], losses[0]
  params = {"trunk": jnp.zeros(N), "head": jnp.zeros(4)}
  tx = getattr(wx, name)(num_tasks=k, shared={"trunk": True, "head": False})
  state = tx.init(params)
  assert state[0]["head"] is None  # no average kept for the head
  heads = np.random.default_rng(8).normal(size=(T, k, 4)).astype(np.float32)
  ref = db_mtl_ref(js, losses) if name == "db_mtl" else moco_ref(js, losses)
  update = jax.jit(lambda g, s, ls: tx.update(g, s, params, task_losses=ls))
  for t in range(T):
    u, state = update({"trunk": jnp.asarray(js[t]), "head": jnp.asarray(heads[t])}, state,
                      jnp.asarray(losses[t]))
    _check(u["trunk"][None], ref[0][t][None], f"trunk step {t}", ref[-1][t])
    np.testing.assert_allclose(u["head"], heads[t].sum(0), rtol=1e-6, atol=1e-6)
