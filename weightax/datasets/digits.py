"""scikit-learn's bundled 8×8 digits (1,797 images, 10 classes): no download."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits", "long_tailed_split"]


class Split(NamedTuple):
  """Features in [0, 1] (``[n, 64]`` float32) and integer labels (``[n]`` int32)."""

  x: np.ndarray
  y: np.ndarray


def _raw() -> tuple[np.ndarray, np.ndarray]:
  try:
    from sklearn.datasets import load_digits as _sk_load
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "weightax.datasets needs scikit-learn (pip install 'weightax[data]')."
    ) from e
  d = _sk_load()
  return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
  """A stratified train/test split of the digits data set.

  Args:
    test_fraction: share of every class held out for testing.
    seed: seed of the split (NumPy), so the split is reproducible.

  Returns:
    ``(train, test)`` splits.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}.")
  x, y = _raw()
  rng = np.random.default_rng(seed)
  train_idx, test_idx = [], []
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(y == c))
    n_test = int(round(test_fraction * len(idx)))
    test_idx.append(idx[:n_test])
    train_idx.append(idx[n_test:])
  tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
  tr, te = rng.permutation(tr), rng.permutation(te)
  return Split(x[tr], y[tr]), Split(x[te], y[te])


def long_tailed_split(
    *, imbalance_ratio: float, test_per_class: int = 50, seed: int = 0
) -> tuple[Split, Split, np.ndarray]:
  """A long-tailed training set and a balanced test set from digits.

  Class c keeps ``n_max · ρ^{-c/(C-1)}`` training examples (the exponential
  profile of Cui et al. 2019 and Cao et al. 2019), with ``ρ`` the imbalance
  ratio n_max/n_min; the test set holds ``test_per_class`` of every class.
  The counts are rounded down (at least 1), so the realised ratio
  ``class_counts[0] / class_counts[-1]`` is ρ or more: digits has only
  ``n_max = 174 - test_per_class`` images of its rarest class to spare, and
  with the default 50 test images ρ = 100 gives 124 : 1 (n_min = 1.24 → 1).

  Args:
    imbalance_ratio: ρ ≥ 1.
    test_per_class: balanced test examples per class (taken first).
    seed: seed of the selection.

  Returns:
    ``(train, test, class_counts)`` with ``class_counts`` the training counts.
  """
  if not (np.isfinite(imbalance_ratio) and imbalance_ratio >= 1):
    raise ValueError(f"imbalance_ratio must be a finite number >= 1; got {imbalance_ratio}.")
  if int(test_per_class) != test_per_class or test_per_class < 1:
    # A negative count would slice from the end and put the same images in both splits.
    raise ValueError(f"test_per_class must be a positive integer; got {test_per_class}.")
  x, y = _raw()
  rng = np.random.default_rng(seed)
  per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
  n_max = min(len(i) for i in per_class) - test_per_class
  if n_max < 1:
    raise ValueError(f"test_per_class={test_per_class} leaves no training data.")
  counts = np.array(
      [max(1, int(n_max * imbalance_ratio ** (-c / 9.0))) for c in range(10)], np.int64
  )
  tr = np.concatenate(
      [idx[test_per_class : test_per_class + n] for idx, n in zip(per_class, counts, strict=True)]
  )
  te = np.concatenate([idx[:test_per_class] for idx in per_class])
  tr, te = rng.permutation(tr), rng.permutation(te)
  return Split(x[tr], y[tr]), Split(x[te], y[te]), counts
