"""The theory experiments' --quick modes run and write sane outputs."""

import json
import math

import pytest

from gradreg_optax.experiments import dln_bias, flatness_digits


def _finite(v):
  return v is not None and math.isfinite(v)


@pytest.mark.slow
def test_dln_bias_quick(tmp_path):
  dln_bias.main(["--quick", "--out", str(tmp_path), "--figures",
                 str(tmp_path)])
  res = json.loads((tmp_path / "dln_bias_quick.json").read_text())
  assert res["command"].endswith("--quick --out " + str(tmp_path)
                                 + " --figures " + str(tmp_path))
  (bias,) = res["bias"]
  assert bias["converged"] and bias["rel_err_solver_h"] < 1e-4
  assert all(r["converged"] and _finite(r["test_error"])
             for r in res["sweep"] + res["grid"])
  assert {r["method"] for r in res["sweep"]} == {"forward", "backward",
                                                  "double_backprop"}
  for suffix in ("alpha", "eps", "grid"):
    assert (tmp_path / f"dln_bias_quick_{suffix}.png").stat().st_size > 1000


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
