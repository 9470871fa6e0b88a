"""GradVac: raise each pair's cosine to its running target (Wang et al.)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from weightax.weightings._solvers import normalize_gramian, pure_weighting, vary_like
from weightax.weightings.pcgrad import pcgrad_order

__all__ = ["gradvac"]

# In the correction's denominator: ‖g_j‖(√(1−φ̂²) + 1e-8), relative to ‖g_j‖ (LibMTL and
# torchjd add 1e-8 to ‖g_j‖√(1−φ̂²) itself, which would make tiny gradients uncorrectable).
_EPS = 1e-8


@pure_weighting
def gradvac_step(
    gramian: jax.Array,
    targets: jax.Array,
    *,
    beta: float | jax.Array = 0.5,
    key: jax.Array | None = None,
    order: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """GradVac's weights and the updated ``[K, K]`` cosine targets (see :func:`gradvac`)."""
  g, _ = normalize_gramian(gramian)
  k = g.shape[0]
  if order is None:
    order = pcgrad_order(k, key)
  order = jnp.asarray(order)
  if order.shape != (k, k):
    raise ValueError(f"gradvac: order must have shape ({k}, {k}); got {order.shape}.")
  targets = jnp.asarray(targets, g.dtype)
  if targets.shape != (k, k):
    raise ValueError(f"gradvac: targets must have shape ({k}, {k}); got {targets.shape}.")
  diag = jnp.maximum(jnp.diagonal(g), 0.0)
  norm = jnp.sqrt(diag)

  def one_task(i: jax.Array, row: jax.Array, target_row: jax.Array):
    def visit(carry, j):
      c, t = carry
      norm_i = jnp.sqrt(jnp.maximum(c @ g @ c, 0.0))  # ‖g_i'‖
      ip = g[j] @ c  # <g_i', g_j>
      live = (j != i) & (norm[j] > 0) & (norm_i > 0)
      phi = jnp.clip(jnp.where(live, ip / jnp.where(live, norm_i * norm[j], 1.0), 0.0), -1, 1)
      phi_hat = t[j]
      root_hat = jnp.sqrt(jnp.maximum(1.0 - phi_hat**2, 0.0))
      root = jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0))
      coef = norm_i * (phi_hat * root - phi * root_hat) / (
          jnp.where(live, norm[j], 1.0) * (root_hat + _EPS))
      c = c.at[j].add(jnp.where(live & (phi < phi_hat), coef, 0.0))
      t = t.at[j].set(jnp.where(j != i, (1.0 - beta) * phi_hat + beta * phi, phi_hat))
      return (c, t), None

    c0 = vary_like(jax.nn.one_hot(i, k, dtype=g.dtype), g)
    (c, t), _ = lax.scan(visit, (c0, vary_like(target_row, g)), row)
    return c, t

  cs, new_targets = jax.vmap(one_task)(jnp.arange(k), order, targets)
  return jnp.sum(cs, axis=0), new_targets


@jax.jit
@pure_weighting
def gradvac(
    gramian: jax.Array,
    targets: jax.Array | None = None,
    *,
    beta: float | jax.Array = 0.5,
    key: jax.Array | None = None,
    order: jax.Array | None = None,
) -> jax.Array:
  """GradVac weights: each gradient is corrected towards its running cosine targets.

  For each task i, start from ``g_i' = g_i``; for every other task j in a
  random order, with ``φ = cos(g_i', g_j)`` and the target ``φ̂_ij``, if
  ``φ < φ̂_ij``:

  .. math:: g_i' \\leftarrow g_i' + \\frac{\\|g_i'\\|\\,\\big(\\hat\\phi_{ij}\\sqrt{1-\\phi^2}
     - \\phi\\sqrt{1-\\hat\\phi_{ij}^2}\\big)}{\\|g_j\\|\\big(\\sqrt{1-\\hat\\phi_{ij}^2}
     + 10^{-8}\\big)}\\, g_j

  (which makes the cosine exactly ``φ̂_ij``), and in any case
  ``φ̂_ij ← (1−β)φ̂_ij + βφ`` (the cosine before the correction); the update
  is ``Σ_i g_i'``. With ``φ̂ = 0`` the correction is PCGrad's projection. As
  in PCGrad, every ``g_i'`` is a combination ``Jᵀc_i`` of the rows, so the
  weights ``Σ_i c_i`` follow from ``G``. The ``10⁻⁸`` multiplies ``‖g_j‖``
  (LibMTL and torchjd add it to ``‖g_j‖√(1−φ̂²)``, which would leave
  gradients below about 1e-8 uncorrected), so the weights are invariant to
  the gradients' common scale; zero gradients are never corrected against.
  This function returns the weights only; the aggregator
  :func:`weightax.aggregators.gradvac` also keeps the updated targets.

  Args:
    gramian: ``[K, K]`` Gramian ``G = J Jᵀ``.
    targets: ``[K, K]`` cosine targets ``φ̂`` (row i for task i); ``None``
      means zeros (the first step).
    beta: the targets' EMA rate ``β``; may be traced.
    key: PRNG key for the random orders (as :func:`pcgrad_order`); without it
      the order is ``0, ..., K-1``.
    order: explicit ``[K, K]`` integer orders, row i for task i; overrides ``key``.

  Returns:
    ``[K]`` weights ``w`` with update ``Jᵀw = Σ_i g_i'``.

  Example:
    >>> import jax.numpy as jnp, weightax as wx
    >>> J = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: φ̂ = 0 gives PCGrad
    >>> [round(x, 4) for x in wx.weightings.gradvac(J @ J.T).tolist()]
    [2.0, 1.5]

  References:
    Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models", ICLR 2021.
  """
  k = gramian.shape[0]
  if targets is None:
    targets = jnp.zeros((k, k), gramian.dtype)
  w, _ = gradvac_step(gramian, targets, beta=beta, key=key, order=order)
  return w
