"""``mask=`` on an NNX model, in the callable-of-paths form the README shows.

The parameters ``nnx.Optimizer`` hands the transformation are an
``nnx.State``, so a mask written as a plain dict does not match them; a
callable that maps over the paths of whatever it is given does.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradreg_optax as gro

LR, RHO = 0.1, 0.05


class MLP(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(3, 5, rngs=rngs)
    self.out = nnx.Linear(5, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def loss_fn(model, batch):
  x, y = batch
  return jnp.mean((model(x) - y) ** 2)


def head_only(params):  # as in the README
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key == "out", params)


def test_sam_on_the_head_of_an_nnx_model_matches_a_float64_reference():
  kx, ky = jax.random.split(jax.random.key(0))
  batch = (jax.random.normal(kx, (8, 3)), jax.random.normal(ky, (8, 2)))
  model = MLP(nnx.Rngs(0))
  graphdef, template = nnx.split(model, nnx.Param)
  start = jax.tree.map(np.asarray, nnx.to_pure_dict(template))

  optimizer = nnx.Optimizer(
      model, optax.chain(gro.sam(loss_fn, rho=RHO, mask=head_only),
                         optax.sgd(LR)), wrt=nnx.Param)
  with jax.default_matmul_precision("highest"):
    gro.nnx_step(model, optimizer, loss_fn, batch)
  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  # SAM by hand, in float64: ascend along the head's gradient only, with
  # the norm taken over the head, then take the gradient there; the hidden
  # layer gets its plain gradient.
  with jax.enable_x64(True):
    batch64 = jax.tree.map(lambda a: np.asarray(a, np.float64), batch)

    def pure_loss(params):
      state = jax.tree.map(lambda a: a, template)
      nnx.replace_by_pure_dict(state, params)
      return loss_fn(nnx.merge(graphdef, state), batch64)

    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), start)
    g = jax.grad(pure_loss)(p64)
    head_norm = np.sqrt(sum(np.sum(np.square(v))
                            for v in jax.tree.leaves(g["out"])))
    ascended = dict(p64, out=jax.tree.map(lambda p, d: p + RHO * d / head_norm,
                                          p64["out"], g["out"]))
    g_sam = jax.grad(pure_loss)(ascended)
    want = {"hidden": jax.tree.map(lambda p, d: p - LR * d, p64["hidden"],
                                   g["hidden"]),
            "out": jax.tree.map(lambda p, d: p - LR * d, p64["out"],
                                g_sam["out"])}
    plain_out = jax.tree.map(lambda p, d: p - LR * d, p64["out"], g["out"])
  chex.assert_trees_all_close(jax.tree.map(np.asarray, trained),
                              jax.tree.map(np.asarray, want),
                              rtol=1e-5, atol=1e-6)
  # The head's update differs from its plain gradient step: the mask
  # selected it (and left the hidden layer alone, checked above).
  assert not np.allclose(trained["out"]["kernel"], plain_out["kernel"],
                         rtol=1e-4, atol=1e-6)
