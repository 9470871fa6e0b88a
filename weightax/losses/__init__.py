"""Sample-weighting losses: focal, GHM, class-balanced, LDAM, logit adjustment, ASL.

Every loss follows Optax's conventions: a pure function of ``(logits, labels)`` with
keyword-only hyperparameters, returning the loss per example (softmax-type losses, integer
labels ``[...]`` for logits ``[..., C]``) or per element (sigmoid-type losses, labels shaped
like the logits), with no reduction. Hyperparameters may be traced arrays, so a sweep over
them can be vmapped. ``where`` masks have the output's shape and give zero loss; note that
this differs from ``optax.softmax_cross_entropy(where=...)``, whose mask is over classes.
The GHM losses also take and return a ``GHMState`` holding their running bin counts, and
return each element's weighted loss before mmdetection's division by its element count.

Shapes and dtypes are checked eagerly with a ValueError. Values are checked whenever they
are concrete (a ValueError saying what was expected and what came, the offending value
printed in full, so β = 1.0000001 does not read as 1): integer labels outside ``[0, C)``,
sigmoid-type labels outside ``[0, 1]``, negative or NaN class counts, priors and per-class
weights (softmax focal α, ``class_weights``), sigmoid focal α > 1, β outside ``[0, 1]``, GHM
momentum outside ``[0, 1)``, μ ≤ 0, focal and ASL exponents γ < 0, ASL ``clip`` outside
``[0, 1)``, LDAM ``max_margin`` < 0 and ``scale`` ≤ 0, and NaN (or an infinite γ, scale or
margin) in any of these hyperparameters. Under ``jit``/``vmap`` the values cannot be
inspected, and the same inputs give NaN (in the affected elements, or in every weight when
they enter a normalisation) instead of a wrong number. Labels masked out by ``where`` (or by
GHM's ``label_weights``) are never checked and never produce NaN, so an ignore index such as
-100 works the same eagerly and under ``jit``. Integer counts of any size are converted
through float64, so counts above 2^31 do not wrap.
"""

from weightax.losses.asymmetric import asymmetric_loss
from weightax.losses.class_balanced import (
    class_balanced_weights,
    inverse_frequency_weights,
    sqrt_inverse_frequency_weights,
    weighted_softmax_cross_entropy,
)
from weightax.losses.focal import sigmoid_focal_loss, softmax_focal_loss
from weightax.losses.ghm import GHMState, ghm_c, ghm_r, init_ghm_state
from weightax.losses.margins import ldam_loss, ldam_margins, logit_adjusted_cross_entropy

__all__ = [
    "GHMState",
    "asymmetric_loss",
    "class_balanced_weights",
    "ghm_c",
    "ghm_r",
    "init_ghm_state",
    "inverse_frequency_weights",
    "ldam_loss",
    "ldam_margins",
    "logit_adjusted_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "sqrt_inverse_frequency_weights",
    "weighted_softmax_cross_entropy",
]
