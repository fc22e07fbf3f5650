"""Explicit GR against the exact Hessian (float64) and between its methods."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import gradreg_optax as gro
from _models import GR_METHODS, mlp_batch, mlp_loss, mlp_params


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _problem():
  params = mlp_params(jax.random.PRNGKey(0), dtype=jnp.float64)
  batch = mlp_batch(jax.random.PRNGKey(1), dtype=jnp.float64)
  return params, batch


def _exact_hg(params, batch):
  """H g from the dense Hessian of the flattened parameters."""
  flat, unravel = ravel_pytree(params)
  loss = lambda f: mlp_loss(unravel(f), batch)
  hessian = jax.hessian(loss)(flat)
  return unravel(hessian @ jax.grad(loss)(flat))


def _correction(method, eps, params, batch, gamma=1.0):
  """(output - g) / gamma of one update."""
  tx = gro.gradient_regularization(mlp_loss, gamma, method=method, eps=eps)
  g = jax.grad(mlp_loss)(params, batch)
  out, _ = tx.update(g, tx.init(params), params, batch=batch)
  return jax.tree.map(lambda o, gi: (o - gi) / gamma, out, g)


def _error(a, b):
  return float(jnp.linalg.norm(ravel_pytree(a)[0] - ravel_pytree(b)[0]) /
               jnp.linalg.norm(ravel_pytree(b)[0]))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method,order", [("forward", 1), ("backward", 1),
                                          ("central", 2)])
def test_finite_difference_converges_to_hg_with_its_order(method, order):
  params, batch = _problem()
  exact = _exact_hg(params, batch)
  eps = np.array([4e-3, 2e-3, 1e-3, 5e-4])
  errors = np.array([_error(_correction(method, e, params, batch), exact)
                     for e in eps])
  fitted = np.polyfit(np.log(eps), np.log(errors), 1)[0]
  assert abs(fitted - order) < 0.1, (fitted, errors)
  assert errors[-1] < (1e-3 if order == 1 else 1e-6)


@pytest.mark.usefixtures("x64")
def test_forward_and_backward_errors_have_opposite_signs():
  # F-GR = H g + (eps/2) T[g,g] + ..., B-GR = H g - (eps/2) T[g,g] + ...
  params, batch = _problem()
  exact, unravel = ravel_pytree(_exact_hg(params, batch))
  fwd = ravel_pytree(_correction("forward", 1e-4, params, batch))[0] - exact
  bwd = ravel_pytree(_correction("backward", 1e-4, params, batch))[0] - exact
  # Equal and opposite up to the O(eps^2) term they share.
  np.testing.assert_allclose(fwd, -bwd, rtol=5e-3, atol=1e-12)
  del unravel


class ExactMethodsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @pytest.mark.usefixtures("x64")
  def test_double_backprop_and_jvp_are_exact(self):
    with jax.enable_x64(True):
      params, batch = _problem()
      exact = _exact_hg(params, batch)
      g = jax.grad(mlp_loss)(params, batch)
      outs = {}
      for method in ("double_backprop", "jvp"):
        tx = gro.gradient_regularization(mlp_loss, 0.3, method=method)
        update = self.variant(lambda g, s, p, b, tx=tx: tx.update(
            g, s, p, batch=b))
        outs[method] = update(g, tx.init(params), params, batch)[0]
      want = jax.tree.map(lambda gi, h: gi + 0.3 * h, g, exact)
      chex.assert_trees_all_close(outs["double_backprop"], outs["jvp"],
                                  atol=1e-10, rtol=0)
      chex.assert_trees_all_close(outs["jvp"], want, atol=1e-10, rtol=0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_double_backprop_is_gradient_of_half_squared_gradient_norm(self):
    # The literal definition: grad of (1/2)||grad L||^2 by jax.grad of jax.grad.
    with jax.enable_x64(True):
      params, batch = _problem()
      half_sq = lambda p: 0.5 * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(
          jax.grad(mlp_loss)(p, batch)))
      want = jax.grad(half_sq)(params)
      tx = gro.gradient_regularization(mlp_loss, 1.0, method="double_backprop")
      g = jax.grad(mlp_loss)(params, batch)
      update = self.variant(lambda g, p, b: tx.update(g, tx.init(p), p,
                                                      batch=b)[0])
      got = jax.tree.map(jnp.subtract, update(g, params, batch), g)
      chex.assert_trees_all_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", GR_METHODS)
def test_output_is_gradient_plus_gamma_times_correction(method):
  # The correction is linear in gamma: doubling gamma doubles (out - g).
  params = mlp_params(jax.random.PRNGKey(0))
  batch = mlp_batch(jax.random.PRNGKey(1))
  one = _correction(method, 0.05, params, batch, gamma=0.1)
  two = _correction(method, 0.05, params, batch, gamma=0.2)
  chex.assert_trees_all_close(one, two, rtol=1e-4, atol=1e-6)


def test_sgd_step_descends_the_regularized_loss():
  # One small step of (GR -> sgd) lowers L + (gamma/2)||grad L||^2 more than
  # it is lowered by plain SGD's direction, to first order (exact method).
  with jax.enable_x64(True):
    params, batch = _problem()
    gamma, lr = 0.5, 1e-4

    def regularized(p):
      g = jax.grad(mlp_loss)(p, batch)
      return mlp_loss(p, batch) + gamma / 2 * sum(
          jnp.sum(x ** 2) for x in jax.tree.leaves(g))

    tx = optax.chain(gro.gradient_regularization(mlp_loss, gamma,
                                                 method="jvp"),
                     optax.sgd(lr))
    g = jax.grad(mlp_loss)(params, batch)
    updates, _ = tx.update(g, tx.init(params), params, batch=batch)
    want = jax.tree.map(lambda x: -lr * x, jax.grad(regularized)(params))
    chex.assert_trees_all_close(updates, want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("method", GR_METHODS)
def test_matches_hand_written_formula(method):
  params = mlp_params(jax.random.PRNGKey(2))
  batch = mlp_batch(jax.random.PRNGKey(3))
  gamma, eps = 0.2, 0.05
  grad = lambda p: jax.grad(mlp_loss)(p, batch)
  g = grad(params)
  shift = lambda s: jax.tree.map(lambda p, gi: p + s * gi, params, g)
  if method == "forward":
    hg = jax.tree.map(lambda a, b: (a - b) / eps, grad(shift(eps)), g)
  elif method == "backward":
    hg = jax.tree.map(lambda a, b: (a - b) / eps, g, grad(shift(-eps)))
  elif method == "central":
    hg = jax.tree.map(lambda a, b: (a - b) / (2 * eps), grad(shift(eps)),
                      grad(shift(-eps)))
  else:
    hg = jax.jvp(grad, (params,), (g,))[1]
  want = jax.tree.map(lambda a, b: a + gamma * b, g, hg)
  tx = gro.gradient_regularization(mlp_loss, gamma, method=method, eps=eps)
  got, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch))(
      g, tx.init(params), params)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
