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


# Every method, with hyperparameters large enough to change the gradient.
MAKERS = {
    "forward": lambda loss, **kw: gro.gradient_regularization(
        loss, 0.05, method="forward", **kw),
    "backward": lambda loss, **kw: gro.gradient_regularization(
        loss, 0.05, method="backward", **kw),
    "central": lambda loss, **kw: gro.gradient_regularization(
        loss, 0.05, method="central", **kw),
    "double_backprop": lambda loss, **kw: gro.gradient_regularization(
        loss, 0.05, method="double_backprop", **kw),
    "jvp": lambda loss, **kw: gro.gradient_regularization(
        loss, 0.05, method="jvp", **kw),
    "sam": lambda loss, **kw: gro.sam(loss, 0.05, **kw),
    "asam": lambda loss, **kw: gro.sam(loss, 0.5, adaptive=True, **kw),
    "gradient_norm_penalty": lambda loss, **kw: gro.gradient_norm_penalty(
        loss, 0.8, 0.1, **kw),
}
