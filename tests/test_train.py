"""Tests for gradreg_optax/experiments/train.py and compare.py."""

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from gradreg_optax.experiments import compare
from gradreg_optax.experiments import data
from gradreg_optax.experiments import train
from test_data import write_cifar10

TINY = train.Config(width=16, depth=2, epochs=1, batch_size=32, max_steps=3,
                    quiet=True, measure_cost=False)


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


def _quadratic():
  a = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])
  loss = lambda p, b: 0.5 * p @ a @ p + b @ p
  return a, loss, jnp.array([0.3, -0.7, 1.1]), jnp.array([0.1, 0.2, -0.4])


GR_METHODS = ("forward", "backward", "central", "double_backprop", "jvp")


def _reference_step(method, loss, p, b, g, cfg):
  m = gro.METHODS[method]
  hyper = {k: m.defaults[k] if getattr(cfg, k) is None else getattr(cfg, k)
           for k in m.hyperparameters}
  grad = lambda q: jax.grad(loss)(q, b)
  if m.reference_init is None:
    return m.reference(grad, p, g, **hyper)
  return m.reference(grad, p, g, m.reference_init(p), **hyper)[0]


@pytest.mark.parametrize("method", [m for m in train.METHODS
                                    if m not in ("sgd", "flooding")])
def test_make_method_matches_hand_formula_on_a_quadratic(method):
  # On L = p'Ap/2 + b'p every finite difference of the gradient is exact.
  a, loss, p, b = _quadratic()
  cfg = train.Config(gamma=0.3, eps=0.2, rho=0.1, alpha=0.6, r=0.2)
  tx, train_loss = train.make_method(method, loss, cfg)
  assert train_loss is loss
  g = a @ p + b
  unit = g / jnp.linalg.norm(g)
  expected = {
      "sam": a @ (p + cfg.rho * unit) + b,
      # ASAM scales weight matrices only; on a vector it is SAM.
      "asam": a @ (p + cfg.rho * unit) + b,
      "gradient_norm_penalty": ((1 - cfg.alpha) * g
                                + cfg.alpha * (a @ (p + cfg.r * unit) + b)),
  }
  if method in GR_METHODS:
    expected = g + cfg.gamma * a @ g
  elif method in expected:
    expected = expected[method]
  else:  # a method of the SAM family: its registry reference, same values
    expected = _reference_step(method, loss, p, b, g, cfg)
  out, _ = tx.update(g, tx.init(p), p, batch=b)
  chex.assert_trees_all_close(out, expected, rtol=1e-5)


def test_make_method_flooding_and_errors():
  loss = lambda p, b: jnp.sum(p ** 2)
  tx, flooded = train.make_method("flooding", loss, train.Config(b=2.0))
  g = jnp.array([0.5])
  assert tx.update(g, tx.init(g), g, batch=None)[0] is g  # the identity
  assert float(flooded(jnp.ones(1), None)) == pytest.approx(3.0)  # |1-2|+2
  with pytest.raises(ValueError, match="every_k"):
    train.make_method("sgd", loss, train.Config(every_k=2))
  with pytest.raises(ValueError, match="Unknown method"):
    train.make_method("adamw", loss, train.Config())


@pytest.mark.parametrize("method", train.METHODS)
def test_each_method_trains(method, digits):
  r = train.train(dataclasses.replace(TINY, method=method, max_steps=None),
                  digits)
  assert r["steps"] == len(digits.x_train) // TINY.batch_size
  h = r["history"]
  assert np.isfinite(h["train_loss"]).all()
  assert 0.0 <= r["final_test_accuracy"] <= 1.0
  assert r["final_test_accuracy"] > 0.3  # one epoch is far above chance (0.1)
  assert r["images_per_s"] > 0


def _params_after(config, dataset):
  # The history is a function of the parameters; compare the whole curve
  # (not the metrics, which SGD does not measure).
  h = train.train(config, dataset)["history"]
  return {k: h[k] for k in ("train_loss", "train_accuracy", "test_loss",
                            "test_accuracy")}


@pytest.mark.parametrize("method,switch_off", [
    ("forward", {"gamma": 0.0}), ("sam", {"rho": 0.0}),
    ("flooding", {"b": 0.0})])
def test_switched_off_methods_equal_sgd(method, switch_off, digits):
  sgd = _params_after(TINY, digits)
  off = _params_after(dataclasses.replace(TINY, method=method, **switch_off),
                      digits)
  on = _params_after(dataclasses.replace(TINY, method=method, b=5.0),
                     digits)
  chex.assert_trees_all_close(off, sgd, rtol=1e-6)
  assert on["train_loss"] != sgd["train_loss"]


def test_flooding_above_the_loss_ascends(digits):
  # Below the flood level the flooded gradient is the negated gradient.
  cfg = dataclasses.replace(TINY, max_steps=None, epochs=2, b=100.0,
                            learning_rate=0.05)
  up = train.train(dataclasses.replace(cfg, method="flooding"), digits)
  down = train.train(cfg, digits)
  assert up["history"]["train_loss"][-1] > np.log(10) > (
      down["history"]["train_loss"][-1])


def test_every_k_reuses_the_correction(digits):
  cfg = dataclasses.replace(TINY, method="forward", gamma=0.5)
  # One step: the first step computes the correction whatever k is.
  one = {k: _params_after(dataclasses.replace(cfg, max_steps=1, every_k=k),
                          digits) for k in (1, 8)}
  chex.assert_trees_all_close(one[1], one[8], rtol=1e-6)
  many = {k: _params_after(dataclasses.replace(cfg, max_steps=6, every_k=k),
                           digits) for k in (1, 8)}
  assert many[1]["train_loss"] != many[8]["train_loss"]


def test_host_choice_of_recompute_equals_the_on_device_choice(digits):
  # compile_step picks the recomputing or reusing executable on the host;
  # the library's default picks inside the step with lax.cond. Same steps.
  cfg = dataclasses.replace(TINY, method="forward", gamma=0.5, every_k=3)
  s = train.setup(cfg, digits)
  x, y = digits.x_train[:32], digits.y_train[:32]
  host_step, _ = train.compile_step(s, cfg.every_k, x, y)
  host = device = s.state
  for i in range(7):
    host = host_step(host, x, y, s.aug_key, i)[0]
    device = s.train_step(device, x, y, s.aug_key)[0]
  chex.assert_trees_all_close(host.params, device.params, rtol=1e-6,
                              atol=1e-7)
  assert int(host.step) == 7


def test_host_choice_recomputes_after_an_unusable_correction(digits,
                                                              monkeypatch):
  # The device is asked only after a recomputation; where it reports no
  # usable correction (as after a non-finite one), the next step recomputes.
  cfg = dataclasses.replace(TINY, method="forward", gamma=0.5, every_k=3)
  s = train.setup(cfg, digits)
  x, y = digits.x_train[:32], digits.y_train[:32]
  asked = []

  def needs_recompute(opt_state):
    asked.append(len(asked))
    return len(asked) == 1  # the first answer: unusable

  monkeypatch.setattr(train.gro, "needs_recompute", needs_recompute)
  host_step, _ = train.compile_step(s, cfg.every_k, x, y)
  host = reference = s.state
  for i, recompute in enumerate([True, True, False, True, False, False]):
    host = host_step(host, x, y, s.aug_key, i)[0]
    reference = s.train_step(reference, x, y, s.aug_key,
                             recompute=recompute)[0]
  chex.assert_trees_all_close(host.params, reference.params, rtol=1e-6,
                              atol=1e-7)
  assert len(asked) == 3  # after the recomputing steps 0, 1 and 3 only


@pytest.mark.parametrize("times,k,expected", [
    ([9.0, 9.0, 9.0, 1.0, 3.0, 2.0], 1, 2.0),        # first 3 dropped
    ([9.0] * 4 + [4.0, 1.0, 1.0, 2.0] * 3, 4, 2.0),   # one period: 4 steps
    ([9.0, 9.0, 9.0, 9.0, 5.0, 1.0, 3.0, 1.0, 7.0], 2, 2.5),  # 7: no period
])
def test_median_step_time_over_whole_periods(times, k, expected):
  assert train.median_step_time(times, k) == expected


def test_same_seed_same_results_other_seed_differs(digits):
  cfg = dataclasses.replace(TINY, method="forward", max_steps=None, epochs=2)
  a = train.train(cfg, digits)
  b = train.train(cfg, digits)
  c = train.train(dataclasses.replace(cfg, seed=1), digits)
  assert a["history"] == b["history"]
  assert a["history"] != c["history"]


def test_cli_on_cifar_format_files_writes_results(tmp_path, capsys):
  write_cifar10(str(tmp_path / "cifar"), per_batch=8)
  out = tmp_path / "out"
  r = train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                  "--model", "mlp", "--width", "8", "--depth", "2",
                  "--batch-size", "16", "--epochs", "2", "--method", "sam",
                  "--out-dir", str(out), "--quiet"])
  assert r["config"]["augment"] is None and r["steps"] == 4
  printed = capsys.readouterr().out
  assert "images/s" in printed
  with open(out / "results.json") as f:
    saved = json.load(f)
  assert saved["history"] == r["history"]
  assert os.path.getsize(out / "curves.png") > 1000
  # The counted matrix products: an L=2 MLP with SAM is 2 (3L - 1).
  assert saved["step_matmuls"] == 2 * (3 * 2 - 1)


def _tiny_resnet():
  ds = data.synthetic(16, 8, (8, 8, 3), num_classes=4, seed=0)
  cfg = dataclasses.replace(TINY, dataset="synthetic", model="resnet18",
                            width=4, batch_size=8, max_steps=2, gamma=1.0)
  return ds, cfg


def _means(batch_stats):
  return [x for path, x in jax.tree_util.tree_leaves_with_path(batch_stats)
          if "mean" in jax.tree_util.keystr(path)]


@pytest.mark.parametrize("model,width,expected", [
    ("resnet18", None, 11_173_962),  # the standard CIFAR-10 ResNet-18
    ("resnet18", 8, None),
    ("mlp", None, 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10),
])
def test_model_width_defaults_per_model(model, width, expected):
  m = train.make_model(train.Config(model=model, width=width), 10)
  shape = (1, 32, 32, 3) if model == "resnet18" else (1, 64)
  params = jax.eval_shape(m.init, jax.random.PRNGKey(0),
                          jnp.zeros(shape))["params"]
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  if expected is None:  # an explicit width wins
    assert n < 11_173_962 / 50
  else:
    assert n == expected


@pytest.mark.slow
def test_resnet18_trains_with_batchnorm():
  ds, cfg = _tiny_resnet()
  r, state = train.train(dataclasses.replace(cfg, method="forward"), ds,
                         return_state=True)
  assert r["steps"] == 2 and np.isfinite(r["history"]["train_loss"]).all()
  means = _means(state.batch_stats)
  assert len(means) == 20  # stem + 16 in the blocks + 3 shortcuts
  # Updated from their initial zeros, and finite.
  assert all(np.isfinite(np.asarray(m)).all() for m in means)
  assert all(np.abs(np.asarray(m)).max() > 0 for m in means)


@pytest.mark.slow
def test_resnet18_batchnorm_statistics_updated_once():
  # After one step the statistics come from the caller's own forward pass
  # only, so they equal SGD's (same parameters, same data) although F-GR also
  # evaluates the model, in training mode, at displaced parameters.
  ds, cfg = _tiny_resnet()
  out = {m: train.train(dataclasses.replace(cfg, method=m, max_steps=1), ds,
                        return_state=True) for m in ("sgd", "forward")}
  stats = {m: s.batch_stats for m, (_, s) in out.items()}
  chex.assert_trees_all_close(stats["forward"], stats["sgd"], rtol=1e-5,
                              atol=1e-7)
  # ... while the parameters moved differently.
  assert not np.allclose(jax.tree.leaves(out["sgd"][1].params)[0],
                         jax.tree.leaves(out["forward"][1].params)[0])


def test_compare_reports_accuracy_cost_and_throughput(digits, tmp_path,
                                                      capsys):
  out = tmp_path / "cmp"
  summary = compare.main(
      ["--seeds", "2", "--methods", "sgd", "forward", "forward:every_k=4",
       "--width", "16", "--depth", "3", "--epochs", "1", "--max-steps", "4",
       "--batch-size", "32", "--timing", "2", "4", "--quiet",
       "--out", str(out)])
  rows = {r["label"]: r for r in summary["rows"]}
  assert list(rows) == ["sgd", "forward", "forward:every_k=4"]
  assert rows["sgd"]["time_ratio"] == 1.0
  for r in rows.values():
    assert len(r["test_accuracies"]) == 2
    chex.assert_trees_all_close(r["images_per_s"],
                                32 / r["step_time_median_s"], rtol=1e-12)
  # Three layers: SGD 3L-1 = 8 products, one extra gradient doubles it.
  assert rows["sgd"]["step_matmuls"] == 8
  assert rows["forward"]["matmul_ratio"] == 2.0
  assert summary["real_data"] and summary["dataset"] == "digits"
  printed = capsys.readouterr().out
  assert "| forward:every_k=4 | gamma=0.05, eps=0.1, every_k=4 |" in printed
  assert printed.strip().splitlines()[-1].startswith("Against sgd (")
  assert json.loads((tmp_path / "cmp.json").read_text())["rows"][1][
      "images_per_s"] == rows["forward"]["images_per_s"]
  assert (tmp_path / "cmp.md").read_text().count("\n| ") == 4


def test_metrics_logged_per_epoch_are_the_methods_measurements(digits):
  # One step of F-GR: the logged gradient norm and penalty are those of the
  # first batch's gradient at the initial parameters.
  cfg = dataclasses.replace(TINY, method="forward", max_steps=1)
  h = train.train(cfg, digits)["history"]
  s = train.setup(cfg, digits)
  xb, yb = next(data.batches(digits.x_train, digits.y_train, 32,
                             np.random.RandomState(cfg.seed)))
  loss_fn = train.make_loss(train.make_model(cfg, 10))
  g = jax.grad(lambda p: loss_fn(p, (xb, yb, {}))[0])(s.state.params)
  norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                     for x in jax.tree.leaves(g)))
  assert h["grad_norm"][0] == pytest.approx(norm, rel=1e-5)
  assert h["penalty"][0] == pytest.approx(norm ** 2 / 2, rel=1e-5)
  assert np.isfinite(h["sharpness"][0])
  assert "grad_norm" not in train.train(TINY, digits)["history"]  # SGD


def test_hyperparameters_default_to_the_registry_and_are_recorded(digits):
  r = train.train(dataclasses.replace(TINY, method="asam", rho=0.2), digits)
  assert r["method"] == "asam"
  assert r["hyperparameters"] == {"rho": 0.2, "adaptive_eta": 0.01}
  assert train.hyperparameters(train.Config(method="flooding")) == {"b": 0.02}
  assert train.hyperparameters(train.Config(method="sam", every_k=2)) == {
      "rho": 0.05, "every_k": 2}
