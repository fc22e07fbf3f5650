"""Two processes of JAX's multi-controller runtime, and the one-process run.

Run by tests/test_multiprocess.py as scripts, each in a fresh process:

  python _multiprocess_check.py worker PROCESS_ID PORT   # ids 0 and 1
  python _multiprocess_check.py reference

A worker joins ``jax.distributed`` at ``127.0.0.1:PORT`` with 4 CPU devices
of its own (collectives over gloo): 8 devices in one global mesh. It holds
its half of the batch and, FSDP-style, an eighth of every parameter and of
the optimizer state, trains F-GR with SGD momentum and SAM with Adam for a
few jitted steps, then runs single updates inside ``shard_map`` with
``axis_name`` (global and per-device perturbation). The reference process
runs the same steps on one device on the whole batch, and computes the
per-device perturbation by hand, shard by shard, in float64. Each prints one
JSON object of plain lists and floats; the test compares them.
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import gradreg_optax as gro
from _models import mlp_loss

PROCESSES = 2
LOCAL_DEVICES = 4
DEVICES = PROCESSES * LOCAL_DEVICES
SIZES = (8, 16, 8)  # every leading dimension divisible by DEVICES
BATCH = 4 * DEVICES
STEPS = 3
GAMMA, EPS, RHO = 0.05, 0.1, 0.05


def _setup(mode, process_id=0, port=0):
  """Configures jax before its first computation (fixes the devices)."""
  jax.config.update("jax_platforms", "cpu")
  if mode == "worker":
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=PROCESSES,
                               process_id=process_id,
                               initialization_timeout=60)
  else:
    jax.config.update("jax_num_cpu_devices", 1)


def trainers():
  """The optimizers trained for STEPS steps, GR first in the chain."""
  return {
      "forward_sgd": optax.chain(
          gro.gradient_regularization(mlp_loss, GAMMA, method="forward",
                                      eps=EPS),
          optax.sgd(0.1, momentum=0.9)),
      "sam_adam": optax.chain(gro.sam(mlp_loss, rho=RHO), optax.adam(1e-2)),
  }


def transformations(**options):
  """The transformations of the single updates inside shard_map."""
  return {
      "forward": gro.gradient_regularization(mlp_loss, GAMMA,
                                             method="forward", eps=EPS,
                                             **options),
      "sam": gro.sam(mlp_loss, rho=RHO, **options),
  }


def make_step(tx):
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch, value=loss)
    return optax.apply_updates(params, updates), state
  return step


def _metrics(state):
  m = gro.metrics(state)
  return {**{k: float(v) for k, v in m._asdict().items()
             if k != "hyperparameters"},
          **{f"hyperparameters/{k}": float(v)
             for k, v in m.hyperparameters.items()}}


def _lists(tree):
  return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]


def _data():
  """Every process makes the same parameters and global batch (numpy: no
  compilation of eager random ops)."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  params = [{"w": normal(a, b) / np.float32(np.sqrt(a)), "b": 0.1 * normal(b)}
            for a, b in zip(SIZES[:-1], SIZES[1:])]
  return params, (normal(BATCH, SIZES[0]), normal(BATCH, SIZES[-1]))


def fsdp_spec(shape):
  """Shards a leaf's leading axis over all devices where it divides."""
  return P("d") if shape and shape[0] % DEVICES == 0 else P()


def worker():
  assert jax.process_count() == PROCESSES, jax.process_count()
  assert jax.device_count() == DEVICES, jax.devices()
  mesh = jax.make_mesh((DEVICES,), ("d",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  params, batch = _data()
  global_array = lambda x, spec: jax.make_array_from_callback(
      x.shape, NamedSharding(mesh, spec), lambda index: x[index])
  fsdp = jax.tree.map(lambda x: global_array(x, fsdp_spec(x.shape)), params)
  replicated = jax.tree.map(lambda x: global_array(x, P()), params)
  # The batch from what this process holds: the rows of its own devices.
  batch_sharding = NamedSharding(mesh, P("d"))
  rows = sorted(index[0].start for index in
                batch_sharding.addressable_devices_indices_map(
                    batch[0].shape).values())
  lo, hi = rows[0], rows[-1] + BATCH // DEVICES
  assert hi - lo == BATCH // PROCESSES, (lo, hi)
  local = jax.tree.map(lambda x: x[lo:hi], batch)
  global_batch = jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
      local)
  out = {"process": jax.process_index(), "rows": [lo, hi],
         "batch_fully_addressable": global_batch[0].is_fully_addressable}
  gather = lambda tree: multihost_utils.process_allgather(tree, tiled=True)

  for name, tx in trainers().items():
    shapes = jax.eval_shape(tx.init, fsdp)
    state_shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, fsdp_spec(s.shape)), shapes)
    param_shardings = jax.tree.map(lambda x: x.sharding, fsdp)
    state = jax.jit(tx.init, out_shardings=state_shardings)(fsdp)
    step = jax.jit(make_step(tx),
                   out_shardings=(param_shardings, state_shardings))
    p = fsdp
    for _ in range(STEPS):
      p, state = step(p, state, global_batch)
    out[f"{name}/param_specs"] = [str(x.sharding.spec)
                                  for x in jax.tree.leaves(p)]
    out[f"{name}/param_devices"] = [len(x.sharding.device_set)
                                    for x in jax.tree.leaves(p)]
    out[f"{name}/params"] = _lists(gather(p))
    out[f"{name}/metrics"] = _metrics(gather(state))

  def sharded_update(tx):
    def local_update(params, batch):
      # The local gradient goes in as is: the transformation averages it.
      loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
      updates, state = tx.update(grads, tx.init(params), params, batch=batch,
                                 value=loss)
      m = gro.metrics(state)
      return updates, m.loss, m.perturbed_loss, m.grad_norm[None]
    return jax.jit(jax.shard_map(
        local_update, mesh=mesh, in_specs=(P(), P("d")),
        out_specs=(P(), P(), P(), P("d")), check_vma=False))(
            replicated, global_batch)

  for kind, options in (("global", {}),
                        ("per_device", {"per_device_perturbation": True})):
    for name, tx in transformations(axis_name="d", **options).items():
      updates, loss, perturbed, norms = gather(sharded_update(tx))
      out[f"shard_map/{kind}/{name}"] = {
          "updates": _lists(updates), "loss": float(loss),
          "perturbed_loss": float(perturbed),
          "grad_norms": np.asarray(norms).tolist()}
  print(json.dumps(out), flush=True)
  jax.distributed.shutdown()


def _per_shard(name, params, batch):
  """m-sharpness by hand, in float64: each shard perturbs along its own
  gradient; the outputs and losses are averaged over the shards."""
  with jax.enable_x64(True):
    f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    one = jax.jit(functools.partial(_one_shard, name))
    shards = [one(f64(params), jax.tree.map(
        lambda x, i=i: f64(np.split(x, DEVICES)[i]), batch))
              for i in range(DEVICES)]
    mean = lambda *x: sum(x) / DEVICES
    out, loss, perturbed_loss, norm = jax.tree.map(mean, *shards)
    return {"updates": _lists(out), "loss": float(loss),
            "perturbed_loss": float(perturbed_loss),
            "grad_norms": [float(s[3]) for s in shards]}


def _one_shard(name, params, shard):
  grad = jax.value_and_grad(mlp_loss)
  loss, g = grad(params, shard)
  norm = optax.tree.norm(g)
  if name == "sam":
    displaced = jax.tree.map(lambda p, gi: p + RHO * gi / norm, params, g)
    perturbed_loss, out = grad(displaced, shard)
  else:  # F-GR: g + gamma (grad L(theta + eps g) - g) / eps
    displaced = jax.tree.map(lambda p, gi: p + EPS * gi, params, g)
    perturbed_loss, gd = grad(displaced, shard)
    out = jax.tree.map(lambda gi, d: gi + GAMMA / EPS * (d - gi), g, gd)
  return out, loss, perturbed_loss, norm


def reference():
  params, batch = _data()
  out = {}
  for name, tx in trainers().items():
    step = jax.jit(make_step(tx))
    p, state = params, tx.init(params)
    for _ in range(STEPS):
      p, state = step(p, state, batch)
    out[f"{name}/params"] = _lists(p)
    out[f"{name}/metrics"] = _metrics(state)
  loss, grads = jax.jit(jax.value_and_grad(mlp_loss))(params, batch)
  for name, tx in transformations().items():
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params,
                                        batch=batch, value=loss)
    m = gro.metrics(state)
    out[f"shard_map/global/{name}"] = {
        "updates": _lists(updates), "loss": float(m.loss),
        "perturbed_loss": float(m.perturbed_loss),
        "grad_norms": [float(m.grad_norm)] * DEVICES}
    out[f"shard_map/per_device/{name}"] = _per_shard(name, params, batch)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  if sys.argv[1] == "worker":
    _setup("worker", int(sys.argv[2]), int(sys.argv[3]))
    worker()
  else:
    _setup("reference")
    reference()
