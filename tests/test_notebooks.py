"""Runs every notebook in notebooks/ top to bottom at a reduced size."""

import glob
import json
import os
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks")
sys.path.insert(0, NOTEBOOKS)
import _execute  # pylint: disable=wrong-import-position

PATHS = sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in PATHS}
  assert {"quickstart.ipynb", "cost_6L_vs_9L.ipynb", "resnet_cifar10.ipynb",
          "dln_implicit_bias.ipynb"} <= names


def test_magics_are_skipped():
  cell = {"source": ["%pip install x\n", "  !ls\n", "y = 1\n"]}
  assert _execute.code_of(cell) == "y = 1"


@pytest.mark.parametrize("path", PATHS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
  import matplotlib.pyplot as plt
  monkeypatch.setenv("GRADREG_NOTEBOOK_SMALL", "1")
  monkeypatch.chdir(os.path.dirname(path))
  with open(path) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  assert any(c["cell_type"] == "code" for c in notebook["cells"])
  try:
    namespace = _execute.run_cells(notebook)
  finally:
    plt.close("all")
  assert namespace.get("SMALL", True)  # the notebook saw the reduced size
