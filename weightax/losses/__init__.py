"""Sample-weighting losses: focal, GHM, class-balanced, LDAM, logit adjustment, ASL.

Every loss follows Optax's conventions: a pure function of ``(logits, labels)`` with
keyword-only hyperparameters, returning the loss per example (softmax-type losses, integer
labels ``[...]`` for logits ``[..., C]``) or per element (sigmoid-type losses, labels shaped
like the logits), with no reduction. Hyperparameters may be traced arrays, so a sweep over
them can be vmapped. ``where`` masks have the output's shape and give zero loss; note that
this differs from ``optax.softmax_cross_entropy(where=...)``, whose mask is over classes.
The GHM losses also take and return a ``GHMState`` holding their running bin counts.

Shapes and dtypes are checked eagerly with a ValueError; integer labels outside ``[0, C)``
raise when the labels are concrete and give a NaN loss under ``jit``/``vmap``.
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
