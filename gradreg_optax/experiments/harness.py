"""One benchmark protocol for every method: tuned alike, stopped alike.

The studies of this package train classifiers on small real data sets
(digits, MNIST-1D) whose training labels may be noisy, with any method of
``gro.METHODS`` (by :mod:`~gradreg_optax.experiments.spec`), and compare
them here, under one protocol:

* **Data, per seed** ``s``: the task's training part is split at random
  (seed ``s``) into training and validation parts; both get symmetric label
  noise at rate ``p`` (seed ``s``, nested over rates); the test part keeps
  its clean labels. Initialization and batch order depend on ``s`` only, so
  every method sees the same data, start and order: differences are paired.
* **Equal tuning budget.** Every method, SGD and AdamW included, gets
  ``rounds * configs`` configurations over the learning rate, the weight
  decay and its own searched hyperparameters (:func:`search_space`): round 1
  draws a Latin hypercube in the log box, later rounds a box of half the
  log width centred on the best so far (so a value at an edge moves the box
  past it; the union of the boxes is recorded as the ``grid``, and a chosen
  value still at the extreme of its samples is flagged ``at_edge``). The
  draws of the learning rate and weight decay are the same for every method.
* **Selection on validation data only**: the score of a configuration is
  its validation accuracy (noisy labels, as a practitioner's), mean over
  the tuning seeds.
* **Early stopping for all**: each run keeps the parameters of its epoch of
  best validation accuracy and is tested with them.
* **Fresh seeds** for the final runs at the chosen configuration (seeds from
  :data:`FINAL_SEED`, never used in tuning).
* **Cost**: gradient evaluations per run (``1 + extra / every_k`` per step,
  counted from the steps that recompute, times the steps) and the measured
  time of a step relative to SGD's (:func:`time_steps`). SGD given ``budget``
  times the epochs (``sgd:budget=2``) is the compute-matched baseline.

Runs of one method and task are trained together, ``jax.vmap``-ed over
(noise rate, configuration, seed) in one compiled ``lax.scan``; amortized
methods run each epoch through ``gro.amortized_scan``, which keeps
conditionals out of the compiled loop.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradreg_optax as gro
from gradreg_optax.experiments import data as data_lib
from gradreg_optax.experiments import models
from gradreg_optax.experiments import spec as spec_lib

FINAL_SEED = 1000  # final runs use seeds FINAL_SEED, FINAL_SEED + 1, ...

# Search ranges (log scale) of round 1. Learning rates per optimizer; the
# method hyperparameters named here bracket the seeds' recommendations
# (gamma = 0.05, rho = 0.05, r = 0.05 to 0.1) and, for flooding, the loss of
# noisy labels (0.94 nats at 20 % noise, 1.55 at 40 %). Any other
# hyperparameter that switches its method off at 0 is searched within a
# factor 10 of its default; the rest keep their defaults.
LEARNING_RATES = {"sgd": (0.003, 0.3), "adamw": (3e-4, 3e-2)}
WEIGHT_DECAY = (1e-6, 1e-2)
SEARCH: dict[tuple[str, str], tuple[float, float] | None] = {
    ("forward", "gamma"): (0.003, 0.3), ("backward", "gamma"): (0.003, 0.3),
    ("central", "gamma"): (0.003, 0.3), ("jvp", "gamma"): (0.003, 0.3),
    ("double_backprop", "gamma"): (0.003, 0.3),
    ("sam", "rho"): (0.01, 0.5), ("asam", "rho"): (0.1, 5.0),
    ("gradient_norm_penalty", "r"): (0.01, 0.5),
    ("gradient_norm_penalty", "alpha"): None,
    ("flooding", "b"): (0.02, 2.0),
}


# --- Label noise and splits -------------------------------------------------


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int) -> np.ndarray:
  """Replaces each label, with probability ``rate``, by another class.

  The convention is the "other class" one: a corrupted label is drawn
  uniformly from the ``num_classes - 1`` classes different from the true one,
  so exactly the corrupted labels are wrong and the expected share of wrong
  labels is ``rate``. (The other common convention draws from all classes,
  which leaves ``rate / num_classes`` of the corrupted labels right.)

  The draws depend only on ``seed`` and the number of labels, not on
  ``rate``: label ``i`` is corrupted when ``u_i < rate`` for a uniform
  ``u_i``, so the labels corrupted at a lower rate are also corrupted, to
  the same class, at a higher one.

  Args:
    labels: integer class labels in ``[0, num_classes)``.
    rate: probability of corrupting each label, in ``[0, 1]``.
    num_classes: the number of classes (at least 2).
    seed: seed of the draws.

  Returns:
    The noisy labels, same shape and dtype; ``labels`` is not modified.

  Example:
    >>> import numpy as np
    >>> y = np.zeros(10000, np.int32)
    >>> noisy = symmetric_label_noise(y, 0.4, 10, seed=0)
    >>> round(float(np.mean(noisy != y)), 2), int(noisy.max())
    (0.4, 9)
  """
  labels = np.asarray(labels)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"symmetric_label_noise: `rate` must be in [0, 1], got "
                     f"{rate!r}.")
  if num_classes < 2:
    raise ValueError(f"symmetric_label_noise: `num_classes` must be >= 2, "
                     f"got {num_classes!r}.")
  rng = np.random.default_rng(seed)
  u = rng.random(labels.shape)
  offset = rng.integers(1, num_classes, labels.shape)
  corrupted = (labels + offset) % num_classes
  return np.where(u < rate, corrupted, labels).astype(labels.dtype)


def split(num: int, val_fraction: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random split of ``range(num)`` into training and validation."""
  order = np.random.default_rng(seed).permutation(num)
  num_val = int(round(val_fraction * num))
  return np.sort(order[num_val:]), np.sort(order[:num_val])


# --- Tasks ------------------------------------------------------------------


class Task(NamedTuple):
  """A data set and a model, with the epochs and batch size they train at."""
  name: str
  load: Callable[[], data_lib.Dataset]
  model: Callable[[int], Any]  # num_classes -> Flax module
  epochs: int
  batch_size: int


TASKS = {
    "digits-mlp": Task("digits-mlp", data_lib.load_digits,
                       lambda c: models.MLP(256, 3, c), 20, 32),
    # Half SmallCNN's default widths: XLA's CPU convolutions, batched over
    # runs, cost about six times more at (32, 64).
    "digits-cnn": Task("digits-cnn", data_lib.load_digits,
                       lambda c: models.SmallCNN((16, 32), c), 20, 32),
    "mnist1d-mlp": Task("mnist1d-mlp", data_lib.load_mnist1d,
                        lambda c: models.MLP(256, 3, c), 30, 64),
    "mnist1d-cnn": Task("mnist1d-cnn", data_lib.load_mnist1d,
                        lambda c: models.CNN1D(num_classes=c), 30, 64),
}


@dataclasses.dataclass
class Protocol:
  """What the comparison depends on besides the task and the methods."""
  noise: tuple[float, ...] = (0.0, 0.2, 0.4)
  seeds: int = 10          # final runs, fresh seeds
  tuning_seeds: int = 1    # per configuration (the same for every method)
  configs: int = 8         # per round
  rounds: int = 2
  val_fraction: float = 0.2
  momentum: float = 0.9
  epochs: int | None = None      # None: the task's
  batch_size: int | None = None  # None: the task's

  @property
  def budget(self) -> int:
    """Configurations tried per method, task and noise rate."""
    return self.configs * self.rounds


# --- Search ----------------------------------------------------------------


class Space(NamedTuple):
  """What a spec searches (log-scale ranges) and what it fixes."""
  ranges: dict[str, tuple[float, float]]
  fixed: dict[str, float]
  domains: dict[str, tuple[float, float]]


def search_space(spec: spec_lib.Spec) -> Space:
  """The ranges searched and values fixed for ``spec``.

  ``lr`` and ``wd`` are searched (:data:`LEARNING_RATES`,
  :data:`WEIGHT_DECAY`) unless the spec fixes them; so is each method
  hyperparameter of :data:`SEARCH`, or, for a method not in it, each that
  switches its method off at 0 (within a factor 10 of its default). A spec's
  ``name=value`` fixes, ``name=lo..hi`` searches.

  >>> from gradreg_optax.experiments import spec
  >>> s = search_space(spec.parse("gradient_norm_penalty"))
  >>> sorted(s.ranges), s.fixed
  (['lr', 'r', 'wd'], {'alpha': 0.8})
  """
  method = spec.registry
  ranges = {"lr": LEARNING_RATES[spec.optimizer], "wd": WEIGHT_DECAY}
  fixed: dict[str, float] = {}
  domains = {"lr": (0.0, math.inf), "wd": (0.0, math.inf)}
  for name, h in method.hyperparameters.items():
    domains[name] = h.bounds
    if (spec.method, name) in SEARCH:
      found = SEARCH[spec.method, name]
    elif h.switches_off and h.default > 0:
      lo, hi = h.bounds
      found = (max(h.default / 10, lo), min(h.default * 10, hi))
      if found[1] >= hi:  # an open upper bound: stay inside it
        found = (found[0], h.default + (hi - h.default) * 0.9)
    else:
      found = None
    if found is None:
      fixed[name] = h.default
    else:
      ranges[name] = found
  for name, value in spec.fixed.items():
    ranges.pop(name, None)
    fixed[name] = value
  for name, value in spec.ranges.items():
    fixed.pop(name, None)
    ranges[name] = value
  return Space(ranges, fixed, domains)


def latin_hypercube(n: int, names: Sequence[str], seed: int
                    ) -> dict[str, np.ndarray]:
  """``n`` points in ``[0, 1)`` per name, one in each of ``n`` strata.

  Each name's draws come from its own seeded stream, so that the points of
  ``lr`` and ``wd`` are the same whatever the other names.
  """
  out = {}
  for name in names:
    rng = np.random.default_rng([seed, *map(ord, name)])
    out[name] = (rng.permutation(n) + rng.random(n)) / n
  return out


def sample(box: dict[str, tuple[float, float]], n: int, seed: int
           ) -> list[dict[str, float]]:
  """``n`` configurations of a Latin hypercube in ``box``, log scale."""
  u = latin_hypercube(n, list(box), seed)
  return [{k: float(math.exp(math.log(lo) + u[k][i]
                             * (math.log(hi) - math.log(lo))))
           for k, (lo, hi) in box.items()} for i in range(n)]


def refine(box: dict[str, tuple[float, float]], best: dict[str, float],
           domains: dict[str, tuple[float, float]]
           ) -> dict[str, tuple[float, float]]:
  """A box of half the log width of ``box``, centred on ``best``."""
  out = {}
  for k, (lo, hi) in box.items():
    half = (math.log(hi) - math.log(lo)) / 4
    a, b = math.exp(math.log(best[k]) - half), math.exp(math.log(best[k])
                                                        + half)
    dlo, dhi = domains[k]
    out[k] = (max(a, dlo) if dlo > 0 else a,
              min(b, dhi * (1 - 1e-6)) if math.isfinite(dhi) else b)
  return out


# --- Training ---------------------------------------------------------------


class Batch(NamedTuple):
  """The per-run inputs of a vmapped call (leading axis: runs)."""
  keys: jax.Array       # (R, 2) uint32
  train_idx: jax.Array  # (R, n_train) into the pool
  val_idx: jax.Array    # (R, n_val)
  labels: jax.Array     # (R, pool): noisy labels of the pool
  hyper: dict[str, jax.Array]  # name -> (R,)


def _flags(steps: int, every_k: int) -> list[bool]:
  return [i % every_k == 0 for i in range(steps)]


def gradients_per_step(spec: spec_lib.Spec, steps_per_epoch: int) -> float:
  """Gradient evaluations per step, from the steps of an epoch that recompute.

  Amortized periods restart with each epoch, so an epoch of ``n`` steps
  recomputes ``ceil(n / every_k)`` times.
  """
  extra = spec.registry.extra_gradients
  recomputes = sum(_flags(steps_per_epoch, spec.every_k))
  return 1.0 + extra * recomputes / steps_per_epoch


def epochs_of(spec: spec_lib.Spec, epochs: int) -> int:
  return max(1, int(round(epochs * spec.budget)))


def make_optimizer(spec: spec_lib.Spec, tx_method: Any, lr: Any, wd: Any,
                   total_steps: int, momentum: float) -> Any:
  """The method's transformation, then weight decay and the optimizer."""
  schedule = optax.cosine_decay_schedule(lr, total_steps)
  if spec.every_k > 1:
    tx_method = gro.amortized(tx_method, spec.every_k)
  if spec.optimizer == "adamw":
    return optax.chain(tx_method, optax.adamw(schedule, weight_decay=wd))
  return optax.chain(tx_method, optax.add_decayed_weights(wd),
                     optax.sgd(schedule, momentum=momentum or None))


def build(spec: spec_lib.Spec, loss_fn: Any, hyper: dict[str, Any]
          ) -> gro.Regularized:
  """``gro.METHODS[spec.method](loss_fn, **hyper)``, for traced values too.

  ``gro.flooding`` takes its level ``b`` as a plain number only; a searched
  (traced) level travels in the loss instead: ``|(L - b) - 0| + 0`` has the
  gradient of flooding ``L`` at level ``b``.
  """
  if spec.method == "flooding" and isinstance(hyper.get("b"), jax.Array):
    b = hyper["b"]
    return spec.registry(lambda p, batch: loss_fn(p, batch) - b, b=0.0)
  return spec.registry(loss_fn, **hyper)


def _cross_entropy(model):
  def loss_fn(params, batch):
    x, y = batch
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss_fn


def make_trainer(task: Task, spec: spec_lib.Spec, protocol: Protocol,
                 num_classes: int, num_train: int
                 ) -> Callable[..., dict[str, jax.Array]]:
  """``train(batch: Batch, x_pool, x_test, y_test) -> metrics``, jitted.

  One run trains ``task``'s model with ``spec`` for its epochs of shuffled
  batches of its training indices, evaluates the validation accuracy after
  every epoch, keeps the best parameters (early stopping) and returns
  ``best_val``, ``best_epoch`` (1-based), ``test`` (accuracy of the kept
  parameters), ``test_last`` (of the last), ``val_curve`` and
  ``finite`` (whether the last parameters are finite). All runs of ``batch``
  at once, ``vmap``-ed.
  """
  model = task.model(num_classes)
  loss_fn = _cross_entropy(model)
  batch_size = protocol.batch_size or task.batch_size
  steps = num_train // batch_size
  epochs = epochs_of(spec, protocol.epochs or task.epochs)
  total = steps * epochs
  k = spec.every_k
  names = list(spec.registry.hyperparameters)
  space = search_space(spec)  # the fixed values stay Python numbers

  def correct(params, x, y):
    return jnp.argmax(model.apply({"params": params}, x), -1) == y

  def one(b: Batch, x_pool, x_test, y_test):
    init_key, shuffle_key = jax.random.split(b.keys)
    params = model.init(init_key, x_pool[:1])["params"]
    hyper = {**space.fixed, **b.hyper}
    reg = build(spec, loss_fn, {n: hyper[n] for n in names})
    tx = make_optimizer(spec, reg.tx, hyper["lr"], hyper["wd"], total,
                        protocol.momentum)
    opt_state = tx.init(params)

    def step(carry, idx, recompute=None):
      params, opt_state = carry
      batch = (x_pool[idx], b.labels[idx])
      grads = jax.grad(reg.loss_fn)(params, batch)
      extra = {} if recompute is None else {"recompute": recompute}
      updates, opt_state = tx.update(grads, opt_state, params, batch=batch,
                                     **extra)
      return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry, e):
      params, opt_state, best_params, best_val, best_epoch = carry
      order = jax.random.permutation(jax.random.fold_in(shuffle_key, e),
                                     b.train_idx)[:steps * batch_size]
      idx = order.reshape(steps, batch_size)
      if k == 1:
        state, _ = jax.lax.scan(step, (params, opt_state), idx)
      else:  # recomputing on steps 0, k, 2k, ... of the epoch
        state, _ = gro.amortized_scan(step, (params, opt_state), idx,
                                      every_k=k)
      params, opt_state = state
      val = jnp.mean(correct(params, x_pool[b.val_idx], b.labels[b.val_idx]))
      better = val > best_val
      best_params = jax.tree.map(lambda n, o: jnp.where(better, n, o),
                                 params, best_params)
      return ((params, opt_state, best_params, jnp.maximum(val, best_val),
               jnp.where(better, e + 1, best_epoch)), val)

    carry = (params, opt_state, params, jnp.asarray(-1.0), jnp.asarray(0))
    (params, _, best_params, best_val, best_epoch), curve = jax.lax.scan(
        epoch, carry, jnp.arange(epochs))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                for p in jax.tree.leaves(params)]))
    return {"best_val": best_val, "best_epoch": best_epoch,
            "test": jnp.mean(correct(best_params, x_test, y_test)),
            "test_last": jnp.mean(correct(params, x_test, y_test)),
            "val_curve": curve, "finite": finite}

  return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


# --- One method on one task -------------------------------------------------


class Prepared(NamedTuple):
  """A task's data on the device and its per-seed splits and labels."""
  task: Task
  data: data_lib.Dataset
  x_pool: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  num_train: int
  num_val: int


def prepare(task: Task, protocol: Protocol,
            dataset: data_lib.Dataset | None = None) -> Prepared:
  data = dataset if dataset is not None else task.load()
  pool = len(data.y_train)
  num_val = int(round(protocol.val_fraction * pool))
  return Prepared(task, data, jnp.asarray(data.x_train),
                  jnp.asarray(data.x_test), jnp.asarray(data.y_test),
                  pool - num_val, num_val)


def _seed_data(p: Prepared, protocol: Protocol, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  train_idx, val_idx = split(len(p.data.y_train), protocol.val_fraction, seed)
  labels = np.stack([symmetric_label_noise(p.data.y_train, r,
                                           p.data.num_classes, seed)
                     for r in protocol.noise])
  return train_idx, val_idx, labels


def _rows(p: Prepared, protocol: Protocol,
          rows: Sequence[tuple[int, int, dict[str, float]]], size: int,
          cache: dict[int, Any]) -> Batch:
  """Stacks ``(noise index, seed, hyperparameters)`` rows, padded to size."""
  rows = list(rows) + [rows[-1]] * (size - len(rows))
  keys, tr, va, lab = [], [], [], []
  for i, seed, _ in rows:
    if seed not in cache:
      cache[seed] = _seed_data(p, protocol, seed)
    train_idx, val_idx, labels = cache[seed]
    keys.append(np.asarray(jax.random.PRNGKey(seed)))
    tr.append(train_idx)
    va.append(val_idx)
    lab.append(labels[i])
  names = rows[0][2].keys()
  return Batch(jnp.asarray(np.stack(keys)), jnp.asarray(np.stack(tr)),
               jnp.asarray(np.stack(va)), jnp.asarray(np.stack(lab)),
               {n: jnp.asarray([r[2][n] for r in rows], jnp.float32)
                for n in names})


def at_edge(chosen: dict[str, float], tried: Sequence[dict[str, float]],
            ranges: dict[str, tuple[float, float]]) -> dict[str, str | None]:
  """Per searched name: ``"low"``/``"high"`` where the chosen value is the
  smallest/largest tried, else ``None``."""
  out = {}
  for k in ranges:
    values = [t[k] for t in tried]
    out[k] = ("low" if chosen[k] <= min(values) else
              "high" if chosen[k] >= max(values) else None)
  return out


def run_method(p: Prepared, spec: spec_lib.Spec, protocol: Protocol, *,
               search_seed: int = 0, verbose: bool = False
               ) -> dict[str, Any]:
  """Tunes ``spec`` on ``p``'s task for every noise rate, then runs it.

  Returns:
    A JSON-ready dict: ``spec``, ``method``, ``per_noise`` (one record per
    noise rate: ``chosen``, ``grid`` (the bounds searched), ``at_edge``,
    ``tried`` (configurations with their validation score), ``val``,
    ``seeds``, ``test`` (per final seed, early stopped), ``test_last``,
    ``best_epoch``), ``gradients_per_step``, ``epochs``, ``steps``,
    ``train_s`` (wall time of the training calls, compilation included).
  """
  space = search_space(spec)
  trainer = make_trainer(p.task, spec, protocol, p.data.num_classes,
                         p.num_train)
  noise = protocol.noise
  tuning_seeds = list(range(protocol.tuning_seeds))
  final_seeds = [FINAL_SEED + s for s in range(protocol.seeds)]
  size = max(len(noise) * protocol.configs * len(tuning_seeds),
             len(noise) * len(final_seeds))
  cache: dict[int, Any] = {}
  t0 = time.perf_counter()

  def train(rows):
    out = jax.device_get(trainer(_rows(p, protocol, rows, size, cache),
                                 p.x_pool, p.x_test, p.y_test))
    return {k: np.asarray(v)[:len(rows)] for k, v in out.items()}

  boxes = [dict(space.ranges)] * len(noise)
  tried: list[list[dict[str, Any]]] = [[] for _ in noise]
  for r in range(protocol.rounds):
    configs = [sample(boxes[i], protocol.configs, search_seed + r)
               if boxes[i] else [{}] * protocol.configs
               for i in range(len(noise))]
    rows = [(i, s, c) for i in range(len(noise)) for c in configs[i]
            for s in tuning_seeds]
    out = train(rows)
    val = out["best_val"].reshape(len(noise), protocol.configs,
                                  len(tuning_seeds)).mean(-1)
    for i in range(len(noise)):
      for j, c in enumerate(configs[i]):
        tried[i].append({"round": r + 1, **c, "val": float(val[i, j])})
      best = max(tried[i], key=lambda t: t["val"])  # the first of the best
      if boxes[i]:
        boxes[i] = refine(boxes[i], best, space.domains)
    if verbose:
      print(f"    {spec.text}: round {r + 1} "
            f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
            flush=True)
  chosen = []
  for i in range(len(noise)):
    best = max(tried[i], key=lambda t: t["val"])
    chosen.append({k: best[k] for k in space.ranges})
  rows = [(i, s, chosen[i]) for i in range(len(noise)) for s in final_seeds]
  out = train(rows)
  n = len(final_seeds)
  batch_size = protocol.batch_size or p.task.batch_size
  steps = p.num_train // batch_size
  per_noise = []
  for i, rate in enumerate(noise):
    sl = slice(i * n, (i + 1) * n)
    grid = {k: [min(t[k] for t in tried[i]), max(t[k] for t in tried[i])]
            for k in space.ranges}
    per_noise.append({
        "noise": rate, "chosen": {**space.fixed, **chosen[i]},
        "searched": sorted(space.ranges), "grid": grid,
        "at_edge": at_edge(chosen[i], tried[i], space.ranges),
        "tried": tried[i],
        "val": float(max(t["val"] for t in tried[i])),
        "seeds": final_seeds,
        "test": out["test"][sl].astype(float).tolist(),
        "test_last": out["test_last"][sl].astype(float).tolist(),
        "best_epoch": out["best_epoch"][sl].astype(int).tolist(),
        "finite": bool(np.all(out["finite"][sl])),
    })
  return {"spec": spec.text, "method": spec.method,
          "label": _label(spec), "optimizer": spec.optimizer,
          "every_k": spec.every_k, "budget": spec.budget,
          "epochs": epochs_of(spec, protocol.epochs or p.task.epochs),
          "steps_per_epoch": steps,
          "gradients_per_step": gradients_per_step(spec, steps),
          "configurations": protocol.budget, "per_noise": per_noise,
          "train_s": time.perf_counter() - t0}


def _label(spec: spec_lib.Spec) -> str:
  if spec.text == "adamw":
    return "AdamW"
  label = spec.registry.label
  if spec.optimizer == "adamw":
    label += " + AdamW"
  if spec.every_k > 1:
    label += f", every {spec.every_k}"
  if spec.budget != 1:
    label += f" ({spec.budget:g}x epochs)"
  fixed = {k: v for k, v in spec.fixed.items()}
  if fixed:
    label += " (" + ", ".join(f"{k}={v:g}" for k, v in fixed.items()) + ")"
  return label


# --- Time ---------------------------------------------------------------------


def time_steps(p: Prepared, specs: Sequence[spec_lib.Spec],
               protocol: Protocol, rounds: int = 15, periods: int = 2
               ) -> dict[str, float]:
  """Median seconds per training step of one run of each spec.

  Each spec's step (one run, not vmapped, at its default hyperparameters,
  amortized ones choosing on the host) is compiled and run first (excluded);
  then the specs take turns, ``periods * lcm`` steps each for ``rounds``
  rounds (``lcm`` of the ``every_k`` values, so that an amortized method is
  charged its average), so that a change in the machine's load affects all
  alike. Returns the median over rounds of the time per step.
  """
  batch_size = protocol.batch_size or p.task.batch_size
  model = p.task.model(p.data.num_classes)
  loss_fn = _cross_entropy(model)
  x = p.x_pool[:batch_size]
  y = jnp.asarray(p.data.y_train[:batch_size])
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  lcm = math.lcm(*(s.every_k for s in specs))
  prepared = {}
  for spec in specs:
    space = search_space(spec)
    hyper = {**{k: math.sqrt(lo * hi) for k, (lo, hi) in space.ranges.items()},
             **space.fixed}
    reg = build(spec, loss_fn, {n: hyper[n]
                                for n in spec.registry.hyperparameters})
    tx = make_optimizer(spec, reg.tx, hyper["lr"], hyper["wd"], 1000,
                        protocol.momentum)

    def step(params, opt_state, x, y, recompute=None, reg=reg, tx=tx):
      grads = jax.grad(reg.loss_fn)(params, (x, y))
      extra = {} if recompute is None else {"recompute": recompute}
      updates, opt_state = tx.update(grads, opt_state, params, batch=(x, y),
                                     **extra)
      return optax.apply_updates(params, updates), opt_state

    jitted = jax.jit(step, static_argnames="recompute")
    flags = ([None] * lcm if spec.every_k == 1
             else _flags(lcm, spec.every_k))
    state = (params, tx.init(params))
    for f in flags:  # compile and warm up
      state = jitted(*state, x, y, recompute=f)
    jax.block_until_ready(state)
    prepared[spec.text] = [jitted, state, flags]
  times: dict[str, list[float]] = {k: [] for k in prepared}
  for _ in range(rounds):
    for text, item in prepared.items():
      jitted, state, flags = item
      t0 = time.perf_counter()
      for _ in range(periods):
        for f in flags:
          state = jitted(*state, x, y, recompute=f)
      jax.block_until_ready(state)
      times[text].append((time.perf_counter() - t0) / (periods * len(flags)))
      item[1] = state
  return {k: float(np.median(v)) for k, v in times.items()}
