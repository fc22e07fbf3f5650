"""Data-parallel results against single-device ones, on 8 host devices.

Run as a script in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is
fixed when jax starts); prints one JSON object of relative errors.
"""

import json

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import gradreg_optax as gro
from _models import MAKERS, mlp_batch, mlp_loss, mlp_params

DEVICES = 8
# The methods checked here, built as in the other tests.
METHODS = ("forward", "central", "jvp", "double_backprop", "sam",
           "gradient_norm_penalty")
PER_DEVICE = ("forward", "sam")
SOME = ("forward", "jvp", "sam")


def _rel(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  return float(optax.tree.norm(optax.tree.sub(a, b)) / optax.tree.norm(b))


def _single(tx, params, batch):
  grads = jax.grad(mlp_loss)(params, batch)
  return tx.update(grads, tx.init(params), params, batch=batch)[0]


def _vma_state_error(make, mesh, global_loss, params, batch, params1,
                     batch1):
  """The whole state out of shard_map(check_vma=True) with out_specs=P():
  updates and metrics against one device's."""
  tx = make(global_loss)

  def local(params, batch):
    loss, grads = jax.value_and_grad(global_loss)(params, batch)
    return tx.update(grads, tx.init(params), params, batch=batch, value=loss)

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("d")),
                              out_specs=P(), check_vma=True))(params, batch)
  single = make(mlp_loss)
  loss, grads = jax.value_and_grad(mlp_loss)(params1, batch1)
  want = single.update(grads, single.init(params1), params1, batch=batch1,
                       value=loss)
  metrics = lambda s: [gro.metrics(s[1]).loss, gro.metrics(s[1]).grad_norm,
                       gro.metrics(s[1]).perturbed_loss]
  return max(_rel(got[0], want[0]), _rel(metrics(got), metrics(want)))


def _per_device_reference(name, params, batch):
  """m-sharpness by hand: each shard perturbs along its own gradient."""
  outs = []
  for i in range(DEVICES):
    shard = jax.tree.map(lambda x, i=i: jnp.split(x, DEVICES)[i], batch)
    g = jax.grad(mlp_loss)(params, shard)
    if name == "sam":
      norm = optax.tree.norm(g)
      outs.append(jax.grad(mlp_loss)(
          jax.tree.map(lambda p, gi: p + 0.05 * gi / norm, params, g), shard))
    else:  # F-GR with gamma = 0.05, eps = 0.1
      displaced = jax.tree.map(lambda p, gi: p + 0.1 * gi, params, g)
      gd = jax.grad(mlp_loss)(displaced, shard)
      outs.append(jax.tree.map(lambda gi, d: gi + 0.5 * (d - gi), g, gd))
  return jax.tree.map(lambda *x: sum(x) / DEVICES, *outs)


def main():
  assert jax.device_count() == DEVICES, jax.devices()
  mesh = jax.make_mesh((DEVICES,), ("d",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  params = mlp_params(jax.random.PRNGKey(0))
  batch = mlp_batch(jax.random.PRNGKey(1), n=4 * DEVICES)
  results = {}
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, P("d")))
  replicated = jax.device_put(params, NamedSharding(mesh, P()))

  # The same 8 devices as a 2 x 4 mesh, the batch split over both axes in
  # the order of the 1-D mesh (`axis_name=("a", "b")` averages over both).
  mesh2 = jax.make_mesh((2, DEVICES // 2), ("a", "b"),
                        axis_types=(jax.sharding.AxisType.Auto,) * 2)
  on_mesh2 = (jax.device_put(params, NamedSharding(mesh2, P())),
              jax.device_put(batch, NamedSharding(mesh2, P(("a", "b")))))

  def sharded(tx, check_vma=False, loss=mlp_loss, two_axes=False):
    def local(params, batch):
      # The local gradient goes in as is: the transformation averages it.
      grads = jax.grad(loss)(params, batch)
      return tx.update(grads, tx.init(params), params, batch=batch)[0]
    m, spec, args = ((mesh2, P(("a", "b")), on_mesh2) if two_axes
                     else (mesh, P("d"), (replicated, sharded_batch)))
    return jax.jit(jax.shard_map(local, mesh=m, in_specs=(P(), spec),
                                 out_specs=P(), check_vma=check_vma))(*args)

  # With check_vma=True, the gradient with respect to replicated parameters
  # is summed over the axis by autodiff itself: a loss divided by the number
  # of devices gives the global gradient everywhere, with no axis_name.
  global_loss = lambda p, b: mlp_loss(p, b) / DEVICES
  results["batch_devices"] = len(sharded_batch[0].sharding.device_set)

  for name in METHODS:
    make = MAKERS[name]
    want = _single(make(mlp_loss), params, batch)
    results[f"shard_map/{name}"] = _rel(
        sharded(make(mlp_loss, axis_name="d")), want)
    if name in SOME:
      tx = make(mlp_loss)
      got = jax.jit(lambda p, b, tx=tx: _single(tx, p, b))(replicated,
                                                           sharded_batch)
      results[f"jit_sharded/{name}"] = _rel(got, want)
      results[f"shard_map_vma/{name}"] = _rel(
          sharded(make(global_loss), check_vma=True, loss=global_loss), want)
      results[f"shard_map_vma_state/{name}"] = _vma_state_error(
          make, mesh, global_loss, replicated, sharded_batch, params, batch)
      # Autodiff has already summed the gradient over the axis here, so
      # averaging it again is wrong: record the error or what is computed.
      try:
        results[f"shard_map_vma_axis_name/{name}"] = _rel(
            sharded(make(mlp_loss, axis_name="d"), check_vma=True), want)
      except ValueError as e:
        results[f"shard_map_vma_axis_name/{name}"] = f"ValueError: {e}"
      results[f"two_axes/{name}"] = _rel(
          sharded(make(mlp_loss, axis_name=("a", "b")), two_axes=True), want)
      # Averaging over one of the two axes is not the global mean.
      results[f"two_axes_one_named/{name}"] = _rel(
          sharded(make(mlp_loss, axis_name="b"), two_axes=True), want)
      try:
        results[f"two_axes_vma/{name}"] = _rel(
            sharded(make(mlp_loss, axis_name=("a", "b")), check_vma=True,
                    two_axes=True), want)
      except ValueError as e:
        results[f"two_axes_vma/{name}"] = f"ValueError: {e}"
    if name in PER_DEVICE:
      per_device = sharded(make(mlp_loss, axis_name="d",
                                per_device_perturbation=True))
      results[f"per_device/{name}"] = _rel(
          per_device, _per_device_reference(name, params, batch))
      results[f"per_device_two_axes/{name}"] = _rel(
          sharded(make(mlp_loss, axis_name=("a", "b"),
                       per_device_perturbation=True), two_axes=True),
          _per_device_reference(name, params, batch))
      # How far m-sharpness is from the global perturbation.
      results[f"per_device_vs_global/{name}"] = _rel(per_device, want)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
