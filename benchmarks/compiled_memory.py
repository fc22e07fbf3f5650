"""Compiled temporary memory of every method's train step, library and
hand-written, from XLA's memory analysis (deterministic for a program).

Each step is the caller's gradient, the method and SGD with momentum, with
parameters, optimizer state and BatchNorm statistics donated
(``common.library_step`` / ``common.hand_step``). Besides every method, the
table has Optax's own SAM, SAM with a cosine schedule on ``rho`` and inside
``optax.inject_hyperparams`` (traced ``rho``), and SAM amortized over 4 steps
with the choice made on the device (``lax.cond``) or on the host (the
recomputing and the reusing program).

    python compiled_memory.py                                  # MLP 8x1024, ResNet-18
    python compiled_memory.py --models mlp:8 --out /tmp/m.json
    python compiled_memory.py --models mlp:8 --methods gsam wsam
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import optax

import common
import gradreg_optax as gro


def problem_for(spec: str, args) -> common.Problem:
  kind, size = spec.split(":")
  if kind == "mlp":
    return common.mlp_problem(int(size), args.width, args.mlp_batch)
  if kind == "resnet":
    return common.resnet_problem(int(size), width=args.resnet_width)
  raise ValueError(spec)


def _step_with(problem, tx, recompute=None):
  """A library-style step around an arbitrary first transformation."""
  opt = optax.chain(tx, common.optimizer())

  def step(params, opt_state, model_state, x, y):
    batch = problem.batch(model_state, x, y)
    loss, g, new_state = common._own_gradient(problem, params, batch)  # pylint: disable=protected-access
    extra = {} if recompute is None else {"recompute": recompute}
    updates, opt_state = opt.update(g, opt_state, params, batch=batch,
                                    **extra)
    return optax.apply_updates(params, updates), opt_state, new_state, loss

  return opt, step


def temp_mib(problem, tx_and_step) -> float:
  tx, step = tx_and_step
  params, model_state, x, y = problem.args()
  cost = gro.cost.step_cost(jax.jit(step, donate_argnums=(0, 1, 2)), params,
                            tx.init(params), model_state, x, y)
  return cost.temp_bytes / 2**20


def variants(problem, methods=common.LIBRARY_METHODS):
  """(name, hand-written counterpart or None, tx_and_step); SAM's settings
  (Optax's SAM, schedule, injected, amortized) where ``methods`` has SAM."""
  loss = problem.loss_fn
  aux = problem.has_aux
  sam = lambda rho: gro.sam(loss, rho, has_aux=aux)
  out = [("sgd", None, common.library_step(problem, None))]
  for m in methods:
    out.append((f"lib:{m}", f"hand:{m}", common.library_step(problem, m)))
    out.append((f"hand:{m}", None, common.hand_step(problem, m)))
  if "sam" not in methods:
    return out
  out += [
      (f"lib:{common.OPTAX_SAM}", "hand:sam",
       common.library_step(problem, common.OPTAX_SAM)),
      ("lib:sam, rho cosine schedule", "hand:sam",
       _step_with(problem, sam(optax.cosine_decay_schedule(0.05, 100)))),
      ("lib:sam, rho injected", "hand:sam", _step_with(
          problem, optax.inject_hyperparams(
              gro.sam, static_args=("loss_fn", "has_aux"))(
                  loss, rho=0.05, has_aux=aux))),
      ("lib:sam amortized k=4, lax.cond", "hand:sam",
       _step_with(problem, gro.amortized(sam(0.05), 4))),
      ("lib:sam amortized k=4, host: recompute", "hand:sam",
       _step_with(problem, gro.amortized(sam(0.05), 4), recompute=True)),
      ("lib:sam amortized k=4, host: reuse", "hand:sam",
       _step_with(problem, gro.amortized(sam(0.05), 4), recompute=False)),
  ]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["mlp:8", "resnet:32"],
                      help="mlp:<depth> or resnet:<batch>")
  parser.add_argument("--methods", nargs="+",
                      default=list(common.LIBRARY_METHODS),
                      choices=common.LIBRARY_METHODS,
                      help="methods of gro.METHODS (default: all that "
                      "transform)")
  parser.add_argument("--width", type=int, default=1024, help="MLP width")
  parser.add_argument("--mlp-batch", type=int, default=256)
  parser.add_argument("--resnet-width", type=int, default=64)
  parser.add_argument("--out", default=None,
                      help="JSON path (default results/memory_<device>.json;"
                      " a .md is written beside it)")
  args = parser.parse_args()
  env = common.environment()
  doc = {"environment": env, "models": {}}
  lines = [f"# Compiled temporary memory (MiB): {env['device']}", "",
           f"Command: `{env['command']}`  ",
           f"jax {env['jax']}, optax {env['optax']}, flax {env['flax']}.", ""]
  for spec in args.models:
    problem = problem_for(spec, args)
    rows = {}
    for name, hand, tx_and_step in variants(problem, tuple(args.methods)):
      rows[name] = {"temp_mib": temp_mib(problem, tx_and_step), "hand": hand}
      print(f"{problem.name:24s} {name:40s} {rows[name]['temp_mib']:9.1f}",
            flush=True)
    for row in rows.values():
      ref = rows.get(row["hand"])
      row["over_hand"] = (row["temp_mib"] / ref["temp_mib"] if ref else None)
    doc["models"][problem.name] = rows
    lines += [f"## {problem.name}", "", "| variant | temp MiB | over "
              "hand-written |", "|---|---|---|"]
    lines += [f"| {name} | {r['temp_mib']:.1f} | "
              + (f"{r['over_hand']:.3f}" if r["over_hand"] else "-") + " |"
              for name, r in rows.items()]
    lines.append("")
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "results", f"memory_{common.device_slug()}"
                                 ".json")
  with open(out, "w") as f:
    json.dump(doc, f, indent=1)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  sys.exit(main())
