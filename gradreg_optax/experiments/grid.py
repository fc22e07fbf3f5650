"""Grid search over (eps, gamma) for finite-difference GR, over several seeds.

``python -m gradreg_optax.experiments.grid`` trains one model per
``(gamma, eps, seed)`` on Karakida et al.'s grid (gamma in {0, 1e-4, 1e-3,
1e-2, 1e-1}, eps in {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}; SGD with momentum 0.9,
a cosine schedule from 0.1, batch 128, weight decay 1e-4), then draws a
heatmap of the mean test accuracy and prints a table of mean and standard
deviation over seeds. ``gamma = 0`` is plain SGD (one run, reused for every
``eps``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Sequence

import numpy as np

from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import stats
from gradreg_optax.experiments import train as train_lib

GAMMAS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def grid_search(base: train_lib.Config, gammas: Sequence[float],
                epsilons: Sequence[float], seeds: Sequence[int],
                dataset: Any = None, verbose: bool = False
                ) -> dict[str, Any]:
  """Final test accuracy for every ``(gamma, eps, seed)``.

  Returns:
    A dict with ``accuracy`` of shape ``(len(gammas), len(epsilons),
    len(seeds))`` (nested lists; None where training diverged), its ``mean``
    and sample ``std`` over the seeds that did not diverge (None where none
    did, or, for ``std``, fewer than two), and the grid.
  """
  data = dataset if dataset is not None else train_lib.load_data(base)
  acc = np.full((len(gammas), len(epsilons), len(seeds)), np.nan)
  for i, gamma in enumerate(gammas):
    for j, eps in enumerate(epsilons):
      for k, seed in enumerate(seeds):
        if gamma == 0 and j > 0:  # eps is irrelevant without GR
          acc[i, j, k] = acc[i, 0, k]
          continue
        config = dataclasses.replace(base, gamma=gamma, eps=eps, seed=seed)
        result = train_lib.train(config, data)
        loss = result["history"]["train_loss"]
        ok = bool(loss) and np.isfinite(loss[-1])
        acc[i, j, k] = result["final_test_accuracy"] if ok else np.nan
        if verbose:
          print(f"  gamma={gamma:g} eps={eps:g} seed={seed}: "
                f"{acc[i, j, k]:.4f}", file=sys.stderr, flush=True)
  # Over the seeds that did not diverge; the spread is stats.std's (ddof=1,
  # None for fewer than two seeds).
  finite = lambda v: v[np.isfinite(v)]
  mean = np.array([[finite(v).mean() if finite(v).size else np.nan
                    for v in row] for row in acc])
  std = np.array([[np.nan if stats.std(finite(v)) is None
                   else stats.std(finite(v)) for v in row] for row in acc])
  tolist = lambda a: [[None if not np.isfinite(v) else float(v) for v in row]
                      for row in a]
  return {"dataset": data.name, "real_data": data.name != "synthetic",
          "method": base.method, "gammas": list(gammas),
          "epsilons": list(epsilons), "seeds": list(seeds),
          "accuracy": [tolist(a) for a in acc], "mean": tolist(mean),
          "std": tolist(std), "config": dataclasses.asdict(base)}


def table(result: dict[str, Any]) -> str:
  """Mean ± std of the test accuracy (%) as a Markdown table."""
  head = "| gamma \\ eps | " + " | ".join(f"{e:g}" for e in result["epsilons"])
  lines = [head + " |", "|---" * (len(result["epsilons"]) + 1) + "|"]
  for gamma, means, stds in zip(result["gammas"], result["mean"],
                                result["std"]):
    cells = ["diverged" if m is None else f"{100 * m:.2f} ± "
             + ("n/a" if s is None else f"{100 * s:.2f}")
             for m, s in zip(means, stds)]
    lines.append(f"| {gamma:g} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def heatmap(result: dict[str, Any], path: str) -> None:
  """Heatmap of the mean test accuracy over the grid."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  mean = np.array([[np.nan if v is None else 100 * v for v in row]
                   for row in result["mean"]])
  fig, ax = plt.subplots(figsize=(1.1 * len(result["epsilons"]) + 2,
                                  0.6 * len(result["gammas"]) + 1.5))
  im = ax.imshow(mean, cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(result["epsilons"])),
                [f"{e:g}" for e in result["epsilons"]])
  ax.set_yticks(range(len(result["gammas"])),
                [f"{g:g}" for g in result["gammas"]])
  ax.set(xlabel="eps", ylabel="gamma")
  for i in range(mean.shape[0]):
    for j in range(mean.shape[1]):
      ax.text(j, i, "div." if np.isnan(mean[i, j]) else f"{mean[i, j]:.1f}",
              ha="center", va="center", color="w", fontsize=8)
  fig.colorbar(im, label="test accuracy (%)")
  ax.set_title(f"{result['method']} on {result['dataset']}, mean of "
               f"{len(result['seeds'])} seeds")
  fig.tight_layout()
  _report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = _cli.parser("gradreg_optax.experiments.grid",
                       __doc__.split("\n")[0])
  parser.add_argument("--gammas", type=_cli.NONNEGATIVE, nargs="+",
                      default=GAMMAS, help="GR strengths")
  parser.add_argument("--epsilons", type=_cli.POSITIVE, nargs="+",
                      default=EPSILONS, help="finite-difference steps")
  parser.add_argument("--seeds", type=_cli.POSITIVE_INT, default=3,
                      help="number of seeds (0, 1, ...)")
  parser.add_argument("--out", default=None, help="write OUT.json, OUT.md")
  parser.add_argument("--figure", default=None, help="write the heatmap PNG")
  train_lib.add_config_arguments(
      parser, skip=("gamma", "eps", "seed", "out_dir", "rho", "adaptive_eta",
                    "alpha", "r", "flood"))
  parser.set_defaults(method="forward", epochs=20)
  args = parser.parse_args(argv)
  if args.method not in ("forward", "backward", "central"):
    parser.error("argument --method: the (eps, gamma) grid is for forward, "
                 f"backward or central, got {args.method!r}")
  base = train_lib.config_from_args(parser, args, quiet=True)
  data = train_lib.load_data_or_exit(parser, base)
  if not args.quiet:
    print(f"grid: {len(args.gammas)} gammas x {len(args.epsilons)} epsilons "
          f"x {args.seeds} seeds of {base.method} ({base.model} on "
          f"{data.name}, {base.epochs} epochs)", file=sys.stderr, flush=True)
  t0 = time.perf_counter()
  result = grid_search(base, args.gammas, args.epsilons,
                       list(range(args.seeds)), data, verbose=not args.quiet)
  result["wall_s"] = time.perf_counter() - t0
  result["command"] = _report.command_line("gradreg_optax.experiments.grid",
                                           argv)
  kind = "real data" if result["real_data"] else "SYNTHETIC data"
  text = (f"{result['method']} on {result['dataset']} ({kind}), model "
          f"{base.model}, {base.epochs} epochs; test accuracy (%), mean ± std "
          f"(ddof=1) over {args.seeds} seeds\n\n" + table(result))
  _report.publish(result, text, args.out, args.figure, heatmap)
  return result


if __name__ == "__main__":
  main()
