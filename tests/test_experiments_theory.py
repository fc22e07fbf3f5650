"""The theory experiments: --quick modes, command lines, and the pieces
of the IGR experiment against closed forms."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradreg_optax.experiments import dln_bias, flatness_digits, igr


def _finite(v):
  return v is not None and math.isfinite(v)


def test_dln_bias_quick(tmp_path):
  runs = tmp_path / "runs.json"
  dln_bias.main(["--quick", "--out", str(tmp_path), "--figures",
                 str(tmp_path), "--runs", str(runs)])
  res = json.loads((tmp_path / "dln_bias_quick.json").read_text())
  assert res["command"] == (
      "python -m gradreg_optax.experiments.dln_bias --quick --out "
      f"{tmp_path} --figures {tmp_path} --runs {runs}")
  assert res["seeds_completed"] == [0, 1]
  assert "runs" not in res  # the summaries only; the records go to --runs
  (bias,) = res["summary"]["bias"]
  assert bias["rel_err_solver_h"]["n"] == 2
  assert bias["rel_err_solver_h"]["mean"] < 1e-4
  records = json.loads(runs.read_text())
  assert records["command"] == res["command"]
  sweep = records["runs"]["sweep"]
  assert all(r["converged"] and _finite(r["test_error"]) for r in sweep)
  assert {r["method"] for r in sweep} == {
      "forward", "backward", "double_backprop"}
  assert res["summary"]["runs"]["converged"] == len(sweep)
  for entry in res["summary"]["sweep"]:
    assert entry["rel_err_exact"]["mean"] < 0.02
    assert entry["eps_paper"] == 40 * entry["eps_signed"]  # 4N, N = 10
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
               test_error=None if s == 2 else 1.0 + s, gd_test_error=2.0,
               gd_l1=3.0)
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
  assert entry["test_error"] == dict(mean=1.5, std=math.sqrt(0.5), n=2,
                                     min=1.0, max=2.0)
  assert entry["ratio_to_gd"]["mean"] == 0.75
  assert entry["eps_paper"] == 0.1 * 4 * cfg["n"]
  assert entry["gd_l1"] == dict(mean=3.0, std=0.0, n=3, min=3.0, max=3.0)
  assert summary["runs"]["converged"] == 2
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
  out = str(tmp_path / "flat")
  flatness_digits.main(["--quick", "--out", out, "--figure", out + ".png"])
  res = json.loads((tmp_path / "flat.json").read_text())
  assert res["command"].endswith(f"--quick --out {out} --figure {out}.png")
  assert res["data"] == {"name": "digits", "train": 1438, "test": 359,
                         "split": "data.load_digits()"}
  assert {r["method"] for r in res["runs"]} == {"sgd", "forward", "sam"}
  for r in res["runs"]:
    assert 0.5 < r["test_acc"] <= 1.0
    assert r["top_eigenvalue"] > 0 and r["trace"] > 0
    assert r["grad_norm_sq"] >= 0 and _finite(r["noise_increase"])
  assert "| sam |" in (tmp_path / "flat.md").read_text()
  assert (tmp_path / "flat.png").stat().st_size > 1000


@pytest.mark.slow
def test_igr_quick(tmp_path):
  out = str(tmp_path / "igr")
  igr.main(["--quick", "--out", out, "--figure", out + ".png"])
  res = json.loads((tmp_path / "igr.json").read_text())
  assert res["command"].endswith(f"--quick --out {out} --figure {out}.png")
  configs = res["digits"]["configs"]
  assert [c["name"] for c in configs] == ["gd h=0.05", "gd h=0.8",
                                          "explicit s=0.8"]
  for c in configs:
    assert c["diverged"] == 0 and len(c["runs"]) == 2
    for r in c["runs"]:
      assert all(_finite(v) and v > 0 for v in r["r_ig_at_loss"].values())
      assert 0.5 < r["at_max_test_acc"]["test_acc"] <= 1.0
    assert c["curve_first_seed"]
    ratios = c["summary"]["r_ig_ratio_to_base"]
    assert all(v["n"] == 2 and v["min"] > 0 for v in ratios.values())
    assert len(c["summary"]["max_test_acc_minus_base_images"]) == 2
  self_ratio = configs[0]["summary"]["r_ig_ratio_to_base"]["1.0"]
  assert self_ratio["min"] == self_ratio["max"] == 1.0
  assert res["digits"]["initial_top_eigenvalue"]["min"] > 0
  tp = res["two_param"]
  # Backward error analysis: GD is closer to the modified flow than to E's.
  assert tp["max_dist_gd_flow_modified"] < tp["max_dist_gd_flow_E"]
  flat = res["two_parameter_flatness"]
  assert flat["command"] == res["command"]
  assert [r["h"] for r in flat["runs"]] == [0.001, 0.2, 0.4]
  assert (tmp_path / "igr.png").stat().st_size > 1000


@pytest.mark.parametrize("module", [igr, flatness_digits])
def test_bad_option_is_one_line_and_status_2(module, capsys):
  with pytest.raises(SystemExit) as info:
    module.main(["--seeds", "0"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--seeds" in err and ">= 1" in err


def test_exact_trace_is_the_trace_of_the_exact_hessian():
  with jax.enable_x64(True):
    x, y = 2.0, 1.5
    e = igr.two_param_loss(x, y)
    for p in ([2.8, 0.5], [0.3, -1.7], [1.0, 0.75]):
      p = jnp.array(p, jnp.float64)
      got = float(igr.exact_trace(e, p, None))
      np.testing.assert_allclose(got, np.trace(jax.hessian(e)(p, None)),
                                 rtol=1e-12)
      # The residual's term of the Hessian has a zero diagonal.
      np.testing.assert_allclose(got, x ** 2 * float(p @ p), rtol=1e-12)
    # A non-separable function of three parameters.
    f = lambda p, b: jnp.sin(p[0] * p[1]) * jnp.exp(b * p[2]) + p[0] ** 4
    p = jnp.array([0.4, -1.3, 0.7], jnp.float64)
    np.testing.assert_allclose(float(igr.exact_trace(f, p, 0.5)),
                               np.trace(jax.hessian(f)(p, 0.5)), rtol=1e-12)


def test_small_steps_reach_the_minimum_of_the_flow_of_e():
  # The flow of E keeps a^2 - b^2, so from (a0, b0) it ends where ab = y/x
  # with trace x^2 (a^2 + b^2) = x^2 sqrt((a0^2 - b0^2)^2 + 4 (y/x)^2).
  x, y, a0, b0 = 1.0, 1.0, 2.8, 0.5
  res = igr.two_param_flatness((0.001, 0.3), start=(a0, b0), x=x, y=y)
  flow_trace = x ** 2 * np.hypot(a0 ** 2 - b0 ** 2, 2 * y / x)
  small, large = res["runs"]
  np.testing.assert_allclose(small["gd_trace"], flow_trace, rtol=1e-4)
  np.testing.assert_allclose(small["modified_flow_trace"], flow_trace,
                             rtol=1e-4)
  for r in res["runs"]:
    assert r["gd_grad_norm"] < 1e-10
    a, b = r["gd_minimum"]
    np.testing.assert_allclose(a * b * x, y, rtol=1e-10)
  # At a minimum the trace is the top eigenvalue, which GD keeps below 2/h;
  # the start's (8.25) is above 2/0.3, so GD must move to a flatter minimum.
  assert res["start_top_eigenvalue"] > 2 / 0.3 > large["gd_trace"]


def test_paired_comparison_matches_seeds():
  def run(seed, r, acc, diverged=False):
    if diverged:
      return dict(seed=seed, diverged=True)
    return dict(seed=seed, diverged=False, r_ig_at_loss={"0.1": r},
                at_max_test_acc=dict(test_acc=acc))

  base = dict(runs=[run(0, 2.0, 0.5), run(1, 4.0, 0.75), run(2, 1.0, 0.5)],
              summary={})
  # Listed in another order, one run never reaches the level, one diverged.
  other = dict(runs=[run(1, 1.0, 0.5), run(0, 3.0, 1.0), run(2, None, 0.25),
                     run(3, 0, 0, diverged=True)], summary={})
  base["runs"].append(run(3, 1.0, 0.5))
  igr.paired([base, other], [0.1], n_test=4)
  ratio = other["summary"]["r_ig_ratio_to_base"]["0.1"]
  assert ratio["n"] == 2 and ratio["min"] == 0.25 and ratio["max"] == 1.5
  np.testing.assert_allclose(ratio["std"], np.std([0.25, 1.5], ddof=1))
  assert other["summary"]["max_test_acc_minus_base_images"] == [-1, 2, -1]
