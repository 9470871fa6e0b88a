"""GradNorm's synthetic multi-task regression (Chen et al. 2018, §4).

T regression tasks share inputs ``x ∈ R^250`` and predict ``R^100`` targets

.. math:: f_i(x) = \\sigma_i \\tanh\\big((B + \\epsilon_i)\\, x\\big),

with ``B`` and ``ε_i`` constant ``100 × 250`` matrices drawn once. The common
part ``B`` makes the tasks related; the scales ``σ_i`` make their squared
losses (and gradients) differ by up to ``σ_max² / σ_min²``, which equal
weights cannot balance.

Conventions the paper leaves open, and what weightax does:

* The paper draws the entries of ``B`` and ``ε_i`` "from N(0, 10) and
  N(0, 3.5)" without saying whether the second number is a variance or a
  standard deviation. By default they are read as standard deviations
  (``b_std=10``, ``eps_std=3.5``), as the widely used PyTorch
  reimplementations do; ``normal_param="variance"`` uses ``√10`` and ``√3.5``.
* The input distribution is not given: ``x`` is uniform on ``[-1, 1]^250``
  rescaled to unit norm (again as the PyTorch reimplementations), so that
  ``(B + ε_i) x`` has entries of standard deviation about ``√(10² + 3.5²)``.

References:
  Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization
  for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, §4.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GradNormProblem",
    "gradnorm_problem",
    "gradnorm_inputs",
    "gradnorm_targets",
    "gradnorm_sample",
    "wide_sigmas",
]


class GradNormProblem(NamedTuple):
  """The constants of one synthetic problem.

  Attributes:
    b: the shared matrix ``B``, ``[output_dim, input_dim]``.
    eps: the task-specific ``ε_i``, ``[T, output_dim, input_dim]``.
    sigmas: the task scales ``σ_i``, ``[T]``.
  """

  b: jax.Array
  eps: jax.Array
  sigmas: jax.Array


def wide_sigmas(num_tasks: int, low: float = 1.0, high: float = 100.0) -> np.ndarray:
  """``num_tasks`` scales spaced evenly in log between ``low`` and ``high`` (both included).

  The paper's T = 10 problem draws ``σ_i`` "from a wide range" without giving
  it; a deterministic log-spaced grid keeps every task's scale readable.
  """
  if num_tasks < 1 or not 0 < low <= high:
    raise ValueError(f"need num_tasks >= 1 and 0 < low <= high; got {num_tasks}, {low}, {high}.")
  return np.geomspace(low, high, num_tasks).astype(np.float32)


def gradnorm_problem(
    key: jax.Array,
    sigmas: jax.Array | np.ndarray | list[float],
    *,
    input_dim: int = 250,
    output_dim: int = 100,
    b_std: float = 10.0,
    eps_std: float = 3.5,
    normal_param: Literal["std", "variance"] = "std",
) -> GradNormProblem:
  """Draws ``B`` and the ``ε_i`` of GradNorm's regression problem.

  Args:
    key: PRNG key of the problem (fixes ``B`` and ``ε``).
    sigmas: the ``[T]`` task scales, e.g. ``(1, 100)`` for the paper's T = 2.
    input_dim: 250 in the paper.
    output_dim: 100 in the paper.
    b_std: the paper's "10" for ``B``.
    eps_std: the paper's "3.5" for ``ε_i``.
    normal_param: whether ``b_std``/``eps_std`` are standard deviations
      (``"std"``, the default) or variances (``"variance"``: their square
      roots are used).

  Returns:
    A :class:`GradNormProblem`.

  Example:
    >>> import jax
    >>> from weightax.datasets.synthetic import gradnorm_problem
    >>> p = gradnorm_problem(jax.random.key(0), [1.0, 100.0])
    >>> p.b.shape, p.eps.shape
    ((100, 250), (2, 100, 250))
  """
  if normal_param not in ("std", "variance"):
    raise ValueError(f"normal_param must be 'std' or 'variance'; got {normal_param!r}.")
  sig = jnp.asarray(sigmas, jnp.float32)
  if sig.ndim != 1 or sig.shape[0] < 1:
    raise ValueError(f"sigmas must be a non-empty vector [T]; got shape {sig.shape}.")
  if normal_param == "variance":
    b_std, eps_std = math.sqrt(b_std), math.sqrt(eps_std)
  kb, ke = jax.random.split(key)
  b = b_std * jax.random.normal(kb, (output_dim, input_dim), jnp.float32)
  eps = eps_std * jax.random.normal(ke, (sig.shape[0], output_dim, input_dim), jnp.float32)
  return GradNormProblem(b=b, eps=eps, sigmas=sig)


def gradnorm_inputs(key: jax.Array, n: int, input_dim: int = 250) -> jax.Array:
  """``n`` inputs, uniform on ``[-1, 1]^input_dim`` rescaled to unit norm, ``[n, input_dim]``."""
  x = jax.random.uniform(key, (n, input_dim), jnp.float32, -1.0, 1.0)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def gradnorm_targets(problem: GradNormProblem, x: jax.Array) -> jax.Array:
  """The targets ``σ_i tanh((B + ε_i) x)`` of every task, ``[n, T, output_dim]``."""
  if x.ndim != 2 or x.shape[1] != problem.b.shape[1]:
    raise ValueError(
        f"x must have shape [n, {problem.b.shape[1]}] (the problem's input_dim); got {x.shape}."
    )
  z = jnp.einsum("toi,ni->nto", problem.b[None] + problem.eps, x)
  return problem.sigmas[None, :, None] * jnp.tanh(z)


def gradnorm_sample(
    problem: GradNormProblem, key: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
  """A fresh batch ``(x [n, input_dim], y [n, T, output_dim])``."""
  x = gradnorm_inputs(key, n, problem.b.shape[1])
  return x, gradnorm_targets(problem, x)
