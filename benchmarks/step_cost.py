"""Wall-clock cost of GR train steps relative to SGD, library vs hand-written.

For each model and float32 matmul precision, every variant below is compiled
as one full jitted train step (own gradient, regularized gradient, SGD with
momentum, parameter update; ``donate_argnums`` on parameters, optimizer state
and BatchNorm statistics; data already on the device):

* ``sgd``: plain SGD, the baseline;
* ``lib:<method>``: the library's transformation chained with the optimizer;
* ``hand:<method>``: the shortest hand-written step for the same method;
* ``lib:<method>:k<k>``: the library with ``every_k=k`` (amortized);
* ``lib:igr_modified_loss``: double backpropagation in its single-pass form,
  the caller differentiating ``gro.igr_modified_loss`` (no transformation),
  against ``hand:single_pass``;
* ``lib:optax_sam``: Optax's own ``optax.contrib.sam`` (opaque mode), against
  ``hand:sam``.

Compilation and two warm-up steps are excluded from the timings (compile time
is reported on its own). Variants are then timed in interleaved rounds (the
order rotated every round); each sample is the mean of ``inner`` consecutive
steps ended by a device sync, ``inner`` chosen so a sample lasts about
``--sample-ms`` (a multiple of every ``every_k`` present, so the amortized
variants are sampled over whole periods). Reported: the median step time and,
per round, the ratio to the SGD sample of the same round (median and
interquartile range).

Memory: ``peak_bytes_in_use`` cannot be reset, so per variant this records
(1) XLA's own memory analysis of the compiled step (arguments + outputs +
temporaries - donated aliases), which is exact for the program and
independent of order, and (2) the process's device peak after the variant's
first warm-up step, with variants warmed up in increasing order of (1); (2)
includes every variant's resident state and is an upper bound.

  python benchmarks/step_cost.py --models mlp:4 mlp:8 mlp:16 resnet:128 resnet:512
  python benchmarks/step_cost.py --merge a.json b.json --out benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import common
from gradreg_optax.cost import count_matmuls

DEFAULT_METHODS = ("forward", "backward", "double_backprop", "jvp", "sam",
                   common.OPTAX_SAM)
HEADLINE = ("lib:forward", "hand:forward", "lib:backward", "lib:sam",
            "hand:sam", f"lib:{common.OPTAX_SAM}", "lib:jvp", "hand:jvp",
            "lib:double_backprop", "hand:double_backprop",
            f"lib:{common.PENALIZED_LOSS}")


def log(*a):
  print(*a, flush=True)


def problem_for(spec: str, args) -> common.Problem:
  kind, size = spec.split(":")
  if kind == "mlp":
    return common.mlp_problem(int(size), args.width, args.mlp_batch)
  if kind == "resnet":
    return common.resnet_problem(int(size), width=args.resnet_width)
  raise ValueError(spec)


def variants(spec: str, args):
  """(name, method, kind, every_k) for one model."""
  out = [("sgd", None, "sgd", 1)]
  hands = []
  for m in args.methods:
    out.append((f"lib:{m}", m, "lib", 1))
    hand = common.HAND_REFERENCE.get(m, m)
    if not args.no_hand and hand not in hands:
      hands.append(hand)
      out.append((f"hand:{hand}", hand, "hand", 1))
  if spec in args.every_k_on:
    for m in ("forward", "sam"):
      for k in args.every_k:
        out.append((f"lib:{m}:k{k}", m, "lib", k))
  return out


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes",
              "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f)) for f in fields}
    out["total_bytes"] = (out["argument_size_in_bytes"]
                          + out["output_size_in_bytes"]
                          + out["temp_size_in_bytes"]
                          - out["alias_size_in_bytes"])
    return out
  except Exception as e:  # pylint: disable=broad-except
    return {"error": repr(e)}


def _peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run_config(spec: str, precision: str, args) -> dict:
  problem = problem_for(spec, args)
  ctx = (contextlib.nullcontext() if precision == "default"
         else jax.default_matmul_precision(precision))
  entries = []
  with ctx:
    for name, method, kind, every_k in variants(spec, args):
      if kind == "hand":
        tx, step = common.hand_step(problem, method)
      else:
        tx, step = common.library_step(problem, method, every_k=every_k)
      params, model_state, x, y = problem.args()
      state = [_copy(params), tx.init(params), _copy(model_state)]
      t0 = time.perf_counter()
      lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*state, x, y)
      entries.append(dict(name=name, method=method, kind=kind,
                          every_k=every_k, lowered=lowered, state=state,
                          trace_s=time.perf_counter() - t0))

  def compile_one(e):
    t0 = time.perf_counter()
    e["compiled"] = e.pop("lowered").compile()
    e["compile_s"] = e.pop("trace_s") + time.perf_counter() - t0
    e["memory"] = _memory(e["compiled"])
    e["matmuls"] = count_matmuls(e["compiled"].as_text())
    log(f"  [{spec} {precision}] compiled {e['name']:<24} "
        f"{e['compile_s']:6.1f} s  products {e['matmuls']}")

  # SGD first and alone, so that the backend's autotuning of the products
  # every variant shares is done once without contention; the rest in
  # parallel threads (compilation releases the GIL).
  compile_one(entries[0])
  with concurrent.futures.ThreadPoolExecutor(args.compile_workers) as pool:
    list(pool.map(compile_one, entries[1:]))
  x, y = problem.x, problem.y

  def run(e, n):
    s = e["state"]
    for _ in range(n):
      p, o, ms, loss = e["compiled"](s[0], s[1], s[2], x, y)
      s = [p, o, ms]
    e["state"] = s
    e["loss"] = loss
    return loss

  # Warm-up in increasing order of compiled memory (see module docstring).
  order = sorted(entries, key=lambda e: e["memory"].get("total_bytes", 0))
  for e in order:
    run(e, 2).block_until_ready()
    e["peak_bytes_after_warmup"] = _peak_bytes()

  # Sample length: about args.sample_ms, whole every_k periods.
  sgd = entries[0]
  t0 = time.perf_counter()
  run(sgd, 5).block_until_ready()
  t_sgd = (time.perf_counter() - t0) / 5
  period = math.lcm(*[e["every_k"] for e in entries])
  inner = max(1, math.ceil(args.sample_ms / 1e3 / t_sgd))
  inner = period * math.ceil(inner / period)
  log(f"  [{spec} {precision}] SGD ~{t_sgd * 1e3:.2f} ms/step; "
      f"{args.repeats} rounds x {inner} steps per sample")

  times = {e["name"]: [] for e in entries}
  for r in range(args.repeats):
    k = r % len(entries)
    for e in entries[k:] + entries[:k]:
      t0 = time.perf_counter()
      run(e, inner).block_until_ready()
      times[e["name"]].append((time.perf_counter() - t0) / inner)
    if (r + 1) % max(1, args.repeats // 5) == 0:
      log(f"  [{spec} {precision}] round {r + 1}/{args.repeats}")

  base = np.array(times["sgd"])
  results = []
  for e in entries:
    t = np.array(times[e["name"]])
    ratio = t / base
    results.append({
        "variant": e["name"], "method": e["method"], "kind": e["kind"],
        "every_k": e["every_k"], "matmuls": e["matmuls"],
        "compile_s": round(e["compile_s"], 3),
        "median_ms": float(np.median(t) * 1e3),
        "q25_ms": float(np.percentile(t, 25) * 1e3),
        "q75_ms": float(np.percentile(t, 75) * 1e3),
        "ratio_median": float(np.median(ratio)),
        "ratio_q25": float(np.percentile(ratio, 25)),
        "ratio_q75": float(np.percentile(ratio, 75)),
        "ratio_of_medians": float(np.median(t) / np.median(base)),
        "memory": e["memory"],
        "peak_bytes_after_warmup": e["peak_bytes_after_warmup"],
        "final_loss": float(e["loss"]),
    })
  for e in entries:  # free the device before the next configuration
    e["state"] = e["compiled"] = None
  return {"model": spec, "problem": problem.name, "precision": precision,
          "rounds": args.repeats, "steps_per_sample": inner,
          "results": results}


def _lib_over_hand(r, hand, memory=False) -> str | None:
  """Library step time (or compiled temporary memory) over its hand-written
  counterpart's, formatted."""
  ref = hand.get(common.HAND_REFERENCE.get(r["method"], r["method"]))
  if r["kind"] != "lib" or r["every_k"] != 1 or ref is None:
    return None
  if memory:
    a = r["memory"].get("temp_size_in_bytes")
    b = ref["memory"].get("temp_size_in_bytes")
    return f"{a / b:.3f}" if a is not None and b else None
  return f"{r['median_ms'] / ref['median_ms']:.3f}"


def print_config(cfg):
  log(f"\n{cfg['problem']} | precision {cfg['precision']} | "
      f"{cfg['rounds']} rounds x {cfg['steps_per_sample']} steps")
  hand = {r["method"]: r for r in cfg["results"] if r["kind"] == "hand"}
  log(f"{'variant':<24}{'ms':>9}{'x SGD':>7}{'IQR':>14}{'lib/hand':>9}"
      f"{'compile s':>10}{'temp MiB':>10}{'products':>9}")
  for r in cfg["results"]:
    lh = _lib_over_hand(r, hand) or ""
    temp = r["memory"].get("temp_size_in_bytes")
    temp = f"{temp / 2**20:.0f}" if temp is not None else "-"
    log(f"{r['variant']:<24}{r['median_ms']:>9.3f}{r['ratio_median']:>7.2f}"
        f"{'[' + format(r['ratio_q25'], '.2f') + ',' + format(r['ratio_q75'], '.2f') + ']':>14}"
        f"{lh:>9}{r['compile_s']:>10.1f}{temp:>10}{r['matmuls']:>9}")


def markdown(doc) -> str:
  lines = [f"# Train-step cost relative to SGD: {doc['device']}", ""]
  for run_ in doc["runs"]:
    env = run_["environment"]
    lines += [f"Run: `{env['command']}`  ",
              f"{env['device']} ({env['platform']}), jax {env['jax']}, "
              f"jaxlib {env['jaxlib']}, optax {env['optax']}, "
              f"flax {env['flax']}, python {env['python']}.", ""]
  lines += ["## Headline: median step time / SGD step time (per-round ratio)",
            ""]
  cols = HEADLINE
  lines.append("| model | precision | SGD ms | " + " | ".join(cols) + " |")
  lines.append("|---" * (len(cols) + 3) + "|")
  for run_ in doc["runs"]:
    for cfg in run_["configs"]:
      by = {r["variant"]: r for r in cfg["results"]}
      cells = [f"{by[c]['ratio_median']:.2f}" if c in by else "-"
               for c in cols]
      lines.append(f"| {cfg['problem']} | {cfg['precision']} | "
                   f"{by['sgd']['median_ms']:.2f} | " + " | ".join(cells) + " |")
  lines += ["", "## Compiled temporary memory (MiB, XLA's memory analysis; "
            "in brackets: over the hand-written step)", ""]
  lines.append("| model | precision | SGD | " + " | ".join(cols) + " |")
  lines.append("|---" * (len(cols) + 3) + "|")
  for run_ in doc["runs"]:
    for cfg in run_["configs"]:
      by = {r["variant"]: r for r in cfg["results"]}
      hand = {r["method"]: r for r in cfg["results"] if r["kind"] == "hand"}

      def cell(name):
        r = by.get(name)
        if r is None or "temp_size_in_bytes" not in r["memory"]:
          return "-"
        ratio = _lib_over_hand(r, hand, memory=True)
        return (f"{r['memory']['temp_size_in_bytes'] / 2**20:.0f}"
                + (f" ({ratio})" if ratio else ""))

      lines.append(f"| {cfg['problem']} | {cfg['precision']} | "
                   f"{cell('sgd')} | " + " | ".join(cell(c) for c in cols)
                   + " |")
  lines += ["", "## All variants", ""]
  for run_ in doc["runs"]:
    for cfg in run_["configs"]:
      hand = {r["method"]: r for r in cfg["results"] if r["kind"] == "hand"}
      lines += [f"### {cfg['problem']}, precision {cfg['precision']} "
                f"({cfg['rounds']} rounds x {cfg['steps_per_sample']} steps)",
                "", "| variant | median ms | x SGD | IQR of ratio | lib/hand | "
                "compile s | compiled temp MiB | temp lib/hand | compiled "
                "total MiB | products |",
                "|---|---|---|---|---|---|---|---|---|---|"]
      for r in cfg["results"]:
        lh = _lib_over_hand(r, hand) or "-"
        mh = _lib_over_hand(r, hand, memory=True) or "-"
        mem = r["memory"]
        temp = (f"{mem['temp_size_in_bytes'] / 2**20:.0f}"
                if "temp_size_in_bytes" in mem else "-")
        total = (f"{mem['total_bytes'] / 2**20:.0f}"
                 if "total_bytes" in mem else "-")
        lines.append(
            f"| {r['variant']} | {r['median_ms']:.3f} | "
            f"{r['ratio_median']:.3f} | [{r['ratio_q25']:.3f}, "
            f"{r['ratio_q75']:.3f}] | {lh} | {r['compile_s']:.1f} | {temp} | "
            f"{mh} | {total} | {r['matmuls']} |")
      lines.append("")
  return "\n".join(lines)


def chart(doc, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  cfgs = [c for r in doc["runs"] for c in r["configs"]]
  cols = [c for c in HEADLINE]
  fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(cfgs)), 4.5))
  width = 0.8 / len(cols)
  for i, col in enumerate(cols):
    vals, errs = [], [[], []]
    for cfg in cfgs:
      by = {r["variant"]: r for r in cfg["results"]}
      r = by.get(col)
      vals.append(r["ratio_median"] if r else np.nan)
      errs[0].append(r["ratio_median"] - r["ratio_q25"] if r else 0)
      errs[1].append(r["ratio_q75"] - r["ratio_median"] if r else 0)
    xs = np.arange(len(cfgs)) + (i - len(cols) / 2 + 0.5) * width
    ax.bar(xs, vals, width, yerr=errs, label=col,
           hatch="//" if col.startswith("hand") else None,
           color=f"C{i // 2 if col.startswith(('lib:for', 'hand:for')) else i}",
           edgecolor="k", linewidth=0.3)
  ax.axhline(1, color="k", lw=0.8)
  ax.axhline(2, color="gray", lw=0.8, ls="--")
  ax.axhline(3, color="gray", lw=0.8, ls=":")
  ax.set_xticks(np.arange(len(cfgs)))
  ax.set_xticklabels([f"{c['problem']}\n{c['precision']}" for c in cfgs],
                     fontsize=7)
  ax.set_ylabel("step time / SGD step time")
  ax.set_title(f"Train-step cost, {doc['device']}")
  ax.legend(fontsize=7, ncol=4)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(doc, out):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(doc, f, indent=1)
  stem = os.path.splitext(out)[0]
  with open(stem + ".md", "w") as f:
    f.write(markdown(doc))
  chart(doc, stem + ".png")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+",
                 default=["mlp:4", "mlp:8", "mlp:16", "resnet:128",
                          "resnet:512"],
                 help="mlp:<depth> or resnet:<batch>")
  p.add_argument("--precisions", nargs="+", default=["default", "highest"])
  p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
  p.add_argument("--no-hand", action="store_true")
  p.add_argument("--every-k", type=int, nargs="*", default=[2, 5, 10])
  p.add_argument("--every-k-on", nargs="*", default=["resnet:128"],
                 help="models that also time every_k variants")
  p.add_argument("--width", type=int, default=2048, help="MLP width")
  p.add_argument("--mlp-batch", type=int, default=1024)
  p.add_argument("--resnet-width", type=int, default=64)
  p.add_argument("--repeats", type=int, default=50, help="timing rounds")
  p.add_argument("--compile-workers", type=int, default=1,
                 help="compile the variants in this many threads (compile "
                 "times then overlap)")
  p.add_argument("--sample-ms", type=float, default=10.0)
  p.add_argument("--quick", action="store_true",
                 help="tiny sizes (a dry run of the whole pipeline)")
  p.add_argument("--out", default=None,
                 help="JSON path (default benchmarks/results/<device>.json); "
                 ".md and .png are written beside it")
  p.add_argument("--merge", nargs="+", default=None,
                 help="merge these result files' runs into --out and render")
  args = p.parse_args()

  if args.merge:
    docs = [json.load(open(f)) for f in args.merge]
    doc = {"device": docs[0]["device"],
           "runs": [r for d in docs for r in d["runs"]]}
    write(doc, args.out)
    log(markdown(doc))
    return
  if args.quick:
    args.width, args.mlp_batch, args.resnet_width = 64, 32, 8
    args.repeats = min(args.repeats, 5)
  env = common.environment()
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "results", common.device_slug() + ".json")
  log(f"{env}")
  run_ = {"environment": env, "args": vars(args), "configs": []}
  doc = {"device": env["device"], "runs": [run_]}
  for spec in args.models:
    for precision in args.precisions:
      t0 = time.perf_counter()
      log(f"== {spec} precision={precision}")
      cfg = run_config(spec, precision, args)
      cfg["wall_s"] = round(time.perf_counter() - t0, 1)
      run_["configs"].append(cfg)
      print_config(cfg)
      log(f"  ({cfg['wall_s']} s)")
      write(doc, out)  # after every configuration: partial runs survive
  log("\n" + markdown(doc))
  log(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
