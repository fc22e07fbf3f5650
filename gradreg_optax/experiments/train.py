"""Train a classifier with any of the library's methods.

``python -m gradreg_optax.experiments.train --method forward --gamma 0.01``
trains on scikit-learn's digits (real data, no download) by default;
``--dataset cifar10 --data-dir DIR`` reads CIFAR-10 in its Python format and
``--dataset synthetic`` makes up data of any shape (smoke tests, throughput).
The optimizer is SGD with momentum, weight decay and a cosine (or constant)
schedule, preceded by the method's transformation; the model's BatchNorm
statistics travel through ``has_aux``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import gradreg_optax as gro
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import data as data_lib
from gradreg_optax.experiments import models

METHODS = tuple(gro.METHODS)
MODELS = ("mlp", "cnn", "resnet18")
DATASETS = ("digits", "cifar10", "synthetic")


def hyperparameter_users(
    methods: Mapping[str, gro.Method] = gro.METHODS
) -> dict[str, tuple[tuple[str, gro.Hyperparameter], ...]]:
  """Each hyperparameter name of ``methods`` -> ``(method, Hyperparameter)``.

  One name serves every method that has it (``rho`` of SAM and of ASAM),
  whatever its domain, default and help in each.

  Example:
    >>> [m for m, _ in hyperparameter_users()["eps"]]
    ['forward', 'backward', 'central']
  """
  users: dict[str, list[tuple[str, gro.Hyperparameter]]] = {}
  for method in methods.values():
    for name, h in method.hyperparameters.items():
      users.setdefault(name, []).append((method.name, h))
  return {name: tuple(u) for name, u in users.items()}


HYPERPARAMETERS = hyperparameter_users()
# The Config field of each hyperparameter: its own name. (Kept for the
# scripts that map a hyperparameter to its field.)
HYPERPARAMETER_FIELDS = {name: name for name in HYPERPARAMETERS}


@dataclasses.dataclass
class _Settings:
  """Everything a run depends on; ``train(Config(...))`` is reproducible.

  Besides the fields below, one field per hyperparameter of
  ``gro.METHODS`` (:data:`HYPERPARAMETERS`: ``gamma``, ``eps``, ``rho``,
  ...), read by the methods that have it; ``None`` takes the method's
  default.
  """
  method: str = "sgd"
  dataset: str = "digits"
  data_dir: str | None = None
  model: str = "mlp"
  width: int | None = None  # MLP width / ResNet base width (DEFAULT_WIDTH)
  depth: int = 3            # MLP depth (number of dense layers)
  every_k: int = 1          # recompute the correction every k steps
  # Optimization.
  epochs: int = 30
  batch_size: int = 128
  learning_rate: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 1e-4
  schedule: str = "cosine"  # "cosine" or "constant"
  augment: bool | None = None  # None: on for CIFAR-shaped images only
  max_steps: int | None = None  # stop early (smoke tests, throughput)
  # Synthetic data.
  num_train: int = 2048
  num_test: int = 512
  image_size: int = 32
  seed: int = 0
  quiet: bool = False
  measure_cost: bool = True  # matmul count of the compiled step
  out_dir: str | None = None


def _config_class() -> type:
  clash = sorted(set(HYPERPARAMETERS)
                 & {f.name for f in dataclasses.fields(_Settings)})
  if clash:
    raise TypeError(f"Hyperparameters {clash} of gradreg_optax.METHODS have "
                    "the names of training settings of train.Config.")
  return dataclasses.make_dataclass(
      "Config", [(name, Optional[float], dataclasses.field(default=None))
                 for name in HYPERPARAMETERS],
      bases=(_Settings,),
      namespace={"__doc__": _Settings.__doc__, "__module__": __name__})


Config = _config_class()


def _method(name: str) -> gro.Method:
  if name not in gro.METHODS:
    raise ValueError(f"Unknown method {name!r}; expected one of {METHODS}.")
  return gro.METHODS[name]


def hyperparameters(config: Config) -> dict[str, Any]:
  """The method's hyperparameters: the config's values, else the defaults.

  Keyed by the registry's names, with ``every_k`` where it is not 1.
  """
  values = {}
  for name, default in _method(config.method).defaults.items():
    value = getattr(config, name)
    values[name] = default if value is None else value
  if config.every_k != 1:
    values["every_k"] = config.every_k
  return values


def unused_options(config: Config) -> list[str]:
  """The config's hyperparameters that its method does not read."""
  used = _method(config.method).hyperparameters
  return [name for name in HYPERPARAMETERS
          if getattr(config, name) is not None and name not in used]


def make_method(name: str, loss_fn: Callable[..., Any], config: Config, *,
                has_aux: bool = False) -> gro.Regularized:
  """The method ``name`` from the registry, amortized if ``config`` says so.

  Args:
    name: one of :data:`METHODS` (the keys of ``gro.METHODS``).
    loss_fn: ``loss_fn(params, batch)`` (or ``(loss, aux)`` with ``has_aux``).
    config: supplies the hyperparameters (see :func:`hyperparameters`) and
      ``every_k`` (``gro.amortized`` for ``every_k > 1``).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``gro.Regularized(tx, loss_fn)``: the transformation to put first in the
    chain and the loss to differentiate.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: jnp.sum((p - b) ** 2)
    >>> tx, train_loss = make_method("forward", loss, Config(gamma=0.1))
    >>> train_loss is loss
    True
  """
  method = _method(name)
  hyper = hyperparameters(dataclasses.replace(config, method=name))
  every_k = hyper.pop("every_k", 1)
  if every_k != 1 and not method.transforms:
    raise ValueError(f"every_k applies to methods with a correction, not "
                     f"{name!r}.")
  tx, train_loss = method(loss_fn, has_aux=has_aux, **hyper)
  if every_k != 1:
    tx = gro.amortized(tx, every_k)
  return gro.Regularized(tx, train_loss)


def load_data(config: Config) -> data_lib.Dataset:
  """The data set named by ``config.dataset``."""
  if config.dataset == "digits":
    return data_lib.load_digits()
  if config.dataset == "cifar10":
    if not config.data_dir:
      raise ValueError("--dataset cifar10 needs --data-dir (nothing is "
                       "downloaded).")
    return data_lib.load_cifar10(config.data_dir)
  if config.dataset == "synthetic":
    s = config.image_size
    return data_lib.synthetic(config.num_train, config.num_test, (s, s, 3),
                              seed=config.seed)
  raise ValueError(f"Unknown dataset {config.dataset!r}; expected one of "
                   f"{DATASETS}.")


# Per model, because one number cannot serve both: 256 hidden units suit the
# MLP, while 64 is the standard ResNet-18 (11.2M parameters on CIFAR-10).
DEFAULT_WIDTH = {"mlp": 256, "resnet18": 64}


def make_model(config: Config, num_classes: int) -> Any:
  width = config.width or DEFAULT_WIDTH.get(config.model)
  if config.model == "mlp":
    return models.MLP(width=width, depth=config.depth,
                      num_classes=num_classes)
  if config.model == "cnn":
    return models.SmallCNN(num_classes=num_classes)
  if config.model == "resnet18":
    return models.ResNet18(num_classes=num_classes, width=width)
  raise ValueError(f"Unknown model {config.model!r}; expected one of "
                   f"{MODELS}.")


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def make_loss(model: Any) -> Callable[..., Any]:
  """Cross-entropy ``loss(params, (x, y, batch_stats)) -> (loss, aux)``.

  The BatchNorm statistics ride in the batch and come back in ``aux``; the
  library drops the ``aux`` of its extra evaluations, so they are updated
  once per step, by the caller's own evaluation.
  """

  def loss_fn(params, batch):
    x, y, batch_stats = batch
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits, new_state = model.apply(variables, x, train=True,
                                    mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, {"batch_stats": new_state.get("batch_stats", batch_stats),
                  "accuracy": accuracy}

  return loss_fn


def _schedule(config: Config, total_steps: int) -> optax.Schedule:
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(config.learning_rate, total_steps)
  if config.schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  raise ValueError(f"Unknown schedule {config.schedule!r}.")


def _evaluate(eval_fn, state, x, y, batch_size):
  loss_sum, correct = 0.0, 0
  for xb, yb in data_lib.batches(x, y, batch_size, drop_remainder=False):
    l, c = eval_fn(state, xb, yb)
    loss_sum += float(l)
    correct += int(c)
  return loss_sum / len(x), correct / len(x)


def _progress(iterable, total, desc, disable):
  try:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return iterable
  return tqdm(iterable, total=total, desc=desc, leave=False, disable=disable)


class Setup(NamedTuple):
  """The pieces of a run, before its first step."""
  state: TrainState
  # (state, x, y, key, recompute=None) -> (state, loss, acc, metrics), the
  # metrics (gro.Metrics) None for the methods that only change the loss;
  # ``recompute`` is static: the host's choice for ``every_k`` (see
  # :func:`compile_step`).
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]   # (state, x, y) -> (loss sum, correct)
  aug_key: jax.Array
  batch_size: int
  steps_per_epoch: int
  total_steps: int


def setup(config: Config, data: data_lib.Dataset) -> Setup:
  """Model, optimizer chain, initial state and jitted steps for a run."""
  model = make_model(config, data.num_classes)
  loss_fn = make_loss(model)
  regularizer, train_loss = make_method(config.method, loss_fn, config,
                                        has_aux=True)
  measures = _method(config.method).transforms
  batch_size = min(config.batch_size, len(data.x_train))
  steps_per_epoch = len(data.x_train) // batch_size
  total_steps = steps_per_epoch * config.epochs
  if config.max_steps is not None:
    total_steps = min(total_steps, config.max_steps)
  use_augment = config.augment
  if use_augment is None:
    use_augment = data.x_train.shape[1:3] == (32, 32)

  key = jax.random.PRNGKey(config.seed)
  init_key, aug_key = jax.random.split(key)
  variables = jax.jit(model.init)(init_key, jnp.asarray(data.x_train[:1]))
  tx = optax.chain(
      regularizer,
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(_schedule(config, max(total_steps, 1)),
                momentum=config.momentum or None),
  )
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            tx=tx, batch_stats=variables.get("batch_stats", {}))
  # A concrete int32 step counter keeps the state's types fixed across steps,
  # so that one ahead-of-time compiled executable serves them all.
  state = state.replace(step=jnp.zeros([], jnp.int32))

  @functools.partial(jax.jit, static_argnames="recompute")
  def train_step(state, x, y, key, recompute=None):
    if use_augment:
      x = data_lib.augment(key, x)
    batch = (x, y, state.batch_stats)
    (loss, aux), grads = jax.value_and_grad(train_loss, has_aux=True)(
        state.params, batch)
    extra = {} if recompute is None else {"recompute": recompute}
    state = gro.apply_gradients(state, grads, batch=batch, value=loss,
                                **extra)
    state = state.replace(batch_stats=aux["batch_stats"])
    metrics = gro.metrics(state.opt_state) if measures else None
    return state, loss, aux["accuracy"], metrics

  @jax.jit
  def eval_step(state, x, y):
    variables = {"params": state.params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    logits = model.apply(variables, x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)

  return Setup(state, train_step, eval_step, aug_key, batch_size,
               steps_per_epoch, total_steps)


def compile_step(s: Setup, every_k: int, x: Any, y: Any
                 ) -> tuple[Callable[..., Any], Any]:
  """The train step compiled ahead of time, and its (recomputing) executable.

  Returns ``step(state, x, y, key, i)`` for global step ``i``. With
  ``every_k > 1`` the recompute-or-reuse choice is made here on the host,
  between two executables, rather than by the default ``lax.cond`` on the
  device: XLA's CPU backend runs convolutions inside a conditional far more
  slowly (jax-ml/jax#12868), and on GPUs the conditional itself costs time.
  A step after one whose correction was not finite recomputes.
  """
  if every_k == 1:
    one = s.train_step.lower(s.state, x, y, s.aug_key).compile()
    return lambda state, x, y, key, i: one(state, x, y, key), one
  fresh, reuse = (s.train_step.lower(s.state, x, y, s.aug_key,
                                     recompute=r).compile()
                  for r in (True, False))
  recomputed = True  # whether the previous step recomputed

  def step(state, x, y, key, i):
    nonlocal recomputed
    # Only a recomputation can leave no usable correction, so only the step
    # after one waits for the device to ask.
    recomputed = i % every_k == 0 or (
        recomputed and gro.needs_recompute(state.opt_state))
    return (fresh if recomputed else reuse)(state, x, y, key)

  return step, fresh


def median_step_time(step_times: Sequence[float], every_k: int = 1,
                     skip: int = 3) -> float:
  """Median seconds per step over whole ``every_k`` periods.

  The first ``skip`` steps (rounded up to whole periods) hold compilation
  and warm-up and are dropped; each period's mean is one sample, so that an
  amortized method is charged its average cost, not its cheap steps'.
  """
  start = -(-skip // every_k) * every_k
  times = np.asarray(step_times[start:] if len(step_times) > start
                     else step_times[-every_k:])
  n = len(times) // every_k * every_k
  if n == 0:
    return float(np.mean(times)) if len(times) else float("nan")
  return float(np.median(times[:n].reshape(-1, every_k).mean(axis=1)))


def describe(config: Config, data: data_lib.Dataset) -> str:
  """One line on what a run trains: method, model, data, optimizer, device."""
  method = _method(config.method)
  hyper = ", ".join(f"{k}={v:g}" for k, v in hyperparameters(config).items())
  width = config.width or DEFAULT_WIDTH.get(config.model)
  model = {"mlp": f"MLP {config.depth} x {width}", "cnn": "small CNN",
           "resnet18": f"ResNet-18 (width {width})"}[config.model]
  kind = "" if data.name != "synthetic" else "synthetic data, "
  return (f"{method.label} ({hyper or 'no hyperparameters'}) | {model} | "
          f"{data.name} ({kind}{len(data.x_train)} train, {len(data.x_test)} "
          f"test) | SGD momentum {config.momentum}, {config.schedule} lr "
          f"{config.learning_rate:g}, batch {config.batch_size}, "
          f"{_cli.plural(config.epochs, 'epoch')} | "
          f"{jax.devices()[0].device_kind}")


METRICS_LOGGED = ("grad_norm", "sharpness", "penalty")


def train(config: Config, dataset: data_lib.Dataset | None = None, *,
          return_state: bool = False) -> Any:
  """Trains one model and returns its curves and timings.

  Args:
    config: the run's :class:`Config`.
    dataset: data to use instead of loading ``config.dataset``.
    return_state: also return the final ``TrainState`` (parameters,
      optimizer state, BatchNorm statistics).

  Returns:
    A JSON-serializable dict: the config, the ``method`` and its resolved
    ``hyperparameters``, per-epoch ``history`` (train loss and accuracy,
    test loss and accuracy, and for the methods that transform the gradient
    the epoch's mean of the metrics in :data:`METRICS_LOGGED`),
    ``final_test_accuracy``, ``step_time_median_s`` (wall clock per jitted
    step, the first steps with compilation excluded, see
    :func:`median_step_time`), ``images_per_s`` and ``step_matmuls``, the
    number of matrix products in the compiled step
    (:func:`gradreg_optax.cost.count_matmuls`). With ``return_state``, the
    pair ``(results, state)``.
  """
  problem = config.out_dir and _cli.output_problem(config.out_dir, "folder")
  if problem:  # before the run, not after it
    raise ValueError(f"train: `out_dir` {problem}.")
  data = dataset if dataset is not None else load_data(config)
  if not config.quiet:
    print(describe(config, data), flush=True)
  setup_ = setup(config, data)
  state, _, eval_step, aug_key, batch_size, steps_per_epoch, \
      total_steps = setup_
  rng = np.random.RandomState(config.seed)
  measures = _method(config.method).transforms
  history = {k: [] for k in ("epoch", "train_loss", "train_accuracy",
                             "test_loss", "test_accuracy")
             + (METRICS_LOGGED if measures else ())}
  step_times, step = [], 0
  quiet = config.quiet or not sys.stderr.isatty()
  cost, step_fn = None, None
  for epoch in range(config.epochs):
    losses, accs, metrics = [], [], []
    it = data_lib.batches(data.x_train, data.y_train, batch_size, rng)
    for xb, yb in _progress(it, steps_per_epoch, f"epoch {epoch + 1}", quiet):
      if step >= total_steps:
        break
      step_key = jax.random.fold_in(aug_key, step)
      if step_fn is None:
        # Compile once, ahead of time, and read the matmul count off the
        # same executable that then runs the (recomputing) steps.
        step_fn, executable = compile_step(setup_, config.every_k, xb, yb)
        if config.measure_cost:
          cost = gro.cost.count_matmuls(executable.as_text())
      t0 = time.perf_counter()
      state, loss, acc, m = step_fn(state, xb, yb, step_key, step)
      loss = float(loss)  # waits for the step
      step_times.append(time.perf_counter() - t0)
      losses.append(loss)
      accs.append(acc)
      metrics.append(m)
      step += 1
    if not losses:
      break
    test_loss, test_acc = _evaluate(eval_step, state, data.x_test,
                                    data.y_test, 512)
    history["epoch"].append(epoch + 1)
    history["train_loss"].append(float(np.mean(losses)))
    history["train_accuracy"].append(float(np.mean(accs)))
    history["test_loss"].append(test_loss)
    history["test_accuracy"].append(test_acc)
    logged = ""
    for name in METRICS_LOGGED if measures else ():
      values = np.array([getattr(m, name) for m in metrics], np.float64)
      finite = values[np.isfinite(values)]
      # NaN where the method does not measure it (the penalty of SAM).
      history[name].append(float(finite.mean()) if finite.size else None)
      if finite.size:
        logged += f"  {name} {history[name][-1]:.4g}"
    if not config.quiet:
      print(f"epoch {epoch + 1:3d}  train loss {history['train_loss'][-1]:.4f}"
            f"  acc {history['train_accuracy'][-1]:.4f}  test loss "
            f"{test_loss:.4f}  acc {test_acc:.4f}{logged}", flush=True)

  median = median_step_time(step_times, config.every_k)
  results = {
      "method": config.method,
      "hyperparameters": hyperparameters(config),
      "config": dataclasses.asdict(config),
      "dataset": data.name,
      "num_params": int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
      "steps": step,
      "history": history,
      "final_test_accuracy": (history["test_accuracy"][-1]
                              if history["test_accuracy"] else float("nan")),
      "step_time_median_s": median,
      "images_per_s": batch_size / median if median > 0 else float("nan"),
      "step_matmuls": cost,
      "device": jax.devices()[0].device_kind,
  }
  if config.out_dir:
    save_results(results, config.out_dir)
  return (results, state) if return_state else results


def save_results(results: dict[str, Any], out_dir: str) -> None:
  """Writes ``results.json``, and ``curves.png`` where Matplotlib is installed
  (the command line warns before training where it is not)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  h = results["history"]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  axes[0].plot(h["epoch"], h["train_loss"], label="train")
  axes[0].plot(h["epoch"], h["test_loss"], label="test")
  axes[0].set(xlabel="epoch", ylabel="loss", yscale="log")
  axes[1].plot(h["epoch"], h["train_accuracy"], label="train")
  axes[1].plot(h["epoch"], h["test_accuracy"], label="test")
  axes[1].set(xlabel="epoch", ylabel="accuracy")
  for ax in axes:
    ax.legend()
  c = results["config"]
  fig.suptitle(f"{c['method']} on {results['dataset']} ({c['model']})")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
  plt.close(fig)


_HELP = {
    "method": "the method (gro.METHODS)",
    "dataset": "digits: scikit-learn's (bundled); cifar10: its Python "
               "format in --data-dir; synthetic: random images",
    "data_dir": "directory of CIFAR-10's data_batch_* and test_batch files",
    "model": "the classifier",
    "depth": "MLP depth (dense layers)",
    "every_k": "recompute the correction every k steps (gro.amortized)",
    "epochs": "epochs",
    "batch_size": "batch size",
    "learning_rate": "peak learning rate",
    "momentum": "SGD momentum (0: none)",
    "weight_decay": "weight decay",
    "schedule": "learning-rate schedule",
    "max_steps": "stop after this many steps (default: all epochs)",
    "num_train": "synthetic training images",
    "num_test": "synthetic test images",
    "image_size": "synthetic image side",
    "seed": "seed of initialization, data order and augmentation",
    "quiet": "print only the result",
    "measure_cost": "count the matmuls of the compiled step",
    "out_dir": "write results.json here, and curves.png where Matplotlib "
               "is installed",
}
_TYPES = {"depth": _cli.POSITIVE_INT, "every_k": _cli.POSITIVE_INT,
          "epochs": _cli.POSITIVE_INT, "batch_size": _cli.POSITIVE_INT,
          "max_steps": _cli.POSITIVE_INT, "num_train": _cli.POSITIVE_INT,
          "num_test": _cli.POSITIVE_INT, "image_size": _cli.number(int, 8),
          "seed": _cli.number(int, 0), "learning_rate": _cli.POSITIVE,
          "momentum": _cli.number(float, 0), "weight_decay": _cli.NONNEGATIVE,
          "data_dir": str, "out_dir": str}


def _in_words(h: gro.Hyperparameter) -> str:
  """``"a number >= 0"``, ``"a number in [0, 1)"``, ``"a finite number"``."""
  words = h.describe()
  return words if words.startswith("a ") else "a number " + words


def _expected(hs: Sequence[gro.Hyperparameter]) -> str:
  """The union of the domains in words, leaving out those inside another."""
  widest = [h for h in hs
            if not any(_inside(h, o) and not _inside(o, h) for o in hs)]
  return " or ".join(dict.fromkeys(_in_words(h) for h in widest))


def _inside(a: gro.Hyperparameter, b: gro.Hyperparameter) -> bool:
  """Whether the domain of ``a`` lies within that of ``b``."""
  (la, ua), (lb, ub) = a.bounds, b.bounds
  return (lb < la or (lb == la and (b.contains(la) or not a.contains(la)))) \
      and (ua < ub or (ua == ub and (b.contains(ua) or not a.contains(ua))))


def hyperparameter_type(name: str) -> Callable[[str], float]:
  """The argparse ``type`` of ``--name``: a number in the domain of at least
  one method that has ``name`` (:func:`check` then holds it to the chosen
  method's)."""
  hs = [h for _, h in HYPERPARAMETERS[name]]

  def convert(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      value = None
    if value is None or not any(h.contains(value) for h in hs):
      raise argparse.ArgumentTypeError(
          f"expected {_expected(hs)}, got {text!r}")
    return value

  convert.__name__ = "float"  # argparse names the type in its errors
  return convert


def hyperparameter_help(name: str) -> str:
  """What ``--name`` does, its domain and default, for each method that has
  it, from the registry."""
  groups: dict[tuple[str, str], dict[str, float]] = {}
  for method, h in HYPERPARAMETERS[name]:
    groups.setdefault((h.help, _in_words(h)), {})[method] = h.default
  parts = []
  for (help_, words), defaults in groups.items():
    if len(set(defaults.values())) == 1:
      default = (f"{', '.join(defaults)}; default: "
                 f"{next(iter(defaults.values())):g}")
    else:
      default = "default: " + ", ".join(f"{m} {v:g}"
                                        for m, v in defaults.items())
    parts.append(f"{help_ or name}, {words} ({default})")
  return "; ".join(parts).replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser,
                         skip: Sequence[str] = ()) -> None:
  """Adds one ``--flag`` per :class:`Config` field (shared by the scripts).

  Every hyperparameter of ``gro.METHODS`` is a flag, with the registry's
  help, default and domain (:func:`hyperparameter_type`).
  """
  defaults = Config()
  hyper = parser.add_argument_group(
      "hyperparameters of the methods (gro.METHODS; each read by the methods "
      "that have it)")
  for field in dataclasses.fields(Config):
    if field.name in skip:
      continue
    flag = "--" + field.name.replace("_", "-")
    default = getattr(defaults, field.name)
    if field.name in HYPERPARAMETERS:
      hyper.add_argument(flag, type=hyperparameter_type(field.name),
                         default=None, help=hyperparameter_help(field.name))
    elif field.name == "augment":
      parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                          default=None, help="CIFAR augmentation "
                          "(default: on for 32x32 images only)")
    elif isinstance(default, bool):
      parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                          default=default, help=_HELP[field.name])
    elif field.name == "width":
      parser.add_argument(flag, type=_cli.POSITIVE_INT, default=None, help=(
          "MLP width / ResNet-18 base width (default: " + ", ".join(
              f"{k} {v}" for k, v in DEFAULT_WIDTH.items()) + ")"))
    else:
      choices = {"method": METHODS, "model": MODELS, "dataset": DATASETS,
                 "schedule": ("cosine", "constant")}.get(field.name)
      parser.add_argument(flag, type=_TYPES.get(field.name, type(default)),
                          default=default, choices=choices,
                          help=_HELP[field.name])


def config_from_args(parser: argparse.ArgumentParser,
                     args: argparse.Namespace, **overrides: Any) -> Config:
  """The :class:`Config` of parsed arguments, checked by :func:`check`."""
  names = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in names}
  values.update(overrides)
  return check(parser, Config(**values))


def check(parser: argparse.ArgumentParser, config: Config,
          prefix: str = "") -> Config:
  """Checks a config as a whole; returns it.

  A hyperparameter outside its method's domain (``gro.METHODS``), an
  ``every_k`` for a method without a correction, a missing data directory
  or a missing ``examples`` extra ends the program through ``parser.error``
  (one line, exit status 2); an option the method does not use is warned
  about. ``prefix`` starts each message (e.g. which entry of a list is
  meant).
  """
  method = _method(config.method)
  for name in unused_options(config):
    _cli.warn(f"{prefix}--{name.replace('_', '-')} is not used by method "
              f"{config.method!r}")
  if config.every_k != 1 and not method.transforms:
    parser.error(f"{prefix}argument --every-k: method {config.method!r} has "
                 "no correction to amortize; expected 1")
  for name, h in method.hyperparameters.items():
    value = getattr(config, name)
    if value is not None and not h.contains(float(value)):
      parser.error(f"{prefix}argument --{name.replace('_', '-')}: expected "
                   f"{_in_words(h)} for method {config.method!r}, got "
                   f"{value:g}")
  if config.dataset == "digits":
    _cli.require(parser, "sklearn", "scikit-learn", "--dataset digits")
  elif config.dataset == "cifar10":
    if not config.data_dir:
      parser.error("argument --data-dir: --dataset cifar10 needs the "
                   "directory of CIFAR-10's Python files (nothing is "
                   "downloaded)")
    if not os.path.isdir(config.data_dir):
      parser.error(f"argument --data-dir: no such directory: "
                   f"{config.data_dir!r}")
  if config.data_dir and config.dataset != "cifar10":
    _cli.warn(f"--data-dir is not used by --dataset {config.dataset}")
  return config


def load_data_or_exit(parser: argparse.ArgumentParser,
                      config: Config) -> data_lib.Dataset:
  """:func:`load_data`, its failures reported as one line."""
  try:
    return load_data(config)
  except (OSError, ValueError, KeyError) as e:
    parser.error(f"cannot read --dataset {config.dataset} from "
                 f"{config.data_dir!r}: {e}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = _cli.parser("gradreg_optax.experiments.train",
                       __doc__.split("\n")[0])
  add_config_arguments(parser)
  args = parser.parse_args(argv)
  config = config_from_args(parser, args)
  results = train(config, load_data_or_exit(parser, config))
  print(json.dumps({k: results[k] for k in (
      "method", "hyperparameters", "dataset", "final_test_accuracy", "steps",
      "step_time_median_s", "step_matmuls")}))
  print(f"throughput: {results['images_per_s']:.1f} images/s "
        f"({results['device']}, median over {results['steps']} steps but "
        "the first)")
  return results


if __name__ == "__main__":
  main()
