"""Tests for gradreg_optax/experiments/models.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradreg_optax.experiments import models


@pytest.mark.parametrize("length,width,stride,padding", [
    (40, 5, 2, "SAME"), (10, 4, 3, ((1, 2),))])
def test_conv1d_as_products_is_the_convolution(length, width, stride,
                                               padding):
  x = jax.random.normal(jax.random.key(0), (3, length, 2))
  w = jax.random.normal(jax.random.key(1), (width, 2, 5))
  conv = lambda f: lambda x, w: f(x, w, (stride,), padding,
                                  dimension_numbers=("NWC", "WIO", "NWC"),
                                  precision="highest")
  want = conv(jax.lax.conv_general_dilated)
  got = conv(models.conv1d_as_products)
  np.testing.assert_allclose(got(x, w), want(x, w), rtol=1e-5, atol=1e-5)
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))),
                             (0, 1))(x, w)
  for a, b in zip(grads(got), grads(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cnn1d_is_the_network_of_flax_convolutions():
  class Reference(nn.Module):  # the same network with nn.Conv's own kernel
    @nn.compact
    def __call__(self, x):
      for f, k in zip((32, 32, 32), (5, 3, 3)):
        x = nn.relu(nn.Conv(f, (k,), strides=(2,))(x))
      return nn.Dense(10)(x.reshape((x.shape[0], -1)))

  x = jax.random.normal(jax.random.key(2), (4, 40, 1))
  variables = models.CNN1D().init(jax.random.key(3), x)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(models.CNN1D().apply(variables, x),
                               Reference().apply(variables, x), rtol=1e-5,
                               atol=1e-5)


def test_conv1d_as_products_rejects_what_it_does_not_do():
  x, w = jnp.ones((2, 8, 4)), jnp.ones((3, 2, 4))
  with pytest.raises(ValueError, match="conv1d_as_products: 1-D inputs"):
    models.conv1d_as_products(x, w, (1,), "SAME", feature_group_count=2)
