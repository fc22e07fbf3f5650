"""Recording what an experiment printed, with the command that printed it."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from typing import Any, Callable, Sequence


def versions() -> dict[str, str]:
  """The versions of what a result depends on, to record beside it."""
  # pylint: disable=import-outside-toplevel
  import flax
  import jax
  import jaxlib
  import numpy as np
  import optax

  import gradreg_optax
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "optax": optax.__version__,
          "flax": flax.__version__, "numpy": np.__version__,
          "gradreg_optax": gradreg_optax.__version__}


def command_line(module: str, argv: Sequence[str] | None) -> str:
  """The shell command that runs ``module`` with ``argv`` (or sys.argv)."""
  args = sys.argv[1:] if argv is None else argv
  return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)


def dumps(value: Any, indent: int = 0) -> str:
  """JSON with one key per line, except that each list of numbers (or of
  lists of numbers: a curve) and each short mapping to numbers is one line.

  Example:
    >>> print(dumps({"a": [1, 2.5], "b": {"c": [[0, 1]], "d": {"e": [2]}}}))
    {
     "a": [1, 2.5],
     "b": {
      "c": [[0, 1]],
      "d": {"e": [2]}
     }
    }
  """
  pad = " " * (indent + 1)
  one_line = json.dumps(value)
  if isinstance(value, dict) and _flat(value.values()) and len(
      one_line) + indent < 80:
    return one_line
  if isinstance(value, dict) and value:
    items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent + 1)}"
             for k, v in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
  if isinstance(value, (list, tuple)) and not _flat(value):
    items = [pad + dumps(v, indent + 1) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
  return json.dumps(value)


def _flat(value: Any) -> bool:
  scalar = lambda v: v is None or isinstance(v, (bool, int, float, str))
  return all(scalar(v) or (isinstance(v, (list, tuple))
                           and all(scalar(u) for u in v)) for v in value)


def rounded(value: Any, digits: int) -> Any:
  """``value`` with every float to ``digits`` significant digits."""
  if isinstance(value, float):
    return float(f"{value:.{digits}g}")
  if isinstance(value, dict):
    return {k: rounded(v, digits) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [rounded(v, digits) for v in value]
  return value


def write_json(path: str, value: Any, digits: int | None = None) -> None:
  """Writes ``value`` as :func:`dumps` does, creating the folder; floats to
  ``digits`` significant digits if given."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write(dumps(value if digits is None else rounded(value, digits)) + "\n")


def save(out: str, result: dict[str, Any], text: str,
         digits: int | None = None) -> None:
  """Writes ``out.json`` (the numbers, to ``digits`` significant digits if
  given) and ``out.md`` (the printed text)."""
  write_json(out + ".json", result, digits)
  with open(out + ".md", "w") as f:
    f.write(f"Command: `{result['command']}`\n\n{text}\n")


def save_figure(fig: Any, path: str) -> None:
  """Writes a Matplotlib figure to ``path`` (creating its folder), closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def publish(result: dict[str, Any], text: str, out: str | None,
            figure: str | None,
            plot: Callable[[dict[str, Any], str], None],
            digits: int | None = None) -> None:
  """Prints ``text``; writes ``out.json``/``out.md`` and the figure if asked."""
  print(text)
  if out:
    save(out, result, text, digits)
  if figure:
    plot(result, figure)
