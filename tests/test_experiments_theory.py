"""The theory experiments' --quick modes run and write sane outputs."""

import json
import math

import pytest

from gradreg_optax.experiments import dln_bias, flatness_digits


def _finite(v):
  return v is not None and math.isfinite(v)


def test_dln_bias_quick(tmp_path):
  dln_bias.main(["--quick", "--out", str(tmp_path), "--figures",
                 str(tmp_path)])
  res = json.loads((tmp_path / "dln_bias_quick.json").read_text())
  assert res["command"] == ("python -m gradreg_optax.experiments.dln_bias "
                            f"--quick --out {tmp_path} --figures {tmp_path}")
  assert res["seeds_completed"] == [0, 1]
  (bias,) = res["summary"]["bias"]
  assert bias["rel_err_solver_h"]["n"] == 2
  assert bias["rel_err_solver_h"]["mean"] < 1e-4
  assert all(r["converged"] and _finite(r["test_error"])
             for r in res["runs"]["sweep"])
  assert {r["method"] for r in res["runs"]["sweep"]} == {
      "forward", "backward", "double_backprop"}
  for entry in res["summary"]["sweep"]:
    assert entry["rel_err_exact"]["mean"] < 0.02
    assert entry["eps_mean_loss"] == 10 * entry["eps_signed"]  # N = 10
  grid = res["summary"]["grid"]
  assert {e["method"] for e in grid} == {"forward", "backward",
                                         "double_backprop"}
  assert all(0 <= e["fraction_diverged"] <= 1 for e in grid)
  md = (tmp_path / "dln_bias_quick.md").read_text()
  assert md.startswith("Command: `python -m gradreg_optax.experiments")
  assert "±" in md
  for suffix in ("alpha", "eps", "theory", "grid", "divergence"):
    assert (tmp_path / f"dln_bias_quick_{suffix}.png").stat().st_size > 1000


def test_dln_bias_summary_is_mean_and_spread_over_seeds():
  cfg = dict(dln_bias.QUICK, seeds=[0, 1, 2])
  rows = [dict(seed=s, alpha=1.0, gamma=1e-3, method="forward",
               eps_signed=0.1, diverged=s == 2, converged=s != 2,
               test_error=None if s == 2 else 1.0 + s, gd_test_error=2.0)
          for s in (0, 1, 2)]
  for r in rows:
    for key in ("l1", "rel_change_from_gd", "rel_err_first_order",
                "rel_err_exact", "exponent_support", "exponent_off_support",
                "first_order_exponent_support",
                "first_order_exponent_off_support", "uniform_test_error",
                "steps"):
      r[key] = 0.5
  grid = [dict(r, step_fraction=0.05) for r in rows]
  summary = dln_bias.summarize(dict(bias=[], sweep=rows, grid=grid),
                               dict(cfg, bias_alphas=[]))
  (entry,) = summary["sweep"]
  assert entry["diverged"] == 1 and entry["converged"] == 2
  assert entry["test_error"] == dict(mean=1.5, std=math.sqrt(0.5), n=2)
  assert entry["ratio_to_gd"]["mean"] == 0.75
  assert entry["eps_mean_loss"] == 0.1 * cfg["n"]
  (cell,) = summary["grid"]
  assert cell["fraction_diverged"] == pytest.approx(1 / 3)
  assert cell["stalled"] == 0


@pytest.mark.parametrize("argv", [["--seeds", "-1"], ["--seeds", "x"],
                                  ["--bogus"]])
def test_dln_bias_rejects_bad_options_in_one_line(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    dln_bias.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "error" in err


@pytest.mark.slow
def test_flatness_digits_quick(tmp_path):
  flatness_digits.main(["--quick", "--out", str(tmp_path), "--figures",
                        str(tmp_path)])
  res = json.loads((tmp_path / "flatness_digits_quick.json").read_text())
  assert {r["method"] for r in res["runs"]} == {"sgd", "f-gr", "sam"}
  for r in res["runs"]:
    assert 0.5 < r["test_acc"] <= 1.0
    assert r["top_eigenvalue"] > 0 and r["trace"] > 0
    assert r["grad_norm_sq"] >= 0 and _finite(r["noise_increase"])
  assert (tmp_path / "flatness_digits_quick.png").stat().st_size > 1000


@pytest.mark.slow
def test_igr_quick(tmp_path):
  from gradreg_optax.experiments import igr
  igr.main(["--quick", "--out", str(tmp_path), "--figures", str(tmp_path)])
  res = json.loads((tmp_path / "igr_quick.json").read_text())
  for curve in res["curves"].values():
    assert curve and all(_finite(e) and r >= 0 for e, r in curve)
  tp = res["two_param"]
  # Backward error analysis: GD is closer to the modified flow than to E's.
  assert tp["max_dist_gd_flow_modified"] < tp["max_dist_gd_flow_E"]
  assert (tmp_path / "igr_quick.png").stat().st_size > 1000
