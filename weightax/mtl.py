"""Multi-task gradients that split shared and task-specific parameters.

Two cheaper alternatives to a full :func:`weightax.value_and_jacobian` over
every parameter:

- :func:`shared_jacobian`: the per-task Jacobian for the shared parameters
  only, while the heads get one ordinary gradient (as torchjd's
  ``mtl_backward``). Feed the Jacobian to an aggregator and the head gradient
  straight to the optimizer.
- :func:`representation_grads`: MGDA-UB's representation-level mode. The
  weights come from the Gramian of the losses' gradients w.r.t. the shared
  representation ``z`` (K cheap VJPs through the heads), and the encoder gets a
  single backward pass of ``Σ_k w_k L_k``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from weightax._mtl_fit import MTLFitResult, fit
from weightax.aggregators._base import combine
from weightax.gramian_free import gramian_weighting
from weightax.jacobian import _check_differentiable, _check_losses, gramian

__all__ = [
    "fit", "MTLFitResult", "gramian_weighting", "shared_jacobian", "representation_grads",
    "RepresentationGrads",
]


def shared_jacobian(
    fun: Callable[..., Any],
    shared_params: Any,
    head_params: Any,
    *args: Any,
    has_aux: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any, Any]:
  """Per-task gradients for the shared parameters, one summed gradient for the heads.

  For ``fun(shared_params, head_params, *args) -> losses`` of shape ``[K]``,

  .. math::
     J_\\theta = \\partial \\ell / \\partial \\theta_{shared} \\;\\; [K, \\ldots],
     \\qquad g_\\phi = \\nabla_\\phi \\textstyle\\sum_k \\ell_k ,

  from one forward pass. Since head k only enters loss k, :math:`g_\\phi`
  gives each head its own task's gradient — what an aggregator's ``shared``
  mask would give task-specific leaves — without a K axis on the heads. Under
  ``jax.jit`` the unused halves of the two backward passes are removed, so the
  head Jacobian is never formed (without ``jit`` it is computed and dropped).

  Aggregate the Jacobian over the shared parameters only, then hand both
  parts to the optimizer::

    losses, jac, head_grads = mtl.shared_jacobian(loss_fn, p["trunk"], p["heads"], batch)
    u_trunk, agg_state = agg.update(jac, agg_state, p["trunk"], task_losses=losses)
    updates, opt_state = opt.update({"trunk": u_trunk, "heads": head_grads}, opt_state, p)

  Args:
    fun: ``(shared_params, head_params, *args, **kwargs) -> losses [K]`` (or
      ``(losses, aux)`` with ``has_aux``).
    shared_params: pytree of the shared (trunk) parameters.
    head_params: pytree of the task-specific parameters.
    *args: further positional arguments of ``fun`` (the batch, ...).
    has_aux: whether ``fun`` returns ``(losses, aux)``.
    **kwargs: keyword arguments of ``fun``.

  Returns:
    ``(losses, shared_jac, head_grads)``, or ``((losses, aux), shared_jac,
    head_grads)`` with ``has_aux``; ``shared_jac`` is shaped like
    ``shared_params`` with a leading K axis on every leaf, ``head_grads`` like
    ``head_params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax import mtl
    >>> def losses(trunk, heads, x):
    ...   z = x * trunk
    ...   return jnp.stack([heads[0] * z, heads[1] * z ** 2])
    >>> l, jac, hg = mtl.shared_jacobian(losses, 2.0, jnp.array([1.0, 3.0]), 1.0)
    >>> jac.tolist(), hg.tolist()  # d/dtrunk of (2, 3·4) = (1, 12); heads: (z, z²)
    ([1.0, 12.0], [2.0, 4.0])

  References:
    torchjd's ``mtl_backward`` (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", 2024).
  """

  def f(s: Any, h: Any) -> Any:
    return fun(s, h, *args, **kwargs)

  _check_differentiable((shared_params, head_params), name="shared_jacobian")
  if has_aux:
    losses, vjp_fn, aux = jax.vjp(f, shared_params, head_params, has_aux=True)
  else:
    losses, vjp_fn = jax.vjp(f, shared_params, head_params)
  losses = _check_losses(losses, name="shared_jacobian")
  k = losses.shape[0]
  shared_jac = jax.vmap(lambda c: vjp_fn(c)[0])(jnp.eye(k, dtype=losses.dtype))
  head_grads = vjp_fn(jnp.ones((k,), losses.dtype))[1]
  return ((losses, aux) if has_aux else losses), shared_jac, head_grads


class RepresentationGrads(NamedTuple):
  """The result of :func:`representation_grads`."""

  losses: jax.Array  # [K]
  shared_grads: Any  # shaped like shared_params: grad of Σ w_k L_k through the encoder
  head_grads: Any  # shaped like head_params
  weights: jax.Array | None  # [K] from a weighting function; None from an aggregator
  state: Any  # the aggregator's new state; None with a weighting function


def _check_state_matches(aggregator: Any, state: Any, z: Any) -> None:
  """Refuses an aggregator state whose arrays do not have the shapes ``init(z)`` gives."""
  shapes = lambda t: [jnp.shape(x) for x in jax.tree.leaves(t)]
  expected = jax.eval_shape(aggregator.init, z)
  if shapes(state) != shapes(expected):
    raise ValueError(
        "representation_grads applies the aggregator to the representation z, so its state "
        f"must be aggregator.init(z) (array shapes {shapes(expected)}); got a state with "
        f"shapes {shapes(state)}, e.g. aggregator.init(shared_params). Pass state=None on "
        "the first call and thread the returned state.")


def representation_grads(
    encoder: Callable[[Any, Any], Any],
    heads_loss: Callable[[Any, Any], jax.Array],
    weighting: Callable[[jax.Array], jax.Array] | optax.GradientTransformation,
    shared_params: Any,
    head_params: Any,
    inputs: Any,
    *,
    state: Any = None,
    key: jax.Array | None = None,
    weight_heads: bool = False,
) -> RepresentationGrads:
  """Weights tasks from the Gramian of the representation gradients (MGDA-UB mode).

  With :math:`z = \\text{encoder}(\\theta, x)` and :math:`\\ell = \\text{heads\\_loss}(\\phi, z)`,

  .. math::
     Z = \\partial \\ell / \\partial z \\;\\; [K, \\ldots], \\quad
     G_z = Z Z^\\top, \\quad w = \\text{weighting}(G_z), \\quad
     g_\\theta = \\nabla_\\theta \\textstyle\\sum_k w_k \\ell_k
       = \\left(\\tfrac{\\partial z}{\\partial\\theta}\\right)^{\\!\\top} \\sum_k w_k Z_k ,

  with ``w`` held constant. ``Z`` costs K VJPs through the heads only; the
  encoder sees one forward and one backward pass, about the cost of training
  on a scalar loss. Since :math:`G_z` replaces the Gramian of the shared
  parameters' Jacobian, the weights differ from the parameter-level ones
  (Sener & Koltun bound the latter's objective by the former's).

  ``weighting`` is either a pure function ``gramian [K,K] -> weights [K]``
  (e.g. a weighting from ``weightax.weightings``) or any weightax aggregator.
  An aggregator is applied to ``Z`` as its task gradients (``params=z``), so
  it must be built with ``shared=None``; its output is the combined cotangent
  :math:`\\sum_k w_k Z_k`, which also lets a non-Gramian method (PCGrad, ...)
  act on the representation, as LibMTL's ``rep_grad`` mode does. Its state
  belongs to ``z``, not to the shared parameters: pass ``state=None`` on the
  first call (it is then ``aggregator.init(z)``) and thread the returned
  ``state`` from one step to the next; a state of other shapes (e.g.
  ``aggregator.init(shared_params)`` for MoCo, DB-MTL or ExcessMTL, which keep
  arrays per shared parameter) is refused. The losses and ``key`` are passed on
  to it.

  The heads get :math:`\\nabla_\\phi \\sum_k \\ell_k` (each head its own task's
  gradient, the aggregator contract). ``weight_heads=True`` gives them
  :math:`\\nabla_\\phi \\sum_k w_k \\ell_k` instead (Sener & Koltun's code);
  it needs a weighting function, since an aggregator does not expose ``w``.

  Args:
    encoder: ``(shared_params, inputs) -> z`` (an array or a pytree).
    heads_loss: ``(head_params, z) -> losses [K]``; close over the targets.
    weighting: a function ``gramian -> weights`` or a weightax aggregator.
    shared_params: the encoder's parameters.
    head_params: the heads' parameters.
    inputs: the encoder's input batch.
    state: the aggregator's state from the previous call; None on the first
      call (``aggregator.init(z)``).
    key: passed to the aggregator (e.g. for PCGrad's random order).
    weight_heads: whether the heads' gradient is weighted too.

  Returns:
    A :class:`RepresentationGrads` ``(losses, shared_grads, head_grads,
    weights, state)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from weightax import mtl
    >>> encoder = lambda theta, x: theta * x            # z = θx
    >>> heads_loss = lambda phi, z: jnp.stack([phi[0] * z.sum(), -phi[1] * z.sum()])
    >>> uniform = lambda g: jnp.full(g.shape[0], 0.5)   # any G -> w
    >>> r = mtl.representation_grads(encoder, heads_loss, uniform, 2.0,
    ...                              jnp.array([1.0, 3.0]), jnp.ones(2))
    >>> float(r.shared_grads)  # ∂/∂θ of 0.5·(θ·2) - 0.5·(3θ·2)
    -2.0

  References:
    Sener, Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018 (MGDA-UB, §3.3).
  """
  is_aggregator = isinstance(weighting, optax.GradientTransformation)
  if is_aggregator and weight_heads:
    raise ValueError(
        "weight_heads=True needs the weights, which an aggregator does not expose; pass a "
        "weighting function `gramian -> weights` instead."
    )

  _check_differentiable((shared_params, head_params), name="representation_grads")
  z, encoder_vjp = jax.vjp(lambda p: encoder(p, inputs), shared_params)
  losses, heads_vjp = jax.vjp(heads_loss, head_params, z)
  losses = _check_losses(losses, name="representation_grads")
  k = losses.shape[0]
  # The K VJPs only traverse the heads; their parameter part is unused and removed by jit.
  z_jac = jax.vmap(lambda c: heads_vjp(c)[1])(jnp.eye(k, dtype=losses.dtype))

  if is_aggregator:
    if state is None:
      state = weighting.init(z)
    else:
      _check_state_matches(weighting, state, z)
    cotangent, state = weighting.update(z_jac, state, z, task_losses=losses, key=key)
    weights = None
  else:
    weights = jnp.asarray(weighting(gramian(z_jac)))
    weights = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))  # float64 under x64
    if weights.shape != (k,):
      raise ValueError(
          f"representation_grads: weighting returned shape {weights.shape}; expected ({k},)."
      )
    cotangent = combine(z_jac, jax.lax.stop_gradient(weights))
    state = None

  (shared_grads,) = encoder_vjp(cotangent)
  head_cot = weights if weight_heads else jnp.ones((k,), jnp.float32)
  head_grads = heads_vjp(head_cot.astype(losses.dtype))[0]
  return RepresentationGrads(losses, shared_grads, head_grads, weights, state)
