"""Which method helps, and at what cost: every method tuned and stopped alike.

``python -m gradreg_optax.experiments.benchmark`` runs the protocol of
:mod:`~gradreg_optax.experiments.harness` on MNIST-1D (an MLP and a 1-D CNN)
and scikit-learn's digits (an MLP; its small CNN with ``--tasks
digits-cnn``, the costliest task on a CPU), at 0, 20 and 40 % label noise,
for SGD, AdamW, the compute-matched SGD (``sgd:budget=2``, ``=3``)
and the methods of ``gro.METHODS`` (any of them by name, see
:mod:`~gradreg_optax.experiments.spec`), and reports per task and noise rate
the clean test accuracy of each method at its chosen configuration over
fresh seeds, its paired difference to tuned SGD and to compute-matched SGD
with 95 % t intervals and Holm-adjusted p-values, and its cost (gradient
evaluations and measured time per run, relative to SGD), with the methods on
the accuracy-cost front.

``--out PREFIX`` writes ``PREFIX.json`` and ``PREFIX.md`` after every
(task, method) and skips those already in ``PREFIX.json`` (same protocol),
so a stopped study resumes; ``--merge A.json B.json ... --out PREFIX``
combines studies run in parts (``--tasks``, ``--methods``), on one machine
or several: the runs of a seed see the same data, start and batch order
wherever they run, so the parts pair by seed.

Example (seconds; the full study is the default)::

  python -m gradreg_optax.experiments.benchmark --quick --out /tmp/bench

In parts, then merged::

  python -m gradreg_optax.experiments.benchmark --tasks mnist1d-cnn \
      --methods sgd adamw sgd:budget=2 --out parts/mnist1d-cnn-1
  ...
  python -m gradreg_optax.experiments.benchmark --merge parts/*.json \
      --out docs/results/benchmark --figure docs/figures/benchmark.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import harness
from gradreg_optax.experiments import spec as spec_lib
from gradreg_optax.experiments import stats

MODULE = "gradreg_optax.experiments.benchmark"
DEFAULT_METHODS = (
    "sgd", "adamw", "sgd:budget=2", "sgd:budget=3", "forward", "backward",
    "jvp", "sam", "asam", "gradient_norm_penalty", "flooding",
    "forward:every_k=2", "forward:every_k=5", "sam:every_k=2",
    "sam:every_k=5")
DEFAULT_TASKS = ("digits-mlp", "mnist1d-mlp", "mnist1d-cnn")
QUICK_METHODS = ("sgd", "sgd:budget=2", "forward:every_k=2")
REFERENCE = "sgd"
LEVEL = 0.05  # of the Holm-corrected tests


def _protocol_dict(protocol: harness.Protocol) -> dict[str, Any]:
  d = dataclasses.asdict(protocol)
  d["noise"] = list(d["noise"])
  return d


def _describe_device() -> str:
  d = jax.devices()[0]
  return f"{d.platform}: {d.device_kind} ({os.cpu_count()} CPU cores)"


def new_result(protocol: harness.Protocol) -> dict[str, Any]:
  return {"commands": [], "protocol": _protocol_dict(protocol),
          "search": {"learning_rates": harness.LEARNING_RATES,
                     "weight_decay": harness.WEIGHT_DECAY,
                     "method": {f"{m}:{n}": r for (m, n), r
                                in harness.SEARCH.items()}},
          "tasks": {}, "units": {}, "devices": [], "seeds_completed": 0,
          "summary": [], "chosen": {}, "versions": _report.versions()}


def run(tasks: Sequence[str], specs: Sequence[spec_lib.Spec],
        protocol: harness.Protocol, *, result: dict[str, Any] | None = None,
        command: str = "", out: str | None = None, timing: int = 15,
        verbose: bool = True, datasets: dict[str, Any] | None = None
        ) -> dict[str, Any]:
  """Trains every (task, spec) not yet in ``result``; returns the result.

  With ``out``, ``out.json`` and ``out.md`` are written after each (task,
  spec). Each task's specs are timed (:func:`harness.time_steps`) together
  with SGD, whose time is the unit of ``time_ratio``.
  """
  result = result or new_result(protocol)
  result["commands"].append(command)
  device = _describe_device()
  if device not in result["devices"]:
    result["devices"].append(device)
  t_start = time.perf_counter()
  for name in tasks:
    task = harness.TASKS[name]
    done = result["units"].setdefault(name, {})
    todo = [s for s in specs if s.text not in done]
    if not todo:
      continue
    dataset = (datasets or {}).get(name)
    p = harness.prepare(task, protocol, dataset)
    result["tasks"][name] = {
        "dataset": p.data.name, "model": repr(task.model(p.data.num_classes)
                                              ).split("(")[0],
        "sizes": {"train": p.num_train, "val": p.num_val,
                  "test": len(p.data.y_test)},
        "epochs": protocol.epochs or task.epochs,
        "batch_size": protocol.batch_size or task.batch_size}
    if verbose:
      print(f"{name}: timing {len(todo)} methods", file=sys.stderr,
            flush=True)
    timed = [spec_lib.parse(REFERENCE)] + [s for s in todo
                                          if s.text != REFERENCE]
    times = harness.time_steps(p, timed, protocol, rounds=timing)
    for s in todo:
      if verbose:
        print(f"  {name} {s.text}", file=sys.stderr, flush=True)
      unit = harness.run_method(p, s, protocol, verbose=verbose)
      unit["time_per_step_s"] = times[s.text]
      unit["time_ratio"] = times[s.text] / times[REFERENCE]
      unit["device"] = device
      done[s.text] = unit
      summarize(result)
      if out:
        save(out, result)
  result["wall_s"] = result.get("wall_s", 0.0) + time.perf_counter() - t_start
  summarize(result)
  if out:
    save(out, result)
  return result


def _matched(units: dict[str, Any], cost: float) -> str | None:
  """The SGD spec (any budget) whose cost is nearest ``cost`` (log scale)."""
  candidates = [(abs(math.log(u["budget"] / cost)), t)
                for t, u in units.items()
                if u["method"] == "sgd" and u["optimizer"] == "sgd"
                and not spec_lib.parse(t).fixed and u["every_k"] == 1]
  return min(candidates)[1] if candidates else None


def _cost(unit: dict[str, Any], base_epochs: int) -> tuple[float, float]:
  """Gradient evaluations and time per run, relative to a run of SGD."""
  runs = unit["epochs"] / base_epochs
  return unit["gradients_per_step"] * runs, unit["time_ratio"] * runs


def front(points: dict[str, tuple[float, float]]) -> list[str]:
  """The keys of ``(cost, accuracy)`` points that no other point dominates.

  >>> front({"a": (1, 0.9), "b": (2, 0.95), "c": (2, 0.9), "d": (3, 0.95)})
  ['a', 'b']
  """
  out = []
  for k, (c, a) in points.items():
    if not any((c2 <= c and a2 >= a and (c2 < c or a2 > a))
               for k2, (c2, a2) in points.items() if k2 != k):
      out.append(k)
  return out


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (task, noise rate, spec); sets ``result["summary"]``.

  Each row: the chosen configuration and grid, test accuracy over the final
  seeds (mean, sample std, the binomial standard error of the test set at
  that accuracy), costs, whether the spec is on the accuracy-cost front
  (gradients, time), and paired differences (:func:`stats.paired`) to tuned
  SGD (``vs_sgd``) and to the SGD of nearest cost (``vs_matched``), with
  Holm-adjusted p-values over each family of comparisons in the result.
  """
  rows = []
  for task, units in result["units"].items():
    info = result["tasks"][task]
    n_test = info["sizes"]["test"]
    for i, rate in enumerate(result["protocol"]["noise"]):
      cell = []
      for text, u in units.items():
        rec = u["per_noise"][i]
        grads, wall = _cost(u, info["epochs"])
        test = rec["test"]
        row = {"task": task, "noise": rate, "spec": text, "label": u["label"],
               "method": u["method"], "chosen": rec["chosen"],
               "searched": rec["searched"], "grid": rec["grid"],
               "at_edge": {k: v for k, v in rec["at_edge"].items() if v},
               "configurations": u["configurations"], "val": rec["val"],
               "seeds": len(test), "test": test,
               "test_mean": float(np.mean(test)), "test_std": stats.std(test),
               "test_binomial_se": stats.binomial_se(float(np.mean(test)),
                                                     n_test),
               "best_epoch_mean": float(np.mean(rec["best_epoch"])),
               "epochs": u["epochs"], "finite": rec["finite"],
               "gradients": grads, "time": wall,
               "gradients_per_step": u["gradients_per_step"],
               "time_ratio": u["time_ratio"]}
        cell.append(row)
      by_spec = {r["spec"]: r for r in cell}
      for kind in ("gradients", "time"):
        on = front({r["spec"]: (r[kind], r["test_mean"]) for r in cell})
        for r in cell:
          r[f"front_{kind}"] = r["spec"] in on
      for r in cell:
        ref = by_spec.get(REFERENCE)
        if ref is not None and r["spec"] != REFERENCE:
          r["vs_sgd"] = stats.paired(r["test"], ref["test"]).as_dict()
        matched = _matched(units, r["gradients"])
        # A method as cheap as SGD is compared with SGD once (vs_sgd).
        if (matched not in (None, REFERENCE)
            and units[r["spec"]]["method"] != "sgd"):
          r["matched"] = matched
          r["vs_matched"] = stats.paired(r["test"],
                                         by_spec[matched]["test"]).as_dict()
      rows += cell
  for key in ("vs_sgd", "vs_matched"):
    family = [r for r in rows if key in r]
    for r, p in zip(family, stats.holm([r[key]["p"] for r in family])):
      r[key]["p_holm"] = p
  result["summary"] = rows
  result["forward_vs"] = _forward_vs(rows)
  seeds = [len(rec["test"]) for units in result["units"].values()
           for u in units.values() for rec in u["per_noise"]]
  result["seeds_completed"] = min(seeds) if seeds else 0
  result["chosen"] = {
      f"{r['task']} | {r['noise']:g} | {r['spec']}": {
          "chosen": r["chosen"], "grid": r["grid"],
          "at_edge": r["at_edge"]} for r in rows}
  return rows


# The seed's claim: the forward difference generalizes better than the
# backward one and than the exact product (double backpropagation, jvp).
FORWARD_RIVALS = ("backward", "jvp", "double_backprop")


def _forward_vs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """F-GR against each of :data:`FORWARD_RIVALS` in every cell that has both,
  paired by seed, Holm-adjusted over these comparisons."""
  out = []
  for r in rows:
    if r["spec"] != "forward":
      continue
    for rival in rows:
      if (rival["spec"] in FORWARD_RIVALS and rival["task"] == r["task"]
          and rival["noise"] == r["noise"]):
        out.append({"task": r["task"], "noise": r["noise"],
                    "rival": rival["spec"], "label": rival["label"],
                    **stats.paired(r["test"], rival["test"]).as_dict()})
  for o, p in zip(out, stats.holm([o["p"] for o in out])):
    o["p_holm"] = p
  return out


def scoreboard(result: dict[str, Any]) -> str:
  """Per method, the cells where it differs from tuned and from
  compute-matched SGD after Holm's correction, and its median cost."""
  rows = result["summary"]
  cells = len({(r["task"], r["noise"]) for r in rows})
  lines = [f"Per method, over the {cells} (task, noise) cells: how often it "
           f"is better (+) or worse (-) than tuned SGD and than "
           f"compute-matched SGD (Holm at {LEVEL:g}), and its median cost "
           "per run relative to SGD.", "",
           "| method | cells | vs SGD: + / - | vs matched SGD: + / - "
           "| grads / run | time / run |", "|---|---|---|---|---|---|"]
  for spec in dict.fromkeys(r["spec"] for r in rows):
    mine = [r for r in rows if r["spec"] == spec]

    def count(key, sign):
      return sum(1 for r in mine if key in r and r[key]["p_holm"] is not None
                 and r[key]["p_holm"] < LEVEL and sign * r[key]["mean"] > 0)

    matched = any("vs_matched" in r for r in mine)
    lines.append(
        f"| {mine[0]['label']} | {len(mine)} | "
        + (f"{count('vs_sgd', 1)} / {count('vs_sgd', -1)}"
           if spec != REFERENCE else "-") + " | "
        + (f"{count('vs_matched', 1)} / {count('vs_matched', -1)}"
           if matched else "-")
        + f" | {np.median([r['gradients'] for r in mine]):.2f} | "
        f"{np.median([r['time'] for r in mine]):.2f} |")
  return "\n".join(lines)


def _fmt_hyper(chosen: dict[str, float], searched: Sequence[str]) -> str:
  return ", ".join(f"{k}={v:.2g}" + ("" if k in searched else " (fixed)")
                   for k, v in chosen.items())


def table(result: dict[str, Any]) -> str:
  """The summary as Markdown, one table per task and noise rate."""
  lines = []
  rows = result["summary"]
  for task, info in result["tasks"].items():
    for rate in result["protocol"]["noise"]:
      cell = [r for r in rows if r["task"] == task and r["noise"] == rate]
      if not cell:
        continue
      s = info["sizes"]
      lines += [
          f"**{task}, {100 * rate:g} % label noise** ({s['train']} train / "
          f"{s['val']} validation, noisy; {s['test']} test, clean; "
          f"{info['epochs']} epochs; {cell[0]['seeds']} fresh seeds)", "",
          "| method | chosen | at edge | val | test % (mean ± sd) "
          "| − SGD [95% CI] | Holm p | − matched SGD [95% CI] | Holm p "
          "| grads / run | time / run | front |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
      for r in cell:
        vs = r.get("vs_sgd")
        vm = r.get("vs_matched")
        fr = "/".join(k[0] for k in ("gradients", "time")
                      if r[f"front_{k}"]) or "-"
        lines.append(
            f"| {r['label']} | {_fmt_hyper(r['chosen'], r['searched'])} | "
            + (", ".join(f"{k} {v}" for k, v in r["at_edge"].items()) or "-")
            + f" | {100 * r['val']:.1f} | "
            + stats.mean_std_text(r["test"]) + " | "
            + (stats.Difference.from_dict(vs).text(100) if vs else "-")
            + " | "
            + (stats.text_or_na(vs.get("p_holm"), ".2g") if vs else "-")
            + " | "
            + (f"{stats.Difference.from_dict(vm).text(100)} ({r['matched']})"
               if vm else "-") + " | "
            + (stats.text_or_na(vm.get("p_holm"), ".2g") if vm else "-")
            + " | "
            + f"{r['gradients']:.2f} | {r['time']:.2f} | {fr} |")
      se = max(r["test_binomial_se"] for r in cell)
      lines += ["", f"Test-set sampling error (binomial SE at these "
                f"accuracies): at most {100 * se:.2f} points per run.", ""]
  return "\n".join(lines).rstrip()


def findings(result: dict[str, Any]) -> str:
  """The differences to SGD that survive Holm's correction at 5 %."""
  out = []
  for key, what in (("vs_sgd", "tuned SGD"),
                    ("vs_matched", "compute-matched SGD")):
    sig = [r for r in result["summary"]
           if key in r and r[key].get("p_holm") is not None
           and r[key]["p_holm"] < LEVEL]
    n = sum(1 for r in result["summary"] if key in r)
    out.append(f"Against {what} ({n} comparisons, Holm at {LEVEL:g}): "
               + ("none significant." if not sig else "; ".join(
                   f"{r['task']} {100 * r['noise']:g} % {r['label']} "
                   f"{stats.Difference.from_dict(r[key]).text(100)} points, "
                   f"p_holm {r[key]['p_holm']:.2g}" for r in sig) + "."))
  claim = result.get("forward_vs", [])
  if claim:
    out.append(
        f"F-GR against B-GR and exact GR, paired by seed ({len(claim)} "
        f"comparisons, Holm at {LEVEL:g}): " + "; ".join(
            f"{c['task']} {100 * c['noise']:g} % − {c['label']} "
            f"{stats.Difference.from_dict(c).text(100)}"
            + (f" (p_holm {c['p_holm']:.2g})" if c["p_holm"] is not None
               and c["p_holm"] < LEVEL else "") for c in claim) + ".")
  return "\n".join(out)


def report(result: dict[str, Any]) -> str:
  p = result["protocol"]
  units = sum(len(u) for u in result["units"].values())
  return (
      f"Protocol: every method gets {p['configs'] * p['rounds']} "
      f"configurations ({p['rounds']} rounds of {p['configs']}, Latin "
      f"hypercube on a log scale, later rounds centred on the best) over lr, "
      f"wd and its searched hyperparameters, scored by validation accuracy "
      f"(noisy labels), "
      + (f"mean of {p['tuning_seeds']} tuning seeds" if p["tuning_seeds"] > 1
         else "one tuning seed")
      + "; early stopping on validation accuracy for all; final runs on "
      f"{p['seeds']} fresh seeds (seeds {harness.FINAL_SEED}...); paired "
      f"differences per seed with 95 % t intervals ('n/a' with one seed) "
      f"and Holm's correction; grads / run and time / run relative to one "
      f"run of tuned SGD (time: median step time measured beside SGD's, "
      f"compilation excluded). Front: on the accuracy-cost front by "
      f"g(radients) and/or t(ime). seeds completed: "
      f"{result['seeds_completed']}; (task, method) units: {units}; "
      f"devices: {'; '.join(result['devices'])}; wall "
      f"{result.get('wall_s', 0):.0f} s.\n\n" + table(result) + "\n\n"
      + scoreboard(result) + "\n\n" + findings(result))


def compact(result: dict[str, Any]) -> dict[str, Any]:
  """``result`` without what a merge does not need: each unit's search
  record (``tried``) and last-epoch accuracies, the summary rows' per-seed
  accuracies and chosen configurations (in ``units`` and ``chosen``), with
  numbers to 6 significant digits. ``--merge`` of it gives the same report.
  """
  out = _report.rounded(result, 6)
  for units in out["units"].values():
    for u in units.values():
      for rec in u["per_noise"]:
        rec.pop("tried", None)
        rec.pop("test_last", None)
  for row in out["summary"]:
    for key in ("test", "chosen", "grid", "at_edge"):
      row.pop(key, None)
  return out


def save(out: str, result: dict[str, Any], *, small: bool = False) -> None:
  """Writes ``out.json`` and ``out.md`` (atomically: a stop leaves either);
  ``small``: the JSON :func:`compact` and without indentation."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  data = (json.dumps(compact(result), separators=(",", ":")) if small
          else json.dumps(result, indent=1))
  for ext, text in ((".json", data),
                    (".md", "Commands:\n\n" + "\n".join(
                        f"    {c}" for c in result["commands"]) + "\n\n"
                     + report(result) + "\n")):
    tmp = f"{out}{ext}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, out + ext)


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Combines studies of one protocol run in parts; later parts win."""
  out = json.loads(json.dumps(results[0]))
  for r in results[1:]:
    if r["protocol"] != out["protocol"]:
      raise ValueError(f"protocols differ: {r['protocol']} and "
                       f"{out['protocol']}")
    out["commands"] += [c for c in r["commands"] if c not in out["commands"]]
    out["devices"] += [d for d in r["devices"] if d not in out["devices"]]
    out["tasks"].update(r["tasks"])
    for task, units in r["units"].items():
      out["units"].setdefault(task, {}).update(units)
    out["wall_s"] = out.get("wall_s", 0.0) + r.get("wall_s", 0.0)
  summarize(out)
  return out


def plot(result: dict[str, Any], path: str) -> None:
  """Test accuracy against gradients and time per run, per task and noise."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  tasks = list(result["tasks"])
  noise = result["protocol"]["noise"]
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(len(tasks), 2 * len(noise), squeeze=False,
                           figsize=(max(3.3 * 2 * len(noise), 9),
                                    3.0 * len(tasks) + 1))
  specs = list(dict.fromkeys(r["spec"] for r in result["summary"]))
  markers = "osD^v<>pPX*hH8d"
  for ti, task in enumerate(tasks):
    for ni, rate in enumerate(noise):
      cell = [r for r in result["summary"] if r["task"] == task
              and r["noise"] == rate]
      for ki, kind in enumerate(("gradients", "time")):
        ax = axes[ti, 2 * ni + ki]
        for r in cell:
          j = specs.index(r["spec"])
          ax.errorbar(r[kind], 100 * r["test_mean"],
                      yerr=100 * (r["test_std"] or 0), fmt=markers[j % 15],
                      color=f"C{j % 10}", ms=5, capsize=2,
                      label=r["label"] if ti == ni == ki == 0 else None)
        on = sorted((r[kind], 100 * r["test_mean"]) for r in cell
                    if r[f"front_{kind}"])
        if on:
          ax.plot(*zip(*on), "k--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.set(title=f"{task}, {100 * rate:g} % noise", xlabel=(
            "gradient evaluations / SGD run" if kind == "gradients"
            else "wall time / SGD run"),
               ylabel="test accuracy (%)" if ki == ni == 0 else None)
  fig.legend(loc="lower center", ncol=min(len(specs), 5), fontsize=7)
  fig.tight_layout(rect=(0, 0.04 + 0.04 * math.ceil(len(specs) / 5)
                         / len(tasks), 1, 1))
  _report.save_figure(fig, path)


def _check_writable(parser: Any, flag: str, path: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    parser.error(f"argument {flag}: cannot create {folder!r}: {e.strerror}")
  if not os.access(folder, os.W_OK):
    parser.error(f"argument {flag}: {folder!r} is not writable")


def _rate(text: str) -> float:
  value = float(text)
  if not 0.0 <= value < 1.0:
    raise ValueError(text)
  return value


_rate.__name__ = "rate in [0, 1)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs (or merges) the study from the command line; returns the result."""
  d = harness.Protocol()
  parser = _cli.parser(MODULE, __doc__.split("\n")[0])
  parser.add_argument("--tasks", nargs="+", choices=tuple(harness.TASKS),
                      default=DEFAULT_TASKS, help="dataset-model pairs")
  parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                      metavar="SPEC", help="name[:key=value,...] (see "
                      "gradreg_optax.experiments.spec); sgd is the reference")
  parser.add_argument("--noise", type=_rate, nargs="+", default=d.noise,
                      help="label noise rates")
  parser.add_argument("--seeds", type=_cli.POSITIVE_INT, default=d.seeds,
                      help="final runs (fresh seeds)")
  parser.add_argument("--tuning-seeds", type=_cli.POSITIVE_INT,
                      default=d.tuning_seeds, help="seeds per configuration")
  parser.add_argument("--configs", type=_cli.number(int, 2),
                      default=d.configs, help="configurations per round")
  parser.add_argument("--rounds", type=_cli.POSITIVE_INT, default=d.rounds,
                      help="search rounds")
  parser.add_argument("--epochs", type=_cli.POSITIVE_INT, default=None,
                      help="epochs (default: the task's)")
  parser.add_argument("--timing", type=_cli.POSITIVE_INT, default=15,
                      help="rounds of step timing")
  parser.add_argument("--quick", action="store_true",
                      help="a small smoke run (digits-mlp, 3 epochs, 2 "
                      "seeds, 2 x 2 configurations, 40 %% noise, "
                      + " ".join(QUICK_METHODS) + ")")
  parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                      help="combine these result files (same protocol) "
                      "instead of training, into a compact OUT.json (no "
                      "search records)")
  parser.add_argument("--out", default=None, help="write OUT.json and OUT.md "
                      "(resuming from OUT.json if it exists)")
  parser.add_argument("--figure", default=None, help="write this PNG")
  parser.add_argument("--quiet", action="store_true",
                      help="print only the result")
  args = parser.parse_args(argv)
  given = set(sys.argv[1:] if argv is None else argv)
  if args.quick:
    for flag, value in (("tasks", ("digits-mlp",)), ("methods", QUICK_METHODS),
                        ("noise", (0.4,)), ("seeds", 2), ("tuning_seeds", 1),
                        ("configs", 2), ("epochs", 3), ("timing", 3)):
      if "--" + flag.replace("_", "-") not in given:
        setattr(args, flag, value)
  specs = []
  for text in dict.fromkeys(args.methods):
    try:
      specs.append(spec_lib.parse(text))
    except ValueError as e:
      parser.error(f"argument --methods: {e}")
    try:
      space = harness.search_space(specs[-1])
      hyper = {k: v for k, v in space.fixed.items()
               if k in specs[-1].registry.hyperparameters}
      specs[-1].registry(lambda p, b: 0.0, **hyper)
    except (TypeError, ValueError) as e:
      parser.error(f"argument --methods: {text}: {e}")
  if REFERENCE not in [s.text for s in specs] and not args.merge:
    _cli.warn(f"{REFERENCE!r} is not among --methods: the paired "
              "comparisons need a study that has it (--out of one that "
              "does, or --merge with one)")
  for flag, path in (("--out", args.out and args.out + ".json"),
                     ("--figure", args.figure)):
    if path:
      _check_writable(parser, flag, path)
  command = _report.command_line(MODULE, argv)
  if args.merge:
    try:
      parts = []
      for path in args.merge:
        with open(path) as f:
          parts.append(json.load(f))
      result = merge(parts)
    except (OSError, ValueError, KeyError) as e:
      parser.error(f"argument --merge: {e}")
    result["commands"].append(command)
    if args.out:
      save(args.out, result, small=True)
  else:
    protocol = harness.Protocol(
        noise=tuple(args.noise), seeds=args.seeds,
        tuning_seeds=args.tuning_seeds, configs=args.configs,
        rounds=args.rounds, epochs=args.epochs)
    result = None
    if args.out and os.path.exists(args.out + ".json"):
      with open(args.out + ".json") as f:
        result = json.load(f)
      if result.get("protocol") != _protocol_dict(protocol):
        parser.error(f"argument --out: {args.out}.json holds a study with "
                     "another protocol; choose another --out")
    try:
      for t in args.tasks:  # load (or generate) the data before training
        harness.TASKS[t].load()
    except (OSError, ValueError) as e:
      parser.error(f"argument --tasks: {e}")
    with jax.default_matmul_precision("highest"):
      result = run(args.tasks, specs, protocol, result=result,
                   command=command, out=args.out, timing=args.timing,
                   verbose=not args.quiet)
  text = report(result)
  print(text)
  if args.figure:
    plot(result, args.figure)
  return result


if __name__ == "__main__":
  main()
