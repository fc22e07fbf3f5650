"""Step cost of the transformer LM on Flax NNX: every method against AdamW.

The model, loss and optimizer are those of
``gradreg_optax.experiments.transformer`` (byte-level decoder-only
transformer with Dropout; the method's transformation, global-norm clipping,
then AdamW with its weight-decay mask). Variants:

* ``adamw``: AdamW alone, the plain NNX step ``nnx.value_and_grad`` then
  ``optimizer.update``;
* every method of ``gro.METHODS`` that adds a transformation (default), the
  registry's hyperparameters, each step through ``gro.nnx_step``.

Each step is made pure with ``nnx.split`` (merge, step, ``nnx.state``, as
``nnx.jit`` does) and jitted with the model and optimizer state donated, so
that XLA's memory analysis of the compiled program applies. Reported per
variant: (1) the compiled temporary memory and its ratio to AdamW's, (2) the
matrix products in the compiled program (``gro.cost.count_matmuls``), and (3)
the wall-clock time per step relative to AdamW: compilation and two warm-up
steps excluded, variants interleaved in rounds with a rotating order, a
sample being the mean of ``inner`` steps ended by a device sync, the median
over rounds of the ratio to AdamW's sample of the same round.

  python transformer_cost.py                      # this device, default sizes
  python transformer_cost.py --methods sam forward --rounds 10

(run in this folder; results go to ``results/transformer_<device>.json`` and
``.md``, with the sizes in the name where they are not the defaults, unless
``--out`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

import common
import gradreg_optax as gro
from gradreg_optax.experiments import transformer as tlm

DEFAULT_METHODS = tuple(n for n, m in gro.METHODS.items() if m.transforms)


def log(*a):
  print(*a, flush=True)


def _memory(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes",
            "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
  return {f: int(getattr(m, f)) for f in fields}


def build(name: str, config: tlm.ModelConfig, batch: Any) -> dict[str, Any]:
  """The compiled pure step of one variant, its state, memory and products."""
  method = tlm.parse_method(name)
  model = tlm.TransformerLM(config, rngs=nnx.Rngs(params=0, dropout=1))
  optimizer, train_loss = tlm.make_optimizer(model, method, 1e-3)
  if method.transforms:
    def step(model, optimizer, batch):
      return gro.nnx_step(model, optimizer, train_loss, batch)
  else:
    def step(model, optimizer, batch):
      loss, grads = nnx.value_and_grad(train_loss)(model, batch)
      optimizer.update(model, grads)
      return loss
  graphdef, state = nnx.split((model, optimizer))

  def pure_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    loss = step(model, optimizer, batch)
    return nnx.state((model, optimizer)), loss

  t0 = time.perf_counter()
  compiled = jax.jit(pure_step, donate_argnums=0).lower(state, batch).compile()
  return {"name": name, "label": method.label, "compiled": compiled,
          "state": state, "compile_s": time.perf_counter() - t0,
          "memory": _memory(compiled),
          "matmuls": gro.cost.count_matmuls(compiled.as_text())}


def measure(names: Sequence[str], config: tlm.ModelConfig, batch_size: int,
            rounds: int, sample_ms: float) -> list[dict[str, Any]]:
  """Compiles and times every variant; ``names[0]`` is the baseline."""
  corpus = tlm.load_corpus()
  batch = jax.device_put(next(tlm.train_batches(
      corpus, batch_size, config.block_size, seed=0)))
  entries = []
  for name in names:
    e = build(name, config, batch)
    log(f"  compiled {e['label']:<40} {e['compile_s']:6.1f} s, "
        f"{e['matmuls']} products, temp "
        f"{e['memory']['temp_size_in_bytes'] / 2**20:.1f} MiB")
    entries.append(e)

  def run(e, n):
    state, loss = e["state"], None
    for _ in range(n):
      state, loss = e["compiled"](state, batch)
    e["state"] = state
    return jax.block_until_ready(loss)

  for e in entries:
    run(e, 2)  # warm-up
  base = entries[0]
  t0 = time.perf_counter()
  run(base, 3)
  inner = max(1, math.ceil(sample_ms / 1e3 / ((time.perf_counter() - t0) / 3)))
  log(f"  {base['label']} ~{(time.perf_counter() - t0) / 3 * 1e3:.1f} ms/step;"
      f" {rounds} rounds x {inner} steps per sample")
  times = {e["name"]: [] for e in entries}
  for r in range(rounds):
    k = r % len(entries)
    for e in entries[k:] + entries[:k]:
      t0 = time.perf_counter()
      run(e, inner)
      times[e["name"]].append((time.perf_counter() - t0) / inner)
    if (r + 1) % max(1, rounds // 5) == 0:
      log(f"  round {r + 1}/{rounds}")

  base_t = np.array(times[base["name"]])
  base_temp = base["memory"]["temp_size_in_bytes"]
  out = []
  for e in entries:
    t = np.array(times[e["name"]])
    ratio = t / base_t
    temp = e["memory"]["temp_size_in_bytes"]
    out.append({
        "variant": e["name"], "label": e["label"],
        "matmuls": e["matmuls"],
        "matmuls_ratio": e["matmuls"] / base["matmuls"],
        "temp_bytes": temp, "temp_ratio": temp / base_temp,
        "memory": e["memory"],
        "compile_s": round(e["compile_s"], 2),
        "median_ms": float(np.median(t) * 1e3),
        "ratio_median": float(np.median(ratio)),
        "ratio_q25": float(np.percentile(ratio, 25)),
        "ratio_q75": float(np.percentile(ratio, 75)),
        "samples": len(t), "inner": inner,
    })
  return out


def table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| variant | step ms | time / AdamW (IQR) | products (/ AdamW) | "
           "temp MiB | temp / AdamW |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['label']} | {r['median_ms']:.1f} | {r['ratio_median']:.2f} "
        f"({r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}) | {r['matmuls']} "
        f"({r['matmuls_ratio']:.2f}) | {r['temp_bytes'] / 2**20:.1f} | "
        f"{r['temp_ratio']:.2f} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                      help="registry names, optionally with hyperparameters "
                      "(sam:rho=0.1); AdamW alone always runs first")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--block-size", type=int, default=64)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--layers", type=int, default=3)
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--sample-ms", type=float, default=300.0,
                      help="length of one timing sample")
  parser.add_argument("--out", default=None,
                      help="JSON path (default: results/transformer_"
                      "[<sizes>_]<device>.json); a .md beside it")
  args = parser.parse_args(argv)
  names = [tlm.BASELINE] + [m for m in args.methods if m != tlm.BASELINE]
  try:
    for n in names:
      tlm.parse_method(n)
  except ValueError as e:
    parser.error(str(e))
  config = tlm.ModelConfig(block_size=args.block_size, dim=args.dim,
                           num_heads=args.heads, num_layers=args.layers,
                           dropout=args.dropout)
  env = common.environment()
  log(f"{env['device']} ({os.cpu_count()} CPU cores), jax {env['jax']}, "
      f"optax {env['optax']}, flax {env['flax']}")
  t0 = time.perf_counter()
  rows = measure(names, config, args.batch_size, args.rounds, args.sample_ms)
  model = tlm.TransformerLM(config, rngs=nnx.Rngs(0))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model,
                                                             nnx.Param)))
  title = (f"Transformer LM ({num_params:,} parameters: {args.layers} layers, "
           f"dim {args.dim}, {args.heads} heads, context {args.block_size}, "
           f"dropout {args.dropout}), batch {args.batch_size}, float32, on "
           f"{env['device']} ({os.cpu_count()} CPU cores); jax {env['jax']}, "
           f"optax {env['optax']}, flax {env['flax']}. Median of "
           f"{args.rounds} interleaved rounds; temp = XLA's compiled "
           "temporary memory.")
  text = title + "\n\n" + table(rows)
  print(text)
  result = {"environment": env, "cpu_count": os.cpu_count(),
            "config": {**vars(args), "num_params": int(num_params)},
            "rows": rows, "wall_s": time.perf_counter() - t0}
  keys = ("layers", "dim", "block_size", "batch_size")
  sizes = tuple(getattr(args, k) for k in keys)
  size_tag = ("" if sizes == tuple(parser.get_default(k) for k in keys)
              else "L{}_d{}_T{}_b{}_".format(*sizes))
  out = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"transformer_{size_tag}{common.device_slug()}.json")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(f"Command (in `benchmarks/`): `{env['command']}`\n\n{text}\n")
  log(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
