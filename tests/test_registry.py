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

# The names that are not a public constructor, built directly with the
# public constructors (written out here, independently of the registry).
# Every other method is built by the public function of its own name.
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
    "asam": lambda **h: (gro.sam(mlp_loss, h["rho"], adaptive=True,
                                 adaptive_eta=h["adaptive_eta"]), mlp_loss),
    "flooding": lambda **h: (None, gro.flooding(mlp_loss, h["b"])),
}
# Methods whose constructor is the public function of the same name.
NAMED = sorted(set(gro.METHODS) - set(DIRECT))


def _direct(name):
  if name in DIRECT:
    return DIRECT[name]
  return lambda **h: (getattr(gro, name)(mlp_loss, **h), mlp_loss)


def test_the_registry_lists_every_method_once():
  assert set(DIRECT) <= set(gro.METHODS)
  for name, method in gro.METHODS.items():
    assert method.name == name and method.label and method.summary
  for name in NAMED:
    assert name in gro.__all__ and callable(getattr(gro, name)), name


def _output(tx, loss):
  grads = jax.grad(loss)(PARAMS, BATCH)
  if tx is None:
    return grads
  return tx.update(grads, tx.init(PARAMS), PARAMS, batch=BATCH)[0]


def _override(spec, value):
  """Another value in the domain: twice the default, or its midpoint to the
  upper bound."""
  upper = spec.bounds[1]
  return 2 * value if 2 * value < upper else (value + upper) / 2


@pytest.mark.parametrize("name", sorted(gro.METHODS))
@pytest.mark.parametrize("override", [False, True])
def test_building_by_name_equals_the_constructor(name, override):
  method = gro.METHODS[name]
  hyper = {k: (_override(method.hyperparameters[k], v) if override else v)
           for k, v in method.defaults.items()}
  tx, loss = method(mlp_loss, **(hyper if override else {}))
  want_tx, want_loss = _direct(name)(**hyper)
  chex.assert_trees_all_equal(_output(tx, loss), _output(want_tx, want_loss))
  assert method.transforms == (want_tx is not None)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("name,constructor", [
    ("forward", gro.gradient_regularization)] + [
        (name, getattr(gro, name)) for name in NAMED])
def test_defaults_are_the_constructors_defaults(name, constructor):
  parameters = inspect.signature(constructor).parameters
  assert list(gro.METHODS[name].hyperparameters) == [
      k for k in parameters if k in gro.METHODS[name].hyperparameters]
  for key, value in gro.METHODS[name].defaults.items():
    default = parameters[key].default
    if default is not inspect.Parameter.empty:
      assert value == default, key


def _run_reference(method, params, batches):
  """The registry's hand-written step over ``batches``: its updates."""
  state = (method.reference_init(params) if method.reference_init
           else None)
  out = []
  for batch in batches:
    grad = lambda p, b=batch: jax.grad(mlp_loss)(p, b)
    g = grad(params)
    if method.reference_init:
      u, state = method.reference(grad, params, g, state, **method.defaults)
    else:
      u = method.reference(grad, params, g, **method.defaults)
    out.append(u)
    params = jax.tree.map(lambda p, v: p - 0.1 * v, params, u)
  return out


@pytest.mark.parametrize("name", [n for n, m in gro.METHODS.items()
                                  if m.reference is not None])
def test_the_reference_step_is_the_method(name):
  """Several steps, so that the state of a method with one is compared."""
  method = gro.METHODS[name]
  batches = [mlp_batch(jax.random.PRNGKey(k)) for k in range(3)]
  tx = method(mlp_loss).tx
  state, params, got = tx.init(PARAMS), PARAMS, []
  for batch in batches:
    u, state = tx.update(jax.grad(mlp_loss)(params, batch), state, params,
                         batch=batch)
    got.append(u)
    params = jax.tree.map(lambda p, v: p - 0.1 * v, params, u)
  chex.assert_trees_all_close(got, _run_reference(method, PARAMS, batches),
                              rtol=2e-5, atol=1e-6)


# The exact Hessian-vector products: their two extra gradients cost more
# products than two gradients (tests/test_cost.py counts them).
EXACT = ("double_backprop", "jvp")


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
  for name in set(gro.METHODS) - set(EXACT) - {"sgd"}:
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
