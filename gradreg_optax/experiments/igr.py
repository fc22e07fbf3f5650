"""Implicit gradient regularization (Barrett & Dherin, ICLR 2021) measured.

1. Digits (:func:`data.load_digits`) with a 64-32-10 tanh MLP (``m = 2410``
   parameters): full-batch gradient descent for the same training time
   ``T = h * steps`` at learning rates ``h`` from 0.05 up to near the
   stability limit, and explicit IGR, gradient descent at ``h = 0.05`` on
   ``E + (s/4) ||grad E||^2`` (``gro.igr_modified_loss(E, s)``, the rate
   ``mu = s m / 4`` beside the implicit ``lambda = h m / 4``) with strengths
   ``s`` well above ``h``. As Barrett & Dherin do, the runs are compared at
   matched training loss (``R_IG = ||grad E||^2 / m`` where ``E`` first falls
   to a level) and at the first time of maximum test accuracy; the top Hessian
   eigenvalue at the end is set against the stability bound ``2/h``. Several
   initialization seeds: means and sample standard deviations.
2. Their two-parameter model ``E(a, b) = (y - a b x)^2 / 2``: gradient
   descent's path against the flows of ``E`` and of the modified loss, and the
   flatness of the minimum gradient descent reaches from ``(2.8, 0.5)``
   against ``h`` (the Hessian trace, ``x^2 (a^2 + b^2)``), beside the minimum
   the modified flow reaches.

Run: ``python -m gradreg_optax.experiments.igr --out docs/results/igr
--figure docs/figures/igr.png`` (``--quick`` for a tiny run).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gradreg_optax as gro
from gradreg_optax import flatness
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import data
from gradreg_optax.experiments import models
from gradreg_optax.experiments import stats

MODULE = "gradreg_optax.experiments.igr"
LOSS = models.tanh_mlp_loss
BASE_H = 0.05  # the step of the explicit-IGR runs
FULL = dict(learning_rates=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.4),
            strengths=(0.4, 1.6, 6.4, 25.6), levels=(0.3, 0.1, 0.03, 0.01),
            time=1000.0, record_time=2.0, seeds=5)
QUICK = dict(learning_rates=(0.05, 0.8), strengths=(0.8,), levels=(1.0, 0.5),
             time=20.0, record_time=1.0, seeds=2)
TWO_PARAM_HS = (0.001, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


# --- Digits -------------------------------------------------------------------


def trajectories(loss_fn: Callable[..., jax.Array], h: float, steps: int,
                 every: int, params: Any, train_set: Any, test_set: Any
                 ) -> tuple[Any, jax.Array]:
  """Full-batch gradient descent on ``loss_fn`` from a stack of initial points.

  Args:
    loss_fn: the loss descended (``E`` or a modified loss).
    h: the step.
    steps: number of steps (a multiple of ``every``).
    every: steps between records.
    params: initial parameters with a leading axis, one entry per seed.
    train_set: the full batch.
    test_set: the data of the test accuracy.

  Returns:
    The final parameters (stacked) and records of shape
    ``(seeds, steps // every, 3)``: ``E``, ``R_IG`` of ``E`` and the test
    accuracy after every ``every`` steps.
  """
  r_ig = gro.igr_regularizer(LOSS)
  grad = jax.grad(loss_fn)

  def descend(_, p):
    return jax.tree.map(lambda a, g: a - h * g, p, grad(p, train_set))

  def chunk(p, _):
    p = jax.lax.fori_loop(0, every, descend, p)
    return p, jnp.stack([LOSS(p, train_set), r_ig(p, train_set),
                         models.tanh_mlp_accuracy(p, test_set)])

  run = lambda p: jax.lax.scan(chunk, p, None, length=steps // every)
  return jax.jit(jax.vmap(run))(params)


def r_ig_at_loss(e: np.ndarray, r: np.ndarray, level: float
                 ) -> float | None:
  """``R_IG`` where the loss ``e`` first falls to ``level``.

  Interpolated linearly in ``(log E, log R_IG)`` between the two records
  around the crossing; ``None`` if ``e`` never reaches ``level``.

  Example:
    >>> import numpy as np
    >>> e, r = np.array([1.0, 0.1, 0.01]), np.array([1e-2, 1e-4, 1e-6])
    >>> round(r_ig_at_loss(e, r, 10 ** -1.5), 12)  # halfway in log E
    1e-05
    >>> r_ig_at_loss(e, r, 0.001) is None
    True
  """
  below = np.flatnonzero(np.asarray(e) <= level)
  if not below.size:
    return None
  i = int(below[0])
  if i == 0:
    return float(r[0])
  t = (math.log(e[i - 1]) - math.log(level)) / (
      math.log(e[i - 1]) - math.log(e[i]))
  return float(math.exp((1 - t) * math.log(r[i - 1]) + t * math.log(r[i])))


def summarize(records: np.ndarray, levels: Sequence[float], dt: float
              ) -> dict[str, Any]:
  """One run's records: ``R_IG`` at the loss levels, and the state at the
  first record of maximum test accuracy (``dt``: training time per record)."""
  e, r, acc = records.T
  if not np.all(np.isfinite(records)):
    return dict(diverged=True)
  best = int(np.argmax(acc))
  return dict(
      diverged=False,
      r_ig_at_loss={str(lv): r_ig_at_loss(e, r, lv) for lv in levels},
      at_max_test_acc=dict(time=(best + 1) * dt, test_acc=float(acc[best]),
                           loss=float(e[best]), r_ig=float(r[best])),
      final=dict(loss=float(e[-1]), r_ig=float(r[-1]),
                 test_acc=float(acc[-1])))


def digits_runs(setting: dict[str, Any], seeds: Sequence[int],
                verbose: bool = True) -> dict[str, Any]:
  """Every learning rate and explicit strength of ``setting`` on every seed."""
  d = data.load_digits()
  train_set = (jnp.asarray(d.x_train), jnp.asarray(d.y_train))
  test_set = (jnp.asarray(d.x_test), jnp.asarray(d.y_test))
  params0 = jax.vmap(models.tanh_mlp_init)(
      jnp.stack([jax.random.key(s) for s in seeds]))
  m = flatness.num_params(models.tanh_mlp_init(jax.random.key(0)))
  configs = [dict(name=f"gd h={h}", kind="gd", h=h, strength=0.0)
             for h in setting["learning_rates"]]
  configs += [dict(name=f"explicit s={s}", kind="explicit", h=BASE_H,
                   strength=s) for s in setting["strengths"]]
  n_test = int(test_set[0].shape[0])
  # The stability bound of the first steps: 2 / (top eigenvalue at init).
  sharp0 = np.asarray(jax.vmap(lambda p, k: flatness.hessian_top_eigenvalue(
      LOSS, p, train_set, k, num_iters=100)[0])(
          params0, jax.random.split(jax.random.key(1), len(seeds))))
  out = dict(num_params=m, train=int(train_set[0].shape[0]), test=n_test,
             initial_top_eigenvalue=dict(per_seed=sharp0.tolist(),
                                         **stats.summary(sharp0.tolist())),
             configs=[])
  for c in configs:
    h, s = c["h"], c["strength"]
    every = max(1, round(setting["record_time"] / h))
    steps = max(round(setting["time"] / h) // every, 1) * every
    loss_fn = gro.igr_modified_loss(LOSS, s) if s else LOSS
    t0 = time.perf_counter()
    final, records = trajectories(loss_fn, h, steps, every, params0,
                                  train_set, test_set)
    records = np.asarray(records, np.float64)
    sharp = jax.vmap(lambda p, k: flatness.hessian_top_eigenvalue(
        LOSS, p, train_set, k, num_iters=100)[0])(
            final, jax.random.split(jax.random.key(0), len(seeds)))
    runs = []
    for seed, rec, lam in zip(seeds, records, np.asarray(sharp)):
      run = dict(seed=int(seed), **summarize(rec, setting["levels"],
                                             every * h))
      if not run["diverged"]:
        run["final"]["top_eigenvalue"] = float(lam)
      runs.append(run)
    ok = [r for r in runs if not r["diverged"]]
    c.update(
        steps=steps, record_every=every, implicit_rate=h * m / 4,
        explicit_rate=s * m / 4, stability_bound=2 / h,
        diverged=len(runs) - len(ok), runs=runs,
        summary=dict(
            r_ig_at_loss={str(lv): stats.summary(
                [r["r_ig_at_loss"][str(lv)] for r in ok])
                          for lv in setting["levels"]},
            at_max_test_acc={k: stats.summary(
                [r["at_max_test_acc"][k] for r in ok])
                             for k in ("time", "test_acc", "loss", "r_ig")},
            final={k: stats.summary([r["final"][k] for r in ok])
                   for k in ("loss", "r_ig", "test_acc", "top_eigenvalue")}),
        # Seed 0's (E, R_IG) every fifth record, for the figure.
        curve_first_seed=records[0, 4::5, :2].tolist(),
        seconds=time.perf_counter() - t0)
    out["configs"].append(c)
    if verbose:
      print(f"{c['name']}: {steps} steps, {c['seconds']:.0f} s, "
            f"{len(ok)}/{len(runs)} converged", flush=True)
  paired(out["configs"], setting["levels"], n_test)
  return out


def paired(configs: list[dict[str, Any]], levels: Sequence[float],
           n_test: int) -> None:
  """Adds each run's comparison with the same seed's run of ``configs[0]``.

  ``R_IG`` at a loss level as a ratio to the base run's (the seed's
  initialization cancels), and the maximum test accuracy as a difference in
  test images.
  """
  base = {r["seed"]: r for r in configs[0]["runs"]}
  for c in configs:
    ok = [(r, base[r["seed"]]) for r in c["runs"]
          if not r["diverged"] and not base[r["seed"]]["diverged"]]
    ratios = {}
    for lv in map(str, levels):
      v = [r["r_ig_at_loss"][lv] / b["r_ig_at_loss"][lv] for r, b in ok
           if r["r_ig_at_loss"][lv] and b["r_ig_at_loss"][lv]]
      ratios[lv] = stats.summary(v)
    c["summary"]["r_ig_ratio_to_base"] = ratios
    c["summary"]["max_test_acc_minus_base_images"] = [
        round((r["at_max_test_acc"]["test_acc"]
               - b["at_max_test_acc"]["test_acc"]) * n_test) for r, b in ok]


def _ratio_cell(st: dict[str, Any]) -> str:
  if not st.get("n"):
    return "n/a"
  return (f"{st['mean']:.3f} ± {stats.text_or_na(st['std'], '.3f')} "
          f"[{st['min']:.3f}, "
          f"{st['max']:.3f}] ({st['n']})")


def paired_table(res: dict[str, Any], levels: Sequence[float]) -> str:
  base = res["configs"][0]["name"]
  head = (["run"] + [f"R_IG / {base}'s at E={lv}" for lv in levels]
          + ["max test acc minus " + base + "'s, in test images"])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for c in res["configs"][1:]:
    s = c["summary"]
    row = ([c["name"]]
           + [_ratio_cell(s["r_ig_ratio_to_base"][str(lv)]) for lv in levels]
           + [" ".join(f"{d:+d}" for d in s["max_test_acc_minus_base_images"])
              or "n/a"])
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _cell(st: dict[str, Any], fmt: str = ".2e") -> str:
  if not st.get("n"):
    return "n/a"
  return (f"{st['mean']:{fmt}} ± {stats.text_or_na(st['std'], '.1e')} "
          f"({st['n']})")


def digits_table(res: dict[str, Any], levels: Sequence[float]) -> str:
  head = (["run", "rate (h m/4 or s m/4)"]
          + [f"R_IG at E={lv}" for lv in levels]
          + ["max test acc", "E there", "R_IG there", "final top eig.",
             "2/h"])
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for c in res["configs"]:
    s = c["summary"]
    rate = c["implicit_rate"] if c["kind"] == "gd" else c["explicit_rate"]
    row = ([c["name"], f"{rate:.0f}"]
           + [_cell(s["r_ig_at_loss"][str(lv)]) for lv in levels]
           + [_cell(s["at_max_test_acc"]["test_acc"], ".4f"),
              _cell(s["at_max_test_acc"]["loss"], ".3f"),
              _cell(s["at_max_test_acc"]["r_ig"]),
              _cell(s["final"]["top_eigenvalue"], ".3f"),
              f"{c['stability_bound']:.3g}"])
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


# --- Two-parameter model ------------------------------------------------------


def two_param_loss(x: float = 1.0, y: float = 1.0
                   ) -> Callable[[jax.Array, Any], jax.Array]:
  """Barrett & Dherin's ``E(a, b) = (y - a b x)^2 / 2`` as ``E(p, batch)``."""
  return lambda p, _: 0.5 * (y - p[0] * p[1] * x) ** 2


def exact_trace(loss_fn: Callable[..., jax.Array], params: jax.Array,
                batch: Any) -> jax.Array:
  """``tr H = sum_i e_i^T H e_i`` from one Hessian-vector product per
  coordinate of the flat ``params`` (exact; for small models)."""
  basis = jnp.eye(params.size, dtype=params.dtype)
  return jnp.sum(jax.vmap(lambda e: jnp.vdot(
      e, flatness.hvp(loss_fn, params, batch, e)))(basis))


def _descend(loss_fn, p, h, steps):
  grad = jax.grad(loss_fn)
  return jax.lax.fori_loop(0, steps, lambda _, q: q - h * grad(q, None), p)


def _rk4_flow(loss_fn, p, total_time, dt):
  grad = jax.grad(loss_fn)
  f = lambda q: -grad(q, None)

  def step(_, q):
    k1 = f(q)
    k2 = f(q + dt / 2 * k1)
    k3 = f(q + dt / 2 * k2)
    k4 = f(q + dt * k3)
    return q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

  return jax.lax.fori_loop(0, round(total_time / dt), step, p)


def two_param_flatness(hs: Sequence[float] = TWO_PARAM_HS,
                       start: tuple[float, float] = (2.8, 0.5),
                       total_time: float = 200.0, x: float = 1.0,
                       y: float = 1.0) -> dict[str, Any]:
  """Flatness of the minimum gradient descent reaches, against ``h``.

  In float64: gradient descent with step ``h`` for ``total_time / h`` steps,
  and the flow of the modified loss ``E + (h/4)||grad E||^2`` (RK4,
  ``dt = 0.01``) for the same time, both from ``start``. At a minimum
  ``a b = y / x`` the Hessian has rank one, so its trace is also its top
  eigenvalue, which gradient descent can only hold below ``2/h``.
  """
  with jax.enable_x64(True):
    e = two_param_loss(x, y)
    p0 = jnp.array(start, jnp.float64)
    start_eig = float(jnp.linalg.eigvalsh(jax.hessian(e)(p0, None))[-1])
    rows = []
    for h in hs:
      gd = _descend(e, p0, h, round(total_time / h))
      flow = _rk4_flow(gro.igr_modified_loss(e, h), p0, total_time, 0.01)
      rows.append(dict(
          h=h, stability_bound=2 / h, gd_minimum=[float(v) for v in gd],
          gd_trace=float(exact_trace(e, gd, None)),
          gd_grad_norm=float(jnp.linalg.norm(jax.grad(e)(gd, None))),
          modified_flow_minimum=[float(v) for v in flow],
          modified_flow_trace=float(exact_trace(e, flow, None))))
  return dict(x=x, y=y, start=list(start), total_time=total_time,
              start_top_eigenvalue=start_eig, runs=rows)


def two_param_paths(h=0.1, steps=40, x=1.0, y=1.0, start=(2.8, 0.5)):
  """Gradient descent's path against the flows of ``E`` and of the modified
  loss (Euler with 200 substeps per step), and their largest distances."""
  e = two_param_loss(x, y)
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


def two_param_table(res: dict[str, Any]) -> str:
  lines = ["| h | 2/h | GD minimum (a, b) | GD trace | modified-flow trace |",
           "|---|---|---|---|---|"]
  for r in res["runs"]:
    a, b = r["gd_minimum"]
    lines.append(f"| {r['h']} | {r['stability_bound']:.3g} | ({a:.4f}, "
                 f"{b:.4f}) | {r['gd_trace']:.4f} | "
                 f"{r['modified_flow_trace']:.4f} |")
  return "\n".join(lines)


# --- Report -------------------------------------------------------------------


def plot(result: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(2, 2, figsize=(10, 8))
  a1, a2, a3, a4 = axes.ravel()
  digits_res = result["digits"]
  for c in digits_res["configs"]:
    curve = np.array(c["curve_first_seed"])
    if curve.size:
      a1.loglog(curve[:, 0], curve[:, 1],
                "-" if c["kind"] == "gd" else "--", label=c["name"])
  a1.set_xlabel("loss E")
  a1.set_ylabel("R_IG")
  a1.invert_xaxis()
  a1.set_title("digits, seed 0")
  a1.legend(fontsize=6)
  for i, level in enumerate(map(str, result["setting"]["levels"])):
    for kind, style in (("gd", "o-"), ("explicit", "s--")):
      st = [(c["implicit_rate" if kind == "gd" else "explicit_rate"],
             c["summary"]["r_ig_ratio_to_base"][level])
            for c in digits_res["configs"] if c["kind"] == kind]
      st = [(rate, v) for rate, v in st if v.get("n")]
      a2.errorbar([rate for rate, _ in st], [v["mean"] for _, v in st],
                  [v["std"] or 0.0 for _, v in st], fmt=style, color=f"C{i}",
                  capsize=3, label=f"E = {level}, {kind}")
  a2.axhline(1.0, color="k", lw=0.5)
  a2.set_xscale("log")
  a2.set_yscale("log")
  a2.set_xlabel("rate h m/4 (GD) or s m/4 (explicit, h = 0.05)")
  a2.set_ylabel("R_IG / same seed's at h = 0.05, at matched E")
  a2.set_title("mean ± std over seeds")
  a2.legend(fontsize=6)
  tp = result["two_param"]
  for key, style in (("gd", "o-"), ("flow_E", "-"), ("flow_modified", "--")):
    p = np.array(tp[key])
    a3.plot(p[:, 0], p[:, 1], style, ms=3, label=key)
  lo, hi = np.array(tp["gd"]).min(0), np.array(tp["gd"]).max(0)
  a = np.linspace(lo[0] - 0.02, hi[0] + 0.02, 100)
  a3.plot(a, 1 / a, "k:", label="ab = y/x")
  a3.set_xlabel("a")
  a3.set_ylabel("b")
  a3.set_title(f"two-parameter model, h = {tp['h']}")
  a3.legend(fontsize=7)
  fl = result["two_parameter_flatness"]["runs"]
  hs = [r["h"] for r in fl]
  a4.plot(hs, [r["gd_trace"] for r in fl], "o-", label="GD minimum")
  a4.plot(hs, [r["modified_flow_trace"] for r in fl], "s--",
          label="modified-flow minimum")
  a4.plot(hs, [min(r["stability_bound"], 10) for r in fl], "k:",
          label="2/h (clipped at 10)")
  a4.set_xlabel("h")
  a4.set_ylabel("Hessian trace at the minimum")
  a4.set_title("two-parameter model from (2.8, 0.5)")
  a4.legend(fontsize=7)
  fig.tight_layout()
  _report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  p = _cli.parser(MODULE, __doc__.splitlines()[0])
  p.add_argument("--seeds", type=_cli.POSITIVE_INT, default=None,
                 help="number of seeds 0, 1, ... (default: 5; --quick: 2)")
  p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
  p.add_argument("--figure", default=None, help="write this PNG")
  p.add_argument("--quick", action="store_true",
                 help="two rates, one strength, short training (a test)")
  args = p.parse_args(argv)
  _cli.require(p, "sklearn", "scikit-learn", "the digits data set")
  setting = dict(QUICK if args.quick else FULL)
  if args.seeds is not None:
    setting["seeds"] = args.seeds
  seeds = list(range(setting["seeds"]))
  t0 = time.perf_counter()
  command = _report.command_line(MODULE, argv)
  result = dict(command=command, setting=setting,
                digits=digits_runs(setting, seeds))
  result["two_param"] = two_param_paths()
  result["two_parameter_flatness"] = dict(
      command=command, **two_param_flatness(
          TWO_PARAM_HS[::4] if args.quick else TWO_PARAM_HS))
  result["wall_s"] = time.perf_counter() - t0
  d = result["digits"]
  tp, fl = result["two_param"], result["two_parameter_flatness"]
  text = (
      f"Digits ({d['train']} train / {d['test']} test), tanh MLP 64-32-10 "
      f"(m = {d['num_params']}), full-batch GD for time h * steps = "
      f"{setting['time']:g}; explicit IGR: GD at h = {BASE_H} on "
      f"E + (s/4)||grad E||^2. Mean ± sample std (number of converged runs) "
      f"over seeds {seeds}; R_IG at E = level where E first reaches it; "
      "'max test acc' at its first record.\n\n"
      + digits_table(d, setting["levels"])
      + "\n\nThe same seed's runs compared (seed by seed): mean ± sample std "
      "[min, max] (number of seeds) of the ratio, and each seed's difference"
      f" in test images:\n\n" + paired_table(d, setting["levels"])
      + "\n\nTop Hessian eigenvalue at initialization: "
      + ", ".join(f"{v:.3f}" for v in d["initial_top_eigenvalue"]["per_seed"])
      + f" (seeds {seeds}), so 2 / eigenvalue = "
      + ", ".join(f"{2 / v:.3f}" for v in d["initial_top_eigenvalue"]
                  ["per_seed"])
      + f"\n\nTwo-parameter model E = (y - abx)^2/2, x = y = 1, h = "
      f"{tp['h']}: max |GD - flow(E)| {tp['max_dist_gd_flow_E']:.3e}, max "
      f"|GD - flow(modified)| {tp['max_dist_gd_flow_modified']:.3e}\n\n"
      f"Flatness of the minimum reached from {tuple(fl['start'])} (top "
      f"Hessian eigenvalue there {fl['start_top_eigenvalue']:.4f}), time "
      f"{fl['total_time']:g}, float64:\n\n" + two_param_table(fl)
      + f"\n\ntotal {result['wall_s']:.0f} s")
  # Six significant digits: the digits runs are float32 and the tables print
  # at most four.
  _report.publish(result, text, args.out, args.figure, plot, digits=6)
  return result


if __name__ == "__main__":
  main()
