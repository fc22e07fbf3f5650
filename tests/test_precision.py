"""Mixed precision: bfloat16 parameters, loss scaling, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from _models import mlp_batch, mlp_loss, mlp_params

MAKERS = {
    "forward": lambda loss: gro.gradient_regularization(loss, 0.05),
    "backward": lambda loss: gro.gradient_regularization(
        loss, 0.05, method="backward"),
    "central": lambda loss: gro.gradient_regularization(
        loss, 0.05, method="central"),
    "double_backprop": lambda loss: gro.gradient_regularization(
        loss, 0.05, method="double_backprop"),
    "jvp": lambda loss: gro.gradient_regularization(loss, 0.05, method="jvp"),
    "sam": lambda loss: gro.sam(loss, 0.05),
    "asam": lambda loss: gro.sam(loss, 0.5, adaptive=True),
    "gradient_norm_penalty": lambda loss: gro.gradient_norm_penalty(loss),
}
ALL = sorted(MAKERS)


@pytest.fixture(autouse=True)
def _exact_matmuls():
  # On GPUs float32 products default to TF32; the comparisons here are
  # between float32 computations in different orders. No effect on CPU.
  with jax.default_matmul_precision("highest"):
    yield


def _problem(dtype):
  return (mlp_params(jax.random.PRNGKey(0), dtype=dtype),
          mlp_batch(jax.random.PRNGKey(1), dtype=dtype))


def _regularized(name, params, batch, grads=None, loss=mlp_loss):
  tx = MAKERS[name](loss)
  if grads is None:
    grads = jax.grad(loss)(params, batch)
  return jax.jit(lambda g, p, b: tx.update(g, tx.init(p), p, batch=b)[0])(
      grads, params, batch)


def _flat64(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in jax.tree.leaves(tree)])


def _rel(a, b):
  a, b = _flat64(a), _flat64(b)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_parameters_give_bfloat16_output_close_to_float32(name):
  params16, batch16 = _problem(jnp.bfloat16)
  out16 = _regularized(name, params16, batch16)
  for leaf in jax.tree.leaves(out16):
    assert leaf.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(leaf)))
  # The float32 reference on the same (bfloat16-representable) numbers.
  up = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
  out32 = _regularized(name, up(params16), up(batch16))
  # bfloat16 keeps 8 bits: a few 1e-3 relative per operation.
  assert _rel(out16, out32) < 5e-2
  # And the regularization is not lost to rounding: the bfloat16 output
  # is closer to the float32 regularized gradient than to the plain one.
  plain32 = jax.grad(mlp_loss)(up(params16), up(batch16))
  assert _rel(out16, out32) < 0.5 * _rel(plain32, out32)


@pytest.mark.parametrize("name", ["forward", "jvp", "gradient_norm_penalty"])
def test_loss_scaling_pattern(name):
  """Grads of the scaled loss, unscaled by hand, then the transformation
  (built on the unscaled loss)."""
  scale = 2.0 ** 12
  params, batch = _problem(jnp.bfloat16)
  scaled = jax.grad(lambda p, b: scale * mlp_loss(p, b))(params, batch)
  grads = jax.tree.map(lambda g: g / scale, scaled)
  out = _regularized(name, params, batch, grads)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
  # Scaling by a power of two is exact: same as the unscaled bfloat16 step.
  unscaled = _regularized(name, params, batch)
  assert _rel(out, unscaled) < 1e-2
  up = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
  assert _rel(out, _regularized(name, up(params), up(batch))) < 5e-2


@pytest.mark.parametrize("name", ["forward", "double_backprop", "sam"])
def test_overflowing_scaled_gradient_is_skipped(name):
  scale = 3e38  # float32 max is 3.4e38: the scaled gradient overflows
  params, batch = _problem(jnp.float32)
  scaled = jax.grad(lambda p, b: scale * mlp_loss(p, b) * 10.0)(params, batch)
  grads = jax.tree.map(lambda g: g / scale, scaled)
  assert not all(bool(jnp.all(jnp.isfinite(g)))
                 for g in jax.tree.leaves(grads))
  tx = optax.chain(MAKERS[name](mlp_loss),
                   optax.apply_if_finite(optax.sgd(0.1), 3))
  updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))(
      grads, tx.init(params), params)
  assert int(state[1].notfinite_count) == 1
  new = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["forward", "jvp", "sam", "asam"])
def test_float64_end_to_end(name):
  with jax.enable_x64(True):
    params, batch = _problem(jnp.float64)
    tx = optax.chain(MAKERS[name](mlp_loss), optax.adam(1e-2))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      grads = jax.grad(mlp_loss)(params, batch)
      updates, state = tx.update(grads, state, params, batch=batch)
      return optax.apply_updates(params, updates), state

    for _ in range(3):
      params, state = step(params, state)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(state)
               if jnp.issubdtype(x.dtype, jnp.floating))
    # Same problem in float32: agreement to float32 accuracy.
    params32, batch32 = _problem(jnp.float32)
    p64 = jax.tree.map(lambda x: x.astype(jnp.float64), params32)
    b64 = jax.tree.map(lambda x: x.astype(jnp.float64), batch32)
    out64 = _regularized(name, p64, b64)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(out64))
  out32 = _regularized(name, params32, batch32)
  assert _rel(out32, out64) < 1e-5
