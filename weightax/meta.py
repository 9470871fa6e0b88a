"""Meta-learned weights: differentiate a held-out loss through one inner optimiser step.

Each method is a pure ``init``/``step`` pair in Optax's manner, a :class:`MetaWeighting`:

* ``state = method.init(params)``;
* ``params, state, metrics = method.step(params, state, train_batch, val_batch, key)``
  takes one training step whose weights (per example, or per task) come from the gradient
  of a validation loss through a *virtual* step of the model's optimiser, and returns the
  weights among its ``metrics``.

Nothing leaves JAX, so a step runs under ``jit``, ``vmap`` (inside :func:`weightax.sweep`) and
``lax.scan``. :func:`weightax.fit` (per-example methods) and :func:`weightax.mtl.fit`
(:func:`auto_lambda`) run a method in one call when given ``meta=method`` and ``val_data``::

  res = wx.fit(None, params, None, data, meta=method, val_data=clean,
               key=key, num_steps=500, batch_size=64)

Where the reference implementations approximate (Auto-Lambda's finite-difference Hessian
product), these differentiate exactly with ``jax.grad`` through the virtual step (second
order); each docstring says where it departs from its reference.

Methods:

* :func:`learning_to_reweight` — per-example weights from the gradient of a clean
  validation loss with respect to per-example perturbations ε = 0 (Ren et al., 2018);
* :func:`meta_weight_net` — an MLP mapping an example's loss to its weight, trained by the
  same one-step lookahead (Shu et al., 2019);
* :func:`auto_lambda` — task weights updated by the gradient of the primary tasks'
  validation loss through one step of the task optimiser (Liu, Johns & Davison, 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from weightax.losses import _utils

__all__ = [
    "MetaWeighting",
    "LearningToReweightState",
    "MetaWeightNetState",
    "AutoLambdaState",
    "learning_to_reweight",
    "meta_weight_net",
    "auto_lambda",
    "vnet_init",
    "vnet_apply",
]


class MetaWeighting(NamedTuple):
  """A meta-learned weighting as a pure pair of functions.

  Attributes:
    init: ``params -> state``.
    step: ``(params, state, train_batch, val_batch, key) -> (new_params, new_state,
      metrics)``; ``metrics`` is a dict of arrays that holds the weights the step applied.
  """

  init: Callable[[Any], Any]
  step: Callable[[Any, Any, Any, Any, jax.Array], tuple[Any, Any, dict[str, jax.Array]]]


class LearningToReweightState(NamedTuple):
  """State of :func:`learning_to_reweight`: the model optimiser's state (L2RW keeps none)."""

  opt_state: Any


class MetaWeightNetState(NamedTuple):
  """State of :func:`meta_weight_net`.

  Attributes:
    opt_state: the model optimiser's state.
    vnet: the weighting network's parameters (see :func:`vnet_init`).
    meta_opt_state: the weighting network optimiser's state.
  """

  opt_state: Any
  vnet: dict[str, jax.Array]
  meta_opt_state: Any


class AutoLambdaState(NamedTuple):
  """State of :func:`auto_lambda`.

  Attributes:
    opt_state: the task optimiser's state.
    task_weights: the current task weights λ ``[K]`` (unconstrained, as in the reference).
    meta_opt_state: the optimiser state of λ.
  """

  opt_state: Any
  task_weights: jax.Array
  meta_opt_state: Any


def _values(out: Any, what: str, ndim: int = 1) -> jax.Array:
  """The loss array of a loss function's output (``losses`` or ``(losses, aux)``)."""
  losses = out[0] if isinstance(out, tuple) else out
  losses = jnp.asarray(losses)
  if losses.ndim != ndim:
    kind = "per-example losses [B]" if what == "loss_fn" else "task losses [K]"
    raise ValueError(
        f"weightax.meta: {what} must return {kind} (or a tuple whose first element is that "
        f"array); got shape {losses.shape}."
    )
  return losses


def _default_val_loss(loss_fn: Callable) -> Callable:
  def val_loss(params: Any, batch: Any, key: jax.Array) -> jax.Array:
    return jnp.mean(_values(loss_fn(params, batch, key), "loss_fn"))

  return val_loss


def _check_rate(value: Any, fn: str, name: str, *, allow_zero: bool = False) -> Any:
  """A learning rate (or decay) that must be positive (``>= 0`` with ``allow_zero``), finite.

  A concrete value out of range (or NaN, or infinite) raises a ValueError and is returned
  unchanged otherwise. A traced value (a sweep over it) cannot be inspected: out of range it
  becomes NaN, so the method's weights and parameters are NaN rather than silently
  inverted or frozen. A callable (an Optax schedule) is returned as it is.
  """
  if callable(value):
    return value
  ok = _utils.check_hyperparameter(value, fn, name, lo=0.0, hi=np.inf, lo_open=not allow_zero,
                                   hi_open=True)
  return value if ok is None else jnp.where(ok, value, jnp.nan)


def _sgd_step(params: Any, grads: Any, lr: Any) -> Any:
  return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def learning_to_reweight(
    loss_fn: Callable[[Any, Any, jax.Array], Any],
    optimizer: optax.GradientTransformation,
    *,
    inner_lr: float | jax.Array = 1.0,
    val_loss_fn: Callable[[Any, Any, jax.Array], jax.Array] | None = None,
) -> MetaWeighting:
  """Learning to Reweight (L2RW): per-example weights from a clean validation gradient.

  Each step perturbs every training example's loss by :math:`\\epsilon_i` (at
  :math:`\\epsilon = 0`), takes a virtual SGD step and measures the clean validation loss:

  .. math::
     \\hat\\theta(\\epsilon) = \\theta - \\alpha \\nabla_\\theta \\textstyle\\sum_i \\epsilon_i
     \\ell_i(\\theta), \\qquad
     u_i = -\\frac{\\partial L_{val}(\\hat\\theta(\\epsilon))}{\\partial \\epsilon_i}
     \\Big|_{\\epsilon=0} = \\alpha\\, \\nabla\\ell_i(\\theta) \\cdot \\nabla L_{val}(\\theta),

  .. math::
     w_i = \\frac{\\max(u_i, 0)}{\\sum_j \\max(u_j, 0)} \\quad (\\text{divided by 1 when
     every } u_j \\le 0,\\ \\text{so } w = 0),

  then trains on :math:`\\sum_i w_i \\ell_i` (weights held constant) with ``optimizer``.
  ``u`` is computed as in the reference's "vjp mode": ``jax.grad`` with respect to ε of the
  validation loss after the virtual step (one gradient of a gradient), exact. Since
  :math:`\\hat\\theta(0) = \\theta`, the positive ``inner_lr`` α cancels in the
  normalisation; its sign does not (α < 0 would keep exactly the examples that disagree
  with the validation set, α = 0 would zero every weight), so a non-positive, infinite or
  NaN α raises a ValueError when concrete and makes the weights NaN when traced. The method
  is stateless apart from the optimiser.

  Args:
    loss_fn: ``(params, batch, key) -> per-example losses [B]`` (or ``(losses, aux)``).
    optimizer: the model's Optax optimiser.
    inner_lr: α of the virtual step, positive and finite (it cancels; the reference MNIST
      code uses 1). May be traced.
    val_loss_fn: ``(params, val_batch, key) -> scalar``; default: the mean of ``loss_fn``
      (the reference's validation weights 1/B).

  Returns:
    A :class:`MetaWeighting`; ``step``'s metrics are ``"loss"`` (the weighted training
    loss), ``"val_loss"`` (:math:`L_{val}(\\theta)`) and ``"example_weights"`` ``[B]``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> x = jnp.linspace(-1.0, 1.0, 8)
    >>> y = 2.0 * x.at[0].set(5.0)              # example 0 is corrupted
    >>> loss = lambda p, b, k: (b[0] * p - b[1]) ** 2
    >>> method = wx.meta.learning_to_reweight(loss, optax.sgd(0.1))
    >>> p, s, m = method.step(jnp.array(0.0), method.init(jnp.array(0.0)),
    ...                       (x, y), (x[1:], 2.0 * x[1:]), jax.random.key(0))
    >>> m["example_weights"].shape, bool(jnp.isclose(m["example_weights"].sum(), 1.0))
    ((8,), True)

  Reference: M. Ren, W. Zeng, B. Yang, R. Urtasun, "Learning to Reweight Examples for
  Robust Deep Learning", ICML 2018.
  """
  inner_lr = _check_rate(inner_lr, "learning_to_reweight", "inner_lr")
  val_loss_fn = val_loss_fn or _default_val_loss(loss_fn)

  def init(params: Any) -> LearningToReweightState:
    return LearningToReweightState(optimizer.init(params))

  def step(params, state, train_batch, val_batch, key):
    kt, kv = jax.random.split(key)
    per_example = lambda p: _values(loss_fn(p, train_batch, kt), "loss_fn")
    b = jax.eval_shape(per_example, params)

    def val_after(eps: jax.Array) -> jax.Array:
      g = jax.grad(lambda p: jnp.sum(eps * per_example(p)))(params)
      return val_loss_fn(_sgd_step(params, g, inner_lr), val_batch, kv)

    val_loss, g_eps = jax.value_and_grad(val_after)(jnp.zeros(b.shape, b.dtype))
    w = jnp.maximum(-g_eps, 0.0)
    total = jnp.sum(w)
    w = jax.lax.stop_gradient(w / jnp.where(total > 0, total, 1.0))
    loss, g = jax.value_and_grad(lambda p: jnp.sum(w * per_example(p)))(params)
    updates, opt_state = optimizer.update(g, state.opt_state, params)
    metrics = {"loss": loss, "val_loss": val_loss, "example_weights": w}
    return optax.apply_updates(params, updates), LearningToReweightState(opt_state), metrics

  return MetaWeighting(init, step)


def vnet_init(key: jax.Array, hidden: int = 100) -> dict[str, jax.Array]:
  """Parameters of MW-Net's weighting network 1 → ``hidden`` → ReLU → 1 → sigmoid.

  PyTorch's ``nn.Linear`` default initialisation, as in the reference: weights and biases
  uniform in :math:`\\pm 1/\\sqrt{\\text{fan\\_in}}`.

  Args:
    key: PRNG key.
    hidden: width of the hidden layer.

  Returns:
    ``{"w1": [1, H], "b1": [H], "w2": [H, 1], "b2": [1]}``.
  """
  k1, k2, k3, k4 = jax.random.split(key, 4)
  u = lambda k, shape, fan_in: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0) / np.sqrt(
      fan_in)
  return {"w1": u(k1, (1, hidden), 1), "b1": u(k2, (hidden,), 1),
          "w2": u(k3, (hidden, 1), hidden), "b2": u(k4, (1,), hidden)}


def vnet_apply(vnet: dict[str, jax.Array], losses: jax.Array) -> jax.Array:
  """MW-Net's weights :math:`\\sigma(w_2^\\top \\mathrm{relu}(w_1 \\ell + b_1) + b_2)`, ``[B]``."""
  h = jax.nn.relu(losses[:, None] @ vnet["w1"] + vnet["b1"])
  return jax.nn.sigmoid(h @ vnet["w2"] + vnet["b2"])[:, 0]


def meta_weight_net(
    loss_fn: Callable[[Any, Any, jax.Array], Any],
    optimizer: optax.GradientTransformation,
    *,
    inner_lr: float | jax.Array,
    key: jax.Array | None = None,
    hidden: int = 100,
    meta_lr: float | jax.Array = 1e-3,
    meta_weight_decay: float | jax.Array = 1e-4,
    val_loss_fn: Callable[[Any, Any, jax.Array], jax.Array] | None = None,
) -> MetaWeighting:
  """Meta-Weight-Net: an MLP maps each example's loss to its weight, trained by lookahead.

  With :math:`V_\\phi` the network of :func:`vnet_apply` on the *detached* losses, each step

  .. math::
     \\theta'(\\phi) = \\theta - \\eta \\nabla_\\theta \\tfrac1B \\textstyle\\sum_i
     V_\\phi(\\ell_i)\\, \\ell_i(\\theta), \\qquad
     \\phi \\leftarrow \\mathrm{Adam}\\big(\\nabla_\\phi L_{val}(\\theta'(\\phi))\\big),

  .. math::
     \\theta \\leftarrow \\mathrm{optimizer}\\big(\\nabla_\\theta \\tfrac1B \\textstyle\\sum_i
     V_{\\phi}(\\ell_i)\\, \\ell_i(\\theta)\\big) \\quad (\\text{new } \\phi,\\ w \\text{ held
     constant, not normalised}).

  The virtual step is plain SGD with ``inner_lr`` η (the reference uses the model's current
  learning rate) and is differentiated exactly (second order), as in the reference. The
  meta optimiser is PyTorch's ``Adam(lr, weight_decay)``, i.e. L2 added to the gradient
  before Adam (``optax.chain(add_decayed_weights, adam)``). The reference's meta forward also
  updates batch-norm statistics; a pure ``loss_fn`` has none to update.

  ``inner_lr`` and ``meta_lr`` must be positive and ``meta_weight_decay`` ``>= 0``, all
  finite: when concrete, other values raise a ValueError (η < 0 would train the network to
  *raise* the validation loss, η = 0 would give it no gradient); when traced, they make the
  network, the weights and the parameters NaN.

  Args:
    loss_fn: ``(params, batch, key) -> per-example losses [B]`` (or ``(losses, aux)``).
    optimizer: the model's Optax optimiser (reference: SGD 0.1, momentum 0.9, wd 5e-4).
    inner_lr: η of the virtual SGD step, ``> 0``; may be traced.
    key: PRNG key of the network's initialisation (default ``jax.random.key(0)``).
    hidden: width of the network's hidden layer, a positive int (reference: 100).
    meta_lr: Adam learning rate of the network, ``> 0`` (reference: 1e-3); may be traced
      or an Optax schedule.
    meta_weight_decay: L2 coefficient of the network, ``>= 0`` (reference: 1e-4); may be
      traced.
    val_loss_fn: ``(params, val_batch, key) -> scalar``; default: the mean of ``loss_fn``
      (mean cross-entropy on the clean batch in the reference).

  Returns:
    A :class:`MetaWeighting` with :class:`MetaWeightNetState`; ``step``'s metrics are
    ``"loss"`` (the weighted training loss), ``"val_loss"`` (the meta loss at
    :math:`\\theta'`) and ``"example_weights"`` ``[B]`` (the weights applied).

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> x = jnp.linspace(-1.0, 1.0, 8)
    >>> loss = lambda p, b, k: (b[0] * p - b[1]) ** 2
    >>> method = wx.meta.meta_weight_net(loss, optax.sgd(0.1), inner_lr=0.1)
    >>> p, s, m = method.step(jnp.array(0.0), method.init(jnp.array(0.0)),
    ...                       (x, 2.0 * x), (x, 2.0 * x), jax.random.key(0))
    >>> bool(jnp.all((m["example_weights"] > 0) & (m["example_weights"] < 1)))
    True

  Reference: J. Shu, Q. Xie, L. Yi, Q. Zhao, S. Zhou, Z. Xu, D. Meng, "Meta-Weight-Net:
  Learning an Explicit Mapping For Sample Weighting", NeurIPS 2019.
  """
  if isinstance(hidden, bool) or not isinstance(hidden, int | np.integer) or hidden < 1:
    raise ValueError(f"meta_weight_net: hidden must be a positive int; got {hidden!r}.")
  inner_lr = _check_rate(inner_lr, "meta_weight_net", "inner_lr")
  meta_lr = _check_rate(meta_lr, "meta_weight_net", "meta_lr")
  meta_weight_decay = _check_rate(meta_weight_decay, "meta_weight_net", "meta_weight_decay",
                                  allow_zero=True)
  val_loss_fn = val_loss_fn or _default_val_loss(loss_fn)
  meta_opt = optax.chain(optax.add_decayed_weights(meta_weight_decay), optax.adam(meta_lr))
  vkey = jax.random.key(0) if key is None else key

  def init(params: Any) -> MetaWeightNetState:
    vnet = vnet_init(vkey, hidden)
    return MetaWeightNetState(optimizer.init(params), vnet, meta_opt.init(vnet))

  def step(params, state, train_batch, val_batch, key):
    kt, kv = jax.random.split(key)
    per_example = lambda p: _values(loss_fn(p, train_batch, kt), "loss_fn")

    def weighted(p: Any, vnet: Any) -> jax.Array:
      losses = per_example(p)
      return jnp.mean(vnet_apply(vnet, jax.lax.stop_gradient(losses)) * losses)

    def meta_loss(vnet: Any) -> jax.Array:
      g = jax.grad(weighted)(params, vnet)
      return val_loss_fn(_sgd_step(params, g, inner_lr), val_batch, kv)

    val_loss, g_vnet = jax.value_and_grad(meta_loss)(state.vnet)
    upd, meta_state = meta_opt.update(g_vnet, state.meta_opt_state, state.vnet)
    vnet = optax.apply_updates(state.vnet, upd)

    def train_loss(p: Any) -> tuple[jax.Array, jax.Array]:
      losses = per_example(p)
      w = jax.lax.stop_gradient(vnet_apply(vnet, jax.lax.stop_gradient(losses)))
      return jnp.mean(w * losses), w

    (loss, w), g = jax.value_and_grad(train_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(g, state.opt_state, params)
    metrics = {"loss": loss, "val_loss": val_loss, "example_weights": w}
    return (optax.apply_updates(params, updates), MetaWeightNetState(opt_state, vnet, meta_state),
            metrics)

  return MetaWeighting(init, step)


def auto_lambda(
    task_losses_fn: Callable[[Any, Any, jax.Array], Any],
    optimizer: optax.GradientTransformation,
    *,
    num_tasks: int,
    primary: Sequence[int] | None = None,
    init_weight: float = 0.1,
    meta_lr: float | jax.Array = 1e-4,
    meta_optimizer: optax.GradientTransformation | None = None,
) -> MetaWeighting:
  """Auto-Lambda: task weights learned through one virtual step of the task optimiser.

  With :math:`\\mathcal P` the primary tasks, each step first updates the weights λ,

  .. math::
     \\theta'(\\lambda) = \\theta + \\mathrm{optimizer.update}\\big(\\nabla_\\theta
     \\textstyle\\sum_k \\lambda_k L_k(\\theta; b_{train}),\\ s_{opt}\\big), \\qquad
     \\lambda \\leftarrow \\mathrm{Adam}\\Big(\\nabla_\\lambda \\textstyle\\sum_{k\\in\\mathcal P}
     L_k(\\theta'(\\lambda); b_{val})\\Big),

  then trains on :math:`\\sum_k \\lambda_k L_k` with the new λ (held constant). λ starts at
  ``init_weight`` for every task and is unconstrained, as in the reference.

  The virtual step is the task optimiser's own update from its current state (not applied
  to that state): for ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(α, momentum=μ))``
  it is the reference's :math:`\\theta - \\alpha(\\mu\\, buf + \\nabla + wd\\,\\theta)`;
  other optimisers (Adam) are differentiated through in the same way. An optimiser whose
  update divides by :math:`\\sqrt{\\hat\\nu}` needs a positive ``eps_root`` (e.g.
  ``optax.adam(lr, eps_root=1e-16)``): with ``eps_root=0`` a parameter whose gradient is
  exactly zero (a dead ReLU unit, an unused head) makes the derivative of
  :math:`\\sqrt{\\hat\\nu}` infinite times zero, so λ becomes NaN. The NaN is not hidden.

  **Departure from the reference**: the reference approximates
  :math:`\\nabla_\\lambda L_{val}` by a central finite difference of the training gradient
  at :math:`\\theta \\pm \\epsilon\\, \\nabla_{\\theta'} L_{val}` (ε = 0.01/‖∇‖); here the
  gradient is exact (``jax.grad`` through the virtual step). The reference draws the
  validation batch from a second shuffled loader of the *training* set; pass the training
  data as ``val_data`` for that, or a held-out set.

  Args:
    task_losses_fn: ``(params, batch, key) -> losses [K]`` (or ``(losses, aux)``, as
      :func:`weightax.mtl.fit` takes it).
    optimizer: the task optimiser (the model's).
    num_tasks: K.
    primary: indices of the primary tasks whose validation loss λ minimises (default: all,
      the reference's setting when every task is primary).
    init_weight: initial λ, finite (reference: 0.1); NaN or infinite raises a ValueError
      when concrete.
    meta_lr: Adam learning rate of λ, ``> 0`` and finite (reference: 1e-4 for dense
      prediction; 3e-5 on Cityscapes, 3e-4 on CIFAR in its README). When concrete, other
      values raise a ValueError (a negative rate would move λ to *raise* the primary
      validation loss, 0 would freeze it); when traced, they make λ NaN. May be an Optax
      schedule. Not used (nor checked) when ``meta_optimizer`` is given.
    meta_optimizer: replaces ``optax.adam(meta_lr)`` when given.

  Returns:
    A :class:`MetaWeighting` with :class:`AutoLambdaState`; ``step``'s metrics are
    ``"task_losses"`` ``[K]`` (training losses at the step's parameters),
    ``"task_weights"`` ``[K]`` (the λ applied) and ``"val_loss"`` (the primary validation
    loss after the virtual step).

  Example:
    >>> import jax, jax.numpy as jnp, optax, weightax as wx
    >>> def task_losses(p, b, k):
    ...   return jnp.stack([jnp.mean((b * p - 1.0) ** 2), jnp.mean((b * p + 1.0) ** 2)])
    >>> method = wx.meta.auto_lambda(task_losses, optax.sgd(0.1), num_tasks=2, primary=[0],
    ...                              meta_lr=0.01)
    >>> p, s = jnp.array(0.0), method.init(jnp.array(0.0))
    >>> for _ in range(3):
    ...   p, s, m = method.step(p, s, jnp.ones(4), jnp.ones(4), jax.random.key(0))
    >>> bool(m["task_weights"][0] > 0.1 > m["task_weights"][1])   # primary task up-weighted
    True

  Reference: S. Liu, S. James, A. J. Davison, E. Johns, "Auto-Lambda: Disentangling Dynamic
  Task Relationships", TMLR 2022.
  """
  if not isinstance(num_tasks, int | np.integer) or num_tasks < 1:
    raise ValueError(f"auto_lambda: num_tasks must be a positive int; got {num_tasks!r}.")
  idx = list(range(num_tasks)) if primary is None else [int(i) for i in primary]
  if not idx or any(not 0 <= i < num_tasks for i in idx):
    raise ValueError(
        f"auto_lambda: primary must name at least one task index in [0, {num_tasks}); got "
        f"{primary!r}."
    )
  _utils.check_range(init_weight, "auto_lambda", "init_weight", lo=-np.inf, hi=np.inf,
                     lo_open=True, hi_open=True)
  pri = np.zeros(num_tasks, np.float32)
  pri[idx] = 1.0
  if meta_optimizer is None:
    meta_opt = optax.adam(_check_rate(meta_lr, "auto_lambda", "meta_lr"))
  else:
    meta_opt = meta_optimizer

  def losses_of(p: Any, batch: Any, key: jax.Array) -> jax.Array:
    losses = _values(task_losses_fn(p, batch, key), "task_losses_fn")
    if losses.shape != (num_tasks,):
      raise ValueError(
          f"auto_lambda: task_losses_fn returned shape {losses.shape}; expected ({num_tasks},) "
          f"for num_tasks={num_tasks}."
      )
    return losses

  def init(params: Any) -> AutoLambdaState:
    lam = jnp.full((num_tasks,), init_weight, jnp.float32)
    return AutoLambdaState(optimizer.init(params), lam, meta_opt.init(lam))

  def step(params, state, train_batch, val_batch, key):
    kt, kv = jax.random.split(key)

    def val_after(lam: jax.Array) -> jax.Array:
      g = jax.grad(lambda p: jnp.sum(lam * losses_of(p, train_batch, kt)))(params)
      upd, _ = optimizer.update(g, state.opt_state, params)
      val = losses_of(optax.apply_updates(params, upd), val_batch, kv)
      return jnp.sum(jnp.asarray(pri, val.dtype) * val)

    val_loss, g_lam = jax.value_and_grad(val_after)(state.task_weights)
    upd, meta_state = meta_opt.update(g_lam, state.meta_opt_state, state.task_weights)
    lam = jax.lax.stop_gradient(optax.apply_updates(state.task_weights, upd))

    def train_loss(p: Any) -> tuple[jax.Array, jax.Array]:
      losses = losses_of(p, train_batch, kt)
      return jnp.sum(lam * losses), losses

    (_, loss_vals), g = jax.value_and_grad(train_loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(g, state.opt_state, params)
    metrics = {"task_losses": loss_vals, "task_weights": lam, "val_loss": val_loss}
    return (optax.apply_updates(params, updates), AutoLambdaState(opt_state, lam, meta_state),
            metrics)

  return MetaWeighting(init, step)
