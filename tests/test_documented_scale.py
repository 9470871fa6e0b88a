"""The scale each docstring documents, on K > 1 identical task gradients.

With every ``g_k = g`` the methods' formulas collapse to a multiple of ``g`` that
can be derived by hand from each paper (the derivations are in the docstrings and
next to each expected factor below). This gives every convention (sum or mean,
rescaling, ½ in uncertainty weighting, the clip of Nash-MTL) a catcher that is
independent of the conformance suite's K = 1 check and of the weightings' own
tests: e.g. a mean instead of a sum in linear scalarization gives ``g`` instead
of ``K·g``, a DWA whose weights do not sum to K gives a different multiple.
"""

import importlib.util
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx

K = 3
T = 4  # DWA's weights leave 1 at the third step; GradNorm's weights move from the second
G = {"trunk": jax.random.normal(jax.random.key(0), (4, 3)),
     "head": jax.random.normal(jax.random.key(1), (5,))}
NORM = math.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(G)))
GRADS = jax.tree.map(lambda x: jnp.stack([x] * K), G)
# Falling at different rates, so DWA's ratios and GradNorm's targets differ between tasks.
LOSSES = jnp.array([[1.0, 2.0, 0.5], [0.8, 1.9, 0.25], [0.7, 1.5, 0.2], [0.6, 1.4, 0.1]])
KEYS = jax.random.split(jax.random.key(2), T)
C = 0.4



def _db_mtl_factor(t):
  """Each average is c_k·g, c_k ← βc_k + (1 − β)/(L_k + 1e-8) (β = 0.9); every one is rescaled
  to the largest norm, so u = K·max_k c_k·g."""
  c = np.zeros(K)
  for s in range(t + 1):
    c = 0.9 * c + 0.1 / (np.asarray(LOSSES[s], np.float64) + 1e-8)
  return K * c.max()


def _moco_factor(t):
  """y = βL (β_1 = 0.5) and Y = y ĝᵀ, so YYᵀλ = (yᵀλ)y and, with λ₀ = 1/K and no weight
  clipped at 0, Π_Δ gives λ = 1/K + γβ²L̄(L̄ − L) (γ = 0.1); u = Yᵀλ = (λᵀy)/‖g‖·g."""
  assert t == 0
  loss = np.asarray(LOSSES[0], np.float64)
  lam = 1 / K + 0.1 * 0.5**2 * loss.mean() * (loss.mean() - loss)
  assert np.all(lam > 0) and abs(lam.sum() - 1) < 1e-12
  return lam @ (0.5 * loss) / NORM


# name -> (factory kwargs, expected factor f with u = f·g at every step, or at the first only)
EXPECTED = {
    # Σ_k w_k g with w = 1: K·g.
    "linear_scalarization": ({}, K, "every"),
    # w = softmax(z) sums to 1: g.
    "random_loss_weighting": ({}, 1.0, "every"),
    # w = 1 for two periods, then K·softmax(r/T), which sums to K: K·g.
    "dwa": ({}, K, "every"),
    # w_k = ½e^{-s_k} with s_0 = 0: K/2·g at the first step.
    "uncertainty_weighting": ({}, K / 2, "first"),
    # w_0 = 1, renormalised to Σw = K after every step: K·g.
    "gradnorm": ({}, K, "every"),
    # every point of the hull of {g} is g.
    "mgda": ({}, 1.0, "every"),
    # no pair conflicts (<g, g> > 0): nothing is projected and u = Σ_k g = K·g.
    "pcgrad": ({}, K, "every"),
    # g0 = g_w = g and d = g0 + c‖g0‖ g_w/‖g_w‖ = (1+c)·g, divided by 1 + c².
    "cagrad": ({"c": C}, (1 + C) / (1 + C ** 2), "every"),
    # equal projections hold for every u; the weights sum to 1: g.
    "imtl_g": ({}, 1.0, "every"),
    # IMTL-G on e^{s_k}g: α_k ∝ e^{-s_k}, u = Σ_k α_k e^{s_k} g = K/(Σ_k e^{-s_k})·g; s_0 = 0: g.
    "imtl": ({}, 1.0, "first"),
    # w = softmax(ξ − log D) sums to 1: g.
    "famo": ({}, 1.0, "every"),
    # w = λ·softmax(λL/μ) with λ = 1/K: Σ_k w_k = 1/K.
    "stch": ({}, 1 / K, "every"),
    # every cosine is 1, at or above any target: nothing is corrected, u = Σ_k g = K·g.
    "gradvac": ({}, K, "every"),
    # identical estimates e_k: exp(η e_k/e⁰_k) is the same for every task, w stays 1: K·g.
    "excess_mtl": ({}, K, "every"),
    # each g/K already lies in the dual cone {d: <g, d> >= 0}: u = Σ_i g/K = g.
    "upgrad": ({}, 1.0, "every"),
    # the mean g already lies in the dual cone {d: <g, d> >= 0}: no projection, u = g.
    "dualproj": ({}, 1.0, "every"),
    # G = ‖g‖²11ᵀ has one kept eigenvalue K‖g‖² (v = 1/√K): B = vvᵀ, w = B·1 = 1, u = K·g.
    "aligned_mtl": ({}, K, "every"),
    # ∇(Π_k L_k)^{1/K} = Σ_k GLS/(K L_k) g_k: (GLS/K · Σ_k 1/L_k)·g, from each step's losses.
    "geometric_loss": ({}, "gls", "every"),
    # every score is 0 and every candidate is g: u = g.
    "krum": ({}, 1.0, "every"),
    # each coordinate's K values are equal, so their trimmed mean is g's coordinate.
    "trimmed_mean": ({}, 1.0, "every"),
    # Gw = w^{-1} with G = ‖g‖²11ᵀ: K‖g‖²w = 1/w, w_k = 1/(√K‖g‖), u = √K/‖g‖·g (α = 1).
    "fairgrad": ({}, math.sqrt(K) / NORM, "every"),
    # equal unit gradients ĝ: d̂ = ĝ, the projections sum to K‖g‖, u = K‖g‖ĝ = K·g.
    "config": ({}, K, "every"),
    # every coordinate has one sign across the tasks (P = 0 or 1): nothing dropped, u = K·g.
    "graddrop": ({}, K, "every"),
    # α_k = 1/(√K‖g‖) solves Gα = 1/α; ‖Jᵀα‖ = √K > max_norm = 1 is clipped to 1: g/‖g‖.
    "nash_mtl": ({}, 1.0 / NORM, "every"),
    # moving averages c_k·g of g/(L_k + 1e-8), each rescaled to the largest: K·max_k c_k·g.
    "db_mtl": ({}, _db_mtl_factor, "every"),
    # one projected step from λ₀ = 1/K on tracks βL_k·g/‖g‖: (λᵀβL)/‖g‖·g (see _moco_factor).
    "moco": ({}, _moco_factor, "first"),
    # weights on the simplex (sdmgrad: (w + λ/K)/(1 + λ), modo: λ) sum to 1: g.
    "sdmgrad": ({}, 1.0, "every"),
    "modo": ({}, 1.0, "every"),
}
EXTRA = {
    "cagrad_no_rescale": ("cagrad", {"c": C, "rescale": False}, 1 + C, "every"),
    "nash_mtl_unclipped": ("nash_mtl", {"max_norm": 0.0}, math.sqrt(K) / NORM, "every"),
    "linear_scalarization_mean": ("linear_scalarization", {"weights": jnp.full(K, 1 / K)}, 1.0,
                                  "every"),
}
CASES = {c: v for c, v in {**{n: (n, *v) for n, v in EXPECTED.items()}, **EXTRA}.items()
         if hasattr(wx.aggregators, v[0])}  # every method that exists; see the next test
# coordinate-wise, or averages of past gradients: task_weights is NaN
NOT_WEIGHTING = {"trimmed_mean", "graddrop", "db_mtl", "moco"}


def _factor(factor, t):
  if callable(factor):
    return factor(t)
  if factor == "gls":
    losses = np.asarray(LOSSES[t], np.float64)
    return np.prod(losses) ** (1 / K) / K * np.sum(1 / losses)
  return factor


def test_every_method_has_a_documented_scale():
  # one method, one module: weightax.aggregators.<name> defines the factory <name>
  methods = {n for n in wx.aggregators.__all__
             if importlib.util.find_spec(f"weightax.aggregators.{n}") is not None}
  assert methods <= set(EXPECTED), f"no documented scale for {sorted(methods - set(EXPECTED))}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_identical_gradients_give_the_documented_multiple(case):
  name, kwargs, factor, when = CASES[case]
  tx = getattr(wx, name)(num_tasks=K, **kwargs)
  state = tx.init(G)
  update = jax.jit(lambda s, ls, k: tx.update(GRADS, s, G, task_losses=ls, key=k))
  for t in range(T if when == "every" else 1):
    factor = _factor(CASES[case][2], t)
    u, state = update(state, LOSSES[t], KEYS[t])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, factor * b, rtol=1e-5, atol=1e-6 * abs(factor), err_msg=f"{case}, step {t}"), u, G)
    if name in NOT_WEIGHTING:
      assert bool(jnp.all(jnp.isnan(state.task_weights)))
    else:  # the weights it reports reproduce the same update: Σ_k w_k = factor
      np.testing.assert_allclose(jnp.sum(state.task_weights), factor, rtol=1e-5)


def test_docstrings_state_the_scale():
  """Each method's docstring says what it does on identical gradients."""
  missing = [n for n in EXPECTED if hasattr(wx, n)
             and not re.search(r"identical\s+(task\s+)?gradients", getattr(wx, n).__doc__)]
  assert missing == []
