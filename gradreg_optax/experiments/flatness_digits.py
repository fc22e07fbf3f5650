"""Flatness of SGD, F-GR and SAM solutions on scikit-learn digits.

A 64-32-10 tanh MLP (:func:`models.tanh_mlp`) trained on the digits split of
:func:`data.load_digits` with minibatch SGD (batch 64, momentum 0.9) for a
fixed number of steps, plain and with F-GR (``gro.METHODS["forward"]``) or
SAM (``gro.METHODS["sam"]``) chained before ``optax.sgd``; then the measures of
:mod:`gradreg_optax.flatness` on the full training set, over several seeds.

Run: ``python -m gradreg_optax.experiments.flatness_digits --out
docs/results/flatness_digits --figure docs/figures/flatness_digits.png``
(``--quick`` for a tiny run).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

import gradreg_optax as gro
from gradreg_optax import flatness
from gradreg_optax.experiments import _cli
from gradreg_optax.experiments import _report
from gradreg_optax.experiments import data
from gradreg_optax.experiments import models
from gradreg_optax.experiments import stats

MODULE = "gradreg_optax.experiments.flatness_digits"
LOSS = models.tanh_mlp_loss
# Names of gro.METHODS and their hyperparameters.
HYPER = {"sgd": {}, "forward": {"gamma": 0.05, "eps": 0.1},
         "sam": {"rho": 0.05}}
METHODS = tuple(HYPER)
MEASURES = ("train_loss", "test_loss", "test_acc", "top_eigenvalue", "trace",
            "grad_norm_sq", "noise_increase")


def digits() -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """The training and test parts of :func:`data.load_digits` as batches."""
  d = data.load_digits()
  return ((jnp.asarray(d.x_train), jnp.asarray(d.y_train)),
          (jnp.asarray(d.x_test), jnp.asarray(d.y_test)))


def train(method: str, seed: int, steps: int, train_set: Any, *,
          lr: float = 0.1, batch_size: int = 64) -> Any:
  params = models.tanh_mlp_init(jax.random.key(seed))
  regularizer, loss_fn = gro.METHODS[method](LOSS, **HYPER[method])
  tx = optax.chain(regularizer, optax.sgd(lr, momentum=0.9))
  n = train_set[0].shape[0]

  @jax.jit
  def step(carry, key):
    params, state = carry
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    batch = (train_set[0][idx], train_set[1][idx])
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.key(1000 + seed), steps)
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
  return params


def measure(params: Any, train_set: Any, test_set: Any, key: jax.Array
            ) -> dict[str, float]:
  k1, k2, k3 = jax.random.split(key, 3)
  lam, _ = flatness.hessian_top_eigenvalue(LOSS, params, train_set, k1,
                                           num_iters=100)
  return dict(
      train_loss=float(LOSS(params, train_set)),
      test_loss=float(LOSS(params, test_set)),
      test_acc=float(models.tanh_mlp_accuracy(params, test_set)),
      top_eigenvalue=float(lam),
      trace=float(flatness.hessian_trace(LOSS, params, train_set, k2,
                                         num_samples=100)),
      grad_norm_sq=float(flatness.gradient_norm_sq(LOSS, params, train_set)),
      noise_increase=float(flatness.noise_sensitivity(
          LOSS, params, train_set, k3, sigma=0.05, num_samples=64)))


def table(result: dict[str, Any]) -> str:
  """Mean and standard deviation over seeds of every measure, per method."""
  lines = ["| method | " + " | ".join(MEASURES) + " |",
           "|---" * (len(MEASURES) + 1) + "|"]
  for m in METHODS:
    cells = [f"{result['mean'][m][k]:.4g} ± "
             f"{stats.text_or_na(result['std'][m][k], '.2g')}"
             for k in MEASURES]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  keys = ["test_acc", "top_eigenvalue", "trace", "noise_increase"]
  fig, axes = plt.subplots(1, len(keys), figsize=(12, 3))
  for ax, k in zip(axes, keys):
    for i, m in enumerate(METHODS):
      vals = [r[k] for r in result["runs"] if r["method"] == m]
      ax.scatter([i] * len(vals), vals)
    ax.set_xticks(range(len(METHODS)), list(METHODS))
    ax.set_title(k)
  fig.tight_layout()
  _report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  p = _cli.parser("gradreg_optax.experiments.flatness_digits",
                  __doc__.splitlines()[0])
  p.add_argument("--seeds", type=_cli.POSITIVE_INT, default=3,
                 help="number of seeds (0, 1, ...)")
  p.add_argument("--steps", type=_cli.POSITIVE_INT, default=3000,
                 help="training steps")
  p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
  p.add_argument("--figure", default=None, help="write this PNG")
  p.add_argument("--quick", action="store_true",
                 help="one seed, 50 steps (a smoke test)")
  args = p.parse_args(argv)
  _cli.require(p, "sklearn", "scikit-learn", "the digits data set")
  seeds, steps = ([0], 50) if args.quick else (list(range(args.seeds)),
                                               args.steps)
  t0 = time.perf_counter()
  train_set, test_set = digits()
  result = dict(command=_report.command_line(MODULE, argv), steps=steps,
                seeds=seeds, lr=0.1, momentum=0.9, batch_size=64,
                data=dict(name="digits", train=int(train_set[0].shape[0]),
                          test=int(test_set[0].shape[0]),
                          split="data.load_digits()"),
                model="tanh MLP 64-32-10", hyper=HYPER, runs=[])
  for method in METHODS:
    for seed in seeds:
      params = train(method, seed, steps, train_set)
      r = dict(method=method, seed=seed,
               **measure(params, train_set, test_set, jax.random.key(seed)))
      result["runs"].append(r)
      print(r, flush=True)
  for stat in ("mean", "std"):
    result[stat] = {m: {k: stats.summary([r[k] for r in result["runs"]
                                          if r["method"] == m])[stat]
                        for k in MEASURES} for m in METHODS}
  result["wall_s"] = time.perf_counter() - t0
  text = (f"digits ({result['data']['train']} train / "
          f"{result['data']['test']} test), {result['model']}, SGD momentum "
          f"0.9, lr 0.1, batch 64, {steps} steps; measures on the full "
          f"training set, mean ± sample std over seeds {seeds}\n\n"
          + table(result))
  _report.publish(result, text, args.out, args.figure, plot)
  return result


if __name__ == "__main__":
  main()
