"""Cost of amortized GR (``every_k``) with the recompute choice made on the host.

For each ``k`` the step is compiled twice, once recomputing the correction and
once reusing it (``update(..., recompute=<Python bool>)``), so the programs
hold no ``lax.cond``; a period of ``k`` steps runs one recompute and ``k - 1``
reuses. Timed side by side with plain SGD, full F-GR/SAM and, with
``--cond``, the on-device choice (``lax.cond``, the default); variants
interleaved over rounds, warm-up and compilation excluded; the ratio to SGD
is the median over rounds.

    python benchmarks/amortized_cost.py                 # ResNet-18, batch 128
    python benchmarks/amortized_cost.py --quick         # tiny dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position


def _step(problem, method, every_k):
  tx = optax.chain(common.transformation(problem, method, every_k),
                   common.optimizer()) if method else common.optimizer()

  def step(params, opt_state, model_state, x, y, recompute):
    batch = problem.batch(model_state, x, y)
    loss, g, new_state = common._own_gradient(problem, params, batch)  # pylint: disable=protected-access
    extra = {} if recompute is None else {"recompute": recompute}
    updates, opt_state = tx.update(g, opt_state, params, batch=batch, **extra)
    return optax.apply_updates(params, updates), opt_state, new_state, loss

  return tx, jax.jit(step, donate_argnums=(0, 1, 2), static_argnums=5)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10])
  parser.add_argument("--methods", nargs="+", default=["forward", "sam"])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--cond", action="store_true",
                      help="also time the on-device choice (lax.cond)")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.quick:
    args.batch, args.width, args.rounds, args.ks = 8, 8, 3, [2]
    args.methods = args.methods[:1]

  problem = common.resnet_problem(args.batch, width=args.width)
  period = math.lcm(*args.ks)
  # (name, method, every_k, schedule of `recompute` over one period)
  variants = [("sgd", None, 1, [None] * period)]
  for method in args.methods:
    variants.append((f"{method}", method, 1, [None] * period))
    for k in args.ks:
      host = [i % k == 0 for i in range(period)]
      variants.append((f"{method}:k{k}:host", method, k, host))
      if args.cond:
        variants.append((f"{method}:k{k}:cond", method, k, [None] * period))

  runs, steps = [], {}
  for name, method, k, schedule in variants:
    # With the choice made on the host the two programs do not depend on k:
    # compile them once per method.
    key = (method, "host" if schedule[0] is not None else k)
    if key not in steps:
      steps[key] = _step(problem, method, k)
    tx, step = steps[key]
    params, model_state, x, y = problem.args()
    state = [jax.tree.map(lambda a: a.copy(), params), tx.init(params),
             jax.tree.map(lambda a: a.copy(), model_state)]
    t0 = time.perf_counter()
    for choice in sorted(set(schedule), key=str):  # compile + warm up
      state = list(step(*state, x, y, choice)[:3])
    jax.block_until_ready(state)
    runs.append(dict(name=name, method=method, every_k=k, schedule=schedule,
                     step=step, state=state, times=[],
                     compile_and_warmup_s=time.perf_counter() - t0))
    print(f"compiled {name}", flush=True)

  for r in range(args.rounds):
    shift = r % len(runs)
    for run in runs[shift:] + runs[:shift]:
      state = run["state"]
      t0 = time.perf_counter()
      for choice in run["schedule"]:
        *state, loss = run["step"](*state, problem.x, problem.y, choice)
      loss.block_until_ready()
      run["times"].append((time.perf_counter() - t0) / period)
      run["state"] = state

  base = np.array(runs[0]["times"])
  env = common.environment()
  rows = []
  print(f"\n{env['device']}, ResNet-18 batch {args.batch}, jax {env['jax']}")
  print(f"{'variant':<20} {'ms/step':>8} {'x SGD':>6} {'IQR':>14} "
        f"{'ideal':>6}")
  for run in runs:
    t = np.array(run["times"])
    ratio = t / base
    k, extra = run["every_k"], 0 if run["method"] is None else 1
    row = dict(variant=run["name"], every_k=k,
               median_ms=float(np.median(t) * 1e3),
               ratio_median=float(np.median(ratio)),
               ratio_q25=float(np.percentile(ratio, 25)),
               ratio_q75=float(np.percentile(ratio, 75)),
               ideal=1 + extra / k,
               compile_and_warmup_s=run["compile_and_warmup_s"])
    rows.append(row)
    print(f"{row['variant']:<20} {row['median_ms']:8.3f} "
          f"{row['ratio_median']:6.2f} [{row['ratio_q25']:.2f}, "
          f"{row['ratio_q75']:.2f}] {row['ideal']:6.2f}")
  out = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"amortized_{common.device_slug()}.json")
  with open(out, "w") as f:
    json.dump({"environment": env, "batch": args.batch, "width": args.width,
               "rounds": args.rounds, "period_steps": period, "rows": rows},
              f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
