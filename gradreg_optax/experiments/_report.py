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


def save(out: str, result: dict[str, Any], text: str) -> None:
  """Writes ``out.json`` (the numbers) and ``out.md`` (the printed text)."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=2)
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
            plot: Callable[[dict[str, Any], str], None]) -> None:
  """Prints ``text``; writes ``out.json``/``out.md`` and the figure if asked."""
  print(text)
  if out:
    save(out, result, text)
  if figure:
    plot(result, figure)
