"""The extension point (gradreg_optax.method) and the contract for
hyperparameter values that every method shares: numbers and schedules are
checked when built, later and injected values at run time, where a value
outside its domain gives a NaN step (skipped by apply_if_finite), reported
in the metrics and by checkify, and never another method."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import gradreg_optax as gro
from _models import mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))


def _outside(spec):
  """A value just outside the domain of ``spec`` (None if unbounded)."""
  lower, upper = spec.bounds
  closed_lower = spec.domain.lstrip().startswith("[")
  if np.isfinite(lower):
    return lower - 0.1 if closed_lower else lower
  if np.isfinite(upper):
    return upper
  return None


CASES = [(name, h) for name, m in gro.METHODS.items() if m.transforms
         for h, spec in m.hyperparameters.items()
         if _outside(spec) is not None]
# The run-time checks compile a step each: in the default run, one
# hyperparameter of every method; every one under `-m slow`.
_FIRST = {name: h for name, h in reversed(CASES)}
RUNTIME_CASES = [case if _FIRST[case[0]] == case[1]
                 else pytest.param(*case, marks=pytest.mark.slow)
                 for case in CASES]


def _build(name, **hyper):
  return gro.METHODS[name].transformation(mlp_loss,
                                          **{**gro.METHODS[name].defaults,
                                             **hyper})


def _run(tx, steps, jit=True):
  """``steps`` SGD steps, the optimizer inside ``apply_if_finite`` after
  ``tx`` (whose output it checks); the parameters, the last updates and
  state."""
  opt = optax.chain(tx, optax.apply_if_finite(optax.sgd(0.1), 10))
  state = opt.init(PARAMS)

  def step(params, state):
    loss, grads = jax.value_and_grad(mlp_loss)(params, BATCH)
    updates, state = opt.update(grads, state, params, batch=BATCH,
                                value=loss)
    return optax.apply_updates(params, updates), updates, state

  step = jax.jit(step) if jit else step
  params = PARAMS
  for _ in range(steps):
    params, updates, state = step(params, state)
  return params, updates, state


def test_every_bounded_hyperparameter_is_covered():
  assert {"gamma", "eps", "rho", "alpha", "r"} <= {h for _, h in CASES}


@pytest.mark.parametrize("name,hyper", CASES)
def test_a_number_outside_the_domain_is_refused_by_name(name, hyper):
  bad = _outside(gro.METHODS[name].hyperparameters[hyper])
  with pytest.raises(ValueError, match=f"`{hyper}` must be"):
    _build(name, **{hyper: bad})


@pytest.mark.parametrize("name,hyper", CASES)
def test_a_schedule_outside_the_domain_at_step_0_is_refused(name, hyper):
  bad = _outside(gro.METHODS[name].hyperparameters[hyper])
  with pytest.raises(ValueError, match=f"`{hyper}` must be .* at step 0"):
    _build(name, **{hyper: optax.constant_schedule(bad)})


@pytest.mark.parametrize("name,hyper", RUNTIME_CASES)
def test_a_schedule_leaving_the_domain_gives_a_nan_step_that_is_skipped(
    name, hyper):
  spec = gro.METHODS[name].hyperparameters[hyper]
  bad, good = _outside(spec), spec.default
  schedule = lambda count: jnp.where(count < 1, good, bad)
  params, updates, state = _run(_build(name, **{hyper: schedule}), 2)
  assert not any(np.any(u) for u in jax.tree.leaves(updates))  # skipped
  assert int(state[1].total_notfinite) == 1
  m = gro.metrics(state)
  assert not bool(m.valid)
  np.testing.assert_allclose(m.hyperparameters[hyper], bad, rtol=1e-6)
  # apply_if_finite skipped the second step: the first one's parameters.
  chex.assert_trees_all_close(params, _one_step(name), rtol=1e-6, atol=1e-7)


@functools.lru_cache(maxsize=None)
def _one_step(name):
  return _run(_build(name), 1)[0]


@pytest.mark.parametrize("name,hyper", RUNTIME_CASES)
@pytest.mark.parametrize("init_under_jit", [False, True])
def test_an_injected_value_outside_the_domain_gives_a_nan_step(
    name, hyper, init_under_jit):
  bad = _outside(gro.METHODS[name].hyperparameters[hyper])
  tx = optax.inject_hyperparams(
      gro.METHODS[name].transformation, static_args=("loss_fn",))(
          mlp_loss, **gro.METHODS[name].defaults)
  state = (jax.jit(tx.init) if init_under_jit else tx.init)(PARAMS)
  state.hyperparams[hyper] = jnp.asarray(bad, jnp.float32)
  grads = jax.grad(mlp_loss)(PARAMS, BATCH)
  updates, state = jax.jit(
      lambda g, s: tx.update(g, s, PARAMS, batch=BATCH))(grads, state)
  assert all(np.isnan(u).all() for u in jax.tree.leaves(updates))
  assert not bool(gro.metrics(state).valid)


@pytest.mark.parametrize("name,hyper", CASES[:6])
def test_checkify_reports_the_argument_by_name(name, hyper):
  bad = _outside(gro.METHODS[name].hyperparameters[hyper])
  tx = optax.inject_hyperparams(
      gro.METHODS[name].transformation, static_args=("loss_fn",))(
          mlp_loss, **gro.METHODS[name].defaults)
  state = tx.init(PARAMS)
  state.hyperparams[hyper] = jnp.asarray(bad, jnp.float32)
  grads = jax.grad(mlp_loss)(PARAMS, BATCH)
  error, _ = checkify.checkify(jax.jit(
      lambda g, s: tx.update(g, s, PARAMS, batch=BATCH)))(grads, state)
  assert f"`{hyper}` must be" in error.get()


def test_valid_values_report_valid_and_cost_nothing_extra():
  tx = gro.gradient_regularization(mlp_loss, 0.05, eps=0.1)
  _, _, state = _run(tx, 1)
  m = gro.metrics(state)
  assert bool(m.valid)
  assert float(m.hyperparameters["eps"]) == pytest.approx(0.1)


def test_a_zero_eps_schedule_is_not_turned_into_the_plain_gradient():
  """F-GR's limit as eps -> 0 is exact GR, not SGD: eps = 0 is refused."""
  with pytest.raises(ValueError, match="`eps` must be > 0"):
    gro.gradient_regularization(mlp_loss, 0.5,
                                eps=optax.linear_schedule(0.0, 0.1, 10))
  with pytest.raises(ValueError, match="`eps` must be > 0"):
    gro.gradient_regularization(mlp_loss, 0.5, eps=lambda count: 0.0)


def test_a_schedule_that_raises_is_named():
  def broken(count):
    raise ZeroDivisionError("in the schedule")
  with pytest.raises(ZeroDivisionError) as info:
    gro.sam(mlp_loss, rho=broken)
  if hasattr(info.value, "add_note"):  # Python 3.11 and later
    assert any("schedule given as `rho`" in n
               for n in info.value.__notes__)


# --- a method written on the extension point ------------------------------------


def _momentum_sam(loss_fn, rho=0.05, beta=0.5, **options):
  """SAM displaced along a moving average of the gradient: a method with
  state, written as a user would."""
  hyper = {"rho": gro.Hyperparameter(0.05, "[0, inf)", switches_off=True),
           "beta": gro.Hyperparameter(0.5, "[0, 1]")}

  def step(x):
    m = [x.hyperparameters["beta"] * a + (1 - x.hyperparameters["beta"]) * g
         for a, g in zip(x.state, x.grad)]
    norm = gro.method.global_norm(m)
    d = [v / jnp.where(norm > 0, norm, 1.0) for v in m]
    loss, u = gro.gradient_at(x, d, x.hyperparameters["rho"])
    return gro.StepOutput(u, state=m, perturbed_loss=loss)

  return gro.regularizer("momentum_sam", loss_fn, step, hyper,
                         dict(rho=rho, beta=beta),
                         init=lambda p: [jnp.zeros(v.shape, jnp.float32)
                                         for v in p], **options)


def _momentum_sam_reference(params, steps, rho, beta):
  """The same in float64 NumPy, with the SGD steps."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  m = jax.tree.map(np.zeros_like, p)
  for _ in range(steps):
    g = jax.tree.map(np.asarray, jax.grad(mlp_loss)(p, BATCH))
    m = jax.tree.map(lambda a, v: beta * a + (1 - beta) * v, m, g)
    norm = np.sqrt(sum(np.sum(v ** 2) for v in jax.tree.leaves(m)))
    q = jax.tree.map(lambda x, v: x + rho * v / norm, p, m)
    u = jax.tree.map(np.asarray, jax.grad(mlp_loss)(q, BATCH))
    p = jax.tree.map(lambda x, v: x - 0.1 * v, p, u)
  return p


def test_a_method_with_state_matches_its_float64_reference():
  with jax.default_matmul_precision("highest"):
    jax.config.update("jax_enable_x64", True)
    try:
      want = _momentum_sam_reference(PARAMS, 3, 0.05, 0.5)
    finally:
      jax.config.update("jax_enable_x64", False)
    params, _, state = _run(_momentum_sam(mlp_loss), 3)
  chex.assert_trees_all_close(params, want, rtol=2e-5, atol=1e-6)
  assert gro.metrics(state).perturbed_loss > 0


def test_a_method_with_state_is_donatable_and_off_is_the_plain_gradient():
  tx = optax.chain(_momentum_sam(mlp_loss, rho=0.0), optax.sgd(0.1))
  state = tx.init(PARAMS)
  leaves = jax.tree.leaves(state)
  assert len({id(x) for x in leaves}) == len(leaves)

  @jax.jit
  def plain(params):
    return optax.apply_updates(params, optax.sgd(0.1).update(
        jax.grad(mlp_loss)(params, BATCH), optax.sgd(0.1).init(params))[0])

  step = jax.jit(lambda p, s: tx.update(jax.grad(mlp_loss)(p, BATCH), s, p,
                                        batch=BATCH), donate_argnums=1)
  updates, state = step(PARAMS, state)
  chex.assert_trees_all_close(optax.apply_updates(PARAMS, updates),
                              plain(PARAMS), rtol=1e-6)


def test_hyperparameter_domains():
  h = gro.Hyperparameter(0.5, "[0, 1)")
  assert h.contains(0.0) and h.contains(0.99) and not h.contains(1.0)
  assert not h.contains(float("nan"))
  assert bool(h.contains(jnp.float32(0.5))) and not bool(
      h.contains(jnp.float32(-1e-3)))
  assert h.describe() == "in [0, 1)"
  assert gro.Hyperparameter(1.0, "(0, inf)").describe() == "> 0"
  with pytest.raises(ValueError, match="`domain` must be an interval"):
    gro.Hyperparameter(1.0, "positive").contains(1.0)


def test_unknown_hyperparameters_are_named():
  with pytest.raises(TypeError, match=r"unknown hyperparameters \['rh'\]"):
    gro.regularizer("mine", mlp_loss, lambda x: gro.StepOutput(x.grad),
                    {"rho": gro.Hyperparameter(0.1)}, {"rh": 0.1})
