"""Every aggregator on bfloat16 and float16 gradients, over 40 random draws per format.

The low-precision contract (weightax/aggregators/_base.py, weightax/jacobian.py):
an aggregator given bf16/fp16 task gradients computes its Gramian, norms and
weights in float32 from the gradients' exact values, accumulates ``Σ_k w_k g_k``
in float32, and rounds the update to the gradients' dtype once. So, for the
rounded inputs ``g̃`` (and rounded task losses), the low-precision update must
equal the float32 update of the *same* ``g̃`` up to that one rounding. Two
independent checks follow from it, with tolerances from the formats' unit
roundoff ``u`` (bf16: 8 significand bits, ``u = 2^-8``; fp16: 11 bits,
``u = 2^-11``; float32: ``u32 = 2^-24``):

1. Rounding once: ``|u_lp - u_ref| <= u·|u_ref| + KAPPA·K·u32·Σ_k |w_k g̃_k| + floor``
   (``floor`` = half fp16's smallest subnormal, 2^-25, as values below fp16's
   normal range round to a fixed grid; 0 for bf16, whose range is float32's).
   The second term allows for float32 rounding in a differently compiled program
   (``γ_K = K·u32`` bounds a K-term float32 sum, KAPPA = 8 is the stated
   condition factor for the weights' sensitivity to last-bit differences in G).
   A weight error of relative size ``u`` (e.g. a Gramian accumulated in bf16,
   or weights rounded to bf16 before ``Σ w_k g_k``) changes an element by about
   ``u·Σ_k |w_k g̃_k|``, which exceeds ``u·|u_ref|`` wherever the task
   gradients cancel, and the 40 draws x 3 steps x 35 elements contain many such.
2. The float32 reference itself is ``Σ_k w_k g̃_k`` in float64 NumPy (``w`` the
   weights the state reports, ``g̃`` the rounded inputs), to
   ``KAPPA·K·u32·Σ_k |w_k g̃_k|``; and the weights of the low-precision run are
   those of the reference run to ``KAPPA·K·u32`` relative to ``Σ|w|``.

The observed errors must also *reach* the rounding bound (max error / (u·|u_ref|)
above 1/2): otherwise the inputs would not exercise the rounding and the test
could not fail. The draws mix per-task scales over e^±2 and a shared direction
with random signs, so that tasks conflict and the weightings leave their
trivial cases. Each method is one jitted, vmapped program for both formats,
compiled with ``xla_allow_excess_precision=False``: by default XLA on the CPU
keeps bf16 intermediates in float32, which would hide a bf16 Gramian here.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import weightax as wx
from weightax import _methods as wx_methods

K = 3
DRAWS = 40
STEPS = 3  # DWA's weights leave 1 at the third step; stateful methods carry state across steps
KAPPA = 8.0  # stated condition factor on float32 rounding (see the module docstring)
U32 = 2.0**-24
FORMATS = {
    "bf16": (jnp.bfloat16, 2.0**-8, 0.0),
    "fp16": (jnp.float16, 2.0**-11, 2.0**-25),
}
# Every method of the method table, so that a new aggregator gets these checks too.
METHODS = list(dict.fromkeys(m.name for m in wx_methods.METHODS))
SHAPES = {"w": (7, 4), "b": (7,)}  # 35 shared parameters in two leaves


def _make(name):
  factory = getattr(wx.aggregators, name)
  kwargs = {"num_tasks": K} if "num_tasks" in inspect.signature(factory).parameters else {}
  return factory(**kwargs)


def _draws():
  """DRAWS draws of [STEPS, K, ...] float32 gradients and [STEPS, K] losses (NumPy: no compile)."""
  rng = np.random.default_rng(20261128)
  lead = (DRAWS, STEPS)
  scale = np.exp(rng.uniform(-2.0, 2.0, lead + (K, 1)))
  mix = rng.uniform(0.0, 2.0, lead + (1, 1))
  sign = rng.choice([-1.0, 1.0], lead + (K, 1))
  grads = {}
  for name, shape in SHAPES.items():
    n = int(np.prod(shape))
    own = rng.standard_normal(lead + (K, n))
    common = rng.standard_normal(lead + (1, n))
    grads[name] = (scale * (own + mix * sign * common)).reshape(lead + (K,) + shape)
  losses = np.exp(rng.uniform(-1.0, 1.0, lead + (K,)))
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), (grads, losses))


def _run(name, grads, losses, keys):
  """STEPS updates of a fresh aggregator; returns (updates [STEPS, ...], weights [STEPS, K])."""
  tx = _make(name)

  def step(state, xs):
    g, loss, key = xs
    u, state = tx.update(g, state, None, task_losses=loss, key=key)
    return state, (u, state.task_weights)

  params = jax.tree.map(lambda g: g[0, 0], grads)  # ExcessMTL's state is shaped like them
  _, (us, ws) = jax.lax.scan(step, tx.init(params), (grads, losses, keys))
  return us, ws


@functools.cache
def _results(name):
  """Per format: the rounded inputs, and the low-precision and float32 runs, in float64 NumPy.

  One jitted program per method: a vmapped run per format, and one vmapped float32
  reference run over the rounded inputs of both formats.
  """
  grads, losses = _draws()
  keys = jax.random.split(jax.random.key(7), DRAWS * STEPS).reshape(DRAWS, STEPS)
  run = jax.vmap(functools.partial(_run, name))

  def program(grads, losses, keys):
    lp, ref_in = {}, []
    for fmt, (dtype, _, _) in FORMATS.items():
      g_lp, l_lp = jax.tree.map(lambda x, dtype=dtype: x.astype(dtype), (grads, losses))
      lp[fmt] = run(g_lp, l_lp, keys)
      ref_in.append(jax.tree.map(lambda x: x.astype(jnp.float32), (g_lp, l_lp)))  # exact
    g_ref, l_ref = jax.tree.map(lambda *xs: jnp.concatenate(xs), *ref_in)
    u_ref, w_ref = run(g_ref, l_ref, jnp.concatenate([keys] * len(FORMATS)))
    out = {}
    for i, fmt in enumerate(FORMATS):
      part = lambda tree, i=i: jax.tree.map(lambda x: x[i * DRAWS:(i + 1) * DRAWS], tree)
      out[fmt] = (part(g_ref), *lp[fmt], part(u_ref), part(w_ref))
    return out

  # XLA's CPU compiler keeps bf16 intermediates in float32 by default ("excess
  # precision"), so a bf16 matmul would look exact here and fail on hardware that
  # rounds (GPUs, TPUs): round every intermediate to its declared dtype instead.
  compiled = jax.jit(program).lower(grads, losses, keys).compile(
      compiler_options={"xla_allow_excess_precision": False}
  )
  out = compiled(grads, losses, keys)
  dtypes = {fmt: jax.tree.map(lambda x: x.dtype, o[1]) for fmt, o in out.items()}
  return jax.tree.map(lambda x: np.asarray(x, np.float64), out), dtypes


def _flat(tree, lead):
  """Every leaf's trailing (parameter) axes flattened and concatenated, after ``lead`` axes."""
  return np.concatenate([x.reshape(x.shape[:lead] + (-1,)) for x in jax.tree.leaves(tree)], -1)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", METHODS)
def test_low_precision_update_is_the_float32_update_rounded_once(name, fmt):
  out, dtypes = _results(name)
  dtype, u, floor = FORMATS[fmt]
  g, u_lp, w_lp, u_ref, w_ref = out[fmt]
  assert set(jax.tree.leaves(dtypes[fmt])) == {jnp.dtype(dtype)}, "the update keeps the dtype"
  g = _flat(g, 3)  # [DRAWS, STEPS, K, n]
  u_lp, u_ref = _flat(u_lp, 2), _flat(u_ref, 2)  # [DRAWS, STEPS, n]
  if not wx_methods.by_name()[name].weighting:
    # Not Σ_k w_k g_k (trimmed mean, GradDrop): each element combines the tasks' values with
    # coefficients in [0, 1] and reports NaN weights, so the float32 slack is on Σ_k |g̃_k|.
    assert np.all(np.isnan(w_ref)) and np.all(np.isnan(w_lp)), f"{name}: weights are not NaN"
    terms = np.abs(g).sum(axis=2)
    f32_slack = KAPPA * K * U32 * terms
  else:
    assert np.all(np.isfinite(w_ref)), f"{name}: the reference weights are not finite"
    terms = np.abs(w_ref[..., None] * g).sum(axis=2)  # Σ_k |w_k g̃_k|, float64
    exact = np.einsum("dsk,dskn->dsn", w_ref, g)  # Σ_k w_k g̃_k, float64
    f32_slack = KAPPA * K * U32 * terms

    # 2. The float32 reference is Σ w_k g̃_k with the weights it reports.
    np.testing.assert_array_less(np.abs(u_ref - exact), f32_slack + 1e-30)
    # ... and the low-precision run computed the same weights.
    w_err = np.abs(w_lp - w_ref).max(axis=-1) / np.abs(w_ref).sum(axis=-1)
    assert w_err.max() <= KAPPA * K * U32, (
        f"{name}/{fmt}: weights differ from the float32 run's by {w_err.max():.3g} (relative "
        f"to Σ|w|) in draw {np.unravel_index(w_err.argmax(), w_err.shape)}; "
        f"bound {KAPPA * K * U32:.3g}"
    )

  # 1. The update is the float32 update rounded once to the format.
  err = np.abs(u_lp - u_ref)
  bound = u * np.abs(u_ref) + f32_slack + floor
  worst = np.unravel_index(np.argmax(err / np.maximum(bound, 1e-300)), err.shape)
  assert np.all(err <= bound), (
      f"{name}/{fmt}: |u_lp - u_ref| = {err[worst]:.3g} > bound {bound[worst]:.3g} at "
      f"(draw, step, element) {worst}; u_ref = {u_ref[worst]:.6g}, Σ|w g| = {terms[worst]:.3g}"
  )
  if name == "trimmed_mean":  # K = 3, trim_number = 1: the median, itself a rounded input
    np.testing.assert_array_equal(u_lp, u_ref)
    return
  # The draws exercise the rounding: errors reach the bound's order, so a bug could show.
  rounding = err / np.maximum(u * np.abs(u_ref), 1e-300)
  assert rounding[np.abs(u_ref) > 1e-3].max() > 0.5
