"""Data parallelism on 8 host devices equals the single-device computation.

The device count is fixed when jax starts, so the computations run in a
fresh process (tests/_data_parallel_check.py) started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; these tests check the
relative errors it prints. All comparisons are float32 with a different
reduction order, hence the tolerance of 1e-6 relative (measured about 1e-7).
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

import gradreg_optax as gro

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-6
ALL = ("forward", "central", "jvp", "double_backprop", "sam",
       "gradient_norm_penalty")
SOME = ("forward", "jvp", "sam")


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(HERE), HERE, env.get("PYTHONPATH", "")])
  run = subprocess.run(
      [sys.executable, os.path.join(HERE, "_data_parallel_check.py")],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-4000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def test_batch_is_sharded_over_eight_devices(results):
  assert results["batch_devices"] == 8


@pytest.mark.parametrize("name", ALL)
def test_shard_map_with_axis_name_equals_single_device(results, name):
  """shard_map(check_vma=False), local gradient in, axis_name="d"."""
  assert results[f"shard_map/{name}"] < TOL


@pytest.mark.parametrize("name", SOME)
def test_jit_with_sharded_batch_equals_single_device(results, name):
  """Plain jax.jit on a NamedSharding-sharded batch, no axis_name."""
  assert results[f"jit_sharded/{name}"] < TOL


@pytest.mark.parametrize("name", SOME)
def test_shard_map_check_vma_with_global_loss_equals_single_device(
    results, name):
  """shard_map(check_vma=True), the default: autodiff already sums the
  gradient of replicated parameters over the axis, so a loss divided by the
  device count and no axis_name give the single-device result."""
  assert results[f"shard_map_vma/{name}"] < TOL


@pytest.mark.parametrize("name", SOME)
def test_shard_map_check_vma_returns_a_replicated_state(results, name):
  """The documented check_vma=True pattern with the whole state as output
  (out_specs=P()): the metrics computed from each device's batch are summed
  over the axis as autodiff sums the gradient, and equal one device's."""
  assert results[f"shard_map_vma_state/{name}"] < TOL


@pytest.mark.parametrize("name", SOME)
def test_shard_map_check_vma_with_axis_name_is_rejected(results, name):
  """Gradients that autodiff already reduced over the axis cannot be
  averaged again: this must be an error naming the remedy, not a result."""
  outcome = results[f"shard_map_vma_axis_name/{name}"]
  assert isinstance(outcome, str) and "check_vma" in outcome, outcome


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_per_device_perturbation_is_m_sharpness(results, name):
  assert results[f"per_device/{name}"] < TOL
  # ... and not the globally perturbed gradient.
  assert results[f"per_device_vs_global/{name}"] > 1e-3


@pytest.mark.parametrize("name", SOME)
def test_tuple_axis_name_averages_over_both_mesh_axes(results, name):
  """A 2 x 4 mesh, the batch split over both axes: axis_name=("a", "b")
  is the single-device result, averaging over "b" alone is not, and under
  check_vma=True the tuple is rejected like a single axis."""
  assert results[f"two_axes/{name}"] < TOL
  assert results[f"two_axes_one_named/{name}"] > 1e-3
  outcome = results[f"two_axes_vma/{name}"]
  assert isinstance(outcome, str) and "check_vma" in outcome, outcome


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_per_device_perturbation_over_two_mesh_axes(results, name):
  assert results[f"per_device_two_axes/{name}"] < TOL


@pytest.mark.parametrize("axis_name", [(), ("a", 1), ["a", "b"], 3])
def test_axis_name_must_be_a_string_or_tuple_of_strings(axis_name):
  loss = lambda p, b: jnp.mean((b * p) ** 2)
  with pytest.raises(TypeError, match="tuple of strings"):
    gro.sam(loss, 0.05, axis_name=axis_name)
  with pytest.raises(TypeError, match="tuple of strings"):
    gro.gradient_regularization(loss, 0.05, axis_name=axis_name)
