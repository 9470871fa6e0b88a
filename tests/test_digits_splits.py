"""The digits splits of the sample-weighting studies: their sizes, balance and disjointness."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from weightax.datasets.digits import load_digits, long_tailed_split


def _source_rows(split):
  """Index of each image of ``split`` in scikit-learn's digits array (its 1797 rows are unique)."""
  raw = (sk_load_digits().data / 16.0).astype(np.float32)
  lookup = {row.tobytes(): i for i, row in enumerate(raw)}
  assert len(lookup) == len(raw)
  return [lookup[row.tobytes()] for row in split.x]


@pytest.mark.parametrize("rho", [1.0, 10.0, 100.0])
def test_long_tailed_counts_follow_the_exponential_profile(rho):
  train, test, counts = long_tailed_split(imbalance_ratio=rho, test_per_class=50, seed=3)
  y = sk_load_digits().target
  n_max = min(int(np.sum(y == c)) for c in range(10)) - 50
  expected = [max(1, int(n_max * rho ** (-c / 9.0))) for c in range(10)]
  assert counts.tolist() == expected
  assert np.bincount(train.y, minlength=10).tolist() == expected
  assert np.bincount(test.y, minlength=10).tolist() == [50] * 10
  # Rounded down, as documented: the realised ratio is rho or more (124 : 1 at rho = 100).
  assert counts[0] / counts[-1] >= rho
  assert counts[-1] == max(1, int(n_max / rho))


def test_long_tailed_train_and_test_do_not_share_images():
  train, test, _ = long_tailed_split(imbalance_ratio=10.0, test_per_class=50, seed=0)
  tr, te = _source_rows(train), _source_rows(test)
  assert len(set(tr)) == len(tr) and len(set(te)) == len(te)  # no image drawn twice
  assert not set(tr) & set(te)


def test_load_digits_split_is_stratified_and_disjoint():
  train, test = load_digits(test_fraction=0.25, seed=1)
  y = sk_load_digits().target
  assert len(train.y) + len(test.y) == len(y)
  for c in range(10):
    assert int(np.sum(test.y == c)) == int(round(0.25 * np.sum(y == c)))
  tr, te = _source_rows(train), _source_rows(test)
  assert sorted(tr + te) == list(range(len(y)))  # every image once, in one split


@pytest.mark.parametrize("kwargs, match", [
    ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
    ({"imbalance_ratio": float("nan")}, "imbalance_ratio"),
    ({"imbalance_ratio": 10.0, "test_per_class": -5}, "test_per_class"),
    ({"imbalance_ratio": 10.0, "test_per_class": 0}, "test_per_class"),
    ({"imbalance_ratio": 10.0, "test_per_class": 400}, "leaves no training data"),
])
def test_long_tailed_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    long_tailed_split(**kwargs)
