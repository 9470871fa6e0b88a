"""The two-objective toy problem of the CAGrad, Nash-MTL and FAMO papers.

Two losses of a point ``x = (x1, x2)`` whose Pareto set is (close to) the
segment ``x2 = -8.3552, x1 ∈ [-7, 7]``. Above ``x2 = 0`` the losses are
steep log-valleys whose gradients conflict and differ in magnitude by orders
of magnitude; below, two quadratics whose minima ``(±7, -8)`` bracket the
Pareto set. Definitions follow docs/reference_problems.md and the
Nash-MTL code (``experiments/toy/problem.py``) exactly.

References:
  Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task
  Learning" (CAGrad), NeurIPS 2021, Fig. 1.
  Navon et al., "Multi-Task Learning as a Bargaining Game" (Nash-MTL), ICML 2022, Fig. 1.
  Liu, Liu, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, Fig. 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOWER",
    "PARETO_X2",
    "PARETO_X1_RANGE",
    "STARTS",
    "toy_losses",
    "toy_loss_terms",
    "pareto_set",
    "pareto_stationarity",
]

LOWER = 5e-6
"""Floor inside the logarithms of ``f1``/``f2`` (keeps ``log|·|`` finite on its zero line)."""

PARETO_X2 = -8.3552
"""The published Pareto set's ``x2`` (exact at ``x1 = 0``; see :func:`pareto_set`)."""

PARETO_X1_RANGE = (-7.0, 7.0)

STARTS = np.array([[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]], np.float32)
"""The five starting points used by CAGrad, Nash-MTL and FAMO, shape ``[5, 2]``."""


def toy_loss_terms(x: jax.Array) -> dict[str, jax.Array]:
  """Every named term of the toy: ``f1, f2, c1, c2, f1s, f2s`` (for tests and plots).

  Args:
    x: a point ``(x1, x2)``, shape ``[2]``.

  Returns:
    ``{name: scalar}`` with the formulas of docs/reference_problems.md.
  """
  x = jnp.asarray(x)
  if x.shape != (2,):
    raise ValueError(f"toy_loss_terms expects one point x = (x1, x2) of shape (2,); got {x.shape}.")
  x1, x2 = x[0], x[1]
  f1 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOWER)) + 6
  f2 = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOWER)) + 6
  c1 = jnp.maximum(jnp.tanh(0.5 * x2), 0.0)
  c2 = jnp.maximum(jnp.tanh(-0.5 * x2), 0.0)
  f1s = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  f2s = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  return {"f1": f1, "f2": f2, "c1": c1, "c2": c2, "f1s": f1s, "f2s": f2s}


def toy_losses(x: jax.Array, *, l1_scale: float | jax.Array = 1.0) -> jax.Array:
  """The two task losses ``[L1, L2]`` at ``x``.

  .. math::
     L_1 = s\\,(c_1 f_1 + c_2 f_1^{sq}), \\qquad L_2 = c_1 f_2 + c_2 f_2^{sq}

  with ``s = l1_scale``: 1 as in CAGrad, 0.1 as in Nash-MTL's and FAMO's code
  (which makes the two gradients differ in scale as well as direction).
  Scaling ``L1`` by a positive constant leaves the Pareto set unchanged.
  The losses are negative below ``x2 = 0`` (down to -20 on the Pareto set),
  which matters to methods that assume positive losses (uncertainty
  weighting, GradNorm, DWA).

  Args:
    x: a point ``(x1, x2)``, shape ``[2]``; vmap for a batch of points.
    l1_scale: the factor on ``L1``; may be traced.

  Returns:
    ``[2]`` array of the two losses.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax.datasets.toy import toy_losses
    >>> [round(v, 4) for v in toy_losses(jnp.array([0.0, -8.0])).tolist()]
    [-15.0899, -15.0899]
  """
  t = toy_loss_terms(x)
  l1 = t["c1"] * t["f1"] + t["c2"] * t["f1s"]
  l2 = t["c1"] * t["f2"] + t["c2"] * t["f2s"]
  return jnp.stack([jnp.asarray(l1_scale, l1.dtype) * l1, l2])


def pareto_stationarity(x: jax.Array) -> jax.Array:
  """``min_{λ∈Δ} ‖λ g1 + (1-λ) g2‖`` at ``x``: 0 exactly on the Pareto-stationary set.

  The closed form of the two-task min-norm problem (Sener & Koltun 2018),
  computed for the unscaled losses: scaling ``L1`` moves ``λ`` but not the
  set where the minimum is 0.
  """
  g = jax.jacrev(toy_losses)(jnp.asarray(x, jnp.float32))
  g1, g2 = g[0], g[1]
  d = g1 - g2
  lam = jnp.clip(jnp.dot(g2 - g1, g2) / jnp.maximum(jnp.dot(d, d), 1e-30), 0.0, 1.0)
  return jnp.linalg.norm(lam * g1 + (1 - lam) * g2)


def pareto_set(num: int = 201, *, iters: int = 60) -> np.ndarray:
  """The exact Pareto set, ``[num, 2]`` points ``(x1, x2(x1))`` for ``x1 ∈ [-7, 7]``.

  On ``x2 < 0`` the losses are ``c2(x2)·f_is(x1, x2)``; for each ``x1`` the
  weights making the ``x1``-components of ``λ g1 + (1-λ) g2`` cancel are
  fixed, and the ``x2`` where the ``x2``-component also cancels is found by
  bisection on ``[-9.5, -7.5]``. The result bends from ``x2 = -8.3551`` at
  ``x1 = 0`` to ``-8.4345`` at ``x1 = ±7``: the published ``x2 = -8.3552`` is
  its value at the centre, good to 0.08.
  """
  x1 = np.linspace(*PARETO_X1_RANGE, num)
  # Stay strictly inside (-7, 7): at the ends one gradient's x1-component is 0.
  x1c = np.clip(x1, -7 + 1e-4, 7 - 1e-4)

  def residual(a: jax.Array, b: jax.Array) -> jax.Array:
    g = jax.jacrev(toy_losses)(jnp.stack([a, b]))
    lam = g[1, 0] / (g[1, 0] - g[0, 0])
    return lam * g[0, 1] + (1 - lam) * g[1, 1]

  res = jax.jit(jax.vmap(residual))
  a = jnp.asarray(x1c, jnp.float32)
  lo = jnp.full_like(a, -9.5)
  hi = jnp.full_like(a, -7.5)
  r_lo = res(a, lo)
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    r_mid = res(a, mid)
    same = jnp.sign(r_mid) == jnp.sign(r_lo)
    lo, hi = jnp.where(same, mid, lo), jnp.where(same, hi, mid)
    r_lo = jnp.where(same, r_mid, r_lo)
  return np.stack([x1, np.asarray(0.5 * (lo + hi), np.float64)], axis=1)
