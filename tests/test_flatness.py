"""Flatness measures against exact float64 Hessians of small models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest  # noqa: F401  (fixtures)
from jax.flatten_util import ravel_pytree

from gradreg_optax import flatness


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return 0.5 * jnp.mean((h @ params["w2"] - y) ** 2)


def setup(seed=0, d=3, hidden=4):
  k = jax.random.split(jax.random.key(seed), 5)
  params = {"w1": jax.random.normal(k[0], (d, hidden), jnp.float64),
            "b1": 0.1 * jax.random.normal(k[1], (hidden,), jnp.float64),
            "w2": jax.random.normal(k[2], (hidden,), jnp.float64)}
  x = jax.random.normal(k[3], (16, d), jnp.float64)
  y = jnp.sin(x[:, 0]) + 0.1 * jax.random.normal(k[4], (16,), jnp.float64)
  return params, (x, y)


def exact_hessian(params, batch):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat)


class FlatnessTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hvp_matches_exact_hessian(self):
    params, batch = setup()
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(1), flat.shape, jnp.float64)
    fn = self.variant(lambda p, b, v: flatness.hvp(mlp_loss, p, b, v))
    got = ravel_pytree(fn(params, batch, unravel(v)))[0]
    chex.assert_trees_all_close(got, exact_hessian(params, batch) @ v,
                                rtol=1e-10)

  @chex.variants(with_jit=True, without_jit=True)
  def test_top_eigenvalue_and_vector(self):
    for seed in (0, 1):
      params, batch = setup(seed)
      evals, evecs = np.linalg.eigh(np.asarray(exact_hessian(params, batch)))
      top = np.argmax(np.abs(evals))
      fn = self.variant(lambda p, b, k: flatness.hessian_top_eigenvalue(
          mlp_loss, p, b, k, num_iters=500))
      lam, v = fn(params, batch, jax.random.key(seed))
      np.testing.assert_allclose(float(lam), evals[top], rtol=1e-6)
      v = np.asarray(ravel_pytree(v)[0])
      np.testing.assert_allclose(abs(v @ evecs[:, top]), 1.0, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_hutchinson_trace_within_its_standard_error(self):
    params, batch = setup()
    h = np.asarray(exact_hessian(params, batch))
    s = 500
    # Rademacher probes: Var(z^T H z) = 2 (||H||_F^2 - sum_i H_ii^2).
    std = np.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / s)
    fn = self.variant(lambda p, b, k: flatness.hessian_trace(
        mlp_loss, p, b, k, num_samples=s))
    est = float(fn(params, batch, jax.random.key(3)))
    assert abs(est - np.trace(h)) < 4 * std
    assert std < 0.25 * abs(np.trace(h))  # the check has power

  def test_gradient_norm_sq(self):
    params, batch = setup()
    flat, unravel = ravel_pytree(params)
    g = jax.grad(lambda f: mlp_loss(unravel(f), batch))(flat)
    chex.assert_trees_all_close(
        jax.jit(flatness.gradient_norm_sq, static_argnums=0)(
            mlp_loss, params, batch), jnp.sum(g ** 2), rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  def test_noise_sensitivity_is_half_sigma_sq_trace_at_a_minimum(self):
    # A quadratic with minimum at theta*: E[L(theta* + xi)] - L = s^2 tr H / 2
    # exactly, so only the Monte Carlo error remains.
    a = jax.random.normal(jax.random.key(0), (5, 5), jnp.float64)
    h = a @ a.T
    loss = lambda p, b: 0.5 * (p - b) @ h @ (p - b)
    theta = jnp.arange(5.0)
    sigma, s = 0.01, 4000
    fn = self.variant(lambda p, b, k: flatness.noise_sensitivity(
        loss, p, b, k, sigma=sigma, num_samples=s))
    est = float(fn(theta, theta, jax.random.key(1)))
    expected = 0.5 * sigma ** 2 * float(jnp.trace(h))
    std = 0.5 * sigma ** 2 * np.sqrt(2 * np.sum(np.asarray(h) ** 2) / s)
    assert abs(est - expected) < 4 * std

  def test_relative_noise_scales_with_parameters(self):
    # Relative noise on theta equals absolute noise of sigma |theta_i|: with
    # a diagonal quadratic at its minimum the increase is
    # sigma^2/2 sum_i h_i theta_i^2 in expectation.
    hd = jnp.array([1.0, 2.0, 3.0])
    theta = jnp.array([1.0, -2.0, 0.5])
    loss = lambda p, b: 0.5 * jnp.sum(hd * (p - b) ** 2)
    est = float(flatness.noise_sensitivity(
        loss, theta, theta, jax.random.key(0), sigma=0.1, num_samples=20000,
        relative=True))
    np.testing.assert_allclose(
        est, 0.5 * 0.01 * float(jnp.sum(hd * theta ** 2)), rtol=0.05)
