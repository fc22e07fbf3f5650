"""The shared perturbed-gradient core against its defining formula."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import gradreg_optax as gro


def loss(params, batch):
  """A non-quadratic loss whose gradient is known in closed form."""
  return jnp.sum(batch * params["a"] ** 4) + jnp.sum(jnp.sin(params["b"]))


def grad(params, batch):
  return {"a": 4 * batch * params["a"] ** 3, "b": jnp.cos(params["b"])}


PARAMS = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([[0.3, -0.7]])}
BATCH = jnp.array([1.0, 0.5, 0.25])


class PerturbedGradientTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_two_point_formula(self):
    for normalize in (False, True):
      radii, weights = (0.1, -0.05), (0.7, 0.4)
      g = grad(PARAMS, BATCH)
      norm = optax.tree.norm(g) if normalize else 1.0
      want = g
      for r, w in zip(radii, weights):
        shifted = jax.tree.map(lambda p, gi: p + r * gi / norm, PARAMS, g)
        want = jax.tree.map(lambda o, gk, gi: o + w * (gk - gi), want,
                            grad(shifted, BATCH), g)
      tx = gro.perturbed_gradient(loss, radii, weights, normalize=normalize)
      update = self.variant(lambda g, s, p, b: tx.update(g, s, p, batch=b)[0])
      chex.assert_trees_all_close(update(g, tx.init(PARAMS), PARAMS, BATCH),
                                  want, rtol=1e-5, atol=1e-6)

  def test_schedules_are_evaluated_at_the_step_count(self):
    tx = gro.perturbed_gradient(loss, [lambda n: 0.1 * n], [1.0])
    fixed = gro.perturbed_gradient(loss, [0.2], [1.0])
    g = grad(PARAMS, BATCH)
    state = tx.init(PARAMS)
    for _ in range(2):
      _, state = tx.update(g, state, PARAMS, batch=BATCH)
    got, state = tx.update(g, state, PARAMS, batch=BATCH)
    want, _ = fixed.update(g, fixed.init(PARAMS), PARAMS, batch=BATCH)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    assert int(state.count) == 3


@pytest.mark.parametrize("radii,weights", [([], []), ([0.1], [1.0, 2.0])])
def test_radii_and_weights_must_pair_up(radii, weights):
  with pytest.raises(ValueError, match="radii.*weights"):
    gro.perturbed_gradient(loss, radii, weights)


def test_non_numeric_radius_is_rejected():
  with pytest.raises(TypeError, match=r"radii\[0\]"):
    gro.perturbed_gradient(loss, ["big"], [1.0])
