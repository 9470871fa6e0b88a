"""The `shared` mask path, checked against independent float64 references.

For every aggregator of the method table built with a `shared` mask, the update
of the shared leaves must be ``Jᵀw`` with ``w`` computed from the Gramian of the
*shared leaves only* (the bug this catches: the Gramian taken over every leaf,
the mask ignored), and each task-specific leaf must get ``Σ_k g_k``. For the
methods whose update is not a weighting of the Gramian (GradDrop, DB-MTL, MoCo,
GradVac, ExcessMTL, ...) the shared leaves' update must be the method's update
computed on the shared leaves only, over the same steps, keys and losses.

The reference updates are NumPy float64 transcriptions of each paper's formula
(and of torchjd's / the official code's choices where the paper leaves one
open), written from the papers, not from weightax's solvers: closed forms,
active-set enumeration of small QPs, SciPy's SLSQP for CAGrad's dual (as the
official code) and Newton for Nash-MTL, here; for the methods added later, the
transcriptions of their parity tests (``test_methods_stateless.py``,
``test_methods_stateful.py``, ``test_db_mtl_moco.py``, ``test_sdmgrad_modo.py``),
imported from those modules (pytest puts ``tests/`` on ``sys.path``, the
directory of its ``conftest.py``), so that each method has one reference.

The head gradients are large and aligned with one another (but for one
coordinate, where GradDrop has a sign to drop), so that a Gramian over every
leaf gives clearly different weights (checked by
``test_the_mask_matters_here``, which also checks that every method whose
shared update cannot see the head gives the head a different update than
``Σ_k g_k`` if it ignored the mask).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from test_db_mtl_moco import db_mtl_ref, moco_ref
from test_methods_stateful import (
    _excess_mtl_reference,
    _FAMOReference,
    _gradvac_reference,
    _stch_grad_wrt_losses,
)
from test_methods_stateless import _config_ref, _fairgrad_ref
from test_sdmgrad_modo import modo_ref, sdmgrad_ref

import weightax as wx
from weightax import _methods

K = 3
T = 3  # steps: DWA's weights leave 1 at the third; GradNorm and uncertainty weighting move
PARAMS = {"trunk": {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}, "head": jnp.zeros((5,))}
N_TRUNK = 15  # the trunk's columns come last in a Jacobian of every leaf (head < trunk)
FULL_MASK = {"trunk": {"w": True, "b": True}, "head": False}
PREFIX_MASK = {"trunk": True, "head": False}
LOSSES = np.array([[1.0, 2.0, 0.5], [0.8, 1.9, 0.25], [0.7, 1.5, 0.2]], np.float32)
KEYS = jax.random.split(jax.random.key(42), T)
ALL = ["linear_scalarization", "random_loss_weighting", "dwa", "uncertainty_weighting",
       "gradnorm", "mgda", "pcgrad", "cagrad", "imtl_g", "upgrad", "nash_mtl", "dualproj",
       "aligned_mtl", "geometric_loss", "krum", "trimmed_mean", "imtl", "config", "fairgrad",
       "graddrop", "famo", "stch", "gradvac", "excess_mtl", "db_mtl", "moco", "sdmgrad", "modo"]
# Methods of the table not checked here, each with the reason (none today; checked by
# test_every_method_of_the_table_is_checked).
EXCLUDED: dict[str, str] = {}
# With K = 3 and f = 0 each Krum score is the distance to the nearest other task, so the two
# tasks of the closest pair always tie: Multi-Krum with m = 2 selects both, whatever the
# rounding (m = 1 would pick one of a tie by rounding error). ExcessMTL's default step (1e-2)
# moves its weights by about 1e-2 in three steps; 0.5 makes the estimates, and so the mask,
# matter (as in its parity test).
KWARGS = {"krum": {"n_selected": 2}, "excess_mtl": {"step_size": 0.5}}
# float32 against float64: the measured worst relative error is 2.5e-6 (MGDA and Nash-MTL,
# whose 1e-6 relative ridges move w by about that much; the others are below 1.3e-6, the
# methods added later below 1.2e-6); 1e-5 leaves a margin, while ignoring the mask moves
# the update by 1.2e-3 (GradNorm, through its norms) to 4 (SDMGrad) at some step, and, where
# the shared update cannot see the head, the head's by 1.7e-2 (DWA) to 1.8 (GradDrop).
RTOL = 1e-5
HEAD_RTOL = 1e-5


@functools.cache
def _grads(step: int, batch: int = 0) -> dict:
  """Per-task gradients [K, ...]; conflicting trunks, heads large and aligned with each other
  except at one coordinate. ``batch`` > 0: the independent batches SDMGrad and MoDo receive
  as ``extra_task_grads``, the same gradients plus independent noise (so that each task's
  gradients on two batches correlate, as they do in training)."""
  key = jax.random.fold_in(jax.random.key(7), step)
  k1, k2, k3 = jax.random.split(key, 3)
  w = jax.random.normal(k1, (K, 4, 3))
  b = jax.random.normal(k2, (K, 3))
  # task 2 pulls against the other two, so that the mean conflicts with some task (else
  # DualProj's projection, and the mask with it, would not act)
  w = w.at[2].add(-1.5 * (w[0] + w[1]))
  b = b.at[2].add(-1.5 * (b[0] + b[1]))
  head = 4.0 * jax.random.normal(k3, (1, 5)) + 0.3 * jax.random.normal(k3, (K, 5))
  # one head coordinate where task 1 disagrees, so that a GradDrop of the head would drop
  # something (with one sign everywhere it would equal Σ_k g_k and hide a mask ignored)
  head = head.at[1, 0].multiply(-1.0)
  grads = {"trunk": {"w": w, "b": b}, "head": head}
  if batch:
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(jax.random.fold_in(key, 1000 + batch), len(leaves))
    grads = jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(kk, x.shape)
                                         for x, kk in zip(leaves, keys, strict=True)])
  return grads


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


def _graddrop(j: np.ndarray, key: jax.Array, leaves: str) -> np.ndarray:
  """GradDrop (Chen et al.) per coordinate: P = ½(1 + Σg/Σ|g|), the positive values kept when
  P > U, else the negative ones; leaf l of the whole tree (as documented) draws its U from
  fold_in(key, l), so the trunk's leaves keep their draws whether or not the head is shared."""
  first = 0 if leaves == "all" else 1  # the head is leaf 0 of the whole tree
  us = [np.asarray(jax.random.uniform(jax.random.fold_in(key, first + i), x.shape, jnp.float32),
                   np.float64).ravel()
        for i, x in enumerate(jax.tree.leaves(PARAMS if leaves == "all" else PARAMS["trunk"]))]
  u = np.concatenate(us)
  p = 0.5 * (1 + j.sum(0) / np.abs(j).sum(0))
  assert np.abs(p - u).min() > 1e-4  # no coordinate on the edge between float32 and float64
  keep = ((p > u) & (j > 0)) | ((p < u) & (j < 0))
  return (keep * j).sum(0)


def _fairgrad(j: np.ndarray, alpha: float = 1.0, reg_eps: float = 1e-6) -> np.ndarray:
  """Gw = w^(−1/α) (LibMTL's least squares), G with the documented ridge reg_eps·(G_kk +
  reg_eps·tr G) on its diagonal (the ridge on G/tr G, scaled back)."""
  g = j @ j.T
  ridged = g + reg_eps * np.diag(np.diag(g) + reg_eps * np.trace(g))
  return _fairgrad_ref(ridged, alpha) @ j


@functools.cache
def _references(name: str, leaves: str = "trunk") -> tuple[np.ndarray, ...]:
  """The update at steps 0..T-1 of every column of ``_jac(_grads(t), leaves)``: the trunk's
  (leaves="trunk", the masked update) or every leaf's (leaves="all", the update the method
  would make if it ignored the mask; its first columns are the head's)."""
  js = [_jac(_grads(t), leaves) for t in range(T)]
  losses = LOSSES.astype(np.float64)
  kw = KWARGS.get(name, {})
  if name in ("linear_scalarization", "random_loss_weighting", "dwa", "uncertainty_weighting"):
    return tuple(w @ j for w, j in zip(_loss_based_weights(name), js, strict=True))
  if name == "gradnorm":
    return tuple(w @ j for w, j in zip(_gradnorm_weights(leaves), js, strict=True))
  if name == "geometric_loss":  # ∇(Π L_k)^{1/K} = Σ_k GLS/(K L_k) g_k
    return tuple(np.prod(ls) ** (1 / K) / (K * ls) @ j for ls, j in zip(losses, js, strict=True))
  if name == "trimmed_mean":  # coordinate-wise: drop the largest and smallest of K = 3
    return tuple(np.sort(j, axis=0)[1:-1].mean(0) for j in js)
  if name == "imtl":  # IMTL-G on the scaled gradients e^{s_k} g_k; s descends Σ(e^s L - s) by Adam
    s, m, v, out = np.zeros(K), np.zeros(K), np.zeros(K), []
    for t, j in enumerate(js):
      out.append((_imtl_g(np.exp(s)[:, None] * j) * np.exp(s)) @ j)
      s, m, v = _adam_step(s, np.exp(s) * LOSSES[t] - 1, m, v, t + 1, 1e-3)
    return tuple(out)
  stateless = {
      "mgda": lambda j, t: _mgda(j @ j.T) @ j,
      "imtl_g": lambda j, t: _imtl_g(j) @ j,
      "upgrad": lambda j, t: _upgrad(j) @ j,
      "dualproj": lambda j, t: _dualproj(j) @ j,
      "aligned_mtl": lambda j, t: _aligned_mtl(j) @ j,
      "pcgrad": lambda j, t: _pcgrad(j, KEYS[t]),
      "cagrad": lambda j, t: _cagrad(j),
      "nash_mtl": lambda j, t: _nash(j),
      "krum": lambda j, t: _krum(j, m=kw["n_selected"]),
      # torchjd's pinv cut-off; it cuts nothing here (three independent gradients)
      "config": lambda j, t: _config_ref(j, rcond=np.sqrt(16 * K * np.finfo(np.float32).eps)),
      "fairgrad": lambda j, t: _fairgrad(j),
      "graddrop": lambda j, t: _graddrop(j, KEYS[t], leaves),
      # ∂/∂L_k of μ log Σ exp(λ(L − z)/μ), defaults λ = 1/K, z = 0, μ = 1
      "stch": lambda j, t: _stch_grad_wrt_losses(losses[t], np.full(K, 1 / K), np.zeros(K),
                                                 1.0) @ j,
  }
  if name in stateless:
    return tuple(stateless[name](j, t) for t, j in enumerate(js))
  if name == "famo":  # a plain transform: ξ learns at call t from the losses of call t
    ref, out = _FAMOReference(K), []
    for t, j in enumerate(js):
      if t:
        ref.update(losses[t])
      out.append(ref.weights(losses[t]) @ j)
    return tuple(out)
  if name == "gradvac":  # LibMTL's loop; targets from 0, β = 0.5; PCGrad's documented orders
    targets, out = np.zeros((K, K)), []
    for t, j in enumerate(js):
      orders = [np.asarray(jax.random.permutation(kk, K)) for kk in jax.random.split(KEYS[t], K)]
      u, targets, _ = _gradvac_reference(j, targets, orders, 0.5)
      out.append(u)
    return tuple(out)
  if name == "excess_mtl":
    weights = _excess_mtl_reference(np.stack(js), kw["step_size"])
    return tuple(w @ j for w, j in zip(weights, js, strict=True))
  if name == "db_mtl":  # LibMTL's defaults β = 0.9, σ = 0
    return tuple(db_mtl_ref(np.stack(js), losses)[0])
  if name == "moco":  # the paper's defaults, projection onto the simplex
    return tuple(moco_ref(np.stack(js), losses)[0])
  if name in ("sdmgrad", "modo"):  # with the two independent batches, masked as the main one
    extra = [[_jac(_grads(t, b), leaves) for b in (1, 2)] for t in range(T)]
    w, out = np.full(K, 1.0 / K), []
    for j, (j1, j2) in zip(js, extra, strict=True):
      u, w = sdmgrad_ref(j, j1, j2, w) if name == "sdmgrad" else modo_ref(j1, j2, j, w)
      out.append(u)
    return tuple(out)
  raise KeyError(f"no reference for {name}")


def _reference_trunk(name: str, t: int, leaves: str = "trunk") -> np.ndarray:
  """The trunk's update at step t (with leaves="all": if the method ignored the mask)."""
  return _references(name, leaves)[t][-N_TRUNK:]


# ------------------------------------------------------------------ the tests


def _run(name: str, shared) -> list[dict]:
  """T updates of ``name`` built with ``shared``, through one jitted step; SDMGrad and MoDo
  get their two independent batches (every leaf: the mask must select them there too)."""
  tx = getattr(wx, name)(num_tasks=K, shared=shared, **KWARGS.get(name, {}))
  num_extra = getattr(tx, "num_extra_batches", 0)

  def step(g, extra, s, ls, k):
    kw = {"extra_task_grads": extra} if num_extra else {}
    return tx.update(g, s, PARAMS, task_losses=ls, key=k, **kw)

  update = jax.jit(step)
  state = tx.init(PARAMS)
  outs = []
  for t in range(T):
    extra = tuple(_grads(t, b) for b in range(1, num_extra + 1))
    u, state = update(_grads(t), extra, state, jnp.asarray(LOSSES[t]), KEYS[t])
    outs.append(u)
  return outs


@functools.cache
def _run_full_mask(name: str) -> list[dict]:
  """One compiled program per method, shared by every test that runs it with FULL_MASK."""
  return _run(name, FULL_MASK)


@pytest.fixture(scope="module", params=ALL)
def method_outputs(request):
  return request.param, _run_full_mask(request.param)


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
    np.testing.assert_allclose(u["head"], np.asarray(_grads(t)["head"]).sum(0), rtol=HEAD_RTOL,
                               atol=HEAD_RTOL, err_msg=f"{name}, step {t}")


# One method per code path that resolves the mask: gramian_aggregator (UPGrad), a hand-written
# update (linear scalarization) and GradNorm (which also resolves `layer`).
@pytest.mark.parametrize("name", ["upgrad", "linear_scalarization", "gradnorm"])
def test_prefix_and_callable_masks_are_the_full_mask(name):
  full = _run_full_mask(name)
  for shared in (PREFIX_MASK, lambda p: {"trunk": True, "head": False}):
    for a, b in zip(_run(name, shared), full, strict=True):
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def test_gradnorm_layer_accepts_a_prefix():
  states = []
  for layer in (PREFIX_MASK, FULL_MASK):
    tx = wx.gradnorm(num_tasks=K, layer=layer)
    update = jax.jit(lambda g, s, ls, tx=tx: tx.update(g, s, PARAMS, task_losses=ls))
    state = tx.init(PARAMS)
    for t in range(2):
      _, state = update(_grads(t), state, jnp.asarray(LOSSES[t]))
    states.append(state)
  jax.tree.map(np.testing.assert_array_equal, *states)


# Methods whose update of the shared leaves cannot depend on the other leaves: their weights
# come from the losses (or a key) only, or they act coordinate by coordinate. Ignoring the
# mask shows in the head instead, which would get the method's update, not Σ_k g_k.
SEEN_IN_THE_HEAD = ("random_loss_weighting", "dwa", "uncertainty_weighting", "geometric_loss",
                    "trimmed_mean", "graddrop", "famo", "stch")
# Methods for which ignoring the mask changes nothing, with the reason.
MASK_INVISIBLE = {"linear_scalarization": "w = 1: every leaf gets Σ_k g_k, shared or not"}


@pytest.mark.parametrize("name", [n for n in ALL if n not in MASK_INVISIBLE])
def test_the_mask_matters_here(name):
  """The references differ by far more than the tolerance when the heads enter the Gramian
  (GradNorm: the norms; the extra batches of SDMGrad and MoDo: their cross-Gramian), so the
  shared-leaves test fails if an aggregator ignores the mask there; where the shared update
  cannot see the head, the head's update would change instead, and the sum test fails."""
  diff, head_diff = 0.0, 0.0  # the largest relative change over the steps (each is checked)
  for t in range(T):
    shared_only = _reference_trunk(name, t)
    every_leaf = _references(name, "all")[t]
    diff = max(diff, np.abs(shared_only - every_leaf[-N_TRUNK:]).max() / np.abs(
        shared_only).max())
    head_sum = np.asarray(_grads(t)["head"], np.float64).sum(0)
    head_diff = max(head_diff, np.abs(every_leaf[:-N_TRUNK] - head_sum).max() / np.abs(
        head_sum).max())
  if name in SEEN_IN_THE_HEAD:
    assert diff < 1e-12, f"{name}: the shared update depends on the head ({diff:.1e})"
    assert head_diff > 20 * HEAD_RTOL, f"{name}: the head's update moves by {head_diff:.1e}"
  else:
    assert diff > 20 * RTOL, f"{name}: the mask changes the update by {diff:.1e}"


def test_every_method_of_the_table_is_checked():
  """Each row of the method table is checked above or excluded with a reason; none twice."""
  table = [m.name for m in _methods.METHODS]
  missing = sorted(set(table) - set(ALL) - set(EXCLUDED))
  assert not missing, f"add a float64 reference to _references (or an EXCLUDED reason): {missing}"
  assert not set(ALL) & set(EXCLUDED)
  assert sorted(set(ALL) | set(EXCLUDED)) == sorted(table)  # nothing stale
  assert len(ALL) == len(set(ALL))
  assert set(MASK_INVISIBLE) | set(SEEN_IN_THE_HEAD) <= set(ALL)


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
