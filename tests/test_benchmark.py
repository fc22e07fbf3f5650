"""Tests for gradreg_optax/experiments/benchmark.py."""

import json
import os

import numpy as np
import pytest

from gradreg_optax.experiments import benchmark
from gradreg_optax.experiments import harness


def test_quick_study_writes_json_markdown_and_figure(tmp_path, capsys):
  out = str(tmp_path / "bench")
  argv = ["--quick", "--out", out, "--figure", str(tmp_path / "b.png"),
          "--quiet"]
  result = benchmark.main(argv)
  with open(out + ".json") as f:
    saved = json.load(f)
  assert saved["commands"] == [
      "python -m gradreg_optax.experiments.benchmark " + " ".join(argv)]
  assert saved["seeds_completed"] == 2
  assert set(saved["versions"]) >= {"jax", "optax", "gradreg_optax"}
  units = saved["units"]["digits-mlp"]
  assert list(units) == list(benchmark.QUICK_METHODS)
  # The same number of configurations for every method, SGD included.
  assert {u["configurations"] for u in units.values()} == {4}
  assert units["forward:every_k=2"]["gradients_per_step"] == pytest.approx(
      1 + 18 / 35)
  assert units["sgd:budget=2"]["epochs"] == 2 * units["sgd"]["epochs"]
  rows = {r["spec"]: r for r in saved["summary"]}
  assert "vs_sgd" not in rows["sgd"]
  fgr = rows["forward:every_k=2"]
  assert fgr["vs_sgd"]["n"] == 2 and fgr["vs_sgd"]["p_holm"] is not None
  assert fgr["matched"] == "sgd:budget=2"  # 1.51 gradients: nearest is 2
  assert set(fgr["chosen"]) == {"lr", "wd", "gamma", "eps"}
  for k, (lo, hi) in fgr["grid"].items():
    assert lo <= fgr["chosen"][k] <= hi
  assert fgr["grid"].keys() == {"lr", "wd", "gamma"}  # eps is fixed
  key = "digits-mlp | 0.4 | forward:every_k=2"
  assert saved["chosen"][key]["chosen"] == fgr["chosen"]
  assert any(r["front_gradients"] for r in saved["summary"])
  text = open(out + ".md").read()
  assert "| F-GR, every 2 |" in text and "Holm" in text
  assert os.path.getsize(tmp_path / "b.png") > 1000
  assert "| SGD |" in capsys.readouterr().out
  # Resuming trains nothing more; merging a study with itself changes
  # nothing.
  again = benchmark.main(argv)
  assert again["units"] == json.loads(json.dumps(result["units"]))
  assert len(again["commands"]) == 2
  merged = benchmark.main(["--merge", out + ".json", out + ".json",
                           "--out", str(tmp_path / "merged"), "--quiet"])
  assert merged["summary"] == saved["summary"]
  # The merged file is compact, and merging it again gives the same report.
  with open(tmp_path / "merged.json") as f:
    small = json.load(f)
  assert all("tried" not in rec for u in small["units"]["digits-mlp"].values()
             for rec in u["per_noise"])
  again = benchmark.main(["--merge", str(tmp_path / "merged.json"), "--out",
                          str(tmp_path / "again"), "--quiet"])
  assert [r["vs_sgd"]["mean"] for r in again["summary"] if "vs_sgd" in r] == (
      pytest.approx([r["vs_sgd"]["mean"] for r in saved["summary"]
                     if "vs_sgd" in r], abs=1e-5))


@pytest.mark.parametrize("argv, expected", [
    (["--methods", "adam"], "argument --methods: unknown method 'adam'"),
    (["--methods", "sgd", "flooding:every_k=2"], "argument --methods: "),
    (["--methods", "sgd", "sam:rho=-1"], "argument --methods: 'rho=-1' in "
     "'sam:rho=-1': expected rho >= 0"),
    (["--noise", "1.5"], "argument --noise"),
    (["--tasks", "cifar"], "argument --tasks"),
    (["--configs", "1"], "argument --configs"),
    (["--merge", "/nonexistent.json"], "argument --merge"),
    (["--out", "/proc/nope/bench"], "argument --out"),
])
def test_bad_options_are_one_line_and_exit_2(argv, expected, capsys):
  with pytest.raises(SystemExit) as e:
    benchmark.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert err.split(": error: ", 1)[1].startswith(expected), err


def test_another_protocol_in_out_is_refused_before_training(tmp_path,
                                                            capsys):
  out = str(tmp_path / "b")
  benchmark.save(out, benchmark.new_result(harness.Protocol(seeds=3)))
  with pytest.raises(SystemExit) as e:
    benchmark.main(["--quick", "--out", out])
  assert e.value.code == 2
  assert "another protocol" in capsys.readouterr().err


def _row(spec, task, noise, test, vs_sgd=None, vs_matched=None):
  row = {"spec": spec, "label": spec.upper(), "task": task, "noise": noise,
         "test": test, "gradients": 1.0 if spec == "sgd" else 2.0,
         "time": 1.0 if spec == "sgd" else 1.5}
  for key, value in (("vs_sgd", vs_sgd), ("vs_matched", vs_matched)):
    if value is not None:
      row[key] = value
  return row


def test_forward_against_its_rivals_is_paired_by_seed_with_holm():
  fwd = [0.90, 0.92, 0.95, 0.91]
  bwd = [0.88, 0.91, 0.92, 0.90]
  jvp = [0.90, 0.93, 0.94, 0.91]
  rows = [_row("forward", "a", 0.2, fwd), _row("backward", "a", 0.2, bwd),
          _row("jvp", "a", 0.2, jvp), _row("backward", "a", 0.4, bwd),
          _row("sam", "a", 0.2, bwd)]
  claim = benchmark._forward_vs(rows)  # pylint: disable=protected-access
  assert [(c["rival"], c["noise"]) for c in claim] == [
      ("backward", 0.2), ("jvp", 0.2)]  # no F-GR at 0.4, SAM no rival
  diffs = [np.subtract(fwd, bwd), np.subtract(fwd, jvp)]
  for c, d in zip(claim, diffs):
    assert c["mean"] == pytest.approx(d.mean())
    assert c["n"] == 4
  ps = [c["p"] for c in claim]
  lo, hi = sorted(ps)  # Holm over two: 2 p for the smaller, then monotone
  want = {lo: min(1.0, 2 * lo), hi: max(min(1.0, 2 * lo), hi)}
  assert [c["p_holm"] for c in claim] == pytest.approx([want[p] for p in ps])


def test_scoreboard_counts_holm_significant_cells_by_sign():
  sig = lambda mean: {"mean": mean, "p_holm": 0.01}
  not_sig = {"mean": 0.5, "p_holm": 0.2}
  rows = [_row("sgd", "a", 0.0, [0.9]), _row("sgd", "a", 0.4, [0.8]),
          _row("sam", "a", 0.0, [0.9], sig(0.02), sig(0.01)),
          _row("sam", "a", 0.4, [0.8], sig(-0.03), not_sig),
          _row("adamw", "a", 0.0, [0.9], not_sig),
          _row("adamw", "a", 0.4, [0.8], sig(0.01))]
  text = benchmark.scoreboard({"summary": rows})
  assert "over the 2 (task, noise) cells" in text
  assert "| SGD | 2 | - | - | 1.00 | 1.00 |" in text
  assert "| SAM | 2 | 1 / 1 | 1 / 0 | 2.00 | 1.50 |" in text
  assert "| ADAMW | 2 | 1 / 0 | - | 2.00 | 1.50 |" in text
