"""Implicit gradient regularization (Barrett & Dherin, ICLR 2021) measured.

1. Digits MLP, full-batch gradient descent at several learning rates ``h``
   and explicit IGR (gradient descent at the smallest ``h`` on
   ``gro.igr_modified_loss`` with the strength of the largest ``h``):
   ``R_IG = ||grad E||^2 / m`` (``gro.igr_regularizer``) against the loss
   ``E`` along training. The seed predicts lower ``R_IG`` at a given ``E``
   for larger ``h``, and lower still with explicit IGR.
2. ``E(a, b) = (y - a b x)^2 / 2``: gradient descent's path against the
   (finely integrated) flows of ``E`` and of the modified loss.

Run: ``python -m gradreg_optax.experiments.igr --out docs/results
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

import gradreg_optax as gro
from gradreg_optax.experiments import _digits


def gd_curve(loss_fn, params, batch, h, steps, every):
  r_ig = gro.igr_regularizer(_digits.loss)
  grad = jax.grad(loss_fn)

  @jax.jit
  def chunk(p):
    p = jax.lax.fori_loop(0, every, lambda _, q: jax.tree.map(
        lambda a, g: a - h * g, q, grad(q, batch)), p)
    return p, _digits.loss(p, batch), r_ig(p, batch)

  out = []
  for _ in range(steps // every):
    params, e, r = chunk(params)
    out.append((float(e), float(r)))
  return params, out


def two_param_paths(h=0.1, steps=40, x=1.0, y=1.0, start=(2.8, 0.5)):
  e = lambda p, _: 0.5 * (y - p[0] * p[1] * x) ** 2
  mod = gro.igr_modified_loss(e, h)
  g_e, g_m = jax.jit(jax.grad(e)), jax.jit(jax.grad(mod))

  def flow(g, sub=200):
    p, path = jnp.array(start), [start]
    for _ in range(steps):
      for _ in range(sub):
        p = p - (h / sub) * g(p, None)
      path.append(tuple(map(float, p)))
    return path

  p, gd = jnp.array(start), [start]
  for _ in range(steps):
    p = p - h * g_e(p, None)
    gd.append(tuple(map(float, p)))
  fe, fm = flow(g_e), flow(g_m)
  dist = lambda a, b: float(np.max(np.linalg.norm(np.array(a) - np.array(b),
                                                  axis=1)))
  return dict(h=h, gd=gd, flow_E=fe, flow_modified=fm,
              max_dist_gd_flow_E=dist(gd, fe),
              max_dist_gd_flow_modified=dist(gd, fm))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="docs/results")
  p.add_argument("--figures", default="docs/figures")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  lrs, steps, every = ([0.05, 0.4], 200, 20) if args.quick else (
      [0.05, 0.2, 0.8], 20000, 200)
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.figures, exist_ok=True)
  t0 = time.time()
  train_set, _ = _digits.load(0)
  params0 = _digits.init(jax.random.key(0))
  res = dict(command="python -m gradreg_optax.experiments.igr "
             + " ".join(argv if argv is not None else sys.argv[1:]),
             steps_at_smallest_lr=steps, record_every=every, curves={})
  for h in lrs:
    # Equal training time h * steps for every rate.
    n = max(int(steps * lrs[0] / h) // every * every, every)
    _, curve = gd_curve(_digits.loss, params0, train_set, h, n, every)
    res["curves"][f"gd_h={h}"] = curve
    print(f"gd h={h}: final E {curve[-1][0]:.4f} R_IG {curve[-1][1]:.3e}",
          flush=True)
  modified = gro.igr_modified_loss(_digits.loss, lrs[-1])
  _, curve = gd_curve(modified, params0, train_set, lrs[0], steps, every)
  res["curves"][f"explicit_igr_strength={lrs[-1]}_h={lrs[0]}"] = curve
  print(f"explicit IGR: final E {curve[-1][0]:.4f} R_IG {curve[-1][1]:.3e}")
  res["two_param"] = two_param_paths()
  print("two-parameter model: max |GD - flow(E)| "
        f"{res['two_param']['max_dist_gd_flow_E']:.3e}, max |GD - "
        f"flow(modified)| {res['two_param']['max_dist_gd_flow_modified']:.3e}")
  res["seconds"] = time.time() - t0
  name = "igr_quick" if args.quick else "igr"
  with open(os.path.join(args.out, name + ".json"), "w") as f:
    json.dump(res, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  for label, c in res["curves"].items():
    c = np.array(c)
    a1.loglog(c[:, 0], c[:, 1], label=label)
  a1.set_xlabel("loss E")
  a1.set_ylabel("R_IG")
  a1.invert_xaxis()
  a1.legend(fontsize=7)
  tp = res["two_param"]
  for key, style in (("gd", "o-"), ("flow_E", "-"), ("flow_modified", "--")):
    path = np.array(tp[key])
    a2.plot(path[:, 0], path[:, 1], style, ms=3, label=key)
  a = np.linspace(0.3, 3.0, 100)
  a2.plot(a, 1 / a, "k:", label="ab = y/x")
  a2.set_xlabel("a")
  a2.set_ylabel("b")
  a2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.figures, name + ".png"), dpi=120)


if __name__ == "__main__":
  main()
