"""Tests for gradreg_optax/experiments/harness.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from gradreg_optax.experiments import data as data_lib
from gradreg_optax.experiments import harness
from gradreg_optax.experiments import models
from gradreg_optax.experiments import spec as spec_lib

TINY = harness.Task("tiny", None, lambda c: models.MLP(8, 2, c), 2, 16)


@pytest.fixture(scope="module")
def tiny():
  # 100 training signals: 80 train (5 steps of 16 per epoch), 20 validation.
  return data_lib.synthetic(100, 40, (6,), num_classes=3, noise=2.0, seed=0)


def test_search_space_defaults_and_spec_options(monkeypatch):
  s = harness.search_space(spec_lib.parse("forward"))
  assert s.ranges == {"lr": harness.LEARNING_RATES["sgd"],
                      "wd": harness.WEIGHT_DECAY,
                      "gamma": harness.SEARCH["forward", "gamma"]}
  assert s.fixed == {"eps": 0.1}
  s = harness.search_space(spec_lib.parse("forward:gamma=0.2,eps=0.01..1"))
  assert s.fixed == {"gamma": 0.2} and s.ranges["eps"] == (0.01, 1.0)
  assert harness.search_space(spec_lib.parse("adamw")).ranges["lr"] == (
      harness.LEARNING_RATES["adamw"])
  # A method the table does not name (a new one in the registry): each
  # hyperparameter that switches it off at 0 is searched within a factor 10
  # of its default, the others keep their defaults.
  monkeypatch.delitem(harness.SEARCH, ("jvp", "gamma"))
  s = harness.search_space(spec_lib.parse("jvp"))
  default = gro.METHODS["jvp"].hyperparameters["gamma"].default
  assert s.ranges["gamma"] == pytest.approx((default / 10, default * 10))


def test_latin_hypercube_strata_and_common_draws():
  u = harness.latin_hypercube(8, ["lr", "wd", "rho"], seed=3)
  for v in u.values():
    assert sorted(np.floor(v * 8).astype(int).tolist()) == list(range(8))
  # The draws of lr and wd do not depend on the method's own names.
  other = harness.latin_hypercube(8, ["lr", "wd"], seed=3)
  np.testing.assert_array_equal(u["lr"], other["lr"])
  box = {"lr": (0.01, 1.0)}
  values = [c["lr"] for c in harness.sample(box, 4, 0)]
  assert all(0.01 <= v <= 1.0 for v in values)
  # One per quarter of the log range.
  assert sorted(int(math.log10(v / 0.01) / 0.5) for v in values) == [0, 1, 2,
                                                                      3]


def test_refine_halves_the_log_width_around_the_best_and_keeps_domains():
  box = {"lr": (0.01, 1.0), "alpha": (0.1, 0.9)}
  got = harness.refine(box, {"lr": 1.0, "alpha": 0.9},
                       {"lr": (0, math.inf), "alpha": (0.0, 1.0)})
  # Half of two decades, centred on the best: past the old edge.
  assert got["lr"] == pytest.approx((10 ** -0.5, 10 ** 0.5))
  assert got["alpha"][1] < 1.0


def test_at_edge():
  tried = [{"lr": 0.1}, {"lr": 0.3}, {"lr": 1.0}]
  assert harness.at_edge({"lr": 1.0}, tried, {"lr": None}) == {"lr": "high"}
  assert harness.at_edge({"lr": 0.3}, tried, {"lr": None}) == {"lr": None}


def test_gradients_per_step_counts_recomputing_steps():
  sam2 = spec_lib.parse("sam:every_k=2")
  # 35 steps per epoch, periods restart each epoch: 18 recompute.
  assert harness.gradients_per_step(sam2, 35) == pytest.approx(1 + 18 / 35)
  assert harness.gradients_per_step(spec_lib.parse("jvp"), 35) == 3.0
  assert harness.epochs_of(spec_lib.parse("sgd:budget=1.5"), 20) == 30


def test_flooding_at_a_traced_level_has_floodings_gradient():
  loss_fn = lambda p, b: jnp.mean((p - b) ** 2)
  params, batch = jnp.array([0.3, -1.0]), jnp.array([1.0, 2.0])
  spec = spec_lib.parse("flooding")
  for level in (0.5, 3.0):  # below and above the loss (2.125)
    want = jax.grad(gro.flooding(loss_fn, b=level))(params, batch)
    got = jax.vmap(lambda b: jax.grad(harness.build(
        spec, loss_fn, {"b": b}).loss_fn)(params, batch))(jnp.array([level]))
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


def _reference(task, spec, hyper, data, seed, epochs, momentum=0.9):
  """One run written out step by step: Python loops, no vmap, no scan."""
  model = task.model(data.num_classes)
  loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, b[0]), b[1]).mean()
  pool = len(data.y_train)
  train_idx, val_idx = harness.split(pool, 0.2, seed)
  labels = harness.symmetric_label_noise(data.y_train, 0.2, data.num_classes,
                                         seed)
  init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_key, data.x_train[:1])["params"]
  steps = len(train_idx) // task.batch_size
  total = steps * epochs
  reg = gro.METHODS[spec.method](loss_fn, rho=hyper["rho"])
  tx = optax.chain(gro.amortized(reg.tx, spec.every_k),
                   optax.add_decayed_weights(hyper["wd"]),
                   optax.sgd(optax.cosine_decay_schedule(hyper["lr"], total),
                             momentum=momentum))
  state = tx.init(params)
  update = jax.jit(tx.update, static_argnames="recompute")
  accuracy = lambda p, x, y: float(np.mean(np.argmax(
      model.apply({"params": p}, x), -1) == y))
  best, best_params, curve = -1.0, params, []
  for e in range(epochs):
    order = np.asarray(jax.random.permutation(
        jax.random.fold_in(shuffle_key, e), jnp.asarray(train_idx)))
    for i in range(steps):
      idx = order[i * task.batch_size:(i + 1) * task.batch_size]
      batch = (data.x_train[idx], labels[idx])
      grads = jax.grad(loss_fn)(params, batch)
      updates, state = update(grads, state, params, batch=batch,
                              recompute=i % spec.every_k == 0)
      params = optax.apply_updates(params, updates)
    val = accuracy(params, data.x_train[val_idx], labels[val_idx])
    curve.append(val)
    if val > best:
      best, best_params = val, params
  return curve, accuracy(best_params, data.x_test, data.y_test)


def test_trainer_matches_a_hand_written_loop(tiny):
  # SAM amortized over 2 steps, 5 steps per epoch: a period ends the epoch
  # with one step, and each epoch starts by recomputing.
  spec = spec_lib.parse("sam:every_k=2")
  protocol = harness.Protocol(noise=(0.2,), epochs=3)
  p = harness.prepare(TINY, protocol, tiny)
  trainer = harness.make_trainer(TINY, spec, protocol, 3, p.num_train)
  hyper = [{"lr": 0.3, "wd": 1e-3, "rho": 0.1},
           {"lr": 0.05, "wd": 0.0, "rho": 0.5}]
  rows = [(0, 7, hyper[0]), (0, 8, hyper[1])]
  out = trainer(harness._rows(p, protocol, rows, 3, {}), p.x_pool, p.x_test,
                p.y_test)
  for r, (_, seed, h) in enumerate(rows):
    curve, test = _reference(TINY, spec, h, tiny, seed, 3)
    tol = 1.5 / p.num_val  # one example, for argmax ties in float32
    np.testing.assert_allclose(out["val_curve"][r], curve, atol=tol)
    assert abs(float(out["test"][r]) - test) <= 1.5 / len(tiny.y_test)
    assert int(out["best_epoch"][r]) == int(np.argmax(curve)) + 1
    assert float(out["best_val"][r]) == pytest.approx(max(curve), abs=tol)
  # The padding row repeats the last and changes nothing.
  np.testing.assert_array_equal(out["val_curve"][2], out["val_curve"][1])


def test_run_method_spends_the_budget_on_validation_only(tiny):
  protocol = harness.Protocol(noise=(0.0, 0.4), seeds=2, tuning_seeds=1,
                              configs=3, rounds=2, epochs=2)
  p = harness.prepare(TINY, protocol, tiny)
  r = harness.run_method(p, spec_lib.parse("flooding"), protocol)
  assert r["configurations"] == 6 and r["gradients_per_step"] == 1.0
  for rec in r["per_noise"]:
    assert len(rec["tried"]) == 6 and rec["searched"] == ["b", "lr", "wd"]
    best = max(rec["tried"], key=lambda t: t["val"])
    assert rec["val"] == best["val"]
    assert {k: best[k] for k in rec["searched"]} == {
        k: rec["chosen"][k] for k in rec["searched"]}
    for k, (lo, hi) in rec["grid"].items():
      assert lo <= rec["chosen"][k] <= hi
    assert rec["seeds"] == [harness.FINAL_SEED, harness.FINAL_SEED + 1]
    assert len(rec["test"]) == 2 and all(0 <= a <= 1 for a in rec["test"])
    # Round 2 samples around round 1's best.
    r1 = max((t for t in rec["tried"] if t["round"] == 1),
             key=lambda t: t["val"])
    r2 = [t["lr"] for t in rec["tried"] if t["round"] == 2]
    assert all(abs(math.log(v / r1["lr"])) <= math.log(100) / 4 + 1e-9
               for v in r2)
