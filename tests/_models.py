"""Small models and every method's constructor, shared by the tests."""

import jax
import jax.numpy as jnp

import gradreg_optax as gro


def mlp_params(key, sizes=(3, 4, 2), dtype=jnp.float32):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": (jax.random.normal(k, (a, b)) / jnp.sqrt(a)).astype(dtype),
           "b": (0.1 * jax.random.normal(jax.random.fold_in(k, 1), (b,))
                 ).astype(dtype)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_loss(params, batch):
  """Mean squared error of a tanh MLP: smooth, with a non-trivial Hessian."""
  x, y = batch
  h = x
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      h = jnp.tanh(h)
  return jnp.mean((h - y) ** 2)


def mlp_batch(key, n=8, sizes=(3, 4, 2), dtype=jnp.float32):
  kx, ky = jax.random.split(key)
  return (jax.random.normal(kx, (n, sizes[0])).astype(dtype),
          jax.random.normal(ky, (n, sizes[-1])).astype(dtype))


# Every method that transforms the gradient, with the registry's defaults
# (large enough to change the gradient).
MAKERS = {name: (lambda loss, name=name, **kw: gro.METHODS[name](loss, **kw).tx)
          for name, method in gro.METHODS.items() if method.transforms}

# The methods of gradient_regularization, written out here so that the tests
# do not take them from the code under test.
GR_METHODS = ("forward", "backward", "central", "double_backprop", "jvp")
