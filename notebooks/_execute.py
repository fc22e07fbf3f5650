"""Runs notebooks top to bottom and stores their outputs, without Jupyter.

    python notebooks/_execute.py notebooks/quickstart.ipynb [...]

The code cells run in order in one namespace, as a kernel would run them;
lines starting with ``%`` or ``!`` (installation magics) are skipped. Each
cell's printed output becomes a "stream" output and each matplotlib figure
it leaves open an "image/png" output; the notebook is written back as
nbformat 4 JSON. The tests (tests/test_notebooks.py) use :func:`run_cells`
with GRADREG_NOTEBOOK_SMALL=1.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
from typing import Any, Callable


def code_of(cell: dict[str, Any]) -> str:
  """A code cell's source without IPython magics and shell escapes."""
  source = cell["source"]
  text = "".join(source) if isinstance(source, list) else source
  return "\n".join(line for line in text.splitlines()
                   if not line.lstrip().startswith(("%", "!")))


def run_cells(notebook: dict[str, Any],
              after_cell: Callable[[int, str], None] | None = None) -> dict:
  """Executes the code cells of ``notebook`` in one namespace."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  namespace: dict[str, Any] = {"__name__": "__main__"}
  for i, cell in enumerate(notebook["cells"]):
    if cell["cell_type"] != "code":
      continue
    exec(compile(code_of(cell), f"<cell {i}>", "exec"), namespace)  # pylint: disable=exec-used
    if after_cell is not None:
      after_cell(i, "")
  return namespace


def _figures_as_png() -> list[str]:
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  images = []
  for num in plt.get_fignums():
    buffer = io.BytesIO()
    plt.figure(num).savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
  plt.close("all")
  return images


def execute(path: str) -> None:
  """Runs the notebook at ``path`` and writes it back with its outputs."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plt.show = lambda *a, **k: None  # figures are collected after each cell

  with open(path) as f:
    notebook = json.load(f)
  namespace: dict[str, Any] = {"__name__": "__main__"}
  count = 0
  cwd = os.getcwd()
  os.chdir(os.path.dirname(os.path.abspath(path)))
  try:
    for i, cell in enumerate(notebook["cells"]):
      if cell["cell_type"] != "code":
        continue
      count += 1
      stdout = io.StringIO()
      with contextlib.redirect_stdout(stdout):
        exec(compile(code_of(cell), f"<cell {i}>", "exec"), namespace)  # pylint: disable=exec-used
      outputs = []
      if stdout.getvalue():
        outputs.append({"output_type": "stream", "name": "stdout",
                        "text": stdout.getvalue().splitlines(keepends=True)})
      for png in _figures_as_png():
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"image/png": png,
                                 "text/plain": ["<Figure>"]}})
      cell["outputs"] = outputs
      cell["execution_count"] = count
  finally:
    os.chdir(cwd)
  with open(path, "w") as f:
    json.dump(notebook, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  for p in sys.argv[1:]:
    t0 = time.perf_counter()
    execute(p)
    print(f"{p}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
