"""Multi-task aggregators: per-task gradients (leading K axis) -> one update.

Each factory returns an ``optax.GradientTransformationExtraArgs``; put it first
in an ``optax.chain``. See DESIGN.md's aggregator contract.
"""

from weightax.aggregators._base import (
    EmptyAggregatorState,
    apply_weights,
    check_task_grads,
    check_task_losses,
    combine,
    gramian_aggregator,
    resolve_shared,
    split_shared,
)

__all__ = [
    "EmptyAggregatorState",
    "apply_weights",
    "check_task_grads",
    "check_task_losses",
    "combine",
    "gramian_aggregator",
    "resolve_shared",
    "split_shared",
]
