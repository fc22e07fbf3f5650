"""Deterministic cost of a compiled step: matrix products, FLOPs, memory.

Wall-clock time depends on the machine and its load; the number of matrix
products (dot and convolution operations) in the program XLA compiles does
not. It is the measure of Karakida et al. (2023), where an L-layer MLP costs
3L products per SGD step, 6L with finite-difference GR and 9L with double
backpropagation.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax

# Matrix products as they appear in compiled HLO: XLA's own dot and
# convolution instructions, and the library calls backends rewrite them to
# (cuBLAS/cuBLASLt GEMMs and cuDNN convolutions on GPU, oneDNN on CPU).
_MATMUL_PATTERNS = (
    r"\bdot\(",
    r"\bconvolution\(",
    r"custom_call_target=\"__cublas\$(?:lt\$matmul|gemm)[^\"]*\"",
    r"custom_call_target=\"__cudnn\$conv[^\"]*\"",
    r"custom_call_target=\"__onednn\$(?:matmul|convolution)[^\"]*\"",
)
_MATMUL_RE = re.compile("|".join(_MATMUL_PATTERNS))


class StepCost(NamedTuple):
  """Cost of one compiled program.

  Attributes:
    matmuls: number of matrix products (dots and convolutions) in the
      optimized HLO.
    flops: XLA's cost-analysis estimate of floating-point operations, or
      ``None`` where the backend gives none. On CPU it is a full count; on GPU
      it is best effort (library calls such as cuBLAS GEMMs may be counted
      approximately or not at all).
    temp_bytes: the temporary memory of the program (beyond its arguments
      and outputs) from XLA's memory analysis, or ``None`` where the backend
      gives none. Deterministic for a given program and backend; donate the
      state (``jax.jit(..., donate_argnums=...)``) to measure a training step
      as it runs.
  """

  matmuls: int
  flops: float | None
  temp_bytes: int | None = None


def count_matmuls(hlo_text: str) -> int:
  """Number of matrix products in the text of an HLO module.

  Example:
    >>> import gradreg_optax as gro
    >>> gro.cost.count_matmuls("%d = f32[2,2] dot(%a, %b), ...")
    1
  """
  count = 0
  for line in hlo_text.splitlines():
    # Each instruction is one line; a line can name a custom-call target
    # once, so one match per line is one product.
    if "=" in line and _MATMUL_RE.search(line):
      count += 1
  return count


def _compiled(fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
  lower = getattr(fn, "lower", None)
  if lower is None:
    lower = jax.jit(fn).lower
  return lower(*args, **kwargs).compile()


def step_cost(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> StepCost:
  """Matrix products and FLOPs of ``fn(*args, **kwargs)`` as XLA compiles it.

  Args:
    fn: a function, jitted or not (a plain function is wrapped in
      ``jax.jit``; static arguments need a jitted ``fn``).
    *args: example arguments (arrays or ``jax.ShapeDtypeStruct``).
    **kwargs: example keyword arguments, likewise.

  Returns:
    A :class:`StepCost`.

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> gro.cost.step_cost(lambda a, b: a @ b, jnp.ones((4, 3)), jnp.ones((3, 2)))
    StepCost(matmuls=1, flops=..., temp_bytes=...)
  """
  compiled = _compiled(fn, args, kwargs)
  matmuls = count_matmuls(compiled.as_text())
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    analysis = None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = None
  if analysis and analysis.get("flops", -1) >= 0:
    flops = float(analysis["flops"])
  try:
    temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    temp_bytes = None
  return StepCost(matmuls=matmuls, flops=flops, temp_bytes=temp_bytes)
