"""The global norm against float64, from tiny to huge gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradreg_optax import _numerics

SCALES = [1e-25, 1e-20, 1e-15, 1e-5, 1.0, 1e5, 1e15, 1e19, 1e25, 1e30]


def _platform_form(form):
  # One of global_norm's two forms, whatever platform runs the test.
  def norm(tree):
    leaves = [_numerics.wide(x) for x in jax.tree.leaves(tree)]
    return form([x.astype(_numerics.wide_dtype(leaves)) for x in leaves])
  return jax.jit(norm)


NORMS = {"eager": _numerics.global_norm,
         "jit": jax.jit(_numerics.global_norm),
         "one pass (GPU, TPU)": _platform_form(_numerics._norm_one_pass),
         "plain first (CPU)": _platform_form(_numerics._norm_plain_first)}


def _tree(scale, dtype=np.float32):
  rng = np.random.RandomState(0)
  return {"w": (rng.randn(40, 30) * scale).astype(dtype),
          "b": (rng.randn(30) * scale).astype(dtype),
          "s": np.asarray(rng.randn() * scale, dtype)}


def _reference(tree):
  return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                     for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("impl", sorted(NORMS))
def test_float32_norm_matches_float64_at_every_scale(scale, impl):
  tree = jax.tree.map(jnp.asarray, _tree(scale))
  norm = NORMS[impl](tree)
  assert norm.dtype == jnp.float32
  # float32 rounding of a sum of 1231 squares: a few float32 epsilons.
  np.testing.assert_allclose(float(norm), _reference(tree), rtol=1e-6)


def test_the_plain_sum_would_fail_at_the_extremes():
  # The cases above are not trivially representable: the naive float32 sum
  # of squares overflows at 1e30 and underflows to zero at 1e-25.
  naive = lambda t: jnp.sqrt(sum(jnp.sum(jnp.square(x))
                                 for x in jax.tree.leaves(t)))
  assert not np.isfinite(float(naive(jax.tree.map(jnp.asarray,
                                                  _tree(1e30)))))
  assert float(naive(jax.tree.map(jnp.asarray, _tree(1e-25)))) == 0.0


@pytest.mark.parametrize("impl", sorted(NORMS))
def test_wider_leaves_are_summed_in_their_own_dtype(impl):
  with jax.enable_x64(True):
    tree = jax.tree.map(jnp.asarray, _tree(1e200, np.float64))
    norm = NORMS[impl](tree)
    assert norm.dtype == jnp.float64
    np.testing.assert_allclose(float(norm), _reference(
        jax.tree.map(lambda x: np.asarray(x) / 1e200, tree)) * 1e200,
                               rtol=1e-14)


def test_bfloat16_leaves_are_summed_in_float32():
  tree = {"a": jnp.full((100,), 3.0, jnp.bfloat16)}
  norm = _numerics.global_norm(tree)
  assert norm.dtype == jnp.float32
  assert float(norm) == 30.0


@pytest.mark.parametrize("leaves,want", [
    ([jnp.zeros(3)], 0.0), ([jnp.zeros((0, 4))], 0.0),
    ([jnp.array([1.0, jnp.inf])], np.inf),
    ([jnp.array([1.0, -jnp.inf])], np.inf),
    ([jnp.array(1e-30), jnp.zeros((0,))], 1e-30),
])
@pytest.mark.parametrize("impl", sorted(NORMS))
def test_zero_empty_single_and_infinite(leaves, want, impl):
  np.testing.assert_allclose(float(NORMS[impl](leaves)), want,
                             rtol=1e-6)


def test_no_leaves():
  assert float(_numerics.global_norm([])) == 0.0


@pytest.mark.parametrize("impl", sorted(NORMS))
def test_nan_propagates(impl):
  assert np.isnan(float(NORMS[impl]([jnp.array([1.0, jnp.nan])])))


def test_no_dot_in_the_compiled_norm():
  hlo = jax.jit(_numerics.global_norm).lower(
      jax.tree.map(jnp.asarray, _tree(1.0))).compile().as_text()
  assert " dot(" not in hlo


def test_the_cpu_form_takes_the_scaled_sums_only_when_needed():
  # A conditional around the scaled sums, whose variadic reduction XLA's CPU
  # backend runs slowly; the plain sum outside it.
  hlo = jax.jit(_numerics._norm_plain_first).lower(
      [jnp.ones((4, 3))]).compile().as_text()
  assert "conditional(" in hlo
