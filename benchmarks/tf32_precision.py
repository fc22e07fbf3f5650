"""TF32 rounding in F-GR's finite difference, against the exact H g.

On NVIDIA GPUs since Ampere, float32 matrix products and convolutions run by
default in TF32 (10-bit mantissa, relative rounding about 1e-3). F-GR forms
``v = (grad L(theta + eps g) - g) / eps``; the rounding of both gradients
enters ``v`` divided by ``eps``. This measures, on a small MLP and a small
CNN in float32,

  rel. error = ||v - H g|| / ||H g||,

for eps in {1e-3, 1e-2, 1e-1} with every product of ``v`` computed under the
default matmul precision and under ``"highest"`` (true float32). The reference
``H g`` is forward-over-reverse (``jax.jvp`` of ``jax.grad``) at precision
``"highest"``, along the same ``g`` that ``v`` uses, so only the difference
quotient's error is measured. ``v`` is read off the library's own output:
``gradient_regularization(loss, gamma=1, method="forward", eps=eps)`` returns
``g + v``. Under "highest" what remains is the O(eps) truncation error.

Two model families are measured: the ReLU models of
``gradreg_optax.experiments.models`` and the same architectures with ``tanh``.
A ReLU network's gradient jumps where a unit crosses its kink, which adds an
error of order 1/eps to the difference quotient at any precision; the smooth
models show the rounding error alone.

  python benchmarks/tf32_precision.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common
import gradreg_optax as gro

EPSILONS = (1e-3, 1e-2, 1e-1)
PRECISIONS = ("default", "highest")


class SmoothMLP(nn.Module):
  width: int
  depth: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth - 1):
      x = jnp.tanh(nn.Dense(self.width)(x))
    return nn.Dense(common.NUM_CLASSES)(x)


class SmoothCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    for f in (32, 64):
      x = jnp.tanh(nn.Conv(f, (3, 3))(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.tanh(nn.Dense(128)(x.reshape((x.shape[0], -1))))
    return nn.Dense(common.NUM_CLASSES)(x)


def smooth_problem(name, model, batch_size):
  x, y = common.synthetic_data(jax.random.PRNGKey(0), batch_size,
                               common.CIFAR_SHAPE)
  params = model.init(jax.random.PRNGKey(1), x[:1])["params"]

  def loss_fn(params, batch):
    x, y = batch
    return common.cross_entropy(model.apply({"params": params}, x), y)

  return common.Problem(name, loss_fn, False, params, {}, x, y)


def _norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(a))
                            for a in jax.tree.leaves(tree))))


def _diff_norm(a, b):
  return _norm(jax.tree.map(jnp.subtract, a, b))


def measure(problem: common.Problem) -> list[dict]:
  batch = problem.batch(problem.model_state, problem.x, problem.y)
  loss = problem.loss_fn
  params = problem.params
  grad = lambda p: jax.grad(loss)(p, batch)
  with jax.default_matmul_precision("highest"):
    g_highest = jax.jit(lambda p: jax.grad(loss)(p, batch))(params)
  rows = []
  for precision in PRECISIONS:
    ctx = (contextlib.nullcontext() if precision == "default"
           else jax.default_matmul_precision(precision))
    with ctx:
      g = jax.jit(lambda p: jax.grad(loss)(p, batch))(params)
    with jax.default_matmul_precision("highest"):
      hg = jax.jit(lambda p, v: jax.jvp(lambda q: jax.grad(loss)(q, batch),
                                        (p,), (v,))[1])(params, g)
    hg_norm = _norm(hg)
    for eps in EPSILONS:
      tx = gro.gradient_regularization(loss, 1.0, method="forward", eps=eps)
      with ctx:
        out, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p,
                                                batch=batch))(g, params)
        g1 = jax.jit(lambda p, v: grad(jax.tree.map(
            lambda a, b: a + eps * b, p, v)))(params, g)
      v_lib = jax.tree.map(jnp.subtract, out, g)
      v_direct = jax.tree.map(lambda a, b: (a - b) / eps, g1, g)
      rows.append({
          "model": problem.name, "precision": precision, "eps": eps,
          "rel_error_library": _diff_norm(v_lib, hg) / hg_norm,
          "rel_error_direct": _diff_norm(v_direct, hg) / hg_norm,
          "grad_rel_error_vs_highest": _diff_norm(g, g_highest)
                                       / _norm(g_highest),
          "hg_norm": hg_norm, "g_norm": _norm(g),
      })
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mlp-width", type=int, default=512)
  parser.add_argument("--mlp-depth", type=int, default=4)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  problems = [
      smooth_problem(f"tanh_mlp_L{args.mlp_depth}_w{args.mlp_width}",
                     SmoothMLP(args.mlp_width, args.mlp_depth), args.batch),
      smooth_problem("tanh_cnn", SmoothCNN(), args.batch),
      common.mlp_problem(args.mlp_depth, args.mlp_width, args.batch),
      common.cnn_problem(args.batch)]
  rows = [r for p in problems for r in measure(p)]
  env = common.environment()
  print(f"F-GR difference quotient vs exact H g (jvp, highest), {env['device']}")
  print(f"{'model':<22}{'precision':>10}{'eps':>8}{'rel err (library)':>19}"
        f"{'rel err (direct)':>18}{'grad rel err':>14}")
  for r in rows:
    print(f"{r['model']:<22}{r['precision']:>10}{r['eps']:>8.0e}"
          f"{r['rel_error_library']:>19.3e}{r['rel_error_direct']:>18.3e}"
          f"{r['grad_rel_error_vs_highest']:>14.2e}")
  out = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"tf32_precision_{common.device_slug()}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"environment": env, "rows": rows}, f, indent=1)
  print("wrote", out)


if __name__ == "__main__":
  main()
