"""SAM and the gradient-norm penalty against optax's SAM and their limits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from _models import mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))
GRADS = jax.grad(mlp_loss)(PARAMS, BATCH)


def _update(tx, params=PARAMS, grads=GRADS, batch=BATCH):
  return jax.jit(lambda g, s, p: tx.update(g, s, p, batch=batch)[0])(
      grads, tx.init(params), params)


@pytest.mark.parametrize("rho", [0.01, 0.05, 0.2])
def test_sam_matches_optax_contrib_sam_over_steps(rho):
  base = lambda: optax.sgd(0.1, momentum=0.9)
  ours = optax.chain(gro.sam(mlp_loss, rho), base())
  theirs = optax.contrib.sam(
      base(), optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      sync_period=2, opaque_mode=True)
  p_ours = p_theirs = PARAMS
  s_ours, s_theirs = ours.init(PARAMS), theirs.init(PARAMS)
  for step in range(5):
    batch = mlp_batch(jax.random.PRNGKey(10 + step))
    g = jax.grad(mlp_loss)(p_ours, batch)
    u, s_ours = ours.update(g, s_ours, p_ours, batch=batch)
    p_ours = optax.apply_updates(p_ours, u)
    g = jax.grad(mlp_loss)(p_theirs, batch)
    grad_fn = jax.grad(lambda p, _, b=batch: mlp_loss(p, b))
    u, s_theirs = theirs.update(g, s_theirs, p_theirs, grad_fn=grad_fn)
    p_theirs = optax.apply_updates(p_theirs, u)
    chex.assert_trees_all_close(p_ours, p_theirs, rtol=1e-5, atol=1e-6)


def test_sam_is_gradient_at_ascended_point():
  norm = optax.tree.norm(GRADS)
  ascended = jax.tree.map(lambda p, g: p + 0.05 * g / norm, PARAMS, GRADS)
  chex.assert_trees_all_close(_update(gro.sam(mlp_loss, 0.05)),
                              jax.grad(mlp_loss)(ascended, BATCH),
                              rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.3, 0.8])
def test_gradient_norm_penalty_mixes_as_the_paper(alpha):
  r = 0.1
  norm = optax.tree.norm(GRADS)
  ascended = jax.tree.map(lambda p, g: p + r * g / norm, PARAMS, GRADS)
  g2 = jax.grad(mlp_loss)(ascended, BATCH)
  want = jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, GRADS, g2)
  chex.assert_trees_all_close(
      _update(gro.gradient_norm_penalty(mlp_loss, alpha, r)), want,
      rtol=1e-5, atol=1e-7)


def test_gradient_norm_penalty_at_alpha_one_is_sam():
  chex.assert_trees_all_close(
      _update(gro.gradient_norm_penalty(mlp_loss, alpha=1.0, r=0.07)),
      _update(gro.sam(mlp_loss, rho=0.07)), rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda: gro.gradient_norm_penalty(mlp_loss, alpha=0.0, r=0.1),
    lambda: gro.gradient_norm_penalty(mlp_loss, alpha=0.8, r=0.0),
    lambda: gro.sam(mlp_loss, rho=0.0),
    lambda: gro.sam(mlp_loss, rho=0.0, normalize=False),
    lambda: gro.sam(mlp_loss, rho=0.0, adaptive=True),
])
def test_limits_give_the_plain_gradient_bit_for_bit(make):
  got = _update(make())
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(GRADS)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("eps", [0.01, 0.1])
def test_unnormalized_sam_is_forward_gr_with_gamma_equal_eps(eps):
  chex.assert_trees_all_close(
      _update(gro.sam(mlp_loss, rho=eps, normalize=False)),
      _update(gro.gradient_regularization(mlp_loss, gamma=eps, eps=eps)),
      rtol=1e-6, atol=1e-7)


def test_sam_at_zero_gradient_is_finite_and_zero():
  # At a minimum of the loss the normalized direction is 0/0: perturb by zero.
  loss = lambda p, b: jnp.sum((p - b) ** 2)
  params = jnp.array([1.0, 2.0])
  for tx in (gro.sam(loss), gro.gradient_norm_penalty(loss),
             gro.sam(loss, adaptive=True, adaptive_mask=lambda p: True)):
    out, _ = tx.update(jnp.zeros(2), tx.init(params), params, batch=params)
    np.testing.assert_array_equal(out, jnp.zeros(2))
