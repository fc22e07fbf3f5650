"""The experiments' command lines: one-line errors, help, warnings, header."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

import gradreg_optax as gro

from gradreg_optax.experiments import compare
from gradreg_optax.experiments import dln_bias
from gradreg_optax.experiments import flatness_digits
from gradreg_optax.experiments import grid
from gradreg_optax.experiments import igr
from gradreg_optax.experiments import train
from gradreg_optax.experiments import transformer

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
    (compare.main, ["--methods", "sam:rho=-1"], "argument --methods: "
     "'rho=-1' in 'sam:rho=-1': expected rho >= 0, got -1"),
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
  assert ", 1 epoch | " in first
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


def test_every_hyperparameter_of_the_registry_is_a_flag_with_its_help(
    capsys):
  with pytest.raises(SystemExit):
    train.main(["--help"])
  out = " ".join(capsys.readouterr().out.split())
  for method in gro.METHODS.values():
    for name, h in method.hyperparameters.items():
      assert f"--{name.replace('_', '-')} " in out
      assert " ".join(h.help.split()) in out
      assert f"{method.name}" in out.split(f"--{name.replace('_', '-')} ")[1]


def _error(main, argv, capsys):
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1, err
  return err


def test_a_method_added_to_the_registry_gets_its_flags_without_edits():
  # A new method whose `gamma` has another domain than GR's and that brings
  # a hyperparameter of its own; the command line is built after it joins.
  # One fresh interpreter parses every command line (argparse exits on
  # errors and on --help: each is caught and its output kept).
  script = textwrap.dedent("""
      import contextlib, io, json, sys
      import gradreg_optax as gro
      from gradreg_optax import registry
      new = gro.Method(
          "weighted", "W", "a test method",
          {"gamma": gro.Hyperparameter(0.5, "[0, 1)", "weight of the part"),
           "theta": gro.Hyperparameter(0.1, "(0, 1]", "mixing weight")},
          1, lambda loss_fn, gamma, theta, **options: None)
      gro.METHODS = registry._Registry([*gro.METHODS.values(), new])
      from gradreg_optax.experiments import train
      results = []
      for argv in json.loads(sys.argv[1]):
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
          try:
            parser = train._cli.parser("train", "")
            train.add_config_arguments(parser)
            args = parser.parse_args(argv)
            print(train.hyperparameters(train.config_from_args(parser, args)))
          except SystemExit as e:
            code = e.code
        results.append((code, out.getvalue(), err.getvalue()))
      print(json.dumps(results))
  """)
  cases = [("--method", "weighted", "--theta", "1"),
           ("--method", "forward", "--gamma", "3"),
           ("--method", "weighted", "--gamma", "3"), ("--gamma", "-1"),
           ("--method", "weighted", "--theta", "0"), ("--help",)]
  done = subprocess.run([sys.executable, "-c", script, json.dumps(cases)],
                        capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(__file__)),
                        check=False)
  assert done.returncode == 0, done.stderr
  results = dict(zip(cases, json.loads(done.stdout)))

  def run(*argv):
    code, stdout, stderr = results[argv]
    return types.SimpleNamespace(returncode=code, stdout=stdout,
                                 stderr=stderr)

  ok = run("--method", "weighted", "--theta", "1")
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.strip() == "{'gamma': 0.5, 'theta': 1.0}"
  assert run("--method", "forward", "--gamma", "3").returncode == 0
  for argv, expected in [
      (("--method", "weighted", "--gamma", "3"), "argument --gamma: expected "
       "a number in [0, 1) for method 'weighted', got 3"),
      (("--gamma", "-1",), "argument --gamma: expected a number >= 0, got "
       "'-1'"),
      (("--method", "weighted", "--theta", "0"), "argument --theta: expected "
       "a number in (0, 1] for method 'weighted', got 0")]:
    bad = run(*argv)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.split(": error: ")[1].startswith(expected), bad.stderr
  help_ = " ".join(run("--help").stdout.split())
  gamma_help = help_.split("--gamma GAMMA ")[1].split(" --eps EPS")[0]
  assert gamma_help.startswith(
      "strength of the penalty (gamma/2)||grad L||^2, a number >= 0 (forward, "
      "backward, central, double_backprop, jvp; default: 0.05); ")
  assert gamma_help.endswith(
      "; weight of the part, a number in [0, 1) (weighted; default: 0.5)")
  theta_help = help_.split("--theta THETA ")[1].split(" --eta ETA")[0]
  assert theta_help.endswith(
      "; mixing weight, a number in (0, 1] (weighted; default: 0.1)")


@pytest.mark.parametrize("main,argv,purpose", [
    (train.main, ["--epochs", "1"], "--dataset digits"),
    (compare.main, ["--epochs", "1"], "--dataset digits"),
    (igr.main, ["--quick"], "the digits data set"),
    (flatness_digits.main, ["--quick"], "the digits data set")])
def test_without_scikit_learn_one_line_names_the_extra(main, argv, purpose,
                                                       monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails
  err = _error(main, argv, capsys)
  assert err.split(": error: ")[1] == (
      f"{purpose} needs scikit-learn, which is not installed: "
      'pip install -e ".[examples]"\n')


def test_without_matplotlib_out_dir_warns_before_training_and_writes_json(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  train.main(["--max-steps", "1", "--epochs", "1", "--width", "8", "--depth",
              "2", "--no-measure-cost", "--out-dir", str(tmp_path)])
  out, err = capsys.readouterr()
  assert err.startswith("warning: Matplotlib is not installed, so --out-dir "
                        'gets no figures (pip install -e ".[examples]")\n')
  assert os.listdir(tmp_path) == ["results.json"]
  assert out.startswith("SGD")  # after the warning: the run went on


@pytest.mark.parametrize("main,argv", [
    (grid.main, ["--figure", "{tmp}/map.png"]),
    (compare.main, ["--figure", "{tmp}/cmp.png"]),
    (igr.main, ["--quick", "--figure", "{tmp}/igr.png"]),
    (flatness_digits.main, ["--quick", "--figure", "{tmp}/flat.png"]),
    (transformer.main, ["--figure", "{tmp}/lm.png"])])
def test_without_matplotlib_a_requested_figure_stops_before_training(
    main, argv, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  argv = [a.format(tmp=tmp_path) for a in argv]
  err = _error(main, argv, capsys)
  assert err.split(": error: ")[1] == (
      "argument --figure: figures need Matplotlib, which is not installed: "
      'pip install -e ".[examples]"\n')


@pytest.mark.parametrize("main,argv,expected", [
    (train.main, ["--out-dir", "{file}"], "argument --out-dir: '{file}' "
     "exists and is not a folder"),
    (train.main, ["--out-dir", "{file}/run"], "argument --out-dir: '{file}' "
     "is a file, so '{file}/run' cannot be a folder"),
    (compare.main, ["--out", "{file}/cmp"], "argument --out: '{file}' is a "
     "file, so '{file}' cannot be a folder"),
    (compare.main, ["--out", "{tmp}/cmp"], "argument --out: '{tmp}/cmp.json' "
     "is a folder"),
    (grid.main, ["--figure", "{file}/map.png"], "argument --figure: "
     "'{file}' is a file, so '{file}' cannot be a folder"),
    (dln_bias.main, ["--quick", "--out", "{file}"], "argument --out: "
     "'{file}' exists and is not a folder"),
    (dln_bias.main, ["--quick", "--runs", "{tmp}"], "argument --runs: "
     "'{tmp}' is a folder"),
    (transformer.main, ["--out", "{file}/lm"], "argument --out: '{file}' is "
     "a file, so '{file}' cannot be a folder"),
])
def test_output_paths_are_checked_before_training(main, argv, expected,
                                                   tmp_path, capsys):
  file = tmp_path / "taken"
  file.write_text("")
  (tmp_path / "cmp.json").mkdir()
  fill = lambda a: a.format(file=file, tmp=tmp_path)
  err = _error(main, [fill(a) for a in argv], capsys)
  assert err.split(": error: ")[1] == fill(expected) + "\n"


def test_train_checks_out_dir_before_training(tmp_path):
  taken = tmp_path / "taken"
  taken.write_text("")
  with pytest.raises(ValueError, match="train: `out_dir` '.*taken' exists "
                     "and is not a folder"):
    train.train(train.Config(out_dir=str(taken)), dataset=object())


def test_dln_bias_without_matplotlib_warns_and_writes_the_results(
    tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setattr(dln_bias, "run", lambda cfg, log: "runs")
  monkeypatch.setattr(dln_bias, "summarize", lambda res, cfg: {})
  monkeypatch.setattr(dln_bias, "tables", lambda summary, cfg: "tables")
  dln_bias.main(["--quick", "--out", str(tmp_path), "--figures",
                 str(tmp_path / "figures")])
  err = capsys.readouterr().err
  assert err == ("warning: Matplotlib is not installed, so --figures gets no "
                 'figures (pip install -e ".[examples]")\n')
  assert sorted(os.listdir(tmp_path)) == ["dln_bias_quick.json",
                                          "dln_bias_quick.md"]
