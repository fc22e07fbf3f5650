"""Implicit bias of GR in the diagonal linear network (Karakida et al., 2023).

Three parts, each over several data seeds of the sparse problem of
:func:`gradreg_optax.dln.make_data` (D = 100, N = 50, 5 non-zero entries,
label noise 0.1, sum-of-squares loss), with gradient descent until
interpolation in float64, at a step ``h`` that is a fixed fraction of the
stability limit ``2 / lambda_max`` (the largest Hessian eigenvalue in ``w``
at the start and at the flow's limit, whichever is larger):

1. ``bias``: plain gradient descent from scale ``alpha`` against
   ``argmin phi_alpha`` (with gradient descent's own ``h/2`` correction).
2. ``sweep``: F-GR (``eps > 0``), B-GR (``eps < 0``) and double backprop at
   fixed ``gamma``: test error, ``||beta||_1``, the distance to the
   first-order prediction ``argmin phi_{alpha_GR}`` of Theorem 5.1 and to
   the exact one (``alpha_GR = alpha exp(-4 gamma int g g'(eps) dt)`` along
   the run, ``docs/dln_theory.md``), and that exponent on and off the
   support of ``beta*``. Alongside, the first-order prediction with
   ``alpha_GR`` replaced by one scalar (the mean exponent).
3. ``grid``: F-GR, B-GR and double backprop over (gamma, eps) at several
   step sizes: the fraction of seeds that diverge (non-finite loss), that
   stall (no interpolation within the step budget), and the test error
   relative to gradient descent at the same step.

The loss ``L / k`` with ``(gamma, eps, h)`` follows the same path as the sum
loss with ``(gamma / k, eps / k, h / k)``, so only the sum is run. The
paper's constants ``c_0``, ``c_1`` are exact for ``k = 4N``: its units are
ours times :func:`gradreg_optax.dln.paper_scale`, ``4N = 200``; the tables
give both.

Run: ``python -m gradreg_optax.experiments.dln_bias --out docs/results
--figures docs/figures`` (``--quick`` for a tiny run, ``--seeds`` to choose
the data seeds, ``--runs FILE`` to keep every run's record; the result file
holds the summaries over seeds).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradreg_optax as gro
from gradreg_optax import dln
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import stats as stats_lib

MODULE = "gradreg_optax.experiments.dln_bias"
FULL = dict(
    seeds=[0, 1, 2, 3, 4],
    d=100, n=50, k=5,
    step_fraction=0.01,
    bias_alphas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    sweep_alphas=[0.03, 0.1, 0.3, 1.0],
    sweep_gamma=1e-3,
    sweep_eps=[1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],
    grid_alpha=0.3,
    grid_fractions=[0.01, 0.05, 0.2],
    grid_gammas=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    grid_eps=[1e-3, 1e-2, 0.1, 0.3, 1.0],
    budget_factor=10,
)
QUICK = dict(
    seeds=[0, 1],
    d=20, n=10, k=2,
    step_fraction=0.05,
    bias_alphas=[1.0],
    sweep_alphas=[1.0],
    sweep_gamma=1e-3,
    sweep_eps=[1e-2, 0.3],
    grid_alpha=1.0,
    grid_fractions=[0.05],
    grid_gammas=[1e-3],
    grid_eps=[1e-2, 1.0],
    budget_factor=10,
)
TOL = 1e-7
METHODS = ("forward", "backward", "double_backprop")


def _label(method: str) -> str:
  return gro.METHODS[method].label


# --- Batched runs: seeds on the outer axis, hyperparameters on the inner ----


def _init(alpha, d):
  return dln.init_params(alpha, d, jnp.float64)


@jax.jit
def _step_limit(x, y, alpha):
  """``2 / lambda_max``, the smaller of the start's and the limit's."""
  d = x.shape[1]
  limit = dln.interpolating_params(
      dln.implicit_bias_solution(x, y, alpha).beta, alpha)
  return jnp.minimum(dln.stability_limit(_init(alpha, d), (x, y)),
                     dln.stability_limit(limit, (x, y)))


@jax.jit
def _gd(x, y, alpha, lr, max_steps):
  return jax.vmap(lambda x_, y_, h: dln.train(
      _init(alpha, x.shape[-1]), (x_, y_), h, tol=TOL,
      max_steps=max_steps))(x, y, lr)


@functools.partial(jax.jit, static_argnames="method")
def _gr(x, y, alpha, lr, gammas, eps, method, max_steps):
  def one(x_, y_, h, g, e):
    return dln.train_gr(_init(alpha, x.shape[-1]), (x_, y_), h, method=method,
                        gamma=g, eps=e, tol=TOL, max_steps=max_steps)
  inner = jax.vmap(one, in_axes=(None, None, None, 0, 0))
  return jax.vmap(inner, in_axes=(0, 0, 0, None, None))(x, y, lr, gammas, eps)


@jax.jit
def _solve(x, y, alphas):
  """``argmin phi_alpha`` for alphas ``(seeds, configs, d)``."""
  inner = jax.vmap(lambda x_, y_, a: dln.implicit_bias_solution(x_, y_, a).beta,
                   in_axes=(None, None, 0))
  return jax.vmap(inner)(x, y, alphas)


def _test_error(b, data):
  """Test error of ``b`` ``(seeds, ..., d)``, any leading config axes."""
  diff = jnp.einsum("std,s...d->s...t", data.x_test, b - data.beta_star[
      (slice(None),) + (None,) * (b.ndim - 2)])
  return jnp.mean(diff ** 2, axis=-1)


def _rel(a, b):
  return jnp.linalg.norm(a - b, axis=-1) / jnp.linalg.norm(b, axis=-1)


def _f(v):
  v = float(v)
  return v if np.isfinite(v) else None


# --- The study ---------------------------------------------------------------


def run(cfg: dict[str, Any], log=print) -> dict[str, Any]:
  """Runs the study of ``cfg`` (:data:`FULL` or :data:`QUICK`)."""
  datas = [dln.make_data(jax.random.key(s), d=cfg["d"], n=cfg["n"],
                         k=cfg["k"], dtype=jnp.float64) for s in cfg["seeds"]]
  data = jax.tree.map(lambda *a: jnp.stack(a), *datas)
  x, y = data.x, data.y
  support = np.asarray(data.beta_star != 0)
  res = dict(bias=[], sweep=[], grid=[], gd=[])
  gd_cache = {}

  def gd(alpha, frac):
    """Plain GD from ``alpha`` at ``frac`` of the stability limit."""
    if (alpha, frac) not in gd_cache:
      lr = frac * _step_limit_seeds(x, y, alpha)
      out = _gd(x, y, alpha, lr, 10_000_000)
      b = dln.beta(out.params)
      gd_cache[alpha, frac] = (out, b, lr, np.asarray(_test_error(b, data)))
      for i, s in enumerate(cfg["seeds"]):
        res["gd"].append(dict(
            seed=s, alpha=alpha, step_fraction=frac, lr=float(lr[i]),
            steps=int(out.steps[i]), residual=float(out.residual[i]),
            test_error=_f(_test_error(b, data)[i]),
            l1=float(jnp.abs(b[i]).sum())))
    return gd_cache[alpha, frac]

  frac = cfg["step_fraction"]
  for alpha in cfg["bias_alphas"]:
    out, b, lr, err = gd(alpha, frac)
    sol = _solve(x, y, jnp.full((len(datas), 1, cfg["d"]), alpha))[:, 0]
    a_h = dln.effective_alpha(alpha, out.c0, out.c1, 0.0, 0.0, lr[:, None])
    sol_h = _solve(x, y, a_h[:, None])[:, 0]
    l2 = jnp.einsum("sdn,sn->sd", jnp.linalg.pinv(x), y)
    for i, s in enumerate(cfg["seeds"]):
      res["bias"].append(dict(
          seed=s, alpha=alpha, lr=float(lr[i]), steps=int(out.steps[i]),
          converged=bool(out.residual[i] <= TOL),
          test_error=float(err[i]), l1=float(jnp.abs(b[i]).sum()),
          rel_err_solver=float(_rel(b[i], sol[i])),
          rel_err_solver_h=float(_rel(b[i], sol_h[i])),
          solver_test_error=float(_test_error(sol, data)[i]),
          solver_l1=float(jnp.abs(sol[i]).sum()),
          l2_test_error=float(_test_error(l2, data)[i]),
          l2_l1=float(jnp.abs(l2[i]).sum())))
    log(f"[bias] alpha {alpha}: steps {np.asarray(out.steps)} "
        f"|GD - solver| {np.asarray(_rel(b, sol))} with h/2: "
        f"{np.asarray(_rel(b, sol_h))}")

  gamma = cfg["sweep_gamma"]
  for alpha in cfg["sweep_alphas"]:
    base, b0, lr, err0 = gd(alpha, frac)
    budget = cfg["budget_factor"] * int(base.steps.max())
    for method in METHODS:
      eps = np.array(cfg["sweep_eps"] if method != "double_backprop"
                     else [0.0])
      signed = np.array([dln.signed_eps(method, e) for e in eps])
      t0 = time.time()
      out = _gr(x, y, alpha, lr, jnp.full(len(eps), gamma), jnp.asarray(
          np.where(eps > 0, eps, 1.0)), method, budget)
      b = dln.beta(out.params)
      err = np.asarray(_test_error(b, data))
      # First order: GD's c0, c1 (and its h/2), signed eps.
      first = jax.vmap(lambda c0, c1, h: dln.effective_alpha(
          alpha, c0, c1, gamma, jnp.asarray(signed)[:, None], h))(
              base.c0[:, None], base.c1[:, None], lr[:, None, None])
      expo1 = -jnp.log(first / alpha)
      uniform = alpha * jnp.exp(-expo1.mean(-1, keepdims=True)
                                * jnp.ones_like(expo1))
      exact = dln.exact_effective_alpha(alpha, out.c_gr, gamma, out.c_h,
                                        lr[:, None, None])
      ok = np.asarray((out.residual <= TOL) & ~out.diverged)
      safe = jnp.where(ok[..., None], exact, alpha)
      p_first, p_unif, p_exact = (_solve(x, y, a) for a in (first, uniform,
                                                            safe))
      e_gr = np.asarray(gamma * out.c_gr)
      e_first = np.asarray(expo1 - lr[:, None, None] / 2 * base.c0[:, None])
      for i, s in enumerate(cfg["seeds"]):
        sup = support[i]
        for j, e in enumerate(signed):
          conv = bool(ok[i, j])
          res["sweep"].append(dict(
              seed=s, alpha=alpha, gamma=gamma, method=method,
              eps_signed=float(e), lr=float(lr[i]), steps=int(out.steps[i, j]),
              diverged=bool(out.diverged[i, j]), converged=conv,
              test_error=_f(err[i, j]) if conv else None,
              l1=float(jnp.abs(b[i, j]).sum()) if conv else None,
              gd_test_error=float(err0[i]),
              gd_l1=float(jnp.abs(b0[i]).sum()),
              rel_change_from_gd=float(_rel(b[i, j], b0[i])) if conv else None,
              rel_err_first_order=(float(_rel(b[i, j], p_first[i, j]))
                                   if conv else None),
              rel_err_exact=(float(_rel(b[i, j], p_exact[i, j]))
                             if conv else None),
              first_order_test_error=float(_test_error(p_first, data)[i, j]),
              uniform_test_error=float(_test_error(p_unif, data)[i, j]),
              exponent_support=(float(e_gr[i, j][sup].mean())
                                if conv else None),
              exponent_off_support=(float(e_gr[i, j][~sup].mean())
                                    if conv else None),
              first_order_exponent_support=float(e_first[i, j][sup].mean()),
              first_order_exponent_off_support=float(
                  e_first[i, j][~sup].mean())))
      ratio = np.nanmean(np.where(ok, err, np.nan) / err0[:, None], axis=0)
      worst = np.nanmax(np.where(ok, np.asarray(_rel(b, p_exact)), np.nan))
      log(f"[sweep] alpha {alpha} {_label(method)} ({time.time() - t0:.0f} s):"
          f" test / GD (seed-mean) "
          + " ".join(f"{e:+.0e}:{r:.3f}" for e, r in zip(signed, ratio))
          + f"; exact-prediction error max {float(worst):.2e}")

  alpha = cfg["grid_alpha"]
  gam = np.repeat(cfg["grid_gammas"], len(cfg["grid_eps"]))
  eps_all = np.tile(cfg["grid_eps"], len(cfg["grid_gammas"]))
  for frac_g in cfg["grid_fractions"]:
    base, b0, lr, err0 = gd(alpha, frac_g)
    budget = cfg["budget_factor"] * int(base.steps.max())
    for method in METHODS:
      if method == "double_backprop":
        g_list, e_list = np.array(cfg["grid_gammas"]), np.zeros(
            len(cfg["grid_gammas"]))
      else:
        g_list, e_list = gam, eps_all
      t0 = time.time()
      out = _gr(x, y, alpha, lr, jnp.asarray(g_list), jnp.asarray(
          np.where(e_list > 0, e_list, 1.0)), method, budget)
      err = np.asarray(_test_error(dln.beta(out.params), data))
      conv = np.asarray((out.residual <= TOL) & ~out.diverged)
      for i, s in enumerate(cfg["seeds"]):
        for j, (g, e) in enumerate(zip(g_list, e_list)):
          res["grid"].append(dict(
              seed=s, alpha=alpha, step_fraction=frac_g, lr=float(lr[i]),
              method=method, gamma=float(g),
              eps_signed=dln.signed_eps(method, float(e)),
              steps=int(out.steps[i, j]), budget=budget,
              diverged=bool(out.diverged[i, j]), converged=bool(conv[i, j]),
              test_error=_f(err[i, j]) if conv[i, j] else None,
              gd_test_error=float(err0[i])))
      log(f"[grid] step {frac_g} {_label(method)} ({time.time() - t0:.0f} s):"
          f" diverged {int(np.asarray(out.diverged).sum())} of "
          f"{out.diverged.size}, stalled "
          f"{int((~conv & ~np.asarray(out.diverged)).sum())}")
  return res


def _step_limit_seeds(x, y, alpha):
  return jax.vmap(_step_limit, in_axes=(0, 0, None))(x, y, alpha)


# --- Summaries: mean and spread over seeds ----------------------------------


def _ratio(r):
  if r["test_error"] is None:
    return None
  return r["test_error"] / r["gd_test_error"]


def summarize(res: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
  """Per configuration: mean, std and n over seeds of every measured value."""
  out = dict(bias=[], sweep=[], grid=[])
  for alpha in cfg["bias_alphas"]:
    rows = [r for r in res["bias"] if r["alpha"] == alpha]
    entry = dict(alpha=alpha)
    for key in ("steps", "lr", "test_error", "l1", "rel_err_solver",
                "rel_err_solver_h", "solver_test_error", "solver_l1",
                "l2_test_error", "l2_l1"):
      entry[key] = stats_lib.summary([r[key] for r in rows])
    out["bias"].append(entry)
  keys = ("test_error", "l1", "ratio_to_gd", "rel_change_from_gd",
          "rel_err_first_order", "rel_err_exact", "exponent_support",
          "exponent_off_support", "first_order_exponent_support",
          "first_order_exponent_off_support", "uniform_test_error",
          "gd_test_error", "gd_l1", "steps")
  groups = {}
  for r in res["sweep"]:
    groups.setdefault((r["alpha"], r["method"], r["eps_signed"]), []).append(r)
  for (alpha, method, eps), rows in groups.items():
    entry = dict(alpha=alpha, method=method, eps_signed=eps,
                 eps_paper=eps * dln.paper_scale(cfg["n"]),
                 gamma=rows[0]["gamma"],
                 seeds=len(rows),
                 diverged=sum(r["diverged"] for r in rows),
                 converged=sum(r["converged"] for r in rows))
    for key in keys:
      entry[key] = stats_lib.summary(
          [_ratio(r) if key == "ratio_to_gd" else r[key] for r in rows])
    out["sweep"].append(entry)
  groups = {}
  for r in res["grid"]:
    groups.setdefault((r["step_fraction"], r["method"], r["gamma"],
                       r["eps_signed"]), []).append(r)
  for (frac, method, gamma, eps), rows in groups.items():
    out["grid"].append(dict(
        step_fraction=frac, method=method, gamma=gamma, eps_signed=eps,
        seeds=len(rows), diverged=sum(r["diverged"] for r in rows),
        stalled=sum(not r["converged"] and not r["diverged"] for r in rows),
        fraction_diverged=sum(r["diverged"] for r in rows) / len(rows),
        ratio_to_gd=stats_lib.summary([_ratio(r) for r in rows]),
        test_error=stats_lib.summary([r["test_error"] for r in rows])))
  out["runs"] = _run_counts(res["sweep"])
  return out


def _run_counts(sweep: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """What the tables say of single runs of the sweep, counted."""
  conv = [r for r in sweep if r["converged"]]
  exact = [r["rel_err_exact"] for r in conv]
  pairs = [(f, b) for f in conv if f["method"] == "forward"
           for b in conv if b["method"] == "backward"
           and (b["seed"], b["alpha"], -b["eps_signed"])
           == (f["seed"], f["alpha"], f["eps_signed"])]
  return dict(
      converged=len(conv),
      rel_err_exact_max=max(exact, default=None),
      rel_err_exact_below_2_percent=sum(e < 0.02 for e in exact),
      rel_err_first_order_below_2_percent=sum(
          r["rel_err_first_order"] < 0.02 for r in conv),
      exponent_sign_agrees=sum((r["exponent_support"] < 0)
                               == (r["test_error"] < r["gd_test_error"])
                               for r in conv),
      forward_backward_pairs=len(pairs),
      backward_below_forward=sum(b["test_error"] < f["test_error"]
                                 for f, b in pairs))


def _pm(s, fmt=".3f"):
  if s["mean"] is None:
    return "-"
  std = "" if s["std"] is None else f" ± {s['std']:{fmt}}"
  return f"{s['mean']:{fmt}}{std}"


def tables(summary: dict[str, Any], cfg: dict[str, Any]) -> str:
  """Markdown tables of the summary (mean ± std over seeds)."""
  n_seeds = len(cfg["seeds"])
  scale = dln.paper_scale(cfg["n"])
  lines = [f"Mean ± standard deviation over {n_seeds} data seeds "
           f"{cfg['seeds']} (n = converged seeds where fewer). Sum loss; "
           f"`eps`, `gamma` and `h` in the paper's units (the loss "
           f"||X beta - y||^2 / (4N), for which its c_0, c_1 are exact) are "
           f"4N = {scale} times these.", "",
           f"### Gradient descent against argmin phi_alpha (h = "
           f"{cfg['step_fraction']} x 2/lambda_max)", "",
           "| alpha | steps | test error GD | test error solver | "
           "||beta||_1 GD | rel. err. to solver | with h/2 |",
           "|---|---|---|---|---|---|---|"]
  for e in summary["bias"]:
    lines.append(
        f"| {e['alpha']} | {_pm(e['steps'], '.0f')} | {_pm(e['test_error'])} "
        f"| {_pm(e['solver_test_error'])} | {_pm(e['l1'])} | "
        f"{_pm(e['rel_err_solver'], '.1e')} | "
        f"{_pm(e['rel_err_solver_h'], '.1e')} |")
  for alpha in cfg["sweep_alphas"]:
    rows = [e for e in summary["sweep"] if e["alpha"] == alpha]
    lines += ["", f"### alpha = {alpha}, gamma = {cfg['sweep_gamma']} "
              f"(paper's units: {cfg['sweep_gamma'] * scale:g}); GD "
              f"test error {_pm(rows[0]['gd_test_error'])}", "",
              "| method | eps (sum) | eps (paper) | conv. | test error | "
              "test / GD | ||beta||_1 | err. first order | err. exact | "
              "exponent on support | off support |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(rows, key=lambda e: (METHODS.index(e["method"]),
                                         abs(e["eps_signed"]))):
      lines.append(
          f"| {_label(e['method'])} | {e['eps_signed']:g} | "
          f"{e['eps_paper']:g} | {e['converged']}/{e['seeds']} | "
          f"{_pm(e['test_error'])} | {_pm(e['ratio_to_gd'])} | "
          f"{_pm(e['l1'])} | {_pm(e['rel_err_first_order'], '.1e')} | "
          f"{_pm(e['rel_err_exact'], '.1e')} | "
          f"{_pm(e['exponent_support'])} | "
          f"{_pm(e['exponent_off_support'])} |")
  lines += ["", f"### Divergence over (gamma, eps), alpha = "
            f"{cfg['grid_alpha']}: diverged / stalled of {n_seeds} seeds, "
            f"test error / GD at the same step", ""]
  for frac in cfg["grid_fractions"]:
    lines += [f"h = {frac} x 2/lambda_max:", "",
              "| method | gamma | " + " | ".join(
                  f"eps {e:g}" for e in cfg["grid_eps"]) + " |",
              "|---|---|" + "---|" * len(cfg["grid_eps"])]
    for method in METHODS:
      for gamma in cfg["grid_gammas"]:
        cells = []
        for eps in (cfg["grid_eps"] if method != "double_backprop"
                    else [None]):
          (e,) = [e for e in summary["grid"] if e["step_fraction"] == frac
                  and e["method"] == method and e["gamma"] == gamma
                  and (eps is None or abs(e["eps_signed"]) == eps)]
          cells.append(f"{e['diverged']}/{e['stalled']}, "
                       f"{_pm(e['ratio_to_gd'], '.2f')}")
        if method == "double_backprop":
          cells = cells * len(cfg["grid_eps"])
        lines.append(f"| {_label(method)} | {gamma:g} | "
                     + " | ".join(cells) + " |")
    totals = []
    for method in METHODS:
      rows = [e for e in summary["grid"] if e["step_fraction"] == frac
              and e["method"] == method]
      totals.append(f"{_label(method)} {sum(e['diverged'] for e in rows)} of "
                    f"{sum(e['seeds'] for e in rows)} runs in "
                    f"{sum(e['diverged'] > 0 for e in rows)} of {len(rows)} "
                    f"settings")
    lines += ["", "Diverged: " + "; ".join(totals) + ".", ""]
  exact = [e["rel_err_exact"]["mean"] for e in summary["sweep"]
           if e["rel_err_exact"]["mean"] is not None]
  runs = summary["runs"]
  worst = max((r for r in summary["sweep"]),
              key=lambda e: e["rel_err_exact"]["mean"] or 0.0)
  lines.append(
      f"Exact prediction, relative error to the trained beta: mean over "
      f"seeds at most {max(exact):.1e}"
      f" (alpha {worst['alpha']}, {_label(worst['method'])}, eps "
      f"{worst['eps_signed']:g}); largest single run "
      f"{runs['rel_err_exact_max']:.1e}; below 2% in "
      f"{runs['rel_err_exact_below_2_percent']} of {runs['converged']} "
      f"converged runs (first order: "
      f"{runs['rel_err_first_order_below_2_percent']}).")
  agree = sum((e["exponent_support"]["mean"] < 0)
              == (e["ratio_to_gd"]["mean"] < 1) for e in summary["sweep"]
              if e["ratio_to_gd"]["mean"] is not None)
  lines.append(
      f"Exponent on the support < 0 exactly where test error < GD: in "
      f"{agree} of {len(summary['sweep'])} settings (seed means), "
      f"{runs['exponent_sign_agrees']} of {runs['converged']} converged "
      f"runs.")
  lines.append(
      f"{_label('backward')} below {_label('forward')} in test error in "
      f"{runs['backward_below_forward']} of "
      f"{runs['forward_backward_pairs']} (seed, alpha, eps) where both "
      f"converged.")
  return "\n".join(lines)


# --- Command line ------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  # float64 for the small-alpha trajectories and the dual solver, scoped so
  # that importing this module leaves the global setting alone.
  with jax.enable_x64(True):
    return _main(argv)


def _main(argv):
  p = _cli.parser(MODULE, __doc__.splitlines()[0])
  p.add_argument("--out", default="docs/results", output=_cli.Output("folder"),
                 help="folder for the result files (NAME.json: the "
                 "summaries over seeds; NAME.md: the tables)")
  p.add_argument("--figures", default="docs/figures",
                 output=_cli.Output("folder", "optional"),
                 help="folder for the figures (with Matplotlib)")
  p.add_argument("--runs", default=None, output=_cli.Output("file"),
                 help="also write every run's record to this JSON file")
  p.add_argument("--quick", action="store_true", help="a tiny run")
  p.add_argument("--seeds", type=_cli.number(int, 0), nargs="+",
                 default=None,
                 help="data seeds (default: 0 1 2 3 4; --quick: 0 1)")
  args = p.parse_args(argv)
  cfg = dict(QUICK if args.quick else FULL)
  if args.seeds is not None:
    cfg["seeds"] = args.seeds
  name = "dln_bias_quick" if args.quick else "dln_bias"
  t0 = time.time()
  res = run(cfg, log=lambda s: print(s, flush=True))
  summary = summarize(res, cfg)
  scale = f"{dln.paper_scale(cfg['n'])}"
  result = dict(command=_report.command_line(MODULE, argv), config=cfg,
                tol=TOL, loss="sum", seeds_completed=list(cfg["seeds"]),
                units=dict(eps_paper=f"4N * eps = {scale} * eps",
                           gamma_paper=f"4N * gamma = {scale} * gamma",
                           lr_paper=f"4N * lr = {scale} * lr", N=cfg["n"]),
                summary=summary, seconds=round(time.time() - t0, 1))
  text = tables(summary, cfg) + f"\n\nTotal {result['seconds']:.0f} s."
  print(text)
  # Six significant digits: the tables print at most four.
  _report.save(os.path.join(args.out, name), result, text, digits=6)
  if args.runs:
    _report.write_json(args.runs, dict(command=result["command"], runs=res))
  if _cli.importable("matplotlib"):
    plot(result, args.figures, name)
  return result


# --- Figures -----------------------------------------------------------------


def _band(ax, xs, entries, key, label, color, style="o-"):
  m = np.array([np.nan if e[key]["mean"] is None else e[key]["mean"]
                for e in entries])
  s = np.array([0.0 if e[key]["std"] is None else e[key]["std"]
                for e in entries])
  ax.errorbar(xs, m, yerr=s, fmt=style, color=color, label=label, ms=4,
              capsize=2)


def plot(result: dict[str, Any], fig_dir: str, name: str) -> None:
  """Writes ``{name}_alpha``, ``_eps``, ``_theory``, ``_grid`` and
  ``_divergence`` (PNG) from a result of :func:`main`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  os.makedirs(fig_dir, exist_ok=True)
  cfg, summ = result["config"], result["summary"]
  n_seeds = len(cfg["seeds"])
  note = f"mean ± std over {n_seeds} seeds"

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  alphas = [e["alpha"] for e in summ["bias"]]
  for (key, sol, l2), ax in zip((("test_error", "solver_test_error",
                                  "l2_test_error"),
                                 ("l1", "solver_l1", "l2_l1")), axes):
    _band(ax, alphas, summ["bias"], sol, "argmin phi_alpha", "k", "-")
    _band(ax, alphas, summ["bias"], key, "GD", "C0", "o")
    _band(ax, alphas, summ["bias"], l2, "min L2 norm", "C7", ":")
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(key)
  axes[0].legend(fontsize=7)
  axes[0].set_title(note, fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name + "_alpha.png"), dpi=110)
  plt.close(fig)

  def sweep(alpha, method):
    rows = [e for e in summ["sweep"] if e["alpha"] == alpha
            and e["method"] == method]
    return sorted(rows, key=lambda e: abs(e["eps_signed"]))

  n_a = len(cfg["sweep_alphas"])
  fig, axes = plt.subplots(n_a, 2, figsize=(9, 3.0 * n_a), squeeze=False)
  for row, alpha in zip(axes, cfg["sweep_alphas"]):
    (db,) = sweep(alpha, "double_backprop")
    gd = db["gd_test_error"]
    for key, ax in zip(("ratio_to_gd", "l1"), row):
      for method, c in (("forward", "C0"), ("backward", "C3")):
        rows = sweep(alpha, method)
        eps = [abs(e["eps_signed"]) for e in rows]
        _band(ax, eps, rows, key, f"{_label(method)} trained", c)
        if key == "ratio_to_gd":
          uni = [dict(u=dict(mean=None if e["uniform_test_error"]["mean"] is
                             None else e["uniform_test_error"]["mean"]
                             / gd["mean"], std=None)) for e in rows]
          _band(ax, eps, uni, "u", f"{_label(method)} scalar-alpha theory",
                c, "--")
      m, s = db[key]["mean"], db[key]["std"] or 0.0
      ax.axhspan(m - s, m + s, color="C2", alpha=0.25)
      ax.axhline(m, color="C2", ls="-.", label="DB (eps = 0)")
      if key == "ratio_to_gd":
        ax.axhline(1.0, color="k", lw=1, label="GD")
      else:
        ax.axhline(db["gd_l1"]["mean"], color="k", lw=1)
      ax.set_xscale("log")
      ax.set_xlabel(f"|eps| (sum loss; x{dln.paper_scale(cfg['n'])} in the "
                    "paper's units)")
      ax.set_title(f"alpha={alpha}, gamma={cfg['sweep_gamma']}: "
                   f"{'test error / GD' if key == 'ratio_to_gd' else key}",
                   fontsize=9)
    row[0].legend(fontsize=6)
  fig.suptitle(note, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name + "_eps.png"), dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(2, n_a, figsize=(3.6 * n_a + 1, 6.6),
                           squeeze=False)
  for col, alpha in enumerate(cfg["sweep_alphas"]):
    ax = axes[0, col]
    for method, c in (("forward", "C0"), ("backward", "C3")):
      rows = sweep(alpha, method)
      eps = [abs(e["eps_signed"]) for e in rows]
      _band(ax, eps, rows, "exponent_support", f"{_label(method)} on support",
            c, "o-")
      _band(ax, eps, rows, "exponent_off_support",
            f"{_label(method)} off support", c, "s:")
      _band(ax, eps, rows, "first_order_exponent_support",
            f"{_label(method)} first order, on", c, "--")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_title(f"alpha={alpha}: 4 gamma int g g'(eps) dt", fontsize=9)
    ax.set_xlabel("|eps|")
    ax = axes[1, col]
    for method, c in (("forward", "C0"), ("backward", "C3")):
      rows = sweep(alpha, method)
      eps = [abs(e["eps_signed"]) for e in rows]
      _band(ax, eps, rows, "rel_err_exact", f"{_label(method)} exact", c, "o-")
      _band(ax, eps, rows, "rel_err_first_order",
            f"{_label(method)} first order", c, "x--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|eps|")
    ax.set_title("|beta - predicted| / |beta|", fontsize=9)
  axes[0, 0].legend(fontsize=6)
  axes[1, 0].legend(fontsize=6)
  fig.suptitle(f"alpha_GR = alpha exp(-exponent), gamma = "
               f"{cfg['sweep_gamma']}; {note}", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name + "_theory.png"), dpi=110)
  plt.close(fig)

  fracs, gam, eps = cfg["grid_fractions"], cfg["grid_gammas"], cfg["grid_eps"]

  def grid_panel(ax, frac, method, fn, cmap, vmin, vmax, fmt):
    cols = eps if method != "double_backprop" else [None]
    z = np.full((len(gam), len(cols)), np.nan)
    text = np.empty(z.shape, dtype=object)
    for i, g in enumerate(gam):
      for j, e in enumerate(cols):
        (entry,) = [r for r in summ["grid"] if r["step_fraction"] == frac
                    and r["method"] == method and r["gamma"] == g
                    and (e is None or abs(r["eps_signed"]) == e)]
        z[i, j], text[i, j] = fn(entry, fmt)
    im = ax.imshow(z, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                   aspect="auto")
    for i in range(z.shape[0]):
      for j in range(z.shape[1]):
        ax.text(j, i, text[i, j], ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(cols)), ["-" if e is None else f"{e:g}"
                                     for e in cols], fontsize=7)
    ax.set_yticks(range(len(gam)), [f"{g:g}" for g in gam], fontsize=7)
    ax.set_xlabel("|eps|" if method != "double_backprop" else "")
    ax.set_ylabel("gamma")
    ax.set_title(f"{_label(method)}, h = {frac} x 2/lam", fontsize=8)
    return im

  def ratio(entry, fmt):
    s = entry["ratio_to_gd"]
    if s["mean"] is None:
      return np.nan, "div"
    std = "" if s["std"] is None else f"\n±{s['std']:.2f}"
    return np.log10(s["mean"]), f"{s['mean']:.2f}{std}"

  def diverged(entry, fmt):
    f = entry["fraction_diverged"]
    extra = f"\n+{entry['stalled']} st." if entry["stalled"] else ""
    return f, f"{f:.1f}{extra}"

  for fn, cmap, vmin, vmax, suffix, label in (
      (ratio, "coolwarm", -0.6, 0.6, "_grid",
       "log10(test error / GD), converged seeds"),
      (diverged, "Reds", 0.0, 1.0, "_divergence",
       f"fraction of {n_seeds} seeds diverged (non-finite loss)")):
    fig, axes = plt.subplots(
        len(fracs), 3, figsize=(10, 2.6 * len(fracs) + 0.6), squeeze=False,
        layout="constrained",
        gridspec_kw=dict(width_ratios=[len(eps), len(eps), 1.4]))
    for row, frac in zip(axes, fracs):
      for ax, method in zip(row, METHODS):
        im = grid_panel(ax, frac, method, fn, cmap, vmin, vmax, None)
        if method != "forward":
          ax.set_ylabel("")
    fig.colorbar(im, ax=axes, label=label, shrink=0.8)
    fig.suptitle(f"alpha = {cfg['grid_alpha']}, {n_seeds} seeds; "
                 f"h as a fraction of the stability limit", fontsize=9)
    fig.savefig(os.path.join(fig_dir, name + suffix + ".png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
  main()
