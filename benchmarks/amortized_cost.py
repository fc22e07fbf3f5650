"""Cost of amortization (``gro.amortized``): the choice made on the host
and in a scan against the choice made on the device, time and compiled
memory.

Three patterns, for each model, method and ``k``:

* ``host``: the documented Python loop, ``gro.amortized_step(step)``: the
  step is compiled twice (recomputing, reusing; ``recompute`` a Python bool)
  and the host picks the program. Timed over whole periods of ``k`` steps
  through ``amortized_step`` itself.
* ``scan``: the documented ``lax.scan`` loop, ``gro.amortized_scan``: one
  jitted call runs ``steps`` steps (the least common multiple of the ``k``s,
  repeated to about a sample) in periods of ``k``; its ratio is to plain SGD
  run by ``lax.scan`` over the same steps.
* ``device``: ``update`` without ``recompute``: one program with a
  ``lax.cond``. Its two branches are timed as steps of their own (the
  branch forced by ``recompute=<boolean array>``, the same program) and a
  period is composed as ``(recompute + (k - 1) reuse) / k``: a recomputing
  step of a convolutional network takes tens of SGD steps here, too slow to
  run whole periods.

Every variant is interleaved with plain SGD in rounds of rotating order
(compilation and warm-up excluded); a sample is ``inner`` steps ended by a
device sync; the ratio to SGD is the median over rounds of the per-round
ratio. Memory is XLA's memory analysis of each compiled program
(temporaries; parameters, optimizer state and BatchNorm statistics donated):
``host`` lists its recomputing program (the larger), ``device`` the one
program; ``scan`` the whole scanned program. ``ideal`` is ``1 + extra / k``
(one extra gradient for the methods here).

    python amortized_cost.py --models mlp cnn resnet --ks 2 4 10
    python amortized_cost.py --quick                     # tiny dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=wrong-import-position
import gradreg_optax as gro  # pylint: disable=wrong-import-position


def problem_for(name: str, args) -> common.Problem:
  if name == "mlp":
    return common.mlp_problem(args.mlp_depth, args.mlp_width, args.mlp_batch)
  if name == "resnet":
    return common.resnet_problem(args.resnet_batch, width=args.resnet_width)
  if name == "cnn":
    return common.cnn_problem(args.cnn_batch)
  raise SystemExit(f"amortized_cost.py: unknown model {name!r} "
                   "(mlp, cnn or resnet)")


def train_step(problem, tx):
  """``step(params, opt_state, model_state, x, y, recompute)``."""
  def step(params, opt_state, model_state, x, y, recompute=None):
    batch = problem.batch(model_state, x, y)
    loss, g, new_state = common._own_gradient(problem, params, batch)  # pylint: disable=protected-access
    extra = {} if recompute is None else {"recompute": recompute}
    updates, opt_state = tx.update(g, opt_state, params, batch=batch, **extra)
    return optax.apply_updates(params, updates), opt_state, new_state, loss
  return step


def temp_mib(jitted, state, x, y, **kwargs) -> float:
  compiled = jitted.lower(*state, x, y, **kwargs).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def conv_layouts(compiled) -> dict[str, int]:
  """Convolutions of a compiled program by dimension layout: XLA's CPU
  backend runs ``b01f_01io->b01f`` with its convolution library and leaves
  the others to a generic loop."""
  found = re.findall(r" convolution\(.*?dim_labels=([^,\s]+)",
                     compiled.as_text())
  return {layout: found.count(layout) for layout in sorted(set(found))}


def fresh_state(problem, tx):
  params, model_state, _, _ = problem.args()
  copy = lambda t: jax.tree.map(lambda a: a.copy(), t)
  return [copy(params), tx.init(params), copy(model_state)]


class Variant:
  """A sequence of calls timed as one sample."""

  def __init__(self, name, call, state, calls_per_sample, steps_per_call=1):
    self.name, self.call, self.state = name, call, state
    self.calls, self.times = calls_per_sample, []
    self.steps = len(calls_per_sample) * steps_per_call

  def sample(self, x, y):
    t0 = time.perf_counter()
    for choice in self.calls:
      *self.state, loss = self.call(choice)(*self.state, x, y)
    loss.block_until_ready()
    self.times.append((time.perf_counter() - t0) / self.steps)


def scan_loop(problem, tx, steps, every_k=None):
  """``steps`` training steps in one jitted call, ``lax.scan`` (SGD) or
  ``gro.amortized_scan``, over the batch stacked ``steps`` times (an
  argument, not a temporary). Returns the call, with the signature of a
  step (it returns the last loss), and its compiled temporaries in MiB."""
  step = train_step(problem, tx)

  def body(carry, xy, recompute=None):
    *carry, loss = step(*carry, *xy, recompute=recompute)
    return tuple(carry), loss

  def loop(params, opt_state, model_state, xs):
    carry = (params, opt_state, model_state)
    if every_k is None:
      carry, losses = jax.lax.scan(body, carry, xs)
    else:
      carry, losses = gro.amortized_scan(body, carry, xs, every_k=every_k)
    return (*carry, losses[-1])

  xs = jax.tree.map(lambda a: jnp.stack([a] * steps), (problem.x, problem.y))
  state = fresh_state(problem, tx)
  compiled = jax.jit(loop, donate_argnums=(0, 1, 2)).lower(*state, xs).compile()
  mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
  return (lambda params, opt_state, model_state, x, y:
          compiled(params, opt_state, model_state, xs)), mib


def measure(problem, method, ks, args):
  sgd_tx = common.optimizer()
  sgd = jax.jit(train_step(problem, sgd_tx), donate_argnums=(0, 1, 2))
  inner_tx = gro.METHODS[method](problem.loss_fn, has_aux=problem.has_aux).tx
  x, y = problem.x, problem.y
  variants, memory = [], {}

  state = fresh_state(problem, sgd_tx)
  memory["sgd"] = temp_mib(sgd, state, x, y)
  for _ in range(2):
    *state, loss = sgd(*state, x, y)
  loss.block_until_ready()
  t0 = time.perf_counter()
  *state, loss = sgd(*state, x, y)
  loss.block_until_ready()
  inner = max(1, round(args.sample_s / (time.perf_counter() - t0)))
  variants.append(Variant("sgd", lambda _: sgd, state, [None] * inner))
  period = math.lcm(*ks)
  scan_steps = period * max(1, round(inner / period))
  sgd_scan, memory["sgd_scan"] = scan_loop(problem, sgd_tx, scan_steps)
  state = fresh_state(problem, sgd_tx)
  *state, loss = sgd_scan(*state, x, y)
  variants.append(Variant("sgd_scan", lambda _: sgd_scan, state, [None],
                          scan_steps))

  for k in ks:
    tx = optax.chain(gro.amortized(inner_tx, k), common.optimizer())
    host = gro.amortized_step(train_step(problem, tx),
                              donate_argnums=(0, 1, 2))
    state = fresh_state(problem, tx)
    if k == ks[0]:  # the programs do not depend on k
      memory["host_recompute"] = temp_mib(host.jitted, state, x, y,
                                          recompute=True)
      memory["host_reuse"] = temp_mib(host.jitted, state, x, y,
                                      recompute=False)
    periods = max(1, -(-inner // k))
    for _ in range(k + 1):  # compile both programs, warm up
      *state, loss = host(*state, x, y)
    loss.block_until_ready()
    variants.append(Variant(f"host:k{k}", lambda _, h=host: h, state,
                            [None] * (k * periods)))
    scan, memory[f"scan:k{k}"] = scan_loop(problem, tx, scan_steps,
                                           every_k=k)
    state = fresh_state(problem, tx)
    *state, loss = scan(*state, x, y)  # compile, warm up
    variants.append(Variant(f"scan:k{k}", lambda _, f=scan: f, state, [None],
                            scan_steps))

  tx = optax.chain(gro.amortized(inner_tx, max(ks)), common.optimizer())
  state = fresh_state(problem, tx)
  # One compilation, used for the memory analysis and to run.
  device = jax.jit(train_step(problem, tx), donate_argnums=(0, 1, 2)).lower(
      *state, x, y, recompute=jnp.array(True)).compile()
  memory["device"] = device.memory_analysis().temp_size_in_bytes / 2**20
  layouts = {"host_recompute": conv_layouts(host.jitted.lower(
      *fresh_state(problem, tx), x, y, recompute=True).compile()),
             "device": conv_layouts(device)}
  for branch in (True, False):
    flag = jnp.array(branch)
    call = lambda _, f=flag: (lambda *a: device(*a, recompute=f))
    *state, loss = call(None)(*state, x, y)  # warm up (first: recompute)
    loss.block_until_ready()
    variants.append(Variant(f"device:{'recompute' if branch else 'reuse'}",
                            call, state, [None] * inner))
    state = jax.tree.map(lambda a: a.copy(), state)  # holds a correction
  for v in variants:
    print(f"  warmed up {v.name} ({len(v.calls)} steps a sample)", flush=True)

  for r in range(args.rounds):
    shift = r % len(variants)
    for v in variants[shift:] + variants[:shift]:
      v.sample(x, y)
    print(f"  round {r + 1}/{args.rounds}", flush=True)

  times = {v.name: np.array(v.times) for v in variants}
  base = times["sgd"]
  rows = []
  for k in ks:
    device_period = (times["device:recompute"] + (k - 1)
                     * times["device:reuse"]) / k
    for pattern, t, sgd_t, mem in (
        ("host", times[f"host:k{k}"], base, memory["host_recompute"]),
        ("scan", times[f"scan:k{k}"], times["sgd_scan"], memory[f"scan:k{k}"]),
        ("device", device_period, base, memory["device"])):
      ratio = t / sgd_t
      rows.append(dict(
          method=method, every_k=k, pattern=pattern,
          ms_per_step=float(np.median(t) * 1e3),
          ratio_median=float(np.median(ratio)),
          ratio_q25=float(np.percentile(ratio, 25)),
          ratio_q75=float(np.percentile(ratio, 75)),
          ideal=1 + 1 / k, temp_mib=mem))
  steps = {name: float(np.median(t / base)) for name, t in times.items()
           if name.startswith("device")}
  return dict(rows=rows, memory_mib=memory, device_steps=steps,
              sgd_ms=float(np.median(base) * 1e3),
              sgd_scan_ms=float(np.median(times["sgd_scan"]) * 1e3),
              steps_per_sample=inner, scan_steps=scan_steps,
              conv_layouts=layouts)


def render(result) -> str:
  env = result["environment"]
  lines = [
      f"# Amortization: host and scan choices against the device choice, "
      f"{env['device']}", "",
      f"Run: `{env['command']}` (in `benchmarks/`); jax {env['jax']}, "
      f"jaxlib {env['jaxlib']}, optax {env['optax']}, flax {env['flax']}; "
      f"{result['rounds']} rounds.", "",
      "`host`: `gro.amortized_step` (two programs, chosen on the host), "
      "timed over whole periods; `scan`: `gro.amortized_scan` (one jitted "
      "call of many steps), its ratio to SGD run by `lax.scan` over as many "
      "steps; `device`: `update` without `recompute` "
      "(`lax.cond`), its two branches timed as steps and composed as "
      "`(recompute + (k-1) reuse) / k`. Time: median over rounds of the "
      "ratio to SGD in the same round (IQR in brackets). Memory: XLA's "
      "compiled temporaries (host: the recomputing program; scan: the whole "
      "scanned program).", ""]
  for p in result["problems"]:
    m = p["memory_mib"]
    ks = sorted({r["every_k"] for r in p["rows"]})
    scans = ", ".join(f"{m[f'scan:k{k}']:.1f}" for k in ks)
    lines += [f"## {p['problem']}, {p['method']}", "",
              f"SGD {p['sgd_ms']:.1f} ms/step"
              + (f", SGD under `lax.scan` {p['sgd_scan_ms']:.1f}"
                 if "sgd_scan_ms" in p else "")
              + "; temporaries: SGD "
              f"{m['sgd']:.1f} MiB, host recomputing {m['host_recompute']:.1f}"
              f", host reusing {m['host_reuse']:.1f}, SGD scan "
              f"{m['sgd_scan']:.1f}, scan {scans} (k = "
              f"{', '.join(map(str, ks))}; {p['scan_steps']} steps), device "
              f"{m['device']:.1f} MiB ({m['device'] / m['host_recompute']:.2f}"
              "x the host's recomputing program). Device branches as steps: "
              f"recompute {p['device_steps']['device:recompute']:.2f}x SGD, "
              f"reuse {p['device_steps']['device:reuse']:.2f}x."
              + (f" Convolutions by layout: host recomputing "
                 f"{p['conv_layouts']['host_recompute']}, device "
                 f"{p['conv_layouts']['device']}."
                 if p["conv_layouts"]["device"] else ""), "",
              "| k | ideal | host x SGD | scan x SGD scan | device x SGD "
              "| device / host | ms/step: host, scan, device |",
              "|---|---|---|---|---|---|---|"]
    by = {(r["every_k"], r["pattern"]): r for r in p["rows"]}
    for k in sorted({r["every_k"] for r in p["rows"]}):
      h, c, d = by[k, "host"], by[k, "scan"], by[k, "device"]
      lines.append(
          f"| {k} | {h['ideal']:.2f} | {h['ratio_median']:.2f} "
          f"[{h['ratio_q25']:.2f}, {h['ratio_q75']:.2f}] | "
          f"{c['ratio_median']:.2f} [{c['ratio_q25']:.2f}, "
          f"{c['ratio_q75']:.2f}] | "
          f"{d['ratio_median']:.2f} [{d['ratio_q25']:.2f}, "
          f"{d['ratio_q75']:.2f}] | {d['ratio_median'] / h['ratio_median']:.2f}"
          f" | {h['ms_per_step']:.1f}, {c['ms_per_step']:.1f}, "
          f"{d['ms_per_step']:.1f} |")
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "resnet"])
  parser.add_argument("--methods", nargs="+", default=["forward"])
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 10])
  parser.add_argument("--mlp-depth", type=int, default=8)
  parser.add_argument("--mlp-width", type=int, default=1024)
  parser.add_argument("--mlp-batch", type=int, default=256)
  parser.add_argument("--resnet-batch", type=int, default=32)
  parser.add_argument("--resnet-width", type=int, default=64)
  parser.add_argument("--cnn-batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--sample-s", type=float, default=0.3,
                      help="about this long a sample (steps per sample)")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  for name in args.methods:
    if name not in gro.METHODS or not gro.METHODS[name].transforms:
      raise SystemExit(f"amortized_cost.py: --methods: {name!r} is not a "
                       "method that transforms the gradient")
  if any(k < 1 for k in args.ks):
    raise SystemExit("amortized_cost.py: --ks must be >= 1")
  if args.quick:
    args.mlp_depth, args.mlp_width, args.mlp_batch = 2, 32, 8
    args.resnet_batch, args.resnet_width, args.rounds = 2, 8, 2
    args.sample_s = 0.01

  problems = []
  for model in args.models:
    problem = problem_for(model, args)
    for method in args.methods:
      print(f"{problem.name}, {method}", flush=True)
      problems.append(dict(problem=problem.name, method=method,
                           **measure(problem, method, args.ks, args)))
  result = dict(environment=common.environment(), rounds=args.rounds,
                problems=problems)
  text = render(result)
  print(text)
  out = args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"amortized_{common.device_slug()}.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
