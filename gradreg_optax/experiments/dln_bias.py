"""Implicit bias of GR in the diagonal linear network (Karakida et al., 2023).

Three parts, all with gradient descent at a small step until interpolation on
the sparse problem of :func:`gradreg_optax.dln.make_data` (D = 100, N = 50,
5 non-zero entries, label noise 0.1, sum-of-squares loss), in float64:

1. ``bias``: plain gradient descent from scale ``alpha`` against
   ``argmin phi_alpha`` (with gradient descent's own ``h/2`` correction).
2. ``sweep``: F-GR (``eps > 0``) and B-GR (``eps < 0``) at fixed ``gamma``;
   test error, ``||beta||_1`` and the distance to the first-order prediction
   ``argmin phi_{alpha_GR}``. Alongside, the same prediction with
   ``alpha_GR`` replaced by one scalar (the mean exponent): the reading of
   the theory under which GR only moves the scale towards the rich regime.
3. ``grid``: test error over (eps, gamma) for both methods.

The mean loss with ``(gamma, eps)`` follows the same path as the sum loss
with ``(gamma / N, eps / N)`` (time rescaled by ``N``), so only the sum is run.

Run: ``python -m gradreg_optax.experiments.dln_bias --out docs/results
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
from gradreg_optax import dln

FULL = dict(
    seeds=[0, 1, 2],
    bias_alphas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    sweep_alphas=[0.03, 0.3],
    sweep_gamma=1e-3,
    sweep_eps=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],
    grid_alpha=0.3,
    grid_gammas=[1e-4, 3e-4, 1e-3, 3e-3],
    grid_eps=[1e-3, 1e-2, 0.1, 0.3],
    max_steps=3_000_000,
)
QUICK = dict(
    seeds=[0],
    bias_alphas=[1.0],
    sweep_alphas=[1.0],
    sweep_gamma=1e-4,
    sweep_eps=[1e-2],
    grid_alpha=1.0,
    grid_gammas=[1e-4],
    grid_eps=[1e-2],
    max_steps=100_000,
)
TOL = 1e-7


def learning_rate(x, alpha):
  # 5% of the stability limit of the curvature 8 max(alpha^2, 1) ||X||^2 of
  # the sum loss in w: small enough that the h/2 term stays a small correction.
  lam = float(jnp.linalg.eigvalsh(x.T @ x).max())
  return 0.05 / (8 * lam * max(alpha ** 2, 1.0))


def summary(b, data):
  return dict(l1=float(jnp.abs(b).sum()),
              test_error=float(dln.generalization_error(b, data)))


def run_gr(data, alpha, lr, method, gamma, eps, max_steps):
  tx = gro.gradient_regularization(dln.loss, gamma, method=method, eps=eps)
  out = dln.train(dln.init_params(alpha, data.x.shape[1], jnp.float64),
                  (data.x, data.y), lr, tx=tx, tol=TOL, max_steps=max_steps)
  return out


def predict(data, alpha, base, gamma, eps_signed, lr, uniform=False):
  expo = (gamma + lr / 2) * base.c0 + gamma * eps_signed * base.c1
  if uniform:
    expo = jnp.full_like(expo, expo.mean())
  return dln.implicit_bias_solution(data.x, data.y, alpha * jnp.exp(-expo)).beta


def record(out, b, data):
  converged = bool(out.residual <= TOL) and not bool(out.diverged)
  r = dict(steps=int(out.steps), residual=float(out.residual),
           diverged=bool(out.diverged), converged=converged)
  r.update(summary(b, data) if converged else dict(l1=None, test_error=None))
  return r


def main(argv=None):
  # float64 for the small-alpha trajectories and the dual solver, scoped so
  # that importing this module leaves the global setting alone.
  with jax.enable_x64(True):
    _main(argv)


def _main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="docs/results")
  p.add_argument("--figures", default="docs/figures")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--seeds", type=int, nargs="*", default=None,
                 help="data seeds (default: 0 1 2, quick: 0)")
  args = p.parse_args(argv)
  cfg = dict(QUICK if args.quick else FULL)
  if args.seeds is not None:
    cfg["seeds"] = args.seeds
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.figures, exist_ok=True)
  t0 = time.time()
  res = dict(command="python -m gradreg_optax.experiments.dln_bias "
             + " ".join(argv if argv is not None else sys.argv[1:]),
             config=cfg, tol=TOL, loss="sum", bias=[], sweep=[], grid=[],
             seeds_completed=[])
  name = "dln_bias_quick" if args.quick else "dln_bias"

  for seed in cfg["seeds"]:
    data = dln.make_data(jax.random.key(seed), dtype=jnp.float64)
    batch = (data.x, data.y)
    bases = {}
    for alpha in sorted(set(cfg["bias_alphas"]) | set(cfg["sweep_alphas"])
                        | {cfg["grid_alpha"]}):
      lr = learning_rate(data.x, alpha)
      base = dln.train(dln.init_params(alpha, 100, jnp.float64), batch, lr,
                       tol=TOL, max_steps=cfg["max_steps"])
      b = dln.beta(base.params)
      bases[alpha] = (base, b, lr)
      if alpha not in cfg["bias_alphas"]:
        continue
      sol = dln.implicit_bias_solution(data.x, data.y, alpha).beta
      sol_h = predict(data, alpha, base, 0.0, 0.0, lr)
      r = dict(seed=seed, alpha=alpha, lr=lr, **record(base, b, data),
               rel_err_solver=dln.relative_error(b, sol),
               rel_err_solver_h=dln.relative_error(b, sol_h),
               solver=summary(sol, data),
               l2_min_norm=summary(jnp.linalg.pinv(data.x) @ data.y, data))
      res["bias"].append(r)
      print(f"[bias] seed {seed} alpha {alpha}: steps {r['steps']} "
            f"res {r['residual']:.1e} |GD - solver| {r['rel_err_solver']:.2e}"
            f" (with h/2: {r['rel_err_solver_h']:.2e}) l1 {r['l1']:.3f} "
            f"test {r['test_error']:.4f}", flush=True)

    for alpha in cfg["sweep_alphas"]:
      base, b0, lr = bases[alpha]
      gamma = cfg["sweep_gamma"]
      for method in ("forward", "backward", "double_backprop"):
        eps_list = cfg["sweep_eps"] if method != "double_backprop" else [0.0]
        for eps in eps_list:
          out = run_gr(data, alpha, lr, method, gamma, eps or 0.1, cfg[
              "max_steps"])
          b = dln.beta(out.params)
          se = dln.signed_eps(method, eps)
          r = dict(seed=seed, alpha=alpha, gamma=gamma, method=method,
                   eps_signed=se, **record(out, b, data),
                   gd=summary(b0, data))
          pred = predict(data, alpha, base, gamma, se, lr)
          unif = predict(data, alpha, base, gamma, se, lr, uniform=True)
          r["prediction"] = summary(pred, data)
          r["uniform_prediction"] = summary(unif, data)
          if r["converged"]:
            r["rel_err_prediction"] = dln.relative_error(b, pred)
            r["rel_change_from_gd"] = dln.relative_error(b, b0)
          res["sweep"].append(r)
          print(f"[sweep] seed {seed} alpha {alpha} {method} eps {se:+.0e}: "
                f"steps {r['steps']} conv {r['converged']} l1 {r['l1']} "
                f"test {r['test_error']} (GD {r['gd']['test_error']:.4f}) "
                f"pred err {r.get('rel_err_prediction')} change "
                f"{r.get('rel_change_from_gd')} uniform-pred test "
                f"{r['uniform_prediction']['test_error']:.4f}", flush=True)

    alpha = cfg["grid_alpha"]
    base, b0, lr = bases[alpha]
    for method in ("forward", "backward"):
      for gamma in cfg["grid_gammas"]:
        for eps in cfg["grid_eps"]:
          out = run_gr(data, alpha, lr, method, gamma, eps, cfg["max_steps"])
          b = dln.beta(out.params)
          r = dict(seed=seed, alpha=alpha, gamma=gamma, method=method,
                   eps_signed=dln.signed_eps(method, eps),
                   **record(out, b, data), gd=summary(b0, data))
          res["grid"].append(r)
          print(f"[grid] seed {seed} {method} gamma {gamma} eps {eps}: "
                f"conv {r['converged']} test {r['test_error']} "
                f"(GD {r['gd']['test_error']:.4f})", flush=True)

    # Written after every seed, so that a long run leaves usable results.
    res["seeds_completed"].append(seed)
    res["seconds"] = time.time() - t0
    with open(os.path.join(args.out, name + ".json"), "w") as f:
      json.dump(res, f, indent=1)
    plot(res, args.figures, name)
  print(f"done in {res['seconds']:.0f} s")


def _mean(rows, key, sub=None):
  vals = [(r[sub][key] if sub else r[key]) for r in rows]
  vals = [v for v in vals if v is not None]
  return float(np.mean(vals)) if vals else np.nan


def plot(res, fig_dir, name):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cfg = res["config"]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  alphas = cfg["bias_alphas"]
  for key, ax in zip(("test_error", "l1"), axes):
    rows = [[r for r in res["bias"] if r["alpha"] == a] for a in alphas]
    ax.plot(alphas, [_mean(rs, key, "solver") for rs in rows], "k-",
            label="argmin phi_alpha")
    ax.plot(alphas, [_mean(rs, key) for rs in rows], "o", label="GD")
    ax.plot(alphas, [_mean(rs, key, "l2_min_norm") for rs in rows], ":",
            label="min L2 norm")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(key)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name + "_alpha.png"), dpi=120)
  plt.close(fig)

  fig, axes = plt.subplots(len(cfg["sweep_alphas"]), 2,
                           figsize=(9, 3.2 * len(cfg["sweep_alphas"])),
                           squeeze=False)
  for row, alpha in zip(axes, cfg["sweep_alphas"]):
    rows = [r for r in res["sweep"] if r["alpha"] == alpha]
    eps = cfg["sweep_eps"]
    for key, ax in zip(("test_error", "l1"), row):
      gd = _mean([r for r in rows], key, "gd")
      ax.axhline(gd, color="k", lw=1, label="GD")
      for method, sign, c in (("forward", 1, "C0"), ("backward", -1, "C3")):
        sel = [[r for r in rows if r["method"] == method
                and r["eps_signed"] == sign * e] for e in eps]
        ax.plot(eps, [_mean(s, key) for s in sel], "o-", color=c,
                label=f"{'F' if sign > 0 else 'B'}-GR trained")
        ax.plot(eps, [_mean(s, key, "uniform_prediction") for s in sel],
                "--", color=c, alpha=0.6,
                label=f"{'F' if sign > 0 else 'B'}-GR scalar-alpha theory")
      db = [r for r in rows if r["method"] == "double_backprop"]
      ax.axhline(_mean(db, key), color="C2", ls="-.", label="DB (eps=0)")
      ax.set_xscale("log")
      ax.set_xlabel("|eps|")
      ax.set_title(f"alpha={alpha}, gamma={cfg['sweep_gamma']}: {key}")
    row[0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name + "_eps.png"), dpi=120)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, method in zip(axes, ("forward", "backward")):
    gam, eps = cfg["grid_gammas"], cfg["grid_eps"]
    z = np.full((len(gam), len(eps)), np.nan)
    for i, g in enumerate(gam):
      for j, e in enumerate(eps):
        rs = [r for r in res["grid"] if r["method"] == method
              and r["gamma"] == g and abs(r["eps_signed"]) == e]
        gd = _mean(rs, "test_error", "gd")
        z[i, j] = _mean(rs, "test_error") / gd
    im = ax.imshow(np.log10(z), origin="lower", cmap="coolwarm",
                   vmin=-0.5, vmax=0.5)
    for i in range(len(gam)):
      for j in range(len(eps)):
        ax.text(j, i, "div" if np.isnan(z[i, j]) else f"{z[i, j]:.2f}",
                ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(eps)), [str(e) for e in eps])
    ax.set_yticks(range(len(gam)), [str(g) for g in gam])
    ax.set_xlabel("|eps|")
    ax.set_ylabel("gamma")
    ax.set_title(f"{'F' if method == 'forward' else 'B'}-GR test error / GD "
                 f"(alpha={cfg['grid_alpha']})", fontsize=9)
  fig.colorbar(im, ax=axes, label="log10 ratio")
  fig.savefig(os.path.join(fig_dir, name + "_grid.png"), dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
