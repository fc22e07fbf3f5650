"""Tests for gradreg_optax/experiments/label_noise.py."""

import json
import math

import numpy as np
import pytest

from gradreg_optax.experiments import data as data_lib
from gradreg_optax.experiments import label_noise


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_rate_and_other_class_convention(rate):
  rng = np.random.RandomState(0)
  y = rng.randint(10, size=20000).astype(np.int32)
  noisy = label_noise.symmetric_label_noise(y, rate, 10, seed=3)
  wrong = noisy != y
  assert noisy.dtype == y.dtype and noisy.shape == y.shape
  # Binomial(20000, rate): 4 standard deviations.
  assert abs(wrong.mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / 20000)
  # A corrupted label goes to each of the 9 other classes alike: the offset
  # (noisy - y) mod 10 is uniform on 1..9 and never 0.
  offsets = np.bincount((noisy[wrong] - y[wrong]) % 10, minlength=10)
  assert offsets[0] == 0
  expected = wrong.sum() / 9
  assert np.all(np.abs(offsets[1:] - expected) < 5 * math.sqrt(expected))


def test_noise_is_deterministic_nested_and_leaves_input_alone():
  y = np.arange(1000, dtype=np.int32) % 10
  kept = y.copy()
  a = label_noise.symmetric_label_noise(y, 0.4, 10, seed=1)
  np.testing.assert_array_equal(a, label_noise.symmetric_label_noise(
      y, 0.4, 10, seed=1))
  assert np.any(a != label_noise.symmetric_label_noise(y, 0.4, 10, seed=2))
  np.testing.assert_array_equal(y, kept)
  np.testing.assert_array_equal(
      label_noise.symmetric_label_noise(y, 0.0, 10, seed=1), y)
  # Nested: what is corrupted at 0.2 is corrupted, identically, at 0.4.
  b = label_noise.symmetric_label_noise(y, 0.2, 10, seed=1)
  assert np.all((b == y) | (b == a)) and (b != y).sum() < (a != y).sum()


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_noise_rejects_bad_rate(rate):
  with pytest.raises(ValueError, match="rate"):
    label_noise.symmetric_label_noise(np.zeros(3, int), rate, 10, seed=0)


def test_split_is_a_seeded_partition():
  train, val = label_noise.split(1438, 0.2, seed=0)
  assert (len(train), len(val)) == (1150, 288)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])),
                                np.arange(1438))
  again, _ = label_noise.split(1438, 0.2, seed=0)
  other, _ = label_noise.split(1438, 0.2, seed=1)
  np.testing.assert_array_equal(train, again)
  assert np.any(train != other)


def _run(method, hyper, seed, val, test):
  return {"model": "mlp", "noise": 0.4, "method": method,
          "hyperparameter": hyper, "seed": seed, "val_accuracy": val,
          "test_accuracy": test, "memorized": 0.0, "train_accuracy": 0.0}


def test_summary_chooses_on_validation_and_pairs_by_seed():
  sgd_test = [0.80, 0.90, 0.70]
  # rho=0.1 has the best mean validation accuracy but not the best test
  # accuracy: the choice must follow validation.
  sam = {0.05: ([0.5, 0.5, 0.5], [0.99, 0.99, 0.99]),
         0.1: ([0.6, 0.6, 0.5], [0.82, 0.93, 0.71])}
  runs = [_run("sgd", {}, s, 0.5, t) for s, t in enumerate(sgd_test)]
  for rho, (vals, tests) in sam.items():
    runs += [_run("sam", {"rho": rho}, s, v, t)
             for s, (v, t) in enumerate(zip(vals, tests))]
  config = label_noise.Config(seeds=3, noise=(0.4,), methods=("sgd", "sam"),
                              models=("mlp",))
  sgd_row, sam_row = label_noise.summarize(runs, config)
  assert sgd_row["method"] == "sgd" and "paired" not in sgd_row
  assert sam_row["hyperparameter"] == {"rho": 0.1}
  diff = np.array([0.02, 0.03, 0.01])
  p = sam_row["paired"]
  np.testing.assert_allclose(p["differences"], diff, atol=1e-12)
  np.testing.assert_allclose(p["mean"], 0.02)
  np.testing.assert_allclose(p["std"], 0.01)  # sample std, ddof=1
  np.testing.assert_allclose(p["t"], 0.02 / (0.01 / math.sqrt(3)))
  assert (p["better"], p["equal"], p["worse"]) == (3, 0, 0)
  assert p["exceeds_seed_spread"]
  # The 95 % t interval (t_{0.975, 2} = 4.303) and the p-value (0.074),
  # Holm-adjusted over the one comparison.
  half = 4.3027 * 0.01 / math.sqrt(3)
  np.testing.assert_allclose([p["low"], p["high"]], [0.02 - half,
                                                     0.02 + half], rtol=1e-4)
  np.testing.assert_allclose([p["p"], p["p_holm"]], 0.0742, atol=1e-4)
  np.testing.assert_allclose(sam_row["test_accuracy_std"],
                             np.std([0.82, 0.93, 0.71], ddof=1))
  text = label_noise.verdict({"summary": [sgd_row, sam_row]})
  assert "SAM (rho=0.1) − SGD: +2.00 [-0.48, +4.48] points, Holm p 0.074" in (
      text)


def test_smallest_study_writes_json_and_markdown(tmp_path, capsys):
  out = str(tmp_path / "ln")
  argv = ["--seeds", "1", "--epochs", "1", "--models", "mlp", "--methods",
          "sgd", "sam", "--noise", "0.4", "--out", out, "--figure",
          str(tmp_path / "ln.png"), "--quiet"]
  result = label_noise.main(argv)
  with open(out + ".json") as f:
    saved = json.load(f)
  assert saved["seeds_completed"] == 1
  assert saved["command"] == (
      "python -m gradreg_optax.experiments.label_noise " + " ".join(argv))
  assert len(saved["runs"]) == 1 + len(label_noise.GRIDS["sam"][1])
  assert saved["summary"] == json.loads(json.dumps(result["summary"]))
  sam_row = saved["summary"][1]
  assert sam_row["method"] == "sam" and "paired" in sam_row
  for r in saved["runs"]:
    assert 0.0 <= r["test_accuracy"] <= 1.0
  # The test labels stay clean: the test set is load_digits()'s, untouched.
  assert saved["sizes"] == {"train": 1150, "val": 288,
                            "test": len(data_lib.load_digits().y_test)}
  with open(out + ".md") as f:
    assert "| SAM |" in f.read()
  assert (tmp_path / "ln.png").stat().st_size > 0
  assert "| SGD |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, option", [
    (["--noise", "1.5"], "--noise"),
    (["--seeds", "0"], "--seeds"),
    (["--methods", "adam"], "--methods"),
    (["--batch-size", "5000"], "--batch-size"),
])
def test_bad_option_is_one_line_and_exit_2(argv, option, capsys):
  with pytest.raises(SystemExit) as e:
    label_noise.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and option in err


def test_noisy_digits_corrupts_train_and_val_not_test():
  data = data_lib.load_digits()
  d = label_noise.noisy_digits(data, (0.0, 0.4), seed=0, val_fraction=0.2)
  np.testing.assert_array_equal(d.y_test, data.y_test)
  np.testing.assert_array_equal(d.x_test, data.x_test)
  np.testing.assert_array_equal(d.labels[0], data.y_train)
  for idx in (d.train_idx, d.val_idx):
    wrong = np.mean(d.labels[1][idx] != data.y_train[idx])
    assert 0.3 < wrong < 0.5
