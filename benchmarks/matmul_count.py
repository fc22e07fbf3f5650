"""Exact matrix-product counts of GR train steps on L-layer MLPs.

Karakida et al. (ICML 2023) count 3L matrix products per SGD step of an
L-layer MLP, 6L with finite-difference GR (F-GR, B-GR) and 9L with double
backpropagation. This compiles the full train step of each method (the
library's transformation chained with ``optax.sgd``) and counts the dots in
the optimized XLA program with ``gradreg_optax.cost.step_cost``. The count does
not depend on the machine or its load; widths and batch only need to be large
enough that XLA keeps every product a product.

  python benchmarks/matmul_count.py                    # table on stdout
  python benchmarks/matmul_count.py --json benchmarks/results/matmul_count_cpu.json
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

import common
import gradreg_optax as gro

METHODS = ("sgd",) + common.LIBRARY_METHODS
# The closed forms the counts are checked against (tests/test_cost.py): SGD
# 3L - 1, each extra gradient of a finite-difference method as many again,
# the exact Hessian-vector products 9L - 5.
EXACT = ("double_backprop", "jvp")


def expected_count(method: str, depth: int) -> int:
  sgd = 3 * depth - 1
  if method == "sgd":
    return sgd
  if method in EXACT:
    return 9 * depth - 5
  return (1 + gro.METHODS[method].extra_gradients) * sgd


def count(depth: int, method: str, width: int, batch: int) -> gro.cost.StepCost:
  problem = common.mlp_problem(depth, width, batch, input_shape=(width,))
  tx, step = common.library_step(problem, None if method == "sgd" else method)
  return gro.cost.step_cost(jax.jit(step), problem.params,
                            tx.init(problem.params), *problem.args()[1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--json", default=None, help="write the results here")
  args = parser.parse_args()

  rows = {}
  for method in METHODS:
    rows[method] = [count(L, method, args.width, args.batch)
                    for L in args.depths]

  depths = np.array(args.depths, float)
  header = (f"{'method':<22}" + "".join(f"{'L=' + str(L):>8}" for L in args.depths)
            + f"{'ratio/SGD':>20}{'fit a*L+b':>16}{'expected':>10}")
  print(f"Matrix products per train step, L-layer MLP (width {args.width}, "
        f"batch {args.batch}), {common.environment()['device']}")
  print(header)
  results = []
  for method in METHODS:
    counts = np.array([c.matmuls for c in rows[method]], float)
    sgd = np.array([c.matmuls for c in rows["sgd"]], float)
    slope, intercept = np.polyfit(depths, counts, 1)
    ratios = counts / sgd
    expected = [expected_count(method, L) for L in args.depths]
    ok = "yes" if list(counts.astype(int)) == expected else "NO"
    print(f"{method:<22}" + "".join(f"{int(c):>8}" for c in counts)
          + f"{ratios[0]:>9.2f} .. {ratios[-1]:<6.2f}"
          + f"{slope:>9.2f}L{intercept:+.1f}" + f"{ok:>10}")
    results.append({
        "method": method, "depths": args.depths,
        "matmuls": [int(c) for c in counts],
        "flops": [c.flops for c in rows[method]],
        "expected": expected, "matches_expected": ok == "yes",
        "ratio_to_sgd": [float(r) for r in ratios],
        "fit_slope": float(slope), "fit_intercept": float(intercept),
    })
  print("Flops (XLA cost analysis" + (", best effort on GPU" if
        jax.devices()[0].platform == "gpu" else "") + ") at L="
        f"{args.depths[-1]}, ratio to SGD: " + ", ".join(
            f"{r['method']} {r['flops'][-1] / results[0]['flops'][-1]:.2f}"
            for r in results if r["flops"][-1] and results[0]["flops"][-1]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"environment": common.environment(), "width": args.width,
                 "batch": args.batch, "results": results}, f, indent=1)
    print("wrote", args.json)


if __name__ == "__main__":
  main()
