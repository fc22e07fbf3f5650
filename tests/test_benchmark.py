"""Tests for gradreg_optax/experiments/benchmark.py."""

import json
import os

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
