"""Noisy labels on digits: every method against SGD, tuned on validation data.

``python -m gradreg_optax.experiments.label_noise`` trains a small CNN and an
MLP on scikit-learn's handwritten digits (real data, bundled, no download)
whose training labels were corrupted by symmetric noise, with SGD, F-GR,
B-GR, GR by jvp, SAM, the gradient-norm penalty and flooding
(``gro.METHODS``), and prints the clean test accuracy of each method at the
hyperparameter chosen on a noisy validation split, with a paired comparison
against SGD.

Its protocol tunes each method's own hyperparameter only, with SGD's
learning rate fixed and no early stopping; the comparison that gives every
method, SGD and AdamW included, the same tuning budget and early stopping is
:mod:`~gradreg_optax.experiments.benchmark`.

Protocol, per seed ``s`` (the same for every method, so that differences are
paired):

* the test set is :func:`~gradreg_optax.experiments.data.load_digits`'s
  (359 images, clean labels, the same for every seed);
* its 1438 training images are split at random (seed ``s``) into a training
  part and a validation part (``--val-fraction``, 20 %: 1150 and 288);
* training and validation labels are corrupted by
  :func:`symmetric_label_noise` with rate ``p`` (the validation data is noisy,
  as a practitioner's would be); the draws are nested, so the examples
  corrupted at ``p = 0.2`` are among those corrupted at ``p = 0.4``;
* initialization and batch order depend on ``s`` only.

Every method shares the base optimizer (SGD with momentum, a cosine schedule,
the same learning rate and epochs, no weight decay) and differs only in its
transformation or loss. Each method's main hyperparameter takes the values of
its grid (:data:`GRIDS`); the value with the highest validation accuracy, mean
over seeds, is chosen per model and noise rate, and the test accuracy is
reported at that value. The training loop is one compiled ``lax.scan`` per
model and method, ``vmap``-ed over noise rates and grid values.

Example (the smallest run; the full study is the default)::

  python -m gradreg_optax.experiments.label_noise --seeds 1 --epochs 1 \\
      --models mlp --methods sgd sam --noise 0.4 --out /tmp/ln
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradreg_optax as gro
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import data as data_lib
from gradreg_optax.experiments import harness
from gradreg_optax.experiments import models
from gradreg_optax.experiments import spec as spec_lib
from gradreg_optax.experiments import stats
from gradreg_optax.experiments.harness import split, symmetric_label_noise

MODULE = "gradreg_optax.experiments.label_noise"

# Method -> (the hyperparameter searched, its values). The other
# hyperparameters keep their registry defaults (eps = 0.1 for F-GR and B-GR,
# alpha = 0.8 for the norm penalty). The grids bracket the seeds' recommended
# values (gamma = 0.05, rho = 0.05, r = 0.05 to 0.1) and, for flooding, the
# loss levels of noisy data: the cross-entropy of the noisy-label distribution
# itself is 0.94 nats at p = 0.2 and 1.55 at p = 0.4.
GRIDS: dict[str, tuple[str | None, tuple[float, ...]]] = {
    "sgd": (None, ()),
    "forward": ("gamma", (0.01, 0.03, 0.1)),
    "backward": ("gamma", (0.01, 0.03, 0.1)),
    "jvp": ("gamma", (0.01, 0.03, 0.1)),
    "sam": ("rho", (0.05, 0.1, 0.2)),
    "gradient_norm_penalty": ("r", (0.05, 0.1, 0.2)),
    "flooding": ("b", (0.1, 0.4, 1.0)),
}
MODELS = ("cnn", "mlp")


class NoisyDigits(NamedTuple):
  """One seed's data: noisy training and validation labels, clean test."""
  train_idx: np.ndarray  # into the pool (load_digits()'s training images)
  val_idx: np.ndarray
  labels: np.ndarray     # (noise rates, pool size): the pool's noisy labels
  x_pool: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray     # clean


def noisy_digits(data: data_lib.Dataset, noise: Sequence[float], seed: int,
                 val_fraction: float) -> NoisyDigits:
  """Splits ``data``'s training part and corrupts its labels, per rate.

  Training and validation labels are corrupted alike (a practitioner's
  validation data is as noisy as the training data); the test labels are
  ``data.y_test``, untouched.
  """
  train_idx, val_idx = split(len(data.y_train), val_fraction, seed)
  labels = np.stack([symmetric_label_noise(data.y_train, p, data.num_classes,
                                           seed) for p in noise])
  return NoisyDigits(train_idx, val_idx, labels, data.x_train, data.x_test,
                     data.y_test)


@dataclasses.dataclass
class Config:
  """Everything the study depends on."""
  seeds: int = 5
  epochs: int = 20
  batch_size: int = 32
  learning_rate: float = 0.1
  momentum: float = 0.9
  val_fraction: float = 0.2
  noise: tuple[float, ...] = (0.0, 0.2, 0.4)
  methods: tuple[str, ...] = tuple(GRIDS)
  models: tuple[str, ...] = MODELS
  mlp_width: int = 256
  mlp_depth: int = 3
  # Half SmallCNN's default widths: XLA's CPU convolutions, batched over
  # runs, cost about six times more at (32, 64).
  cnn_features: tuple[int, ...] = (16, 32)


def make_model(name: str, config: Config) -> Any:
  """The Flax model named ``name`` (``"cnn"`` or ``"mlp"``)."""
  if name == "cnn":
    return models.SmallCNN(features=config.cnn_features, num_classes=10)
  if name == "mlp":
    return models.MLP(width=config.mlp_width, depth=config.mlp_depth,
                      num_classes=10)
  raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")


def make_trainer(model: Any, method: str, config: Config, num_train: int
                 ) -> Callable[..., dict[str, jax.Array]]:
  """A jitted ``train(seed_keys, train_idx, labels, hypers, ...) -> metrics``.

  One run trains ``model`` with ``method`` for ``config.epochs`` epochs of
  shuffled batches of its training indices and returns its final accuracies.
  The returned function runs several at once, ``vmap``-ed over the rows of
  ``labels`` (one noisy labelling of the pool each) and ``hypers`` (the
  method's hyperparameter, traced), sharing the seed's initialization, split
  and batch order.
  """
  name, _ = GRIDS[method]
  steps_per_epoch = num_train // config.batch_size
  total_steps = max(steps_per_epoch * config.epochs, 1)

  def loss_fn(params, batch):
    x, y = batch
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params, x, y):
    logits = model.apply({"params": params}, x)
    return jnp.argmax(logits, -1) == y

  def one(keys, train_idx, val_idx, x_pool, y_pool_clean, x_test, y_test,
          labels, hyper):
    init_key, shuffle_key = keys
    params = model.init(init_key, x_pool[:1])["params"]
    reg = harness.build(spec_lib.parse(method), loss_fn,
                        {name: hyper} if name else {})
    tx = optax.chain(reg.tx, optax.sgd(
        optax.cosine_decay_schedule(config.learning_rate, total_steps),
        momentum=config.momentum))
    state = tx.init(params)

    def step(carry, idx):
      params, state = carry
      batch = (x_pool[idx], labels[idx])
      grads = jax.grad(reg.loss_fn)(params, batch)
      updates, state = tx.update(grads, state, params, batch=batch)
      return (optax.apply_updates(params, updates), state), None

    def epoch(carry, e):
      order = jax.random.permutation(jax.random.fold_in(shuffle_key, e),
                                     train_idx)
      idx = order[:steps_per_epoch * config.batch_size].reshape(
          steps_per_epoch, config.batch_size)
      return jax.lax.scan(step, carry, idx)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, state),
                                  jnp.arange(config.epochs))
    pool_right = accuracy(params, x_pool, labels)
    flipped = labels[train_idx] != y_pool_clean[train_idx]
    train_right = pool_right[train_idx]
    return {
        "train_accuracy": jnp.mean(train_right),
        # Share of the corrupted training labels the model reproduces.
        "memorized": (jnp.sum(train_right & flipped)
                      / jnp.maximum(jnp.sum(flipped), 1)),
        "val_accuracy": jnp.mean(pool_right[val_idx]),
        "test_accuracy": jnp.mean(accuracy(params, x_test, y_test)),
    }

  return jax.jit(jax.vmap(one, in_axes=(None,) * 7 + (0, 0)))


def _grid(method: str) -> tuple[str | None, tuple[float | None, ...]]:
  name, values = GRIDS[method]
  return name, (values if name else (None,))


def run_study(config: Config, *, command: str = "",
              out: str | None = None, figure: str | None = None,
              verbose: bool = True) -> dict[str, Any]:
  """Trains every (model, noise rate, method, grid value, seed).

  Seeds run one after another; after each, the summary over the seeds done
  so far is computed and, with ``out``, written (``seeds_completed`` says how
  many), so that an interrupted study leaves its finished seeds behind.

  Returns:
    The result dict written to ``out.json``: ``config``, ``command``,
    ``seeds_completed``, ``runs`` (one per model, noise rate, method, grid
    value and seed), ``summary`` (one row per model, noise rate and method)
    and the machine's description.
  """
  import sklearn  # pylint: disable=import-outside-toplevel
  data = data_lib.load_digits()
  pool_size = len(data.y_train)
  num_val = int(round(config.val_fraction * pool_size))
  num_train = pool_size - num_val
  x_pool, y_pool = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  trainers = {(m, meth): make_trainer(make_model(m, config), meth, config,
                                      num_train)
              for m in config.models for meth in config.methods}
  result: dict[str, Any] = {
      "command": command, "dataset": "digits (scikit-learn, real data)",
      "config": dataclasses.asdict(config),
      "grids": {m: {"name": GRIDS[m][0], "values": list(GRIDS[m][1])}
                for m in config.methods},
      "sizes": {"train": num_train, "val": num_val, "test": len(data.y_test)},
      "noise_convention": "symmetric, to a uniformly random other class; "
                          "training and validation labels noisy, test clean",
      "device": f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores)",
      "versions": {**_report.versions(),
                   "scikit-learn": sklearn.__version__},
      "seeds_completed": 0, "runs": [], "summary": [], "wall_s": 0.0}
  t0 = time.perf_counter()
  for seed in range(config.seeds):
    train_idx, val_idx, noisy, *_ = noisy_digits(data, config.noise, seed,
                                                 config.val_fraction)
    keys = jax.random.split(jax.random.PRNGKey(seed))
    for (model_name, method), trainer in trainers.items():
      hyper_name, values = _grid(method)
      rows = [(i, v) for i in range(len(config.noise)) for v in values]
      labels = jnp.asarray(noisy[[i for i, _ in rows]])
      hypers = jnp.asarray([0.0 if v is None else v for _, v in rows],
                           jnp.float32)
      t1 = time.perf_counter()
      metrics = jax.device_get(trainer(
          keys, jnp.asarray(train_idx), jnp.asarray(val_idx), x_pool, y_pool,
          x_test, y_test, labels, hypers))
      for r, (i, v) in enumerate(rows):
        result["runs"].append({
            "model": model_name, "noise": config.noise[i], "method": method,
            "hyperparameter": ({hyper_name: v} if hyper_name else {}),
            "seed": seed, **{k: float(a[r]) for k, a in metrics.items()}})
      if verbose:
        print(f"  seed {seed} {model_name:3s} {method:22s} "
              f"{time.perf_counter() - t1:6.1f} s", file=sys.stderr,
              flush=True)
    result["seeds_completed"] = seed + 1
    result["wall_s"] = time.perf_counter() - t0
    result["summary"] = summarize(result["runs"], config)
    if out:
      _report.save(out, result, report(result))
    if figure:
      plot(result, figure)
  return result


def _std(x: np.ndarray) -> float:
  s = stats.std(x)
  return float("nan") if s is None else s


def summarize(runs: Sequence[dict[str, Any]], config: Config
              ) -> list[dict[str, Any]]:
  """Per model, noise rate and method: the chosen value, test accuracy, and
  the paired comparison with SGD.

  The value chosen is the grid value of highest validation accuracy, mean
  over the seeds (the first in grid order on a tie). Spreads are sample
  standard deviations over seeds (``ddof=1``). The paired difference is
  ``test accuracy(method) - test accuracy(SGD)`` per seed; it "exceeds the
  seed spread" when its mean's magnitude exceeds its standard deviation; the
  paired t statistic is ``mean / (std / sqrt(n))``, with its 95 % interval
  (``low``, ``high``), p-value and Holm-adjusted p-value over every
  comparison of the summary (:func:`~gradreg_optax.experiments.stats.paired`,
  :func:`~gradreg_optax.experiments.stats.holm`).
  """
  summary = []
  for model_name in config.models:
    for noise in config.noise:
      cell = [r for r in runs if r["model"] == model_name
              and r["noise"] == noise]
      seeds = sorted({r["seed"] for r in cell})

      def test_at(method, hyper, cell=cell, seeds=seeds):
        by_seed = {r["seed"]: r["test_accuracy"] for r in cell
                   if r["method"] == method and r["hyperparameter"] == hyper}
        return np.array([by_seed[s] for s in seeds])

      chosen = {}
      for method in config.methods:
        hypers = []
        for r in cell:
          if r["method"] == method and r["hyperparameter"] not in hypers:
            hypers.append(r["hyperparameter"])
        val = [np.mean([r["val_accuracy"] for r in cell
                        if r["method"] == method
                        and r["hyperparameter"] == h]) for h in hypers]
        best = int(np.argmax(val))
        chosen[method] = (hypers[best], hypers, val)
      sgd = (test_at("sgd", chosen["sgd"][0]) if "sgd" in chosen else None)
      for method in config.methods:
        hyper, hypers, val = chosen[method]
        test = test_at(method, hyper)
        row = {
            "model": model_name, "noise": noise, "method": method,
            "label": gro.METHODS[method].label, "hyperparameter": hyper,
            "val_accuracy_by_value": [
                {"hyperparameter": h, "val_accuracy_mean": float(v)}
                for h, v in zip(hypers, val)],
            "val_accuracy_mean": float(max(val)), "seeds": seeds,
            "test_accuracies": test.tolist(),
            "test_accuracy_mean": float(np.mean(test)),
            "test_accuracy_std": _std(test),
            "memorized_mean": float(np.mean(
                [r["memorized"] for r in cell if r["method"] == method
                 and r["hyperparameter"] == hyper])),
        }
        if sgd is not None and method != "sgd":
          d = stats.paired(test, sgd)
          row["paired"] = {
              **d.as_dict(),
              "std": float("nan") if d.std is None else d.std,
              "t": (d.mean / (d.std / math.sqrt(d.n))
                    if d.std else float("nan")),
              "exceeds_seed_spread": bool(d.std is not None
                                          and abs(d.mean) > d.std),
          }
        summary.append(row)
  family = [r["paired"] for r in summary if "paired" in r]
  for p, adjusted in zip(family, stats.holm([p["p"] for p in family])):
    p["p_holm"] = adjusted
  return summary


def _hyper_text(hyper: dict[str, Any]) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in hyper.items()) or "-"


def table(result: dict[str, Any]) -> str:
  """The summary as Markdown tables, one per model and noise rate."""
  lines = []
  n = result["seeds_completed"]
  for model_name in result["config"]["models"]:
    for noise in result["config"]["noise"]:
      rows = [r for r in result["summary"] if r["model"] == model_name
              and r["noise"] == noise]
      if not rows:
        continue
      lines += [
          f"**{model_name}, {100 * noise:g} % label noise** ({n} seeds)", "",
          "| method | chosen | val acc (noisy) | test acc (mean ± std) "
          "| test − SGD (mean ± std) | better/equal/worse | t | beyond "
          "spread | memorized |",
          "|---|---|---|---|---|---|---|---|---|"]
      for r in rows:
        p = r.get("paired")
        paired = ("-", "-", "-", "-") if p is None else (
            f"{100 * p['mean']:+.2f} ± {100 * p['std']:.2f}",
            f"{p['better']}/{p['equal']}/{p['worse']}", f"{p['t']:+.1f}",
            ("**yes, " + ("better**" if p["mean"] > 0 else "worse**"))
            if p["exceeds_seed_spread"] else "no")
        lines.append(
            f"| {r['label']} | {_hyper_text(r['hyperparameter'])} | "
            f"{100 * r['val_accuracy_mean']:.2f} | "
            f"{100 * r['test_accuracy_mean']:.2f} ± "
            f"{100 * r['test_accuracy_std']:.2f} | " + " | ".join(paired)
            + f" | {100 * r['memorized_mean']:.0f} % |")
      lines.append("")
  return "\n".join(lines).rstrip()


def verdict(result: dict[str, Any]) -> str:
  """Each difference to SGD with its 95 % interval and Holm-adjusted p."""
  rows = [r for r in result["summary"] if "paired" in r]
  if not rows:
    return "No comparison with SGD (run with sgd among --methods)."
  lines = []
  for r in rows:
    d = stats.Difference.from_dict(r["paired"])
    holm = r["paired"].get("p_holm")
    lines.append(
        f"- {r['model']}, {100 * r['noise']:g} % noise: {r['label']} "
        f"({_hyper_text(r['hyperparameter'])}) − SGD: {d.text(100)} points, "
        f"Holm p {'n/a' if holm is None else f'{holm:.2g}'}"
        + (" (significant at 5 %)" if holm is not None and holm < 0.05
           else ""))
  return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
  """What the study prints: setup, tables and the differences beyond spread."""
  c = result["config"]
  s = result["sizes"]
  return (
      f"digits (real data): {s['train']} train / {s['val']} validation "
      f"(labels noisy) / {s['test']} test (labels clean); symmetric noise to "
      f"another class; {c['epochs']} epochs, batch {c['batch_size']}, SGD "
      f"momentum {c['momentum']}, cosine lr from {c['learning_rate']}, no "
      f"weight decay; hyperparameter chosen by mean validation accuracy; "
      f"std over seeds with ddof=1; seeds completed: "
      f"{result['seeds_completed']} of {c['seeds']}; {result['device']}, "
      f"{result['wall_s']:.0f} s\n\n" + table(result)
      + "\n\nPaired differences to SGD (mean [95 % t interval], Holm's "
      "correction over the comparisons above):\n" + verdict(result)
      + "\n\n'memorized': share of the corrupted training labels the final "
      "model predicts.")


def plot(result: dict[str, Any], path: str) -> None:
  """Test accuracy against noise rate, and the paired difference to SGD."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  c = result["config"]
  fig, axes = plt.subplots(2, len(c["models"]), squeeze=False,
                           figsize=(5.5 * len(c["models"]), 7.5),
                           sharex=True)
  noise = np.array(c["noise"]) * 100
  # Methods side by side around each rate, within a sixth of the spacing.
  width = (noise[1] - noise[0] if len(noise) > 1 else 10) / (
      3 * len(c["methods"]))
  for col, model_name in enumerate(c["models"]):
    top, bottom = axes[0, col], axes[1, col]
    for k, method in enumerate(c["methods"]):
      rows = [next(r for r in result["summary"] if r["model"] == model_name
                   and r["noise"] == p and r["method"] == method)
              for p in c["noise"]]
      shift = (k - (len(c["methods"]) - 1) / 2) * width
      label = gro.METHODS[method].label
      top.errorbar(noise + shift,
                   [100 * r["test_accuracy_mean"] for r in rows],
                   yerr=[100 * np.nan_to_num(r["test_accuracy_std"])
                         for r in rows], fmt="o-", ms=4, capsize=2,
                   label=label, color=f"C{k}")
      if method != "sgd" and all("paired" in r for r in rows):
        bottom.errorbar(noise + shift,
                        [100 * r["paired"]["mean"] for r in rows],
                        yerr=[100 * np.nan_to_num(r["paired"]["std"])
                              for r in rows], fmt="o", ms=4, capsize=2,
                        color=f"C{k}")
    bottom.axhline(0, color="k", lw=0.8)
    top.set(title=f"{model_name}, {result['seeds_completed']} seeds",
            ylabel="clean test accuracy (%), mean ± std")
    bottom.set(xlabel="training label noise (%)",
               ylabel="test accuracy − SGD (points),\npaired mean ± std",
               xticks=noise)
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  _report.save_figure(fig, path)


def _rate(text: str) -> float:
  value = float(text)
  if not 0.0 <= value < 1.0:
    raise ValueError(text)
  return value


_rate.__name__ = "rate in [0, 1)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the study from the command line; returns the result dict."""
  d = Config()
  parser = _cli.parser(MODULE, __doc__.split("\n")[0])
  parser.add_argument("--seeds", type=_cli.POSITIVE_INT, default=d.seeds,
                      help="number of seeds (0, 1, ...)")
  parser.add_argument("--epochs", type=_cli.POSITIVE_INT, default=d.epochs,
                      help="epochs")
  parser.add_argument("--batch-size", type=_cli.POSITIVE_INT,
                      default=d.batch_size, help="batch size")
  parser.add_argument("--learning-rate", type=_cli.POSITIVE,
                      default=d.learning_rate, help="peak learning rate")
  parser.add_argument("--noise", type=_rate, nargs="+", default=d.noise,
                      help="label noise rates")
  parser.add_argument("--methods", nargs="+", default=d.methods,
                      choices=tuple(GRIDS), metavar="METHOD",
                      help=f"from {', '.join(GRIDS)} (sgd is needed for the "
                      "paired comparison)")
  parser.add_argument("--models", nargs="+", default=d.models,
                      choices=MODELS, help="models")
  parser.add_argument("--out", default=None,
                      help="write OUT.json and OUT.md after every seed")
  parser.add_argument("--figure", default=None, help="write this PNG")
  parser.add_argument("--quiet", action="store_true",
                      help="print only the result")
  args = parser.parse_args(argv)
  if args.batch_size > 1438 - round(d.val_fraction * 1438):
    parser.error(f"argument --batch-size: must be at most the training size "
                 f"{1438 - round(d.val_fraction * 1438)}, got "
                 f"{args.batch_size}")
  config = dataclasses.replace(
      d, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size,
      learning_rate=args.learning_rate, noise=tuple(args.noise),
      methods=tuple(dict.fromkeys(args.methods)),
      models=tuple(dict.fromkeys(args.models)))
  result = run_study(config, command=_report.command_line(MODULE, argv),
                     out=args.out, figure=args.figure,
                     verbose=not args.quiet)
  print(report(result))
  return result


if __name__ == "__main__":
  main()
