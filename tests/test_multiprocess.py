"""Two processes of JAX's multi-controller runtime equal one process.

tests/_multiprocess_check.py runs twice as a worker of ``jax.distributed``
on a free localhost port (4 CPU devices each, gloo collectives, one global
mesh of 8 devices; the batch sharded over the processes and the parameters
and optimizer state FSDP-style over all devices), and once as the
single-process reference on the whole batch. All comparisons are float32
with a different reduction order, hence the tolerance of 1e-6 relative
(measured at most 1.8e-7; ``pytest -s`` prints every error).
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "_multiprocess_check.py")
TOL = 1e-6
TIMEOUT = 300  # seconds, for the three processes together
TRAINERS = ("forward_sgd", "sam_adam")
METHODS = ("forward", "sam")
# Relative errors; the sharpness's is relative to the loss.
METRICS = ("loss", "perturbed_loss", "grad_norm", "penalty")


def _distributed_unavailable():
  initialize = getattr(getattr(jax, "distributed", None), "initialize", None)
  if initialize is None:
    return "jax.distributed.initialize is not available in this JAX"
  if "jax_cpu_collectives_implementation" not in jax.config.values:
    return ("this JAX has no collectives between CPU processes "
            "(jax_cpu_collectives_implementation)")
  return None


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(*args):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the device count is set by the script
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(HERE), HERE, env.get("PYTHONPATH", "")])
  return subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _collect(procs):
  """Each process's last stdout line as JSON; kills all on a failure."""
  outs = []
  deadline = time.monotonic() + TIMEOUT
  try:
    for proc in procs:
      # One deadline for all: a worker whose peer died may wait on it.
      stdout, stderr = proc.communicate(
          timeout=max(1.0, deadline - time.monotonic()))
      assert proc.returncode == 0, (proc.args, stderr[-4000:])
      outs.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return outs


@pytest.fixture(scope="module")
def runs():
  reason = _distributed_unavailable()
  if reason:
    pytest.skip(reason)
  port = _free_port()
  procs = [_start("worker", i, port) for i in range(2)] + [_start("reference")]
  *workers, reference = _collect(procs)
  errors = _errors(workers, reference)
  print("max relative errors:", json.dumps(errors))
  return workers, reference, errors


def _rel(a, b):
  """||a - b|| / ||b|| over lists of arrays, in float64."""
  a = np.concatenate([np.ravel(x) for x in a]).astype(np.float64)
  b = np.concatenate([np.ravel(x) for x in b]).astype(np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _errors(workers, reference):
  """The largest relative error over both processes, by comparison."""
  errors = {}
  def record(key, error):
    errors[key] = max(errors.get(key, 0.0), error)
  for out in workers:
    for name in TRAINERS:
      record(f"{name}/params", _rel(out[f"{name}/params"],
                                    reference[f"{name}/params"]))
      got, want = out[f"{name}/metrics"], reference[f"{name}/metrics"]
      for m in METRICS:
        record(f"{name}/{m}", _rel([got[m]], [want[m]]))
      # A difference of two losses: float32 rounds it relative to the loss.
      record(f"{name}/sharpness", abs(got["sharpness"] - want["sharpness"])
             / abs(want["loss"]))
    for kind in ("global", "per_device"):
      for name in METHODS:
        key = f"shard_map/{kind}/{name}"
        got, want = out[key], reference[key]
        record(f"{key}/updates", _rel(got["updates"], want["updates"]))
        for m in ("loss", "perturbed_loss", "grad_norms"):
          record(f"{key}/{m}", _rel([got[m]], [want[m]]))
    for name in METHODS:
      record(f"per_device_vs_global/{name}", _rel(
          out[f"shard_map/per_device/{name}"]["updates"],
          reference[f"shard_map/global/{name}"]["updates"]))
  return errors


def test_batch_and_parameters_are_sharded_across_processes(runs):
  workers, _, _ = runs
  assert [w["process"] for w in workers] == [0, 1]
  # Each process holds its own half of the batch rows, not all of them.
  assert sorted(w["rows"] for w in workers) == [[0, 16], [16, 32]]
  assert not any(w["batch_fully_addressable"] for w in workers)
  for w in workers:
    for name in TRAINERS:
      # Every parameter still split over the 8 devices of both processes.
      assert set(w[f"{name}/param_specs"]) == {"P('d',)"}
      assert set(w[f"{name}/param_devices"]) == {8}


@pytest.mark.parametrize("name", TRAINERS)
def test_jit_training_equals_one_process(runs, name):
  """F-GR with SGD momentum and SAM with Adam, a few jitted steps with
  sharded arrays and no axis_name: parameters and metrics as on one
  device with the whole batch."""
  workers, _, errors = runs
  assert errors[f"{name}/params"] < TOL
  for m in METRICS + ("sharpness",):
    assert errors[f"{name}/{m}"] < TOL, m
  # Both processes end with the same global parameters.
  assert workers[0][f"{name}/params"] == workers[1][f"{name}/params"]


@pytest.mark.parametrize("name", METHODS)
def test_shard_map_with_axis_name_equals_one_process(runs, name):
  """Local gradients in, axis_name="d": the perturbation follows the
  gradient averaged over both processes' devices."""
  _, _, errors = runs
  for part in ("updates", "loss", "perturbed_loss", "grad_norms"):
    assert errors[f"shard_map/global/{name}/{part}"] < TOL, part


@pytest.mark.parametrize("name", METHODS)
def test_per_device_perturbation_uses_each_shard(runs, name):
  """per_device_perturbation=True: each device perturbs along its own
  shard's gradient (float64 reference computed shard by shard)."""
  _, _, errors = runs
  for part in ("updates", "loss", "perturbed_loss", "grad_norms"):
    assert errors[f"shard_map/per_device/{name}/{part}"] < TOL, part
  # ... and not along the global gradient.
  assert errors[f"per_device_vs_global/{name}"] > 1e-3
