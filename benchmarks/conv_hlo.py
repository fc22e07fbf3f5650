"""Why double backpropagation costs more than its 3x theory on convolutions.

Compiles the ResNet-18 train steps of SGD, F-GR, the library's
``double_backprop`` and ``jvp`` methods and their hand-written counterparts
(double backpropagation in its classical single-pass form, which the library
offers as the loss ``igr_modified_loss``), and summarizes
the optimized program: matrix products and convolutions by backend kind
(cuDNN forward / backward-input / backward-filter on GPU) and dimension
layout, transposes, copies, fusions, and XLA's FLOP estimate. ``--model
mlp:<depth>`` does the same for an MLP.

  python benchmarks/conv_hlo.py --batch 128
  python benchmarks/conv_hlo.py --model mlp:4 --width 512 --batch 256
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re

import jax

import common
import gradreg_optax as gro

_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_LABELS = re.compile(r"dim_labels=([\w>-]+)")
_OPCODE = re.compile(r"=\s*(?:\([^=]*\)|[\w\[\]{},:\d]+)\s+([\w-]+)\(")


def summarize(text: str) -> dict:
  kinds = collections.Counter()
  layouts = collections.Counter()
  opcodes = collections.Counter()
  for line in text.splitlines():
    if "=" not in line:
      continue
    m = _OPCODE.search(line)
    if m:
      opcodes[m.group(1)] += 1
    target = _TARGET.search(line)
    is_conv = "convolution(" in line or (target and "conv" in target.group(1))
    if target and ("cudnn" in target.group(1) or "cublas" in target.group(1)
                   or "onednn" in target.group(1)):
      kinds[target.group(1)] += 1
    elif "convolution(" in line:
      kinds["convolution"] += 1
    elif re.search(r"\bdot\(", line):
      kinds["dot"] += 1
    if is_conv:
      labels = _LABELS.search(line)
      layouts[labels.group(1) if labels else "?"] += 1
  return {"matmuls": gro.cost.count_matmuls(text),
          "products_by_kind": dict(kinds.most_common()),
          "conv_dim_labels": dict(layouts.most_common()),
          "transposes": opcodes["transpose"], "copies": opcodes["copy"],
          "fusions": opcodes["fusion"],
          "top_opcodes": dict(opcodes.most_common(15))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet",
                      help="resnet or mlp:<depth>")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--resnet-width", type=int, default=64)
  parser.add_argument("--width", type=int, default=512, help="MLP width")
  parser.add_argument("--precision", default="default")
  parser.add_argument("--out", default=None)
  parser.add_argument("--dump-dir", default=None,
                      help="also write each optimized HLO text here")
  args = parser.parse_args()

  if args.model == "resnet":
    problem = common.resnet_problem(args.batch, width=args.resnet_width)
    default_out = f"conv_hlo_{common.device_slug()}.json"
  else:
    problem = common.mlp_problem(int(args.model.split(":")[1]), args.width,
                                 args.batch)
    default_out = f"hlo_{problem.name}_{common.device_slug()}.json"
  steps = {"sgd": common.library_step(problem, None),
           "lib:double_backprop": common.library_step(problem,
                                                      "double_backprop"),
           "hand:double_backprop": common.hand_step(problem, "double_backprop"),
           "hand:single_pass": common.hand_step(problem, "single_pass"),
           f"lib:{common.PENALIZED_LOSS}": common.library_step(
               problem, common.PENALIZED_LOSS),
           "lib:jvp": common.library_step(problem, "jvp"),
           "hand:jvp": common.hand_step(problem, "jvp"),
           "lib:forward": common.library_step(problem, "forward")}
  ctx = (contextlib.nullcontext() if args.precision == "default"
         else jax.default_matmul_precision(args.precision))
  report = {"environment": common.environment(), "problem": problem.name,
            "batch": args.batch,
            "precision": args.precision, "programs": {}}
  with ctx:
    for name, (tx, step) in steps.items():
      params, model_state, x, y = problem.args()
      compiled = jax.jit(step).lower(params, tx.init(params), model_state,
                                     x, y).compile()
      text = compiled.as_text()
      summary = summarize(text)
      cost = gro.cost.step_cost(jax.jit(step), params, tx.init(params),
                                model_state, x, y)
      summary["flops"] = cost.flops
      report["programs"][name] = summary
      if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
        with open(os.path.join(args.dump_dir,
                               name.replace(":", "_") + ".hlo.txt"), "w") as f:
          f.write(text)
      print(f"== {name}: {summary['matmuls']} products, flops "
            f"{summary['flops']}, transposes {summary['transposes']}, "
            f"copies {summary['copies']}, fusions {summary['fusions']}",
            flush=True)
      print("   by kind:", summary["products_by_kind"])
      print("   conv dim_labels:", summary["conv_dim_labels"])
  sgd_flops = report["programs"]["sgd"]["flops"]
  if sgd_flops:
    print("flops / SGD:", {k: round(v["flops"] / sgd_flops, 2)
                           for k, v in report["programs"].items()
                           if v["flops"]})
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 "results", default_out)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)
  print("wrote", out)


if __name__ == "__main__":
  main()
