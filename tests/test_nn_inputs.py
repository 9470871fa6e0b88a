"""The Flax models' input checks: shapes and sizes that used to fail deep in JAX or silently."""

import jax
import jax.numpy as jnp
import pytest

from weightax.nn import init_mlp
from weightax.nn_cnn import init_hard_sharing_cnn, patches3x3


def test_patches_refuse_a_bad_stride_and_shape():
  x = jnp.zeros((1, 4, 4, 1))
  for stride in (0, -1, 1.5):  # -1 returned an empty array
    with pytest.raises(ValueError, match="stride must be a positive int"):
      patches3x3(x, stride)
  with pytest.raises(ValueError, match=r"\[n, h, w, c\]"):
    patches3x3(jnp.zeros((4, 4, 1)))


def test_cnn_names_the_image_shape_it_expects():
  params, apply = init_hard_sharing_cnn(jax.random.key(0), size=12, out_sizes=(10, 1))
  # [n, s, s, 1] failed with "too many values to unpack", a wrong side in a dot_general
  for shape in ((5, 12, 12, 1), (5, 8, 8)):
    with pytest.raises(ValueError, match=r"one-channel images \[n, 12, 12\]"):
      apply(params, jnp.zeros(shape))
  assert [o.shape for o in apply(params, jnp.zeros((5, 12, 12)))] == [(5, 10), (5, 1)]


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 7}, {"size": 12, "features": 0},
                                    {"size": 12, "channels": (0, 4)}])
def test_cnn_sizes_must_be_positive(kwargs):
  with pytest.raises(ValueError, match="ConvTrunk needs"):  # size 0 was a ZeroDivisionError
    init_hard_sharing_cnn(jax.random.key(0), out_sizes=(2,), **kwargs)


def test_mlp_sizes_must_be_positive():
  with pytest.raises(ValueError, match="each a positive int"):
    init_mlp((3, 0, 2), jax.random.key(0))
