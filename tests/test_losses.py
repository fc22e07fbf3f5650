"""Flooding and implicit gradient regularization."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro


def quadratic(params, batch):
  a, target = batch
  return 0.5 * jnp.sum(a * (params - target) ** 2)


class FloodingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_value_and_gradient_flip_below_the_flood(self):
    flooded = self.variant(gro.flooding(quadratic, b=1.0))
    batch = (jnp.array([1.0, 2.0]), jnp.zeros(2))
    low, high = jnp.array([0.1, 0.2]), jnp.array([2.0, 1.0])
    chex.assert_trees_all_close(flooded(low, batch),
                                2.0 - quadratic(low, batch), rtol=1e-6)
    chex.assert_trees_all_close(flooded(high, batch), quadratic(high, batch),
                                rtol=1e-6)
    chex.assert_trees_all_close(
        jax.grad(gro.flooding(quadratic, b=1.0))(low, batch),
        -jax.grad(quadratic)(low, batch), rtol=1e-6)

  def test_has_aux_passes_aux_through(self):
    flooded = gro.flooding(lambda p, b: (quadratic(p, b), {"n": 3}), b=0.5,
                           has_aux=True)
    loss, aux = flooded(jnp.zeros(2), (jnp.ones(2), jnp.ones(2)))
    assert aux == {"n": 3}
    chex.assert_trees_all_close(loss, 1.0)

  def test_two_steps_crossing_the_flood_are_one_forward_gr_step(self):
    # Karakida et al. (2023): crossing b from below, two flooded GD steps give
    # theta_t - eta^2 (grad L(theta_t + eta g) - g) / eta, i.e. minus eta times
    # the F-GR correction with eta = gamma = eps.
    with jax.enable_x64(True):
      batch = (jnp.array([1.0, 3.0]), jnp.array([0.5, -0.5]))
      theta = jnp.array([0.6, -0.3])
      b, eta = 0.2, 0.4
      flooded_grad = jax.grad(gro.flooding(quadratic, b))
      assert quadratic(theta, batch) < b
      theta1 = theta - eta * flooded_grad(theta, batch)
      assert quadratic(theta1, batch) > b
      theta2 = theta1 - eta * flooded_grad(theta1, batch)

      tx = gro.gradient_regularization(quadratic, gamma=eta, eps=eta)
      g = jax.grad(quadratic)(theta, batch)
      fgr, _ = tx.update(g, tx.init(theta), theta, batch=batch)
      chex.assert_trees_all_close(theta2, theta - eta * (fgr - g),
                                  rtol=1e-12, atol=1e-14)

  def test_rejects_bad_arguments(self):
    with pytest.raises(TypeError, match="loss_fn"):
      gro.flooding("not a function", 0.1)
    with pytest.raises(ValueError, match="`b`"):
      gro.flooding(quadratic, -0.1)


# Barrett & Dherin's two-parameter model.
X, Y = 2.0, 1.5


def two_param_loss(theta):
  return (Y - theta[0] * theta[1] * X) ** 2 / 2


def _flow(loss, theta, time, dt):
  """RK4 integration of d theta / dt = -grad loss (float64)."""
  grad = jax.grad(loss)
  f = lambda t: -grad(t)

  def rk4(_, t):
    k1 = f(t)
    k2 = f(t + dt / 2 * k1)
    k3 = f(t + dt / 2 * k2)
    k4 = f(t + dt * k3)
    return t + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

  return jax.lax.fori_loop(0, int(round(time / dt)), rk4, theta)


def _gradient_descent(loss, theta, h, steps):
  grad = jax.grad(loss)
  return jax.lax.fori_loop(0, steps, lambda _, t: t - h * grad(t), theta)


def test_gradient_descent_follows_the_modified_flow_to_second_order():
  with jax.enable_x64(True):
    theta0 = jnp.array([0.2, 0.4])
    time = 0.64  # a multiple of every step h
    hs = np.array([0.04, 0.02, 0.01])
    err_plain, err_modified = [], []
    for h in hs:
      steps = int(round(time / h))
      gd = _gradient_descent(two_param_loss, theta0, h, steps)
      plain = _flow(two_param_loss, theta0, time, h / 50)
      modified = _flow(gro.igr_modified_loss(two_param_loss, h), theta0, time,
                       h / 50)
      err_plain.append(float(jnp.linalg.norm(gd - plain)))
      err_modified.append(float(jnp.linalg.norm(gd - modified)))
    order_plain = np.polyfit(np.log(hs), np.log(err_plain), 1)[0]
    order_modified = np.polyfit(np.log(hs), np.log(err_modified), 1)[0]
    assert abs(order_plain - 1) < 0.15, (order_plain, err_plain)
    assert abs(order_modified - 2) < 0.2, (order_modified, err_modified)
    assert all(m < p for m, p in zip(err_modified, err_plain))


def test_igr_modified_loss_is_loss_plus_rate_times_regularizer():
  params = {"w": jnp.array([0.3, -1.2, 0.5]), "b": jnp.array(0.7)}
  batch = (jnp.array([1.0, 2.0, 0.5]), 0.25)
  loss = lambda p, b: jnp.sum(b[0] * p["w"] ** 2) * p["b"] + b[1]
  h = 0.1
  m = 4
  rate = gro.igr_rate(h, params)
  assert rate == pytest.approx(h * m / 4)
  want = loss(params, batch) + rate * gro.igr_regularizer(loss)(params, batch)
  chex.assert_trees_all_close(gro.igr_modified_loss(loss, h)(params, batch),
                              want, rtol=1e-6)
  # R_IG by hand: mean of the squared partial derivatives.
  g = jax.grad(loss)(params, batch)
  by_hand = (jnp.sum(g["w"] ** 2) + g["b"] ** 2) / m
  chex.assert_trees_all_close(gro.igr_regularizer(loss)(params, batch),
                              by_hand, rtol=1e-6)


def test_igr_modified_loss_gradient_is_double_backprop_gr_with_half_rate():
  # grad(E + (h/4)||grad E||^2) = g + (h/2) H g.
  loss = lambda p, b: jnp.sum(jnp.cos(b * p)) + jnp.sum(p ** 4)
  params, batch = jnp.array([0.3, -0.8, 1.1]), jnp.array([1.0, 2.0, 3.0])
  h = 0.05
  tx = gro.gradient_regularization(loss, h / 2, method="double_backprop")
  g = jax.grad(loss)(params, batch)
  out, _ = tx.update(g, tx.init(params), params, batch=batch)
  chex.assert_trees_all_close(
      jax.grad(gro.igr_modified_loss(loss, h))(params, batch), out, rtol=1e-5)


def test_igr_rate_rejects_bad_arguments():
  with pytest.raises(ValueError, match="learning_rate"):
    gro.igr_rate(0.0, 10)
  with pytest.raises(ValueError, match="num_params"):
    gro.igr_rate(0.1, 0)
  assert gro.igr_rate(0.1, optax.tree.zeros_like({"a": jnp.ones((2, 3))})
                      ) == pytest.approx(0.15)
