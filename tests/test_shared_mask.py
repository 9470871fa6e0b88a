"""The `shared` mask path, checked against independent float64 references.

For every aggregator built with a `shared` mask, the update of the shared leaves
must be ``Jᵀw`` with ``w`` computed from the Gramian of the *shared leaves only*
(the bug this catches: the Gramian taken over every leaf, the mask ignored), and
each task-specific leaf must get ``Σ_k g_k``. The reference weights are NumPy
float64 transcriptions of each paper's formula (and of torchjd's / the official
code's choices where the paper leaves one open), written here from the papers,
not from weightax's solvers: closed forms, active-set enumeration of small QPs,
SciPy's SLSQP for CAGrad's dual (as the official code) and Newton for Nash-MTL.

The head gradients are large and aligned with one task, so that a Gramian over
every leaf gives clearly different weights (checked by
``test_the_mask_matters_here``).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import weightax as wx

K = 3
T = 3  # steps: DWA's weights leave 1 at the third; GradNorm and uncertainty weighting move
PARAMS = {"trunk": {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}, "head": jnp.zeros((5,))}
FULL_MASK = {"trunk": {"w": True, "b": True}, "head": False}
PREFIX_MASK = {"trunk": True, "head": False}
LOSSES = np.array([[1.0, 2.0, 0.5], [0.8, 1.9, 0.25], [0.7, 1.5, 0.2]], np.float32)
KEYS = jax.random.split(jax.random.key(42), T)
_ALL = ["linear_scalarization", "random_loss_weighting", "dwa", "uncertainty_weighting",
       "gradnorm", "mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "nash_mtl", "dualproj",
       "aligned_mtl", "geometric_loss", "krum", "trimmed_mean", "imtl"]
# (methods still being added elsewhere are checked once they exist; test_documented_scale.py
# fails for any method without an entry there)
ALL = [n for n in _ALL if hasattr(wx.aggregators, n)]
# float32 against float64: the measured worst relative error is 2.4e-6 (MGDA and Nash-MTL,
# whose 1e-6 relative ridges move w by about that much; the others are below 1.3e-6); 1e-5
# leaves a margin, while ignoring the mask moves the update by 1.2e-3 (GradNorm, through its
# norms) to 2 (IMTL-G).
RTOL = 1e-5


def _grads(step: int) -> dict:
  """Per-task gradients [K, ...]; conflicting trunks, heads large and aligned with each other."""
  key = jax.random.fold_in(jax.random.key(7), step)
  k1, k2, k3 = jax.random.split(key, 3)
  w = jax.random.normal(k1, (K, 4, 3))
  b = jax.random.normal(k2, (K, 3))
  # task 2 pulls against the other two, so that the mean conflicts with some task (else
  # DualProj's projection, and the mask with it, would not act)
  w = w.at[2].add(-1.5 * (w[0] + w[1]))
  b = b.at[2].add(-1.5 * (b[0] + b[1]))
  head = 4.0 * jax.random.normal(k3, (1, 5)) + 0.3 * jax.random.normal(k3, (K, 5))
  return {"trunk": {"w": w, "b": b}, "head": head}


def _jac(grads: dict, leaves: str = "trunk") -> np.ndarray:
  """[K, n] float64 Jacobian of the trunk (or of every leaf)."""
  tree = grads["trunk"] if leaves == "trunk" else grads
  return np.concatenate([np.asarray(x, np.float64).reshape(K, -1)
                         for x in jax.tree.leaves(tree)], axis=1)


# ------------------------------------------------------------------ float64 references


def _qp_lower_bounds(q: np.ndarray, lower: np.ndarray) -> np.ndarray:
  """argmin_{v >= lower} vᵀQv (Q positive definite), by enumerating the active sets."""
  k = len(lower)
  for r in range(k + 1):
    for free in itertools.combinations(range(k), r):
      free = list(free)
      fixed = [i for i in range(k) if i not in free]
      v = lower.astype(np.float64).copy()
      if free:
        v[free] = np.linalg.solve(q[np.ix_(free, free)], -q[np.ix_(free, fixed)] @ lower[fixed])
      grad = q @ v
      if np.all(v[free] >= lower[free] - 1e-12) and np.all(grad[fixed] >= -1e-12):
        return v
  raise AssertionError("no KKT point found")


def _mgda(g: np.ndarray) -> np.ndarray:
  """min_{λ ∈ Δ} λᵀGλ: enumerate supports S, solve [G_SS 1; 1ᵀ 0][λ; -μ] = [0; 1], keep KKT."""
  k = len(g)
  best = None
  for r in range(1, k + 1):
    for s in itertools.combinations(range(k), r):
      s = list(s)
      a = np.block([[g[np.ix_(s, s)], np.ones((r, 1))], [np.ones((1, r)), np.zeros((1, 1))]])
      try:
        sol = np.linalg.solve(a, np.r_[np.zeros(r), 1.0])
      except np.linalg.LinAlgError:
        continue
      lam = np.zeros(k)
      lam[s] = sol[:r]
      if np.all(lam >= -1e-12):
        value = lam @ g @ lam
        # KKT: (Gλ)_j >= λᵀGλ for every j outside the support
        if np.all(g @ lam >= value - 1e-10) and (best is None or value < best[0] - 1e-15):
          best = (value, lam)
  assert best is not None
  return best[1]


def _pcgrad(j: np.ndarray, key: jax.Array) -> np.ndarray:
  """Algorithm 1 of Yu et al. on the vectors, orders as documented (row i from split(key)[i])."""
  orders = [np.asarray(jax.random.permutation(kk, K)) for kk in jax.random.split(key, K)]
  out = np.zeros(j.shape[1])
  for i in range(K):
    gi = j[i].copy()
    for jj in orders[i]:
      if jj == i:
        continue
      dot = gi @ j[jj]
      if dot < 0:
        gi -= dot / (j[jj] @ j[jj]) * j[jj]
    out += gi
  return out


def _cagrad(j: np.ndarray, c: float = 0.4) -> np.ndarray:
  """The official CAGrad code's dual (SLSQP) and update, rescale=1, in float64."""
  g = j @ j.T
  b = np.full(K, 1.0 / K)
  rho = c * np.sqrt(b @ g @ b)  # c·‖g0‖

  def obj(x):
    return x @ g @ b + rho * np.sqrt(max(x @ g @ x, 0.0))

  res = scipy.optimize.minimize(
      obj, b, bounds=[(0, 1)] * K, method="SLSQP",
      constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},), options={"ftol": 1e-15,
                                                                           "maxiter": 1000})
  gw = res.x @ j
  d = b @ j + rho / np.linalg.norm(gw) * gw
  return d / (1 + c ** 2)


def _imtl_g(j: np.ndarray) -> np.ndarray:
  """The paper's closed form: α_{2:K} = g_1 Uᵀ (D Uᵀ)^{-1}, α_1 = 1 - Σ α_{2:K}."""
  u = j / np.linalg.norm(j, axis=1, keepdims=True)
  d = j[:1] - j[1:]
  uu = u[:1] - u[1:]
  alpha = j[0] @ uu.T @ np.linalg.inv(d @ uu.T)
  return np.r_[1 - alpha.sum(), alpha]


def _upgrad(j: np.ndarray, reg_eps: float = 1e-4) -> np.ndarray:
  """torchjd's UPGrad: Σ_i argmin_{v >= e_i/K} vᵀ(G/tr G + εI)v."""
  g = j @ j.T
  q = g / np.trace(g) + reg_eps * np.eye(K)
  return sum(_qp_lower_bounds(q, np.eye(K)[i] / K) for i in range(K))


def _dualproj(j: np.ndarray, reg_eps: float = 1e-4) -> np.ndarray:
  """torchjd's DualProj: argmin_{v >= 1/K} vᵀ(G/tr G + εI)v (the mean projected once)."""
  g = j @ j.T
  return _qp_lower_bounds(g / np.trace(g) + reg_eps * np.eye(K), np.full(K, 1.0 / K))


def _aligned_mtl(j: np.ndarray) -> np.ndarray:
  """The authors' code: G = VΛVᵀ, B = √λ_min·VΛ^{-½}Vᵀ, w = B·1 (the aligned gradients summed)."""
  lam, v = np.linalg.eigh(j @ j.T)
  assert lam.min() > 1e-6 * lam.max()  # full rank here: every eigenvalue is kept
  return np.sqrt(lam.min()) * (v / np.sqrt(lam)) @ v.T @ np.ones(K)


def _krum(j: np.ndarray, f: int = 0, m: int = 2) -> np.ndarray:
  """Blanchard et al.'s Multi-Krum: the mean of the m gradients of lowest score, the score
  being the squared distances to the K - f - 2 nearest others."""
  d = ((j[:, None, :] - j[None, :, :]) ** 2).sum(-1)
  scores = np.array([np.sort(np.delete(d[i], i))[: K - f - 2].sum() for i in range(K)])
  return j[np.argsort(scores)[:m]].mean(0)


def _nash(j: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
  """Gα = 1/α by Newton on ½αᵀGα - Σ log α (convex), then the update clipped to max_norm."""
  g = j @ j.T
  alpha = 1.0 / np.sqrt(np.diag(g))
  for _ in range(100):
    grad = g @ alpha - 1.0 / alpha
    d = -np.linalg.solve(g + np.diag(1.0 / alpha ** 2), grad)
    t = 1.0
    while np.any(alpha + t * d <= 0):
      t /= 2
    alpha = alpha + t * d
  np.testing.assert_allclose(alpha * (g @ alpha), 1.0, rtol=1e-10)
  u = alpha @ j
  return u * min(1.0, max_norm / np.linalg.norm(u))


def _adam_step(x, grad, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
  m = b1 * m + (1 - b1) * grad
  v = b2 * v + (1 - b2) * grad ** 2
  mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
  return x - lr * mh / (np.sqrt(vh) + eps), m, v


def _loss_based_weights(name: str) -> list[np.ndarray]:
  """The weights each loss-based method applies at steps 0..T-1 (papers' formulas)."""
  if name == "linear_scalarization":
    return [np.ones(K)] * T
  if name == "random_loss_weighting":
    out = []
    for key in KEYS:
      z = np.asarray(jax.random.normal(key, (K,), jnp.float32), np.float64)
      out.append(np.exp(z) / np.exp(z).sum())
    return out
  if name == "dwa":  # T = 2, period 1: w = K softmax(r / T) once two losses are known
    r = LOSSES[1] / LOSSES[0]
    e = np.exp(r / 2.0)
    return [np.ones(K), np.ones(K), K * e / e.sum()]
  if name == "uncertainty_weighting":  # s_0 = 0, Adam(1e-3) on ∂/∂s of Σ ½(e^{-s}L + s)
    s, m, v, out = np.zeros(K), np.zeros(K), np.zeros(K), []
    for t in range(T):
      out.append(0.5 * np.exp(-s))
      s, m, v = _adam_step(s, 0.5 * (1 - np.exp(-s) * LOSSES[t]), m, v, t + 1, 1e-3)
    return out
  raise KeyError(name)


def _gradnorm_weights(leaves: str, alpha: float = 1.5, lr: float = 0.025) -> list[np.ndarray]:
  """GradNorm (Chen et al., Eq. 2) on the trunk's norms: Adam on |w_k n_k - mean(w n) r_k^α|."""
  w, m, v, out = np.ones(K), np.zeros(K), np.zeros(K), []
  for t in range(T):
    out.append(w.copy())
    n = np.linalg.norm(_jac(_grads(t), leaves), axis=1)
    rel = LOSSES[t] / LOSSES[0]
    r = rel / rel.mean()
    target = np.mean(w * n) * r ** alpha
    grad = np.sign(w * n - target) * n
    w, m, v = _adam_step(w, grad, m, v, t + 1, lr)
    w = np.maximum(w, 0.0)
    w = K * w / w.sum()
  return out


def _reference_trunk(name: str, t: int, leaves: str = "trunk") -> np.ndarray:
  j = _jac(_grads(t), leaves)
  jt = _jac(_grads(t))  # the update is always applied to the trunk's gradients
  if name in ("linear_scalarization", "random_loss_weighting", "dwa", "uncertainty_weighting"):
    return _loss_based_weights(name)[t] @ jt
  if name == "gradnorm":
    return _gradnorm_weights(leaves)[t] @ jt
  if name == "geometric_loss":  # ∇(Π L_k)^{1/K} = Σ_k GLS/(K L_k) g_k
    gls = np.prod(LOSSES[t].astype(np.float64)) ** (1 / K)
    return gls / (K * LOSSES[t].astype(np.float64)) @ jt
  if name == "trimmed_mean":  # coordinate-wise: drop the largest and smallest of K = 3
    return np.sort(jt, axis=0)[1:-1].mean(0)
  g = j @ j.T
  if name == "mgda":
    return _mgda(g) @ jt
  if name == "imtl_g":
    return _imtl_g(j) @ jt
  if name == "imtl":  # IMTL-G on the scaled gradients e^{s_k} g_k; s descends Σ(e^s L - s) by Adam
    s, m, v = np.zeros(K), np.zeros(K), np.zeros(K)
    for tt in range(t):
      s, m, v = _adam_step(s, np.exp(s) * LOSSES[tt] - 1, m, v, tt + 1, 1e-3)
    return (_imtl_g(np.exp(s)[:, None] * j) * np.exp(s)) @ jt
  if name == "upgrad":
    return _upgrad(j) @ jt
  if name == "dualproj":
    return _dualproj(j) @ jt
  if name == "aligned_mtl":
    return _aligned_mtl(j) @ jt
  # PCGrad, CAGrad and Nash-MTL act on vectors: their weights come from j, applied to jt.
  if name == "pcgrad":
    return _weights_from(j, _pcgrad(j, KEYS[t])) @ jt
  if name == "cagrad":
    return _weights_from(j, _cagrad(j)) @ jt
  if name == "nash_mtl":
    return _weights_from(j, _nash(j)) @ jt
  if name == "krum":
    return _weights_from(j, _krum(j)) @ jt
  raise KeyError(name)


def _weights_from(j: np.ndarray, u: np.ndarray) -> np.ndarray:
  """The w with u = Jᵀw (u lies in the row space of J for every method here)."""
  w, *_ = np.linalg.lstsq(j.T, u, rcond=None)
  np.testing.assert_allclose(w @ j, u, rtol=1e-9, atol=1e-9)
  return w


# ------------------------------------------------------------------ the tests


# With K = 3 and f = 0 each Krum score is the distance to the nearest other task, so the two
# tasks of the closest pair always tie: Multi-Krum with m = 2 selects both, whatever the
# rounding (m = 1 would pick one of a tie by rounding error).
KWARGS = {"krum": {"n_selected": 2}}


def _run(name: str, shared) -> list[dict]:
  tx = getattr(wx, name)(num_tasks=K, shared=shared, **KWARGS.get(name, {}))
  state = tx.init(PARAMS)
  update = jax.jit(lambda g, s, ls, k: tx.update(g, s, PARAMS, task_losses=ls, key=k))
  outs = []
  for t in range(T):
    u, state = update(_grads(t), state, jnp.asarray(LOSSES[t]), KEYS[t])
    outs.append(u)
  return outs


@pytest.fixture(scope="module", params=ALL)
def method_outputs(request):
  return request.param, _run(request.param, FULL_MASK)


def test_shared_leaves_get_jtw_from_the_shared_gramian(method_outputs):
  name, outs = method_outputs
  for t, u in enumerate(outs):
    got = np.concatenate([np.asarray(x, np.float64).ravel()
                          for x in jax.tree.leaves(u["trunk"])])
    want = _reference_trunk(name, t)
    np.testing.assert_allclose(got, want, rtol=RTOL,
                               atol=RTOL * np.abs(want).max(),
                               err_msg=f"{name}, step {t}")


def test_task_specific_leaves_get_the_sum(method_outputs):
  name, outs = method_outputs
  for t, u in enumerate(outs):
    np.testing.assert_allclose(u["head"], np.asarray(_grads(t)["head"]).sum(0), rtol=1e-5,
                               atol=1e-5, err_msg=f"{name}, step {t}")


# One method per code path that resolves the mask: gramian_aggregator (UPGrad), a hand-written
# update (linear scalarization) and GradNorm (which also resolves `layer`).
@pytest.mark.parametrize("name", ["upgrad", "linear_scalarization", "gradnorm"])
def test_prefix_and_callable_masks_are_the_full_mask(name):
  full = _run(name, FULL_MASK)
  for shared in (PREFIX_MASK, lambda p: {"trunk": True, "head": False}):
    for a, b in zip(_run(name, shared), full, strict=True):
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def test_gradnorm_layer_accepts_a_prefix():
  states = []
  for layer in (PREFIX_MASK, FULL_MASK):
    tx = wx.gradnorm(num_tasks=K, layer=layer)
    state = tx.init(PARAMS)
    for t in range(2):
      _, state = tx.update(_grads(t), state, PARAMS, task_losses=jnp.asarray(LOSSES[t]))
    states.append(state)
  jax.tree.map(np.testing.assert_array_equal, *states)


GRAMIAN_METHODS = ["mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "nash_mtl", "dualproj",
                   "aligned_mtl", "imtl", "gradnorm"]


@pytest.mark.parametrize("name", [n for n in GRAMIAN_METHODS if n in ALL])
def test_the_mask_matters_here(name):
  """The references differ by far more than the tolerance when the heads enter the Gramian
  (GradNorm: the norms), so the test above fails if an aggregator ignores the mask there."""
  t = T - 1  # GradNorm's weights depend on the norms from the second step on
  shared_only = _reference_trunk(name, t)
  every_leaf = _reference_trunk(name, t, leaves="all")
  diff = np.abs(shared_only - every_leaf).max() / np.abs(shared_only).max()
  assert diff > 20 * RTOL, f"{name}: the mask changes the update by {diff:.1e}"


def test_resolve_shared_prefix_matches_optax_masked():
  """A prefix mask selects exactly the leaves optax.masked would transform."""
  params = {"trunk": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "heads": [jnp.ones(3),
                                                                         jnp.ones(1)]}
  mask = {"trunk": True, "heads": [False, True]}
  resolved = wx.aggregators.resolve_shared(mask, params)
  marked = optax.masked(optax.scale(2.0), mask).update(params, optax.masked(
      optax.scale(2.0), mask).init(params))[0]
  transformed = jax.tree.map(lambda a, b: bool(jnp.all(a != b)), marked, params)
  assert resolved == transformed


@pytest.mark.parametrize("bad, err, match", [
    ({"trunk": True}, ValueError, "prefix"),
    ({"trunk": True, "head": "yes"}, TypeError, "bools"),
    ({"trunk": True, "head": jnp.ones(2) > 0}, TypeError, "bools"),
])
def test_bad_masks_are_refused(bad, err, match):
  tx = wx.upgrad(shared=bad)
  with pytest.raises(err, match=match):
    tx.update(_grads(0), tx.init(PARAMS), PARAMS)
