"""Aggregators composed with Optax's wrappers, as the README says ("Composing with Optax").

An aggregator consumes the Jacobian (a leading task axis K on every leaf) and returns a
parameter-shaped update, so it comes first in an ``optax.chain``; wrappers of
parameter-shaped updates go after it. Gradient accumulation with ``optax.MultiSteps``
then averages the aggregated updates of the micro-batches; the other order is refused
with an error that names the fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import weightax as wx

K = 3


def _jacobians(n: int) -> list[dict]:
  r = np.random.default_rng(4)
  return [{"w": jnp.asarray(r.normal(size=(K, 4)), jnp.float32),
           "b": jnp.asarray(r.normal(size=(K,)), jnp.float32)} for _ in range(n)]


PARAMS = {"w": jnp.zeros(4), "b": jnp.zeros(())}


@pytest.mark.parametrize("name", ["upgrad", "dwa"])
def test_multisteps_after_the_aggregator_averages_the_aggregated_updates(name):
  """Every second call applies −lr times the mean of the two micro-batches' aggregated
  updates (each from the aggregator alone, its state advanced at every micro-batch, as
  DWA's loss history is); the calls in between apply nothing."""
  lr, jacs = 0.1, _jacobians(4)
  losses = [jnp.asarray([1.0, 2.0, 3.0]) * (0.9 ** t) for t in range(4)]
  make = lambda: getattr(wx, name)(num_tasks=K)  # noqa: E731
  tx = optax.chain(make(), optax.MultiSteps(optax.sgd(lr), every_k_schedule=2))
  alone = make()
  state, alone_state = tx.init(PARAMS), alone.init(PARAMS)
  step = jax.jit(lambda j, s, ls: tx.update(j, s, PARAMS, task_losses=ls))
  pending = []
  for t in range(4):
    u, state = step(jacs[t], state, losses[t])
    a, alone_state = alone.update(jacs[t], alone_state, PARAMS, task_losses=losses[t])
    pending.append(a)
    if t % 2 == 0:
      assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(u))
    else:
      want = jax.tree.map(lambda x, y: -lr * (np.asarray(x) + np.asarray(y)) / 2, *pending)
      jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5,
                                                           atol=1e-7), u, want)
      pending = []


@pytest.mark.parametrize("params", [PARAMS, {"w": jnp.zeros(4)}], ids=["mixed", "one-leaf"])
def test_an_aggregator_inside_multisteps_says_where_it_goes(params):
  """Inside MultiSteps the aggregator sees parameter-shaped arrays: leaves of different
  leading sizes, or a leading axis that is not num_tasks. Both errors name the order."""
  tx = optax.MultiSteps(optax.chain(wx.upgrad(num_tasks=K), optax.sgd(0.1)),
                        every_k_schedule=2)
  jac = {key: value for key, value in _jacobians(1)[0].items() if key in params}
  with pytest.raises(ValueError, match=r"comes first in an optax.chain.*optax.MultiSteps"):
    tx.update(jac, tx.init(params), params)


@pytest.mark.parametrize("name", ["upgrad", "nash_mtl", "mgda"])
def test_apply_if_finite_skips_a_step_with_a_nan_gradient(name):
  # The README's advice: a NaN anywhere in a task gradient makes a Gramian method's update
  # NaN, so optax.apply_if_finite after the aggregator skips the whole step.
  tx = optax.chain(getattr(wx, name)(), optax.apply_if_finite(optax.sgd(0.1), 3))
  jac = _jacobians(1)[0]
  bad = {**jac, "w": jac["w"].at[1, 2].set(jnp.nan)}
  state = tx.init(PARAMS)
  u, state = tx.update(bad, state, PARAMS)
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))  # skipped: a zero update
  assert int(state[1].notfinite_count) == 1
  u, state = tx.update(jac, state, PARAMS)  # the next, finite step goes through
  assert int(state[1].notfinite_count) == 0
  assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u))
