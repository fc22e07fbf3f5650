"""The benchmarks time like against like: library and hand-written steps agree.

``benchmarks/step_cost.py`` reports the library's step time over that of the
shortest hand-written step for the same method; the ratio means something
only if both compute the same update. One step of each from the same state
must give the same parameters and BatchNorm statistics.
"""

import os
import sys

import chex
import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import common  # pylint: disable=wrong-import-position

MLP_METHODS = common.LIBRARY_METHODS + (common.PENALIZED_LOSS, common.OPTAX_SAM)


def _one_step(problem, tx_and_step):
  tx, step = tx_and_step
  params, model_state, x, y = problem.args()
  params, _, model_state, _ = jax.jit(step)(params, tx.init(params),
                                            model_state, x, y)
  return params, model_state


def _agree(problem, method, rtol, atol):
  hand = common.HAND_REFERENCE.get(method, method)
  chex.assert_trees_all_close(
      _one_step(problem, common.library_step(problem, method)),
      _one_step(problem, common.hand_step(problem, hand)), rtol=rtol,
      atol=atol)


@pytest.mark.parametrize("method", MLP_METHODS)
def test_library_and_hand_steps_agree_on_an_mlp(method):
  # float32 and a different order of operations: agreement to rounding.
  _agree(common.mlp_problem(3, 32, 16), method, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [
    "forward", pytest.param("jvp", marks=pytest.mark.slow),
    pytest.param(common.PENALIZED_LOSS, marks=pytest.mark.slow)])
def test_library_and_hand_steps_agree_on_a_resnet_with_batchnorm(method):
  problem = common.resnet_problem(4, width=4, input_shape=(8, 8, 3),
                                 stages=(1, 1))
  _agree(problem, method, rtol=1e-4, atol=1e-6)


def test_sgd_baseline_differs_from_a_regularized_step():
  # The agreement above is not vacuous: GR changes the step.
  problem = common.mlp_problem(3, 32, 16)
  sgd = _one_step(problem, common.library_step(problem, None))
  fgr = _one_step(problem, common.library_step(problem, "forward"))
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(sgd, fgr, rtol=1e-5, atol=1e-6)
