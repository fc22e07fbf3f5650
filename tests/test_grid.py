"""Tests for gradreg_optax/experiments/grid.py."""

import dataclasses
import json
import os

import numpy as np
import pytest

from gradreg_optax.experiments import data
from gradreg_optax.experiments import grid
from gradreg_optax.experiments import train

TINY = train.Config(method="forward", width=16, depth=2, epochs=1,
                    batch_size=64, max_steps=5, quiet=True, measure_cost=False)


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


def test_grid_search_values(digits):
  r = grid.grid_search(TINY, [0.0, 0.1], [0.05, 0.5], [0, 1], digits)
  acc = np.array(r["accuracy"], dtype=float)
  assert acc.shape == (2, 2, 2) and np.isfinite(acc).all()
  # gamma = 0 is SGD, whatever eps: compare with separate SGD runs.
  sgd = train.train(dataclasses.replace(TINY, method="sgd", seed=1),
                    digits)["final_test_accuracy"]
  np.testing.assert_array_equal(acc[0, :, 1], sgd)
  # Each cell is the run with that configuration.
  one = train.train(dataclasses.replace(TINY, gamma=0.1, eps=0.5, seed=1),
                    digits)["final_test_accuracy"]
  assert acc[1, 1, 1] == one
  np.testing.assert_allclose(r["mean"], acc.mean(-1), rtol=1e-12)
  np.testing.assert_allclose(r["std"], acc.std(-1, ddof=1), rtol=1e-12)


def test_table_marks_diverged_cells():
  r = {"gammas": [0.0, 0.1], "epsilons": [0.1], "mean": [[0.5], [None]],
       "std": [[0.01], [None]]}
  lines = grid.table(r).splitlines()
  assert lines[2] == "| 0 | 50.00 ± 1.00 |"
  assert lines[3] == "| 0.1 | diverged |"
  r["std"] = [[None], [None]]  # one seed: no spread
  assert grid.table(r).splitlines()[2] == "| 0 | 50.00 ± n/a |"


def test_main_writes_json_table_and_heatmap(tmp_path, capsys):
  out = str(tmp_path / "grid")
  fig = str(tmp_path / "heatmap.png")
  r = grid.main(["--gammas", "0", "0.01", "--epsilons", "0.1", "--seeds", "1",
                 "--width", "8", "--depth", "2", "--epochs", "1",
                 "--max-steps", "2", "--out", out, "--figure", fig,
                 "--quiet"])
  printed = capsys.readouterr().out
  assert "| gamma \\ eps | 0.1 |" in printed
  with open(out + ".json") as f:
    assert json.load(f)["mean"] == r["mean"]
  assert "grid --gammas 0 0.01" in open(out + ".md").read()
  assert os.path.getsize(fig) > 1000
