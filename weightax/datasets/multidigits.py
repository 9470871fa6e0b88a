"""MultiDigits: a MultiMNIST-style two-digit data set from scikit-learn's 8×8 digits.

Each image holds two bundled 8×8 digits on a ``canvas × canvas`` grid: the
*left* digit placed near the top-left corner, the *right* digit near the
bottom-right corner, each moved by a random shift of up to ``max_shift``
pixels towards the centre, and combined by a pixelwise maximum so that their
strokes overlap (as in MultiMNIST, Sabour et al. 2017, used for multi-task
learning by Sener & Koltun 2018). Three tasks:

- ``left``: classify the left digit (10 classes; accuracy, higher is better),
- ``right``: classify the right digit (10 classes; accuracy, higher is better),
- ``sum``: regress the sum of the two digits, 0 to 18 (mean absolute error,
  lower is better).

The train, validation and test images are built from disjoint pools of source
digits (a stratified split of the 1,797 bundled images), so no source digit
seen in training appears in validation or test. Everything is deterministic
given ``seed``; nothing is downloaded.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from weightax.datasets.digits import _raw

__all__ = ["MultiDigits", "TASKS", "HIGHER_IS_BETTER", "load_multidigits", "place_pair"]

#: The task names, in the order of the model's heads and of ``losses [K]``.
TASKS: tuple[str, ...] = ("left", "right", "sum")
#: Whether each task's test metric is better when higher (accuracy) or lower (MAE).
HIGHER_IS_BETTER: tuple[bool, ...] = (True, True, False)

_DIGIT = 8  # side of the bundled digits


class MultiDigits(NamedTuple):
  """One split of MultiDigits.

  Attributes:
    x: images ``[n, canvas, canvas]`` float32 in [0, 1].
    left: the left digit's class ``[n]`` int32.
    right: the right digit's class ``[n]`` int32.
    sum: the regression target ``left + right`` ``[n]`` float32.
    left_source: index of the left digit in scikit-learn's ``load_digits()`` ``[n]``.
    right_source: index of the right digit ``[n]``.
    left_offset: the left digit's top-left corner (row, column) ``[n, 2]``.
    right_offset: the right digit's top-left corner (row, column) ``[n, 2]``.
  """

  x: np.ndarray
  left: np.ndarray
  right: np.ndarray
  sum: np.ndarray
  left_source: np.ndarray
  right_source: np.ndarray
  left_offset: np.ndarray
  right_offset: np.ndarray

  def targets(self) -> dict[str, np.ndarray]:
    """``{"left", "right", "sum"}`` targets, in :data:`TASKS` order."""
    return {"left": self.left, "right": self.right, "sum": self.sum}


def place_pair(
    left_img: np.ndarray,
    right_img: np.ndarray,
    left_offset: np.ndarray,
    right_offset: np.ndarray,
    canvas: int,
) -> np.ndarray:
  """Pastes 8×8 digits at the given corners of zero canvases; overlaps take the maximum.

  Args:
    left_img: ``[n, 8, 8]`` images in [0, 1].
    right_img: ``[n, 8, 8]`` images in [0, 1].
    left_offset: ``[n, 2]`` (row, column) of each left digit's top-left corner.
    right_offset: ``[n, 2]`` likewise for the right digits.
    canvas: side of the output images.

  Returns:
    ``[n, canvas, canvas]`` float32 images.
  """
  n = left_img.shape[0]
  out = np.zeros((n, canvas, canvas), np.float32)
  rows = np.arange(_DIGIT)
  for img, off in ((left_img, left_offset), (right_img, right_offset)):
    r = off[:, 0:1, None] + rows[None, :, None]  # [n, 8, 1]
    c = off[:, 1:2, None] + rows[None, None, :]  # [n, 1, 8]
    idx = np.arange(n)[:, None, None]
    out[idx, r, c] = np.maximum(out[idx, r, c], img)
  return out


def _source_pools(y: np.ndarray, fractions: tuple[float, float, float],
                  rng: np.random.Generator) -> list[np.ndarray]:
  """Stratified, disjoint train/validation/test pools of source indices."""
  pools: list[list[np.ndarray]] = [[], [], []]
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(y == c))
    n_tr = int(round(fractions[0] * len(idx)))
    n_va = int(round(fractions[1] * len(idx)))
    for i, part in enumerate((idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:])):
      pools[i].append(part)
  return [np.sort(np.concatenate(p)) for p in pools]


def load_multidigits(
    *,
    n_train: int = 6000,
    n_val: int = 1000,
    n_test: int = 2000,
    canvas: int = 12,
    max_shift: int = 1,
    source_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> tuple[MultiDigits, MultiDigits, MultiDigits]:
  """Builds the train, validation and test splits of MultiDigits.

  The left digit's corner is ``(a, b)`` and the right digit's
  ``(canvas - 8 - c, canvas - 8 - d)`` with ``a, b, c, d`` drawn uniformly from
  ``0..max_shift``, so with the defaults (12×12, shift ≤ 1) the two 8×8 digits
  overlap on 4 to 6 rows and columns. Both digits of an image are drawn
  independently, with replacement, from the split's own pool of source digits.

  Args:
    n_train: training images.
    n_val: validation images (for model selection).
    n_test: test images.
    canvas: side of the square images; at least 8 + ``max_shift``.
    max_shift: largest shift of a digit from its corner, in pixels.
    source_fractions: shares of every class's source digits given to the
      train, validation and test pools (each > 0, summing to 1).
    seed: NumPy seed of the pools, the pairs and the shifts.

  Returns:
    ``(train, val, test)``, each a :class:`MultiDigits`.

  Example:
    >>> from weightax.datasets import load_multidigits
    >>> train, val, test = load_multidigits(n_train=20, n_val=5, n_test=5)
    >>> train.x.shape, bool((train.sum == train.left + train.right).all())
    ((20, 12, 12), True)
  """
  if min(n_train, n_val, n_test) < 1:
    raise ValueError(
        f"n_train, n_val and n_test must be positive; got {n_train}, {n_val}, {n_test}.")
  if max_shift < 0 or canvas < _DIGIT + max_shift:
    raise ValueError(
        f"canvas must be at least 8 + max_shift and max_shift >= 0; got canvas={canvas}, "
        f"max_shift={max_shift}.")
  fr = tuple(float(f) for f in source_fractions)
  if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
    raise ValueError(
        f"source_fractions must be three positive shares summing to 1; got {source_fractions}.")
  x_src, y_src = _raw()
  img_src = x_src.reshape(-1, _DIGIT, _DIGIT)
  rng = np.random.default_rng(seed)
  pools = _source_pools(y_src, fr, rng)
  far = canvas - _DIGIT
  splits = []
  for pool, n in zip(pools, (n_train, n_val, n_test), strict=True):
    ls = rng.choice(pool, size=n)
    rs = rng.choice(pool, size=n)
    lo = rng.integers(0, max_shift + 1, size=(n, 2))
    ro = far - rng.integers(0, max_shift + 1, size=(n, 2))
    x = place_pair(img_src[ls], img_src[rs], lo, ro, canvas)
    left, right = y_src[ls].astype(np.int32), y_src[rs].astype(np.int32)
    splits.append(MultiDigits(
        x=x, left=left, right=right, sum=(left + right).astype(np.float32),
        left_source=ls, right_source=rs, left_offset=lo, right_offset=ro))
  return splits[0], splits[1], splits[2]
