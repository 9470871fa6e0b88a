"""The method table: every multi-task method, its paper, inputs, state and properties.

This is the one machine-readable source of the table shown in the documentation
(``docs/methods.md``, generated from :func:`markdown_table`) and checked against
the README by ``tests/test_method_table.py``, which also *measures* every
property claimed here on random and adversarial Jacobians. Hyperparameters and
their defaults are not written here: :func:`hyperparameters` reads them from
each factory's signature, so they cannot drift either.

Vocabulary of the columns:

- ``needs``: what the method's update is computed from, besides the per-task
  gradients it receives: ``task_losses`` (the ``[K]`` losses passed to
  ``update``), ``key`` (a ``jax.random`` key passed to ``update``),
  ``Gramian`` (``G = J Jᵀ`` of the shared gradients: the weights depend on the
  gradients only through ``G``), ``Jacobian`` (the per-task gradients
  themselves, e.g. their norms on one layer), ``extra forward pass`` (the
  losses re-evaluated after the step), ``validation data`` and ``independent
  batches`` (the Jacobians of more batches at the same parameters, keyword
  ``extra_task_grads``, which ``weightax.mtl.fit`` draws when the aggregator's
  ``num_extra_batches`` asks; without them the method falls back to the one
  batch, and the table's properties are measured there, at the first update).
- ``conflict_free``: whether the update ``u`` satisfies ``<u, g_k> >= 0`` for
  every task k: ``"yes"``, ``"no"``, ``"K = 2"`` (only with two tasks) or
  ``"yes (up to ridge)"``: ``<u, g_k> >= -reg_eps·tr(G)·w_k``, where ``w`` are
  the method's weights, so the guarantee can fail for a task whose squared
  gradient norm is below about ``reg_eps·tr(G)``. In float32 "yes" means up to
  the weights' rounding: ``<u, g_k> >= -1e-4·‖g_k‖·max_j|w_j|·Σ_j‖g_j‖``.
- ``scale_invariant``: whether rescaling each task's loss by its own
  positive constant (``L_k -> c_k L_k``, so ``g_k -> c_k g_k``) leaves the
  update unchanged: ``"yes"`` (exactly the same update), ``"direction"``
  (the same direction, a different length) or ``"no"``; for stateful methods,
  at the first step.
- ``permutation_invariant``: whether reordering the tasks leaves the update
  unchanged: ``"yes"``, ``"in distribution"`` (random methods: the same
  distribution of updates) or ``"yes (up to rounding)"``: exact in exact
  arithmetic, but float32 rounding (an eigendecomposition of an ill-conditioned
  Gramian) can change the update by up to 1% of its scale.
- ``weighting``: whether the update is ``Σ_k w_k g_k`` with weights computed
  from ``G``, the losses and the state (so it lies in the span of the task
  gradients and rotates with them).

The meta-learned weightings of :mod:`weightax.meta` are not aggregators (they
take whole training steps, not per-task gradients) and have their own table,
:data:`META_METHODS` (:func:`meta_markdown_table`), with what each needs: a
validation set (``val_data=``) and ``meta=`` in the training loop that runs it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

__all__ = ["Method", "METHODS", "NEEDS", "by_name", "hyperparameters", "markdown_table",
           "MetaMethod", "META_METHODS", "meta_by_name", "meta_hyperparameters",
           "meta_markdown_table"]

NEEDS = ("task_losses", "key", "Gramian", "Jacobian", "extra forward pass", "validation data",
         "independent batches")
CONFLICT_FREE = ("yes", "yes (up to ridge)", "K = 2", "no")
SCALE_INVARIANT = ("yes", "direction", "no")
PERMUTATION_INVARIANT = ("yes", "yes (up to rounding)", "in distribution")

# Arguments every factory may take that are not hyperparameters of the method.
_NOT_HYPERPARAMETERS = ("num_tasks", "shared")


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the method table (see the module docstring for the vocabulary)."""

  name: str  # the factory, ``weightax.<name>``
  title: str  # the method's usual name
  paper: str  # first author(s), venue and year
  needs: tuple[str, ...]
  state: str  # what the state keeps between steps ("—": nothing)
  state_fields: tuple[str, ...]  # the fields of its ``...State`` (besides ``task_weights``)
  num_tasks: str  # "required" or "optional"
  conflict_free: str
  scale_invariant: str
  permutation_invariant: str
  weighting: bool
  note: str = ""

  def __post_init__(self) -> None:
    bad = [n for n in self.needs if n not in NEEDS]
    if bad:
      raise ValueError(f"{self.name}: unknown needs {bad}; expected some of {NEEDS}.")
    for field, allowed in (
        ("conflict_free", CONFLICT_FREE),
        ("scale_invariant", SCALE_INVARIANT),
        ("permutation_invariant", PERMUTATION_INVARIANT),
        ("num_tasks", ("required", "optional")),
    ):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{self.name}: {field} must be one of {allowed}; "
                         f"got {getattr(self, field)!r}.")


METHODS: tuple[Method, ...] = (
    Method(
        name="linear_scalarization", title="Linear scalarization (EW)",
        paper="— (static weights; default: the sum)",
        needs=(), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="Permutation-invariant with the default (equal) weights; custom weights permute "
             "with the tasks.",
    ),
    Method(
        name="random_loss_weighting", title="RLW", paper="Lin et al., TMLR 2022",
        needs=("key",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="in distribution",
        weighting=True,
    ),
    Method(
        name="dwa", title="DWA", paper="Liu et al., CVPR 2019",
        needs=("task_losses",), state="loss history (two periods' means)",
        state_fields=("step", "loss_sum", "last", "before_last"), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="num_tasks fixes the shape of the loss history.",
    ),
    Method(
        name="uncertainty_weighting", title="Uncertainty weighting",
        paper="Kendall et al., CVPR 2018", needs=("task_losses",),
        state="log-variances s and their optimizer's state",
        state_fields=("log_vars", "opt_state"), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="num_tasks fixes the shape of the log-variances.",
    ),
    Method(
        name="gradnorm", title="GradNorm", paper="Chen et al., ICML 2018",
        needs=("task_losses", "Jacobian"),
        state="weights, first losses L(0), step, the weights' optimizer state",
        state_fields=("weights", "initial_losses", "step", "opt_state"), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="Needs each task's gradient norm on the chosen layer W; num_tasks fixes the "
             "shape of the learned weights.",
    ),
    Method(
        name="mgda", title="MGDA", paper="Sener & Koltun, NeurIPS 2018",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="yes", scale_invariant="no", permutation_invariant="yes",
        weighting=True,
        note="Closed form for K = 2; for K > 2 the relative ridge reg_eps·diag(G) (reg_eps = "
             "1e-6) bounds a violation by reg_eps·‖g_k‖²·λ_k, below float32's resolution of "
             "the weights.",
    ),
    Method(
        name="pcgrad", title="PCGrad", paper="Yu et al., NeurIPS 2020",
        needs=("Gramian", "key"), state="—", state_fields=(), num_tasks="optional",
        conflict_free="K = 2", scale_invariant="no", permutation_invariant="in distribution",
        weighting=True,
        note="The key draws the projection orders; with K = 2 the update is deterministic and "
             "permutation-invariant.",
    ),
    Method(
        name="cagrad", title="CAGrad", paper="Liu et al., NeurIPS 2021",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
    ),
    Method(
        name="imtl_g", title="IMTL-G", paper="Liu et al., ICLR 2021",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes",
        weighting=True,
        note="The unnormalised update Jᵀ G⁺ √diag(G) is invariant to the loss scales, but "
             "the normalisation Σ w_k = 1 divides it by a sum that can change sign, so the "
             "direction can reverse.",
    ),
    Method(
        name="upgrad", title="UPGrad", paper="Quinton & Rey, 2024",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="yes (up to ridge)", scale_invariant="no", permutation_invariant="yes",
        weighting=True,
        note="The default ridge (reg_eps = 1e-4 on G/tr(G), ridge='trace') is torchjd's; a task "
             "whose squared gradient norm is below about reg_eps·tr(G) can be in conflict with "
             "the update. ridge='relative' bounds a violation by reg_eps·‖g_k‖²·w_k instead.",
    ),
    Method(
        name="dualproj", title="DualProj", paper="Lopez-Paz & Ranzato, NeurIPS 2017",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="yes (up to ridge)", scale_invariant="no", permutation_invariant="yes",
        weighting=True,
        note="GEM's projection of the mean gradient onto the dual cone, as torchjd's DualProj; "
             "the default ridge (reg_eps = 1e-4 on G/tr(G), ridge='trace') bounds a violation "
             "by reg_eps·tr(G)·w_k, ridge='relative' by reg_eps·‖g_k‖²·w_k.",
    ),
    Method(
        name="aligned_mtl", title="Aligned-MTL", paper="Senushkin et al., CVPR 2023",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="Sums the aligned gradients (p = 1) as the authors' code and LibMTL; torchjd's "
             "mean is pref_vector = 1/K. The eigendecomposition runs on the tasks sorted by "
             "gradient norm, so reordering them gives the same update; float32 resolves the "
             "small eigenvalues only to λ_max·eps, so the weights are accurate to about "
             "eps·λ_max/σ.",
    ),
    Method(
        name="nash_mtl", title="Nash-MTL", paper="Navon et al., ICML 2022",
        needs=("Gramian",), state="step count, last α (for update_weights_every > 1)",
        state_fields=("count", "alpha"), num_tasks="optional",
        conflict_free="yes", scale_invariant="yes", permutation_invariant="yes", weighting=True,
        note="<g_k, Jᵀα> = 1/α_k − reg_eps·‖g_k‖²·α_k, positive on every Gramian tested. "
             "num_tasks is required only with update_weights_every > 1 (α is cached in the "
             "state).",
    ),
    Method(
        name="geometric_loss", title="GLS", paper="Chennupati et al., CVPR Workshops 2019",
        needs=("task_losses",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="direction", permutation_invariant="yes",
        weighting=True,
        note="The gradient of (Π_k L_k)^(1/K), computed as exp(mean log L) (as torchjd): "
             "w_k = GLS/(K·L_k). Rescaling the losses by c_k multiplies the update by "
             "(Π_k c_k)^(1/K). The losses must be positive.",
    ),
    Method(
        name="krum", title="Krum", paper="Blanchard et al., NeurIPS 2017",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="Byzantine-robust: the mean of the n_selected gradients of lowest Krum score. Needs "
             "K > 2·n_byzantine + 2 (the paper's condition; a clear error below it). Squared "
             "distances as the paper; torchjd's plain distances are distance='euclidean'.",
    ),
    Method(
        name="trimmed_mean", title="Trimmed mean", paper="Yin et al., ICML 2018",
        needs=("Jacobian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=False,
        note="Per coordinate, drops the trim_number largest and smallest task values and "
             "averages the rest, as torchjd: not Σ_k w_k g_k, so task_weights is NaN. Needs "
             "K > 2·trim_number (a clear error below it).",
    ),
    Method(
        name="graddrop", title="GradDrop", paper="Chen et al., NeurIPS 2020",
        needs=("Jacobian", "key"), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=False,
        note="Per coordinate, keeps the positive task values with probability "
             "P = ½(1 + Σg/Σ|g|), else the negative ones (one uniform draw per coordinate, "
             "shared by the tasks), as torchjd on the Jacobian: not Σ_k w_k g_k, so "
             "task_weights is NaN.",
    ),
    Method(
        name="config", title="ConFIG", paper="Liu et al., ICLR 2025",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="d = pinv(unit gradients)·1 has equal cosines with every task; u is d̂ times the "
             "sum of the projections, as the paper, the official code and torchjd. Computed "
             "from the Gramian (C⁺1 on the cosine matrix), which cuts dependent directions at "
             "float32's resolution.",
    ),
    Method(
        name="fairgrad", title="FairGrad", paper="Ban & Ji, ICML 2024",
        needs=("Gramian",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="yes", scale_invariant="yes", permutation_invariant="yes", weighting=True,
        note="Solves Gw = w^(−1/α) by Newton's method in JAX, on G/tr(G) plus a relative "
             "ridge: every task's gain <g_k, u> is w_k^(−1/α) > 0. Invariant to the loss "
             "scales at the default α = 1 (LibMTL's), where w_k → w_k/c_k; not for other α. "
             "The weights are not normalised.",
    ),
    Method(
        name="imtl", title="IMTL (IMTL-L + IMTL-G)", paper="Liu et al., ICLR 2021",
        needs=("task_losses", "Gramian"), state="IMTL-L's log-scales s and their optimizer's state",
        state_fields=("log_scales", "opt_state"), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="IMTL-G on the gradients of e^{s_k} L_k, with s trained on Σ_k(e^{s_k}L_k − s_k) "
             "(s_0 = 0); the weights on the unscaled gradients are α_k e^{s_k}. Its direction "
             "is IMTL-G's (so not loss-scale invariant either); num_tasks fixes the shape of s.",
    ),
    Method(
        name="famo", title="FAMO", paper="Liu et al., NeurIPS 2023",
        needs=("task_losses", "extra forward pass"),
        state="logits ξ, their Adam state, the last losses, the step count",
        state_fields=("logits", "opt_state", "prev_losses", "count"), num_tasks="required",
        conflict_free="no", scale_invariant="direction", permutation_invariant="yes",
        weighting=True,
        note="w = softmax(ξ − log L): ∝ 1/L_k at the first step, so rescaling the losses "
             "keeps the direction there. The paper's ξ update compares the step's batch "
             "before and after the step: mtl.fit(..., post_step_losses=True) provides that "
             "extra forward pass; without it ξ learns from the next call's losses.",
    ),
    Method(
        name="stch", title="STCH", paper="Lin et al., ICML 2024",
        needs=("task_losses",), state="—", state_fields=(), num_tasks="optional",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="w = λ·softmax(λ(L − z)/μ), the gradient of μ log Σ_k exp(λ_k(L_k − z_k)/μ) "
             "(the paper's, torchjd's defaults λ = 1/K, z = 0); LibMTL's log-nadir warm-up "
             "schedule is not reproduced. Permutation-invariant with the uniform preference.",
    ),
    Method(
        name="gradvac", title="GradVac", paper="Wang et al., ICLR 2021",
        needs=("Gramian", "key"), state="running cosine targets φ̂ (K x K)",
        state_fields=("targets",), num_tasks="required",
        conflict_free="K = 2", scale_invariant="no", permutation_invariant="in distribution",
        weighting=True,
        note="Measured at the first update, where φ̂ = 0 makes it PCGrad; later, positive "
             "targets add more of the other gradients (not measured here). One target per "
             "task pair for the whole shared model (LibMTL's default, torchjd); the key draws "
             "the visiting orders.",
    ),
    Method(
        name="excess_mtl", title="ExcessMTL", paper="He et al., ICML 2024",
        needs=("Jacobian",),
        state="per-coordinate √(Σ g²) of every shared parameter, the weights, e⁰, the count",
        state_fields=("root_sum_sq", "weights", "initial_excess", "count"),
        num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="The authors' code (LibMTL): w = 1 at the first update (hence measured there as "
             "the sum), then w ← K·normalise(w·exp(η e/e⁰)) with AdaGrad-style excess-risk "
             "estimates e from the per-coordinate gradients; init needs the parameters.",
    ),
    Method(
        name="db_mtl", title="DB-MTL", paper="Lin et al., arXiv 2023",
        needs=("task_losses", "Jacobian"),
        state="moving averages ĝ of the log-loss gradients of every shared parameter, the count",
        state_fields=("averages", "count"), num_tasks="required",
        conflict_free="no", scale_invariant="yes", permutation_invariant="yes", weighting=False,
        note="u = Σ_k α_k ĝ_k with ĝ_k a moving average (β = 0.9) of ∇log(L_k + 1e-8) = "
             "g_k/(L_k + 1e-8) and α_k = max_j‖ĝ_j‖/‖ĝ_k‖: the log makes it invariant to the "
             "loss scales. Its first update lies in the span of the task gradients; later "
             "ones combine past gradients (measured at the second update), so it is not a "
             "weighting and task_weights is NaN. init needs the parameters.",
    ),
    Method(
        name="moco", title="MoCo", paper="Fernando et al., ICLR 2023",
        needs=("task_losses", "Jacobian"),
        state="tracked gradients Y of every shared parameter, the weights λ, the count",
        state_fields=("tracked", "lambdas", "count"), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=False,
        note="u = Yᵀλ: Y tracks L_k g_k/‖g_k‖ (LibMTL's input), λ takes one projected step "
             "on ½‖Yᵀλ‖² per update (the paper's Π_Δ; LibMTL's softmax with "
             "simplex=\"softmax\"). Like db_mtl, not a weighting after the first update "
             "(task_weights is NaN; λ is the state's lambdas). init needs the parameters.",
    ),
    Method(
        name="sdmgrad", title="SDMGrad", paper="Xiao, Ban & Ji, NeurIPS 2023",
        needs=("Gramian", "independent batches"), state="simplex weights w",
        state_fields=("weights",), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="w takes 20 projected momentum steps (η = 10) on Â(w + λ/K) per update, with "
             "Â = J_ξJ_ξ'ᵀ/s² from two extra independent batches (mtl.fit draws them); the "
             "update applies (w + λ/K)/(1 + λ) to the step's batch. Without the extra "
             "batches Â is the one batch's Gramian (biased by the gradient noise).",
    ),
    Method(
        name="modo", title="MoDo", paper="Chen, Fernando et al., NeurIPS 2023",
        needs=("Gramian", "independent batches"), state="simplex weights λ",
        state_fields=("weights",), num_tasks="required",
        conflict_free="no", scale_invariant="no", permutation_invariant="yes", weighting=True,
        note="One step λ ← Π_Δ(λ − γ(J₁J₂ᵀλ + ρλ)) per update from two extra independent "
             "batches (mtl.fit draws them), applied to the step's batch; without them "
             "J₁ = J₂ is the step's batch (biased). γ = 1e-3 (LibMTL) barely moves λ at "
             "the first step, so there the update is close to the mean gradient.",
    ),
)


def by_name() -> dict[str, Method]:
  """The table as a dict keyed by the factory's name."""
  return {m.name: m for m in METHODS}


def hyperparameters(method: Method) -> dict[str, Any]:
  """The factory's keyword hyperparameters and their defaults (``inspect.Parameter.empty``
  for a required one), read from ``weightax.<name>``'s signature."""
  import weightax

  sig = inspect.signature(getattr(weightax, method.name))
  return {
      p.name: p.default
      for p in sig.parameters.values()
      if p.name not in _NOT_HYPERPARAMETERS
  }


def _format_default(value: Any) -> str:
  if value is inspect.Parameter.empty:
    return "required"
  return repr(value)


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def markdown_table(methods: tuple[Method, ...] = METHODS) -> str:
  """The method table as Markdown (one row per method), for the documentation."""
  header = (
      "| method | paper | needs | hyperparameters (defaults) | state | conflict-free | "
      "invariant to loss scales | permutation-invariant | weighting | `num_tasks` |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n"
  )
  rows = []
  for m in methods:
    hp = hyperparameters(m)
    hp_text = ", ".join(f"`{k}={_format_default(v)}`" for k, v in hp.items()) or "—"
    needs = ", ".join(f"`{n}`" if n in ("task_losses", "key") else n for n in m.needs) or "—"
    rows.append(
        "| " + " | ".join(_cell(c) for c in (
            f"{{func}}`~weightax.{m.name}` ({m.title})", m.paper, needs, hp_text, m.state,
            m.conflict_free, m.scale_invariant, m.permutation_invariant,
            "yes" if m.weighting else "no", m.num_tasks,
        )) + " |"
    )
  return header + "\n".join(rows) + "\n"


def markdown_notes(methods: tuple[Method, ...] = METHODS) -> str:
  """The per-method notes of the table as a Markdown list."""
  return "".join(f"- `{m.name}`: {m.note}\n" for m in methods if m.note)


# ------------------------------------------------------------------ meta-learned weights

META_WEIGHTS = ("task", "example")
META_LOOPS = ("weightax.fit", "weightax.mtl.fit")
# Arguments of a meta factory that are the problem, not hyperparameters of the method.
_META_NOT_HYPERPARAMETERS = ("loss_fn", "task_losses_fn", "optimizer", "num_tasks")


@dataclasses.dataclass(frozen=True)
class MetaMethod:
  """One row of the table of meta-learned weightings (:mod:`weightax.meta`).

  Every one needs validation batches (``val_data=``) and runs as ``meta=`` in the
  loop named by ``fit``; ``tests/test_method_table.py`` checks each field against
  the code.
  """

  name: str  # the factory, ``weightax.meta.<name>``
  title: str  # the method's usual name
  paper: str  # first author(s), venue and year
  weights: str  # "task": λ [K] in the step's metrics["task_weights"]; "example": [B] in
  # metrics["example_weights"]
  fit: str  # the loop that runs it with ``meta=`` and ``val_data=``
  validation: str  # what its validation data should be
  state: str  # what the state keeps between steps
  state_fields: tuple[str, ...]  # the fields of its ``...State``
  note: str = ""

  def __post_init__(self) -> None:
    for field, allowed in (("weights", META_WEIGHTS), ("fit", META_LOOPS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{self.name}: {field} must be one of {allowed}; "
                         f"got {getattr(self, field)!r}.")


META_METHODS: tuple[MetaMethod, ...] = (
    MetaMethod(
        name="auto_lambda", title="Auto-λ", paper="Liu et al., TMLR 2022",
        weights="task", fit="weightax.mtl.fit",
        validation="batches of the primary tasks, held out from training (the reference draws "
                   "them from the training set)",
        state="the task optimizer's state, λ, λ's optimizer state",
        state_fields=("opt_state", "task_weights", "meta_opt_state"),
        note="λ follows the exact gradient of the primary tasks' validation loss through one "
             "virtual step of the task optimizer (the reference: a finite difference). "
             "Through optax.adam, pass eps_root > 0 (e.g. 1e-16): with the default 0, a "
             "parameter whose gradient is exactly zero makes λ NaN.",
    ),
    MetaMethod(
        name="learning_to_reweight", title="L2RW", paper="Ren et al., ICML 2018",
        weights="example", fit="weightax.fit",
        validation="a small clean (correctly labelled, balanced) set",
        state="the model optimizer's state", state_fields=("opt_state",),
        note="w_i ∝ max(0, ∇ℓ_i · ∇L_val), normalised to sum 1 in each batch (all zero when "
             "no example agrees with the validation gradient); no state of its own.",
    ),
    MetaMethod(
        name="meta_weight_net", title="Meta-Weight-Net", paper="Shu et al., NeurIPS 2019",
        weights="example", fit="weightax.fit",
        validation="a small clean (correctly labelled, balanced) set",
        state="the model optimizer's state, the weighting MLP, its optimizer state",
        state_fields=("opt_state", "vnet", "meta_opt_state"),
        note="An MLP (1 → hidden → 1, sigmoid) maps each example's loss to its weight in "
             "(0, 1), not normalised; trained by the one-step lookahead.",
    ),
)


def meta_by_name() -> dict[str, MetaMethod]:
  """The meta table as a dict keyed by the factory's name."""
  return {m.name: m for m in META_METHODS}


def meta_hyperparameters(method: MetaMethod) -> dict[str, Any]:
  """The meta factory's keyword hyperparameters and defaults (``inspect.Parameter.empty`` for
  a required one), read from ``weightax.meta.<name>``'s signature."""
  from weightax import meta

  sig = inspect.signature(getattr(meta, method.name))
  return {
      p.name: p.default
      for p in sig.parameters.values()
      if p.name not in _META_NOT_HYPERPARAMETERS
  }


def meta_markdown_table(methods: tuple[MetaMethod, ...] = META_METHODS, *,
                        roles: bool = True) -> str:
  """The table of meta-learned weightings as Markdown.

  Args:
    methods: the rows.
    roles: name each method with a Sphinx ``{func}`` role (the documentation); False gives
      plain code spans (the README, which holds exactly this table).
  """
  header = (
      "| method | paper | weights | needs | runs as | hyperparameters (defaults) | state |\n"
      "|---|---|---|---|---|---|---|\n"
  )
  rows = []
  for m in methods:
    hp = meta_hyperparameters(m)
    hp_text = ", ".join(f"`{k}={_format_default(v)}`" for k, v in hp.items()) or "—"
    name = (f"{{func}}`~weightax.meta.{m.name}`" if roles else f"`{m.name}`") + f" ({m.title})"
    weights = ("per task (`task_weights` [K])" if m.weights == "task"
               else "per example (`example_weights` [B])")
    rows.append("| " + " | ".join(_cell(c) for c in (
        name, m.paper, weights, f"validation data (`val_data=`): {m.validation}",
        f"`{m.fit}(..., meta=method, val_data=...)`", hp_text, m.state,
    )) + " |")
  return header + "\n".join(rows) + "\n"


def meta_markdown_notes(methods: tuple[MetaMethod, ...] = META_METHODS) -> str:
  """The meta methods' notes as a Markdown list."""
  return "".join(f"- `{m.name}`: {m.note}\n" for m in methods if m.note)
