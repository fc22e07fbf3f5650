"""The registry builds every method as its own constructor does."""

import inspect

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import gradreg_optax as gro
from _models import mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))
GRADS = jax.grad(mlp_loss)(PARAMS, BATCH)

# Each name, built directly with the public constructors (written out here,
# independently of the registry).
DIRECT = {
    "sgd": lambda **h: (None, mlp_loss),
    "forward": lambda **h: (gro.gradient_regularization(
        mlp_loss, h["gamma"], method="forward", eps=h["eps"]), mlp_loss),
    "backward": lambda **h: (gro.gradient_regularization(
        mlp_loss, h["gamma"], method="backward", eps=h["eps"]), mlp_loss),
    "central": lambda **h: (gro.gradient_regularization(
        mlp_loss, h["gamma"], method="central", eps=h["eps"]), mlp_loss),
    "double_backprop": lambda **h: (gro.gradient_regularization(
        mlp_loss, h["gamma"], method="double_backprop"), mlp_loss),
    "jvp": lambda **h: (gro.gradient_regularization(
        mlp_loss, h["gamma"], method="jvp"), mlp_loss),
    "sam": lambda **h: (gro.sam(mlp_loss, h["rho"]), mlp_loss),
    "asam": lambda **h: (gro.sam(mlp_loss, h["rho"], adaptive=True,
                                 adaptive_eta=h["adaptive_eta"]), mlp_loss),
    "gradient_norm_penalty": lambda **h: (gro.gradient_norm_penalty(
        mlp_loss, h["alpha"], h["r"]), mlp_loss),
    "flooding": lambda **h: (None, gro.flooding(mlp_loss, h["b"])),
}


def test_the_registry_lists_every_method_once():
  assert set(gro.METHODS) == set(DIRECT)
  for name, method in gro.METHODS.items():
    assert method.name == name and method.label and method.summary


def _output(tx, loss):
  grads = jax.grad(loss)(PARAMS, BATCH)
  if tx is None:
    return grads
  return tx.update(grads, tx.init(PARAMS), PARAMS, batch=BATCH)[0]


@pytest.mark.parametrize("name", sorted(DIRECT))
@pytest.mark.parametrize("override", [False, True])
def test_building_by_name_equals_the_constructor(name, override):
  method = gro.METHODS[name]
  hyper = {k: (2 * v if override else v) for k, v in method.defaults.items()}
  tx, loss = method(mlp_loss, **(hyper if override else {}))
  want_tx, want_loss = DIRECT[name](**hyper)
  chex.assert_trees_all_equal(_output(tx, loss), _output(want_tx, want_loss))
  assert method.transforms == (want_tx is not None)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("name,constructor,renamed", [
    ("forward", gro.gradient_regularization, {}),
    ("sam", gro.sam, {}),
    ("gradient_norm_penalty", gro.gradient_norm_penalty, {}),
])
def test_defaults_are_the_constructors_defaults(name, constructor, renamed):
  parameters = inspect.signature(constructor).parameters
  for key, value in gro.METHODS[name].defaults.items():
    default = parameters[renamed.get(key, key)].default
    if default is not inspect.Parameter.empty:
      assert value == default, key


def test_extra_gradients_match_the_compiled_matrix_products():
  """A finite-difference step with k extra gradients compiles to (1 + k)
  times the products of an SGD step on an MLP."""
  def products(name):
    tx, loss = gro.METHODS[name](mlp_loss)
    tx = optax.chain(tx, optax.sgd(0.1))

    def step(params, state):
      grads = jax.grad(loss)(params, BATCH)
      updates, state = tx.update(grads, state, params, batch=BATCH)
      return optax.apply_updates(params, updates), state

    return gro.cost.step_cost(step, PARAMS, tx.init(PARAMS)).matmuls

  sgd = products("sgd")
  for name in ("forward", "backward", "central", "sam", "asam",
               "gradient_norm_penalty", "flooding"):
    assert products(name) == (1 + gro.METHODS[name].extra_gradients) * sgd, name


def test_options_reach_the_transformation():
  mask = [{"w": False, "b": False}, {"w": True, "b": True}]
  tx, _ = gro.METHODS["sam"](mlp_loss, rho=0.1, mask=mask)
  out = _output(tx, mlp_loss)
  chex.assert_trees_all_equal(out[0], GRADS[0])
  tx, _ = gro.METHODS["sam"](mlp_loss, has_aux=True)
  with pytest.raises(TypeError, match="has_aux=True"):
    _output(tx, mlp_loss)


@pytest.mark.parametrize("name,kwargs,match", [
    ("forward", {"rho": 0.1}, r"takes \['gamma', 'eps', 'mask', 'axis_name', "
     r"'per_device_perturbation'\]"),
    ("jvp", {"eps": 0.1}, r"\['gamma', "),
    ("sgd", {"gamma": 0.1}, "takes no arguments"),
    ("flooding", {"mask": [True]}, r"takes \['b'\]"),
])
def test_unknown_arguments_are_named(name, kwargs, match):
  with pytest.raises(TypeError, match=match):
    gro.METHODS[name](mlp_loss, **kwargs)


def test_bad_hyperparameters_are_checked_by_the_constructor():
  with pytest.raises(ValueError, match="gradreg_optax.sam: `rho` must be >= 0"):
    gro.METHODS["sam"](mlp_loss, rho=-1.0)


def test_the_registry_is_read_only():
  with pytest.raises(TypeError):
    gro.METHODS["mine"] = gro.METHODS["sam"]
  assert isinstance(gro.METHODS["sam"].defaults["rho"], float)
  assert jnp.isscalar(gro.METHODS["forward"].defaults["gamma"])


@pytest.mark.parametrize("name", [n for n, m in gro.METHODS.items()
                                  if m.transforms])
def test_every_state_can_be_donated(name):
  """State made outside jit, then a step that donates it (each leaf its own
  buffer: XLA refuses to donate one buffer twice)."""
  tx = optax.chain(gro.METHODS[name](mlp_loss).tx, optax.sgd(0.1))
  state = tx.init(PARAMS)
  leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
  assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)
  step = jax.jit(lambda s: tx.update(GRADS, s, PARAMS, batch=BATCH),
                 donate_argnums=0)
  _, new = step(state)
  assert state[0].count.is_deleted()  # donated (unused inputs are dropped)
  step(new)  # the state a step returns can be donated too
