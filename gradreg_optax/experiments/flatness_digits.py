"""Flatness of SGD, F-GR and SAM solutions on scikit-learn digits.

A 64-32-10 tanh MLP trained with minibatch SGD (batch 64) for a fixed number
of steps, plain and with ``gradient_regularization`` (F-GR) or ``sam`` chained
before ``optax.sgd``; then the measures of :mod:`gradreg_optax.flatness` on
the full training set, over several seeds.

Run: ``python -m gradreg_optax.experiments.flatness_digits --out docs/results
--figures docs/figures`` (``--quick`` for a tiny run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradreg_optax as gro
from gradreg_optax import flatness
from gradreg_optax.experiments import _digits

METHODS = {
    "sgd": lambda: optax.identity(),
    "f-gr": lambda: gro.gradient_regularization(_digits.loss, 0.05, eps=0.1),
    "sam": lambda: gro.sam(_digits.loss, rho=0.05),
}


def train(method, seed, steps, lr=0.1, batch_size=64):
  train_set, _ = _digits.load(0)
  params = _digits.init(jax.random.key(seed))
  tx = optax.chain(METHODS[method](), optax.sgd(lr, momentum=0.9))
  n = train_set[0].shape[0]

  @jax.jit
  def step(carry, key):
    params, state = carry
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    batch = (train_set[0][idx], train_set[1][idx])
    grads = jax.grad(_digits.loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.key(1000 + seed), steps)
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
  return params


def measure(params, key):
  train_set, test_set = _digits.load(0)
  k1, k2, k3 = jax.random.split(key, 3)
  lam, _ = flatness.hessian_top_eigenvalue(_digits.loss, params, train_set, k1,
                                           num_iters=100)
  return dict(
      train_loss=float(_digits.loss(params, train_set)),
      test_loss=float(_digits.loss(params, test_set)),
      test_acc=float(_digits.accuracy(params, test_set)),
      top_eigenvalue=float(lam),
      trace=float(flatness.hessian_trace(_digits.loss, params, train_set, k2,
                                         num_samples=100)),
      grad_norm_sq=float(flatness.gradient_norm_sq(_digits.loss, params,
                                                   train_set)),
      noise_increase=float(flatness.noise_sensitivity(
          _digits.loss, params, train_set, k3, sigma=0.05, num_samples=64)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="docs/results")
  p.add_argument("--figures", default="docs/figures")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  seeds, steps = ([0], 50) if args.quick else ([0, 1, 2], 3000)
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.figures, exist_ok=True)
  t0 = time.time()
  res = dict(command="python -m gradreg_optax.experiments.flatness_digits "
             + " ".join(argv if argv is not None else sys.argv[1:]),
             steps=steps, seeds=seeds, lr=0.1, momentum=0.9, batch_size=64,
             hyper={"f-gr": {"gamma": 0.05, "eps": 0.1},
                    "sam": {"rho": 0.05}},
             runs=[])
  for method in METHODS:
    for seed in seeds:
      r = dict(method=method, seed=seed,
               **measure(train(method, seed, steps), jax.random.key(seed)))
      res["runs"].append(r)
      print(json.dumps(r), flush=True)
  res["mean"] = {m: {k: float(np.mean([r[k] for r in res["runs"]
                                       if r["method"] == m]))
                     for k in res["runs"][0] if k not in ("method", "seed")}
                 for m in METHODS}
  res["seconds"] = time.time() - t0
  name = "flatness_digits_quick" if args.quick else "flatness_digits"
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump(res, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = ["test_acc", "top_eigenvalue", "trace", "noise_increase"]
  fig, axes = plt.subplots(1, len(keys), figsize=(12, 3))
  for ax, k in zip(axes, keys):
    for i, m in enumerate(METHODS):
      vals = [r[k] for r in res["runs"] if r["method"] == m]
      ax.scatter([i] * len(vals), vals)
    ax.set_xticks(range(len(METHODS)), list(METHODS))
    ax.set_title(k)
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, name + ".png"), dpi=120)
  print(json.dumps(res["mean"], indent=1))


if __name__ == "__main__":
  main()
