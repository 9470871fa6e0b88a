"""The method table (weightax/_methods.py) is measured, not trusted.

Every property the table claims for a method is measured here on the update of
the public aggregator, on float32 Jacobians from five families: random
Gaussian, row norms spread over e^±8, rank-deficient, nearly opposite pairs,
and hand-made adversarial cases (among them issue 7's UPGrad example), for
K = 2, 3, 5 and 10 tasks. A "yes" must hold on every Jacobian; a "no" must be
shown by a counterexample among them, so a claim can be wrong in neither
direction. The README's method table is checked against the same source.

Tolerances (float32, 24-bit mantissa): an inner product ``<u, g_k>`` is
compared with ``TOL · ‖g_k‖ · Σ_j |w_j| ‖g_j‖`` (the rounding error of forming
``u = Σ_j w_j g_j`` in float32 is below ``K·2^-24`` times that scale);
"unchanged" means ``‖u' - u‖ <= TOL_SAME · ‖u‖`` and "the same direction"
means a cosine of at least ``1 - TOL_SAME``. A counterexample must exceed the
tolerances a hundredfold.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx
from weightax import _methods

ROOT = Path(__file__).resolve().parent.parent
TABLE = _methods.by_name()
KS = (2, 3, 10)
N = 12  # parameters: > K so random Jacobians have full row rank
TOL = 1e-4
TOL_SAME = 1e-3
RIDGE = {"upgrad": 1e-4, "dualproj": 1e-4}  # default reg_eps of the "up to ridge" methods
# The fewest tasks a method accepts at its defaults (robust rules: more than twice what they
# discard); its properties are measured on the K of KS that meet it.
MIN_K = {"krum": 3, "trimmed_mean": 3}
# Methods that average past gradients: their first update lies in the span of the task
# gradients, so that they are not weightings is measured at the second update.
AVERAGING = {"db_mtl", "moco"}


def _ks(name: str) -> tuple[int, ...]:
  return tuple(k for k in KS if k >= MIN_K.get(name, 1))

# Factories of weightax.aggregators that are building blocks, not methods.
NOT_METHODS = {
    "apply_weights", "check_task_grads", "check_task_losses", "combine", "gramian_aggregator",
    "resolve_shared", "split_shared",
}


# ------------------------------------------------------------------ Jacobians


def _unit_rows(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
  x = rng.normal(size=(k, n))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def jacobians(k: int) -> dict[str, np.ndarray]:
  """Families of ``[B, K, N]`` float32 Jacobians (a fixed seed per K)."""
  rng = np.random.default_rng(100 + k)
  fam: dict[str, list[np.ndarray]] = {"random": [], "spread": [], "rank": [], "opposite": [],
                                      "adversarial": []}
  for _ in range(6):
    fam["random"].append(rng.normal(size=(k, N)))
    # Norms e^±8, the extremes always present.
    logn = rng.uniform(-8, 8, size=k)
    logn[:2] = (-8.0, 8.0)
    fam["spread"].append(np.exp(rng.permutation(logn))[:, None] * _unit_rows(rng, k, N))
    r = int(rng.integers(1, k)) if k > 1 else 1
    fam["rank"].append(rng.normal(size=(k, r)) @ rng.normal(size=(r, N)))
    j = rng.normal(size=(k, N))
    j[1] = -j[0] * rng.uniform(0.5, 2.0) + 1e-2 * rng.normal(size=N)  # nearly opposite pair
    fam["opposite"].append(j)
  # Hand-made: issue 7's UPGrad case (a small task against two large ones), padded to K rows.
  adv = [
      [[1, 0, 0], [0, 1, 0], [-0.01, -0.01, 0.003]],
      [[1, 0, 0], [-1, 1e-3, 0], [0, 0, 1e-3]],
      [[1, 0, 0], [-0.9, 0.1, 0], [-0.9, -0.1, 0]],
      [[1e3, 0, 0], [-1, 1, 0], [0, -1, 1e-3]],
  ]
  for a in adv:
    a = np.asarray(a, np.float64)
    j = np.zeros((k, N))
    rows = min(k, 3)
    j[:rows, :3] = a[:rows]
    if k > 3:  # the other tasks: small random gradients
      j[3:] = 1e-2 * rng.normal(size=(k - 3, N))
    fam["adversarial"].append(j)
  return {name: np.stack(v).astype(np.float32) for name, v in fam.items()}


def all_jacobians(k: int) -> np.ndarray:
  return np.concatenate(list(jacobians(k).values()))


# ------------------------------------------------------------------ running a method

B = len(all_jacobians(2))  # every batch has this size, so each function compiles once per K


def _factory(name: str, k: int, **kw):
  fn = getattr(wx, name)
  if TABLE[name].num_tasks == "required":
    kw.setdefault("num_tasks", k)
  return fn(**kw)


def _first_update(name: str, k: int):
  """``(J [K, N], losses [K], key) -> u [N]``: the aggregator's first update from ``init``."""
  tx = _factory(name, k)
  m = TABLE[name]

  def one(j, losses, key):
    kwargs = {}
    if "task_losses" in m.needs:
      kwargs["task_losses"] = losses
    if "key" in m.needs:
      kwargs["key"] = key
    u, _ = tx.update({"w": j}, tx.init({"w": j[0]}), {"w": j[0]}, **kwargs)
    return u["w"]

  return one


@functools.cache
def _update_fn(name: str, k: int):
  return jax.jit(jax.vmap(_first_update(name, k)))


@functools.cache
def _weights_fn(name: str, k: int):
  """``jit(vmap((J, losses, key) -> w [K]))``: the weights of the first update.

  Gramian methods: the public weighting of ``weightax.weightings`` on the Gramian
  the aggregator forms (``test_aggregator_is_the_weighting`` checks that the
  aggregator applies exactly these). Methods whose weights do not depend on the
  gradients (``test_needs_gradients``): the update for ``J = [I_K, 0]``, which is
  ``w`` itself.
  """
  if "Gramian" in TABLE[name].needs:
    fn = getattr(wx.weightings, name)

    def one(j, losses, key):
      del losses
      g = wx.gramian({"w": j})
      return fn(g, key=key) if "key" in TABLE[name].needs else fn(g)
  else:
    update = _first_update(name, k)
    probe = jnp.eye(k, N, dtype=jnp.float32)

    def one(j, losses, key):
      del j
      return update(probe, losses, key)[:k]

  return jax.jit(jax.vmap(one))


def _args(js, losses, keys):
  b, k, _ = js.shape
  assert b == B, b
  if losses is None:
    losses = np.linspace(1.0, 2.0, k, dtype=np.float32)[None].repeat(b, 0)
  if keys is None:
    keys = jax.random.split(jax.random.key(0), b)
  return jnp.asarray(js, jnp.float32), jnp.asarray(losses, jnp.float32), keys


def run(name: str, js: np.ndarray, losses=None, keys=None) -> np.ndarray:
  """The aggregator's first update for each Jacobian of ``js`` ``[B, K, N]``, as float64."""
  return np.asarray(_update_fn(name, js.shape[1])(*_args(js, losses, keys)), np.float64)


def weights_of(name: str, js: np.ndarray, losses=None, keys=None) -> np.ndarray:
  """The method's weights ``[B, K]`` for each Jacobian, as float64."""
  return np.asarray(_weights_fn(name, js.shape[1])(*_args(js, losses, keys)), np.float64)


def lstsq_weights(js: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Least-squares weights ``w`` with ``u = Jᵀw`` (minimum norm), in float64."""
  return np.stack([np.linalg.lstsq(j.astype(np.float64).T, x, rcond=None)[0]
                   for j, x in zip(js, u, strict=True)])


def scale_of(js: np.ndarray, w: np.ndarray) -> np.ndarray:
  """``‖w‖_∞ Σ_j ‖g_j‖`` ``[B]``: float32 weights are accurate to a few ulps of this."""
  norms = np.linalg.norm(js.astype(np.float64), axis=2)
  return np.abs(w).max(axis=1) * norms.sum(axis=1)


def update64(js: np.ndarray, w: np.ndarray) -> np.ndarray:
  return np.einsum("bk,bkn->bn", w, js.astype(np.float64))


def measured(name: str, js: np.ndarray, losses=None, keys=None):
  """``(u [B, N], scale [B], w [B, K] or None)``: a weighting's ``Jᵀw`` formed in float64
  with ``scale_of``; any other method's update itself, with ``Σ_j ‖g_j‖`` (as ‖w‖_∞ = 1)."""
  if TABLE[name].weighting:
    w = weights_of(name, js, losses, keys)
    return update64(js, w), scale_of(js, w), w
  norms = np.linalg.norm(js.astype(np.float64), axis=2)
  return run(name, js, losses, keys), norms.sum(axis=1), None


@functools.cache
def _second_update_fn(name: str, k: int):
  """``jit(vmap((J₀, J, losses) -> u))``: the update on ``J`` after a first one on ``J₀``."""
  tx = _factory(name, k)

  def one(j0, j, losses):
    params = {"w": j[0]}
    _, state = tx.update({"w": j0}, tx.init(params), params, task_losses=losses)
    u, _ = tx.update({"w": j}, state, params, task_losses=losses)
    return u["w"]

  return jax.jit(jax.vmap(one))


def second_update(name: str, js: np.ndarray):
  """``(u [B, N], Σ_j ‖g_j‖ [B], None)``: the update on ``js`` after one on the batch rolled
  by one (other Jacobians), for the methods that average past gradients (AVERAGING)."""
  j, losses, _ = _args(js, None, None)
  u = _second_update_fn(name, js.shape[1])(jnp.roll(j, 1, axis=0), j, losses)
  norms = np.linalg.norm(js.astype(np.float64), axis=2)
  return np.asarray(u, np.float64), norms.sum(axis=1), None


# ------------------------------------------------------------------ the table covers the code


def test_every_aggregator_is_in_the_table():
  public = {
      n for n in wx.aggregators.__all__
      if n[0].islower() and callable(getattr(wx.aggregators, n)) and n not in NOT_METHODS
  }
  assert public == set(TABLE), (
      f"methods without a row in weightax/_methods.py: {sorted(public - set(TABLE))}; "
      f"rows without a method: {sorted(set(TABLE) - public)}"
  )


@pytest.mark.parametrize("name", sorted(TABLE))
def test_num_tasks_and_state_fields(name):
  m = TABLE[name]
  param = inspect.signature(getattr(wx, name)).parameters["num_tasks"]
  assert (param.default is inspect.Parameter.empty) == (m.num_tasks == "required")
  state = _factory(name, 3).init({"w": jnp.zeros(4)})
  fields = tuple(f for f in type(state)._fields if f != "task_weights")
  assert fields == m.state_fields
  assert (m.state == "—") == (not m.state_fields)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_hyperparameters_are_the_signature(name):
  hp = _methods.hyperparameters(TABLE[name])
  sig = inspect.signature(getattr(wx, name)).parameters
  assert set(hp) == set(sig) - {"num_tasks", "shared"}
  for p, default in hp.items():
    assert sig[p].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p} is not keyword-only"
    assert sig[p].default is default
  doc = inspect.getdoc(getattr(wx, name))
  for p in hp:  # every hyperparameter is documented under Args
    assert re.search(rf"^\s+{p}:", doc, re.M), f"{name}'s docstring does not describe {p}"


# ------------------------------------------------------------------ needs


@pytest.mark.parametrize("name", sorted(TABLE))
def test_needs_losses(name):
  tx = _factory(name, 2)
  grads = {"w": jnp.eye(2)}
  kwargs = {"key": jax.random.key(0)} if "key" in TABLE[name].needs else {}
  if "task_losses" not in TABLE[name].needs:
    return  # every other test runs it without task_losses (see _first_update)
  with pytest.raises(ValueError, match="task_losses"):
    tx.update(grads, tx.init({"w": jnp.zeros(2)}), **kwargs)  # db_mtl, moco: shapes


@pytest.mark.parametrize("name", sorted(TABLE))
def test_needs_key(name):
  js = all_jacobians(3)
  a = run(name, js, keys=jax.random.split(jax.random.key(1), B))
  b = run(name, js, keys=jax.random.split(jax.random.key(2), B))
  diff = np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-30))
  if "key" in TABLE[name].needs:
    assert diff > 100 * TOL_SAME, f"{name}: the key changes nothing (max rel. diff {diff:.2e})"
  else:
    assert diff == 0.0, f"{name}: the update depends on the key"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_needs_gradients(name):
  """Weights from the losses alone must not change with J; Gramian/Jacobian ones must."""
  js = jacobians(3)["random"]
  js = js[np.arange(B) % len(js)]
  js2 = js * np.array([[1.0], [10.0], [0.1]], np.float32)  # other Gramians
  keys = jnp.stack([jax.random.key(3)] * B)
  w1 = lstsq_weights(js, run(name, js, keys=keys))
  w2 = lstsq_weights(js2, run(name, js2, keys=keys))
  uses_grads = {"Gramian", "Jacobian"} & set(TABLE[name].needs)
  if name in ("gradnorm", "excess_mtl"):  # the first update uses w = 1; the gradients act
    # from the second step on
    uses_grads = set()
  same = np.allclose(w1, w2, rtol=1e-4, atol=1e-6)
  assert same != bool(uses_grads), f"{name}: weights {w1[0]} vs {w2[0]}"


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("name", sorted(TABLE))
def test_aggregator_is_the_weighting(name):
  """The update is ``Jᵀw`` with the measured weights, and rotates with the gradients."""
  js = all_jacobians(3)
  if not TABLE[name].weighting:  # the update leaves the span of the task gradients somewhere
    u, scale, _ = second_update(name, js) if name in AVERAGING else measured(name, js)
    resid = np.linalg.norm(u - update64(js, lstsq_weights(js, u)), axis=1)
    assert (resid / scale).max() > 100 * TOL, (resid / scale).max()
    return
  u = run(name, js)
  w = weights_of(name, js)
  err = np.linalg.norm(u - update64(js, w), axis=1)
  assert np.all(err <= TOL * scale_of(js, w)), err / np.maximum(scale_of(js, w), 1e-300)
  q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(N, N)))
  rot = run(name, (js.astype(np.float64) @ q).astype(np.float32))
  err = np.linalg.norm(rot - u @ q, axis=1)
  assert np.all(err <= TOL_SAME * scale_of(js, w)), err / np.maximum(scale_of(js, w), 1e-300)


def _conflict_measure(name: str, k: int) -> tuple[float, float]:
  """(worst ``<u,g_k>/s``, worst ``(<u,g_k> + ridge·tr(G)·w_k)/s``) over the families, with
  ``s = ‖g_k‖ ‖w‖_∞ Σ_j ‖g_j‖`` and ``u = Jᵀw`` formed in float64."""
  js = all_jacobians(k)
  u, scale, w = measured(name, js)
  j64 = js.astype(np.float64)
  dots = np.einsum("bkn,bn->bk", j64, u)
  s = np.linalg.norm(j64, axis=2) * scale[:, None]
  s = np.maximum(s, np.finfo(np.float64).tiny)
  tr = np.sum(j64**2, axis=(1, 2))[:, None]
  bound = dots + (0.0 if w is None else RIDGE.get(name, 0.0) * tr * np.maximum(w, 0.0))
  return float((dots / s).min()), float((bound / s).min())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_conflict_free(name):
  claim = TABLE[name].conflict_free
  worst = {k: _conflict_measure(name, k) for k in _ks(name)}
  if claim == "yes":
    assert all(v[0] >= -TOL for v in worst.values()), worst
  elif claim == "yes (up to ridge)":
    # The bound <u, g_k> >= -reg_eps·tr(G)·w_k holds, ...
    assert all(v[1] >= -TOL for v in worst.values()), worst
    # ... and is needed: the plain guarantee fails somewhere (else the claim would be "yes").
    assert min(v[0] for v in worst.values()) < -100 * TOL, worst
  elif claim == "K = 2":
    assert worst[2][0] >= -TOL, worst
    assert min(v[0] for k, v in worst.items() if k > 2) < -100 * TOL, worst
  else:
    assert min(v[0] for v in worst.values()) < -100 * TOL, worst


@pytest.mark.parametrize("name", sorted(TABLE))
def test_scale_invariance(name):
  claim = TABLE[name].scale_invariant
  rel_change, cos_change = [], []
  for k in _ks(name):
    js = all_jacobians(k)
    c = np.exp(np.random.default_rng(k).uniform(-3, 3, size=(B, k)))
    losses = np.linspace(1.0, 2.0, k)[None].repeat(B, 0)
    js2 = (js * c[:, :, None]).astype(np.float32)
    u, s1, _ = measured(name, js, losses)
    v, s2, _ = measured(name, js2, losses * c)
    s = np.maximum(s1, s2)
    rel_change.append(np.linalg.norm(u - v, axis=1) / np.maximum(s, 1e-300))
    nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    ok = (nu > TOL_SAME * s) & (nv > TOL_SAME * s)  # a direction worth comparing
    cos_change.append(1 - np.sum(u * v, axis=1)[ok] / (nu[ok] * nv[ok]))
  rel, cos = np.concatenate(rel_change), np.concatenate(cos_change)
  if claim == "yes":
    assert rel.max() <= TOL_SAME, rel.max()
  elif claim == "direction":
    assert cos.max() <= TOL_SAME, cos.max()
    assert rel.max() > 100 * TOL_SAME, rel.max()
  else:
    assert cos.max() > 100 * TOL_SAME, cos.max()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_permutation_invariance(name):
  claim = TABLE[name].permutation_invariant
  worst_rel = 0.0
  for k in _ks(name):
    js = all_jacobians(k)
    perm = np.random.default_rng(k).permutation(k)
    losses = np.linspace(1.0, 2.0, k, dtype=np.float32)[None].repeat(B, 0)
    if claim.startswith("yes"):
      u, scale, _ = measured(name, js, losses)
      up, _, _ = measured(name, js[:, perm], losses[:, perm])
      rel = np.linalg.norm(u - up, axis=1) / np.maximum(scale, np.finfo(np.float64).tiny)
      worst_rel = max(worst_rel, rel.max())
      tol = TOL_SAME if claim == "yes" else 10 * TOL_SAME  # "up to rounding": 1%
      assert np.all(rel <= tol), (k, rel.max())
    elif k <= 3:  # in distribution: mean weights over many keys agree within their std. error
      one, onep = js[-1:].repeat(B, 0), js[-1:, perm].repeat(B, 0)
      w = np.concatenate([weights_of(name, one, losses, jax.random.split(jax.random.key(i), B))
                          for i in range(60)])
      wp = np.concatenate([weights_of(name, onep, losses[:, perm],
                                      jax.random.split(jax.random.key(1000 + i), B))
                           for i in range(60)])
      u, v = update64(js[-1:].repeat(len(w), 0), w), update64(onep[:1].repeat(len(w), 0), wp)
      se = np.sqrt(u.var(axis=0) / len(u) + v.var(axis=0) / len(v))
      assert np.all(np.abs(u.mean(0) - v.mean(0)) <= 5 * se + 1e-6), (k, perm)
      if k > 2:  # not invariant for each key (else the claim would be "yes")
        assert np.abs(u[:B] - update64(onep, wp[:B])).max() > 1e-3
  if claim == "yes (up to rounding)":  # the rounding shows (else the claim would be "yes")
    assert worst_rel > TOL_SAME, worst_rel


# ------------------------------------------------------------------ the README agrees


def _readme_rows() -> dict[str, list[str]]:
  text = (ROOT / "README.md").read_text()
  section = text.split("## Multi-task methods", 1)[1]
  rows = {}
  header = None
  for line in section.splitlines():
    if not line.startswith("|"):
      if header is not None:
        break
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if header is None:
      header = [c.lower() for c in cells]
      continue
    if set(line) <= set("|-: "):
      continue
    name = re.match(r"`(\w+)`", cells[0])
    assert name, f"README method table: first cell {cells[0]!r} is not a `method`"
    rows[name.group(1)] = dict(zip(header, cells, strict=False))
  return rows


def test_readme_table_matches():
  rows = _readme_rows()
  assert set(rows) == set(TABLE), (sorted(set(rows) ^ set(TABLE)))
  for name, row in rows.items():
    m = TABLE[name]
    paper = row.get("paper", "")
    # The first author and the year (or "—") of the table's paper appear in the README row.
    author = m.paper.split()[0]
    assert author in paper, f"README {name}: paper {paper!r} vs table {m.paper!r}"
    year = re.search(r"\d{4}", m.paper)
    assert year is None or year.group() in paper, f"README {name}: {paper!r} vs {m.paper!r}"
    cf = next((v for h, v in row.items() if "g_k" in h or "conflict" in h), None)
    assert cf is not None, "README method table has no conflict-free column"
    cf_norm = cf.lower().replace(" ", "")
    want = m.conflict_free.lower().replace(" ", "")
    if want.startswith("yes"):
      assert cf_norm.startswith("yes"), f"README {name}: {cf!r} vs table {m.conflict_free!r}"
      assert ("ridge" in cf_norm) == ("ridge" in want), (
          f"README {name}: {cf!r} vs table {m.conflict_free!r}")
    else:
      assert cf_norm.startswith(want), f"README {name}: {cf!r} vs table {m.conflict_free!r}"
    needs = row.get("needs", "")
    for n in ("task_losses", "key"):
      assert (n in needs) == (n in m.needs), f"README {name}: needs {needs!r} vs {m.needs}"
    assert ("Gramian" in needs) == ("Gramian" in m.needs), f"README {name}: needs {needs!r}"


# ------------------------------------------------------------------ meta-learned weights

META_TABLE = _methods.meta_by_name()


def _meta_factories() -> set[str]:
  """Every public factory of ``weightax.meta`` that returns a ``MetaWeighting``."""
  out = set()
  for n in wx.meta.__all__:
    obj = getattr(wx.meta, n)
    if not inspect.isfunction(obj):
      continue
    ret = inspect.signature(obj).return_annotation
    if ret in ("MetaWeighting", wx.meta.MetaWeighting):
      out.add(n)
  return out


def _linear_problem():
  """A scalar linear model: per-example squared errors, two task losses, 8 + 4 examples."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=8), jnp.float32)
  xv = jnp.asarray(rng.normal(size=4), jnp.float32)
  per_example = lambda p, b, k: (b[0] * p["w"] + p["z"][0] * 0.0 - b[1]) ** 2

  def task_losses(p, b, k):
    e = per_example(p, b, k)
    return jnp.stack([jnp.mean(e), jnp.mean((b[0] * p["w"] + 1.0) ** 2)])

  params = {"w": jnp.array(0.3), "z": jnp.zeros(1)}  # z: a parameter with a zero gradient
  return params, per_example, task_losses, (x, 2.0 * x), (xv, 2.0 * xv)


def _build(name: str, optimizer=None):
  params, per_example, task_losses, train, val = _linear_problem()
  opt = optimizer if optimizer is not None else optax.sgd(0.1)
  if name == "auto_lambda":
    method = wx.meta.auto_lambda(task_losses, opt, num_tasks=2, meta_lr=0.01)
  elif name == "meta_weight_net":
    method = wx.meta.meta_weight_net(per_example, opt, inner_lr=0.1)
  else:
    method = getattr(wx.meta, name)(per_example, opt)
  return method, params, train, val


def test_every_meta_method_is_in_the_meta_table():
  assert _meta_factories() == set(META_TABLE), (
      f"weightax.meta factories without a row in _methods.META_METHODS: "
      f"{sorted(_meta_factories() - set(META_TABLE))}; rows without a factory: "
      f"{sorted(set(META_TABLE) - _meta_factories())}")
  assert not set(META_TABLE) & set(TABLE)  # one table per method


@pytest.mark.parametrize("name", sorted(META_TABLE))
def test_meta_state_fields_and_recorded_weights(name):
  m = META_TABLE[name]
  method, params, train, val = _build(name)
  state = method.init(params)
  assert type(state)._fields == m.state_fields
  _, _, metrics = method.step(params, state, train, val, jax.random.key(0))
  if m.weights == "task":
    assert metrics["task_weights"].shape == (2,) and "example_weights" not in metrics
  else:
    assert metrics["example_weights"].shape == (8,) and "task_weights" not in metrics


@pytest.mark.parametrize("name", sorted(META_TABLE))
def test_meta_weights_depend_on_the_validation_batch(name):
  """"needs validation data": another validation batch gives other weights."""
  m = META_TABLE[name]
  method, params, train, (xv, yv) = _build(name)
  key = "task_weights" if m.weights == "task" else "example_weights"
  w = [np.asarray(method.step(params, method.init(params), train, v, jax.random.key(0))[2][key])
       for v in ((xv, yv), (xv, -yv))]
  assert np.abs(w[0] - w[1]).max() > 1e-4, w


@pytest.mark.parametrize("name", sorted(META_TABLE))
def test_meta_runs_in_its_loop_and_needs_val_data(name):
  m = META_TABLE[name]
  method, params, train, val = _build(name)
  loop = wx.mtl.fit if m.fit == "weightax.mtl.fit" else wx.fit
  args = (None, params, None, None, train) if loop is wx.mtl.fit else (None, params, None, train)
  kw = {"key": jax.random.key(1), "num_steps": 4, "batch_size": 8}
  res = loop(*args, meta=method, val_data=val, val_batch_size=4, **kw)
  key = "task_weights" if m.weights == "task" else "example_weights"
  assert res.step_metrics[key].shape == ((4, 2) if m.weights == "task" else (4, 8))
  assert np.all(np.isfinite(res.step_metrics[key]))
  with pytest.raises(ValueError, match="val_data"):
    loop(*args, meta=method, **kw)
  if m.weights == "example":  # a per-example method is refused where task weights are needed
    with pytest.raises(ValueError, match="task_weights"):
      wx.mtl.fit(None, params, None, None, train, meta=method, val_data=val, **kw)


@pytest.mark.parametrize("name", sorted(META_TABLE))
def test_meta_hyperparameters_are_the_signature(name):
  hp = _methods.meta_hyperparameters(META_TABLE[name])
  sig = inspect.signature(getattr(wx.meta, name)).parameters
  assert set(hp) == set(sig) - {"loss_fn", "task_losses_fn", "optimizer", "num_tasks"}
  doc = inspect.getdoc(getattr(wx.meta, name))
  for p, default in hp.items():
    assert sig[p].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p} is not keyword-only"
    assert sig[p].default is default
    assert re.search(rf"^\s+{p}:", doc, re.M), f"{name}'s docstring does not describe {p}"


def test_meta_notes_l2rw_and_mwn_weights():
  """The notes: L2RW's weights sum to 1 per batch, or are all 0 when no example agrees with
  the validation gradient; MW-Net's lie in (0, 1) and are not normalised."""
  method, params, train, (xv, yv) = _build("learning_to_reweight")
  x, y = train
  mixed = (x, y.at[:3].set(-y[:3]))  # three corrupted examples
  w = np.asarray(method.step(params, method.init(params), mixed, (xv, yv),
                             jax.random.key(0))[2]["example_weights"])
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-6 and np.all(w[:3] == 0) and w[3:].min() > 0
  # At w = 0 every training gradient -4x²(target 2x) opposes the validation gradient of the
  # target -2x (+4x²): every u_i < 0, so every weight is 0.
  zero = {"w": jnp.array(0.0), "z": jnp.zeros(1)}
  w0 = np.asarray(method.step(zero, method.init(zero), train, (xv, -yv),
                              jax.random.key(0))[2]["example_weights"])
  np.testing.assert_array_equal(w0, 0.0)
  method, params, train, val = _build("meta_weight_net")
  w = np.asarray(method.step(params, method.init(params), train, val,
                             jax.random.key(0))[2]["example_weights"])
  assert np.all((w > 0) & (w < 1)) and abs(w.sum() - 1) > 1e-3


def test_meta_note_auto_lambda_through_adam_needs_eps_root():
  """The note: through optax.adam with eps_root = 0, a parameter with an exactly zero gradient
  (``z`` here) makes λ NaN; eps_root = 1e-16 keeps it finite."""
  for eps_root, finite in ((0.0, False), (1e-16, True)):
    method, params, train, val = _build("auto_lambda", optax.adam(1e-3, eps_root=eps_root))
    p, s = params, method.init(params)
    for _ in range(2):
      p, s, m = method.step(p, s, train, val, jax.random.key(0))
    assert bool(np.all(np.isfinite(m["task_weights"]))) == finite, (eps_root, m)


def test_readme_holds_the_generated_meta_table():
  text = (ROOT / "README.md").read_text()
  table = _methods.meta_markdown_table(roles=False)
  assert table in text, "README.md: regenerate the meta table with " \
      "weightax._methods.meta_markdown_table(roles=False)"
  for name in META_TABLE:  # and the documentation's version names every method
    assert f"weightax.meta.{name}`" in _methods.meta_markdown_table()
