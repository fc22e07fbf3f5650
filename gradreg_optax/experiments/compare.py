"""Compare every method on one task: test accuracy over seeds and step cost.

``python -m gradreg_optax.experiments.compare`` trains an MLP on
scikit-learn's digits (real data, bundled, no download) with each method and
several seeds, and prints one row per method: test accuracy (mean and
standard deviation over seeds) and the cost of a training step relative to
SGD, both measured (median wall-clock time per jitted step, compilation
excluded, all methods timed in turns in the same process) and counted (matrix
products in the compiled step, which does not depend on the machine).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import spec as spec_lib
from gradreg_optax.experiments import stats
from gradreg_optax.experiments import train as train_lib

# Method specs ``name[:option=value,...]``; the hyperparameters are the
# registry's defaults (the seeds' recommendations), not tuned on this task.
DEFAULT_METHODS = ("sgd", "forward", "backward", "central", "double_backprop",
                   "jvp", "forward:every_k=4", "sam", "asam",
                   "gradient_norm_penalty", "flooding")

Entry = tuple[str, str, dict[str, Any]]  # (label, method, Config overrides)


def parse_spec(spec: str) -> Entry:
  """``"sam:rho=0.1,every_k=2"`` -> ``(spec, "sam", {"rho": 0.1, ...})``.

  The grammar of :mod:`~gradreg_optax.experiments.spec`, with fixed values
  only (this comparison does not tune); the overrides are
  :class:`~gradreg_optax.experiments.train.Config` fields.

  Raises:
    ValueError: naming what is wrong with ``spec``.
  """
  parsed = spec_lib.parse(spec)
  if parsed.ranges or parsed.budget != 1 or parsed.optimizer != "sgd" or (
      set(parsed.fixed) & set(spec_lib.BASE)):
    raise ValueError(f"expected name=value with a hyperparameter or every_k "
                     f"in {spec!r} (no ranges, budget, opt, lr or wd here)")
  fields = {f.name for f in dataclasses.fields(train_lib.Config)}
  overrides: dict[str, Any] = {}
  for name, value in parsed.fixed.items():
    field = name if name in fields else train_lib.HYPERPARAMETER_FIELDS[name]
    overrides[field] = value
  if parsed.every_k != 1:
    overrides["every_k"] = parsed.every_k
  return spec, parsed.method, overrides


def _hyperparameters(config: train_lib.Config) -> str:
  return ", ".join(f"{k}={v:g}"
                   for k, v in train_lib.hyperparameters(config).items())


def time_steps(base: train_lib.Config,
               entries: Sequence[Entry], dataset: Any, rounds: int = 15,
               steps: int = 12, verbose: bool = False) -> dict[str, float]:
  """Median seconds per jitted training step of each entry.

  Each entry's step is compiled and run once first (excluded); then the
  entries take turns, ``steps`` consecutive steps each, for ``rounds``
  rounds, so that a change in the machine's load affects all of them alike.
  A round's time is divided by ``steps`` (a multiple of ``every_k`` gives
  amortized methods their average cost); the median is over rounds.
  """
  prepared = {}
  for label, method, overrides in entries:
    config = dataclasses.replace(base, method=method, **overrides)
    s = train_lib.setup(config, dataset)
    x, y = dataset.x_train[:s.batch_size], dataset.y_train[:s.batch_size]
    step, _ = train_lib.compile_step(s, config.every_k, x, y)
    state = jax.block_until_ready(step(s.state, x, y, s.aug_key, 0)[0])
    prepared[label] = [step, state, x, y, s.aug_key]
    if verbose:
      print(f"  compiled {label}", file=sys.stderr, flush=True)
  times = {label: [] for label in prepared}
  for r in range(rounds):
    if verbose:
      print(f"  timing round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    for label, item in prepared.items():
      step, state, x, y, key = item
      t0 = time.perf_counter()
      for i in range(steps):
        state = step(state, x, y, key, i)[0]
      jax.block_until_ready(state)
      times[label].append((time.perf_counter() - t0) / steps)
      item[1] = state
  return {label: float(np.median(t)) for label, t in times.items()}


def compare(base: train_lib.Config, seeds: Sequence[int],
            entries: Sequence[Entry] | None = None,
            dataset: Any = None, verbose: bool = False,
            timing: tuple[int, int] = (15, 12)) -> dict[str, Any]:
  """Runs every entry for every seed; returns per-run and summary results.

  Args:
    base: the shared configuration (data, model, optimizer, epochs).
    seeds: one run per seed and entry.
    entries: ``(label, method, config overrides)`` triples (default: those
      of :data:`DEFAULT_METHODS`); the first one is the reference for the
      relative step costs and the paired accuracy differences.
    dataset: a loaded :class:`~gradreg_optax.experiments.data.Dataset` to use
      instead of loading ``base.dataset``.
    verbose: print the progress of every phase (to stderr).
    timing: ``(rounds, steps)`` of :func:`time_steps`.

  Returns:
    A dict with ``rows`` (one summary per entry) and ``runs``.
  """
  if entries is None:
    entries = [parse_spec(s) for s in DEFAULT_METHODS]
  data = dataset if dataset is not None else train_lib.load_data(base)
  runs, rows = [], []
  total = len(entries) * len(seeds)
  for label, method, overrides in entries:
    config = dataclasses.replace(base, method=method, **overrides)
    accs, times, matmuls = [], [], None
    for seed in seeds:
      t0 = time.perf_counter()
      result = train_lib.train(dataclasses.replace(config, seed=seed), data)
      elapsed = time.perf_counter() - t0
      accs.append(result["final_test_accuracy"])
      times.append(result["step_time_median_s"])
      matmuls = result["step_matmuls"]
      runs.append({"label": label, "seed": seed,
                   "final_test_accuracy": result["final_test_accuracy"],
                   "step_time_median_s": result["step_time_median_s"],
                   "step_matmuls": matmuls, "wall_s": elapsed,
                   "history": result["history"]})
      if verbose:
        print(f"  [{len(runs)}/{total}] {label} seed {seed}: test accuracy "
              f"{result['final_test_accuracy']:.4f} ({elapsed:.1f} s)",
              file=sys.stderr, flush=True)
    rows.append({"label": label, "method": method,
                 "hyperparameters": _hyperparameters(config),
                 "test_accuracy_mean": float(np.mean(accs)),
                 "test_accuracy_std": stats.std(accs),
                 "test_accuracies": accs,
                 "step_time_median_s": float(np.median(times)),
                 "step_matmuls": matmuls})
  if verbose:
    print(f"timing every method's step: {timing[0]} rounds of {timing[1]} "
          "steps each, in turns", file=sys.stderr, flush=True)
  step_times = time_steps(base, entries, data, *timing, verbose=verbose)
  for row in rows:
    row["step_time_median_s"] = step_times[row["label"]]
  ref = rows[0]
  for row in rows:
    d = stats.paired(row["test_accuracies"], ref["test_accuracies"])
    row["paired_difference"] = d.as_dict()
    row["paired_difference_mean"] = d.mean
    row["paired_difference_std"] = d.std
  batch_size = min(base.batch_size, len(data.x_train))
  for row in rows:
    row["time_ratio"] = row["step_time_median_s"] / ref["step_time_median_s"]
    row["images_per_s"] = batch_size / row["step_time_median_s"]
    row["matmul_ratio"] = (row["step_matmuls"] / ref["step_matmuls"]
                           if row["step_matmuls"] and ref["step_matmuls"]
                           else None)
  return {"dataset": data.name, "real_data": data.name != "synthetic",
          "seeds": list(seeds), "config": dataclasses.asdict(base),
          "rows": rows, "runs": runs}


def table(summary: dict[str, Any]) -> str:
  """The summary as a Markdown table."""
  n = len(summary["seeds"])
  lines = [
      f"| method | hyperparameters | test accuracy (mean ± std, {n} seeds) "
      "| step time / SGD | images/s | matmuls / SGD |",
      "|---|---|---|---|---|---|",
  ]
  for row in summary["rows"]:
    matmul = (f"{row['matmul_ratio']:.2f} ({row['step_matmuls']})"
              if row["matmul_ratio"] is not None else "n/a")
    lines.append(
        f"| {row['label']} | {row['hyperparameters'] or '-'} | "
        f"{stats.mean_std_text(row['test_accuracies'])} % | "
        f"{row['time_ratio']:.2f} | {row['images_per_s']:.0f} | {matmul} |")
  return "\n".join(lines)


def conclusion(summary: dict[str, Any]) -> str:
  """One sentence on what the table shows about accuracy.

  A method differs from the reference (the first row) when the mean of its
  per-seed paired differences exceeds their standard deviation.
  """
  ref, rows = summary["rows"][0], summary["rows"][1:]
  n = len(summary["seeds"])
  if n < 2:
    return ("With one seed the table cannot separate the methods' accuracy "
            "from seed noise; run --seeds 3 or more.")
  out = [r for r in rows if abs(r["paired_difference_mean"])
         > r["paired_difference_std"]]
  head = (f"Against {ref['label']} ({100 * ref['test_accuracy_mean']:.2f} ± "
          f"{100 * (ref['test_accuracy_std'] or 0):.2f} %, {n} seeds, paired "
          "by seed): ")
  if not out:
    return head + ("every method is within the seed spread, so this table "
                   "shows no difference in accuracy between them; only "
                   "their costs differ.")
  named = ", ".join(f"{r['label']} ({100 * r['paired_difference_mean']:+.2f}"
                    f" ± {100 * r['paired_difference_std']:.2f})" for r in out)
  rest = len(rows) - len(out)
  verb = "differs" if len(out) == 1 else "differ"
  return (head + f"{named} {verb} by more than the spread of the paired "
          f"differences (points); the other {rest} "
          f"{'method is' if rest == 1 else 'methods are'} within it "
          f"({n} seeds make this a hint, not a finding).")


def plot(summary: dict[str, Any], path: str) -> None:
  """Bar chart of test accuracy and step cost per method."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  rows = summary["rows"]
  labels = [r["label"] for r in rows]
  y = np.arange(len(rows))
  fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.5),
                           sharey=True)
  spread = [100 * (r["test_accuracy_std"] or 0) for r in rows]
  axes[0].barh(y, [100 * r["test_accuracy_mean"] for r in rows], xerr=spread,
               color="C0")
  lo = min(100 * r["test_accuracy_mean"] - s for r, s in zip(rows, spread))
  axes[0].set(xlabel="test accuracy (%)", xlim=(max(lo - 1, 0), 100))
  axes[1].barh(y - 0.2, [r["time_ratio"] for r in rows], 0.4,
               label="wall-clock", color="C1")
  axes[1].barh(y + 0.2, [r["matmul_ratio"] or 0 for r in rows], 0.4,
               label="matmul count", color="C2")
  axes[1].set(xlabel="step cost relative to SGD")
  axes[1].legend(loc="lower right")
  axes[0].set_yticks(y, labels)
  axes[0].invert_yaxis()
  fig.suptitle(f"{summary['dataset']} ({summary['config']['model']}), "
               f"{len(summary['seeds'])} seeds, "
               f"{_cli.plural(summary['config']['epochs'], 'epoch')}")
  fig.tight_layout()
  _report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = _cli.parser("gradreg_optax.experiments.compare",
                       __doc__.split("\n")[0])
  parser.add_argument("--seeds", type=_cli.POSITIVE_INT, default=3,
                      help="number of seeds (0, 1, ...)")
  parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                      metavar="SPEC",
                      help="methods as name[:option=value,...], e.g. sgd "
                      "sam:rho=0.1 forward:every_k=4; the first is the "
                      "reference (default: " + " ".join(DEFAULT_METHODS) + ")")
  parser.add_argument("--out", default=None,
                      help="write OUT.json and OUT.md")
  parser.add_argument("--figure", default=None, help="write this PNG")
  parser.add_argument("--timing", type=_cli.POSITIVE_INT, nargs=2,
                      default=(15, 12), metavar=("ROUNDS", "STEPS"),
                      help="step timing: ROUNDS turns of STEPS steps per "
                      "method (STEPS a multiple of every_k)")
  train_lib.add_config_arguments(parser, skip=(
      "method", "seed", "out_dir", *train_lib.HYPERPARAMETER_FIELDS.values(),
      "every_k"))
  parser.set_defaults(epochs=20)
  args = parser.parse_args(argv)
  base = train_lib.config_from_args(parser, args, quiet=True)
  entries = []
  for spec in args.methods:
    try:
      entries.append(parse_spec(spec))
    except ValueError as e:
      parser.error(f"argument --methods: {e}")
    label, method, overrides = entries[-1]
    train_lib.check(parser, dataclasses.replace(base, method=method,
                                                **overrides),
                    prefix=f"--methods {label}: ")
  data = train_lib.load_data_or_exit(parser, base)
  verbose = not args.quiet
  if verbose:
    print(f"comparing {len(entries)} methods x {args.seeds} seeds = "
          f"{len(entries) * args.seeds} runs of "
          f"{_cli.plural(base.epochs, 'epoch')} "
          f"({base.model} on {data.name}), then timing every method's step",
          file=sys.stderr, flush=True)

  t0 = time.perf_counter()
  summary = compare(base, list(range(args.seeds)), entries, data,
                    verbose=verbose, timing=tuple(args.timing))
  summary["wall_s"] = time.perf_counter() - t0
  summary["command"] = _report.command_line(
      "gradreg_optax.experiments.compare", argv)
  summary["conclusion"] = conclusion(summary)
  kind = "real data" if summary["real_data"] else "SYNTHETIC data"
  text = (f"{summary['dataset']} ({kind}), model {base.model}, "
          f"{_cli.plural(base.epochs, 'epoch')}, batch {base.batch_size}, "
          "SGD momentum "
          f"{base.momentum}, {base.schedule} lr from {base.learning_rate}, "
          f"weight decay {base.weight_decay}\n\n" + table(summary)
          + f"\n\nstep time: median wall clock per jitted step on "
          f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores), "
          f"compilation excluded, methods timed in turns; matmuls: matrix "
          f"products in the compiled step; total {summary['wall_s']:.0f} s"
          f"\n\n{summary['conclusion']}")
  _report.publish(summary, text, args.out, args.figure, plot)
  return summary


if __name__ == "__main__":
  main()
