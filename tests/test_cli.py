"""The experiments' command lines: one-line errors, help, warnings, header."""

import json

import pytest

from gradreg_optax.experiments import compare
from gradreg_optax.experiments import grid
from gradreg_optax.experiments import train

_TRAIN = "python -m gradreg_optax.experiments.train: error: "


@pytest.mark.parametrize("argv,expected", [
    (["--gamma", "-0.05"], "argument --gamma: expected a number >= 0"),
    (["--method", "forward", "--eps", "0"], "argument --eps: expected a "
     "number > 0"),
    (["--every-k", "0"], "argument --every-k: expected an integer >= 1"),
    (["--method", "sgd", "--every-k", "2"], "argument --every-k: method "
     "'sgd' has no correction"),
    (["--rho", "-0.1"], "argument --rho: expected a number >= 0"),
    (["--learning-rate", "nan"], "argument --learning-rate: expected a "
     "number > 0"),
    (["--dataset", "cifar10"], "argument --data-dir: --dataset cifar10 needs"),
    (["--dataset", "cifar10", "--data-dir", "/no/such/dir"],
     "argument --data-dir: no such directory"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["--method", "adam"], "argument --method: invalid choice: 'adam'"),
    (["--gamma", "x"], "argument --gamma: expected a number >= 0, got 'x'"),
])
def test_train_bad_options_are_one_line_and_exit_2(argv, expected, capsys):
  with pytest.raises(SystemExit) as e:
    train.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(_TRAIN + expected), err


def test_unreadable_cifar_directory_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1
  assert err.startswith(_TRAIN + "cannot read --dataset cifar10")


@pytest.mark.parametrize("main,argv,expected", [
    (compare.main, ["--methods", "adam"], "argument --methods: unknown "
     "method 'adam'"),
    (compare.main, ["--methods", "sam:rho=-1"], "--methods sam:rho=-1: "
     "argument --rho: must be >= 0"),
    (compare.main, ["--methods", "sam:radius=1"], "argument --methods: "
     "expected name=value"),
    (compare.main, ["--seeds", "0"], "argument --seeds: expected an integer"),
    (grid.main, ["--method", "sam"], "argument --method: the (eps, gamma) "
     "grid is for"),
    (grid.main, ["--epsilons", "0.1", "-1"], "argument --epsilons: expected "
     "a number > 0"),
])
def test_compare_and_grid_bad_options(main, argv, expected, capsys):
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1
  assert err.split(": error: ", 1)[1].startswith(expected), err


@pytest.mark.parametrize("main,module", [
    (train.main, "train"), (compare.main, "compare"), (grid.main, "grid")])
def test_help_names_the_program_and_gives_every_option_a_default(
    main, module, capsys):
  with pytest.raises(SystemExit) as e:
    main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: python -m gradreg_optax.experiments.{module}")
  options = out.split("options:", 1)[1]
  entries = [e for e in options.split("\n  -")[1:] if not e.startswith("h,")]
  assert entries and all("default" in " ".join(e.split()) for e in entries), (
      [e for e in entries if "default" not in e])


def test_train_warns_about_unused_options_and_says_what_it_trains(capsys):
  r = train.main(["--method", "sgd", "--gamma", "0.5", "--max-steps", "2",
                  "--epochs", "1", "--width", "8", "--depth", "2",
                  "--no-measure-cost"])
  out, err = capsys.readouterr()
  assert "warning: --gamma is not used by method 'sgd'" in err
  first = out.splitlines()[0]
  assert first.startswith("SGD (no hyperparameters) | MLP 2 x 8 | digits")
  assert json.loads(out.splitlines()[-2])["method"] == "sgd"
  assert r["hyperparameters"] == {}


def test_conclusion_names_what_exceeds_the_paired_spread():
  row = lambda label, accs, ref: {
      "label": label, "test_accuracy_mean": sum(accs) / len(accs),
      "test_accuracy_std": 0.0, "paired_difference_mean":
          sum(a - b for a, b in zip(accs, ref)) / len(accs),
      "paired_difference_std": 0.001}
  ref = [0.90, 0.91, 0.92]
  summary = {"seeds": [0, 1, 2], "rows": [
      row("sgd", ref, ref), row("sam", [0.92, 0.93, 0.94], ref),
      row("forward", [0.9005, 0.9105, 0.9205], ref)]}
  text = compare.conclusion(summary)
  assert "sam (+2.00 ± 0.10) differs" in text
  assert "the other 1 method is within it" in text
  summary["rows"] = summary["rows"][::2]
  assert "every method is within the seed spread" in compare.conclusion(
      summary)
