"""The transformations as Optax citizens: extra arguments, chains, wrappers,
jit, bad input, exact limits."""

import inspect

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from _models import GR_METHODS, MAKERS, mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))
OTHER_BATCH = mlp_batch(jax.random.PRNGKey(2))
GRADS = jax.grad(mlp_loss)(PARAMS, BATCH)

ALL = sorted(MAKERS)


@pytest.fixture(autouse=True)
def _exact_matmuls():
  # On GPUs float32 products default to TF32; the comparisons here are
  # between float32 computations in different orders. No effect on CPU.
  with jax.default_matmul_precision("highest"):
    yield
# One of each code path: finite difference, exact Hessian product, normalized.
SOME = ["forward", "double_backprop", "sam"]


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _rel(a, b):
  a, b = optax.tree.sub(a, b), b
  return float(optax.tree.norm(a) / optax.tree.norm(b))


def _update(tx, grads=GRADS, params=PARAMS, **extra):
  return tx.update(grads, tx.init(params), params, **extra)[0]


def _jitted(tx):
  """``(grads, state, params, batch) -> (updates, state)``, compiled once."""
  return jax.jit(lambda g, s, p, b: tx.update(g, s, p, batch=b))


# --- the extra-arguments protocol -------------------------------------------


@pytest.mark.parametrize("name", SOME)
def test_unknown_keyword_arguments_are_ignored(name):
  tx = optax.chain(MAKERS[name](mlp_loss), optax.sgd(0.1))
  update = jax.jit(lambda g, s, p, **kw: tx.update(g, s, p, **kw)[0])
  want = update(GRADS, tx.init(PARAMS), PARAMS, batch=BATCH)
  # optax.chain hands every keyword to every element.
  got = update(GRADS, tx.init(PARAMS), PARAMS, batch=BATCH,
               value=jnp.ones([]), grad_fn=None, foo=jnp.zeros(3))
  _leaves_equal(got, want)


@pytest.mark.parametrize("name", ALL)
def test_jitted_step_is_traced_once(name):
  tx = optax.chain(MAKERS[name](mlp_loss), optax.sgd(0.1, momentum=0.9))
  traces = []

  @jax.jit
  def step(params, state, batch):
    traces.append(None)  # runs only while tracing
    grads = jax.grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for k in range(3):
    params, state = step(params, state, mlp_batch(jax.random.PRNGKey(k)))
  assert len(traces) == 1
  assert step._cache_size() == 1


# A quadratic with known minimizer c and a non-identity Hessian A:
# L = 1/2 (w - c)^T A (w - c). GR's objective L + gamma/2 |A (w - c)|^2 has the
# same minimizer; SAM and the norm penalty reach it as rho, r -> 0.
_A = jnp.array([[1.5, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.6]])
_C = jnp.array([1.0, -2.0, 0.5])


def _quadratic(params, target):
  d = params["w"] - target
  return 0.5 * d @ _A @ d


_DECAY = optax.exponential_decay(0.1, transition_steps=10, decay_rate=0.5)
QUADRATIC_MAKERS = {
    "forward": lambda: gro.gradient_regularization(_quadratic, 0.1),
    "backward": lambda: gro.gradient_regularization(
        _quadratic, 0.1, method="backward"),
    "central": lambda: gro.gradient_regularization(
        _quadratic, 0.1, method="central"),
    "double_backprop": lambda: gro.gradient_regularization(
        _quadratic, 0.1, method="double_backprop"),
    "jvp": lambda: gro.gradient_regularization(_quadratic, 0.1, method="jvp"),
    # A normalized ascent never vanishes, so the radius must decay.
    "sam": lambda: gro.sam(_quadratic, _DECAY),
    "asam": lambda: gro.sam(_quadratic, _DECAY, adaptive=True,
                            adaptive_mask=lambda p: {"w": True}),
    "gradient_norm_penalty": lambda: gro.gradient_norm_penalty(
        _quadratic, 0.8, _DECAY),
}


@pytest.mark.parametrize("name", sorted(QUADRATIC_MAKERS))
def test_converges_to_the_minimizer_under_scan(name):
  tx = optax.chain(QUADRATIC_MAKERS[name](), optax.sgd(0.3))
  params = {"w": jnp.zeros(3)}

  def body(carry, _):
    params, state = carry
    grads = jax.grad(_quadratic)(params, _C)
    updates, state = tx.update(grads, state, params, batch=_C)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=300))(
      (params, tx.init(params)))
  np.testing.assert_allclose(params["w"], _C, atol=1e-4)


# --- the update-time closure ------------------------------------------------


class ClosureTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_closure_equals_batch_and_wins_over_it(self):
    for name in SOME:
      tx = MAKERS[name](mlp_loss)

      @self.variant
      def outputs(g, s, p, batch, other_batch, tx=tx):
        closure = lambda q: mlp_loss(q, batch)
        return (tx.update(g, s, p, batch=batch)[0],
                tx.update(g, s, p, loss_fn=closure)[0],
                # Both given: the closure is used, other_batch ignored.
                tx.update(g, s, p, batch=other_batch, loss_fn=closure)[0],
                tx.update(g, s, p, batch=other_batch)[0])

      with_batch, with_closure, both, other = outputs(
          GRADS, tx.init(PARAMS), PARAMS, BATCH, OTHER_BATCH)
      chex.assert_trees_all_close(with_closure, with_batch, rtol=1e-6,
                                  atol=1e-7)
      chex.assert_trees_all_close(both, with_batch, rtol=1e-6, atol=1e-7)
      assert _rel(other, with_batch) > 1e-3, name


# --- chains and wrappers ----------------------------------------------------


@pytest.mark.parametrize("base", [
    lambda: optax.sgd(0.1), lambda: optax.sgd(0.1, momentum=0.9),
    lambda: optax.adam(1e-2), lambda: optax.adamw(1e-2, weight_decay=0.1)],
    ids=["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("name", ["forward", "sam"])
def test_chain_equals_base_optimizer_on_regularized_gradient(name, base):
  chained = optax.chain(MAKERS[name](mlp_loss), base())
  reg, opt = MAKERS[name](mlp_loss), base()
  p1 = p2 = PARAMS
  s1, s_reg, s_opt = chained.init(PARAMS), reg.init(PARAMS), opt.init(PARAMS)
  for k in range(2):
    batch = mlp_batch(jax.random.PRNGKey(10 + k))
    u1, s1 = chained.update(jax.grad(mlp_loss)(p1, batch), s1, p1,
                            batch=batch)
    p1 = optax.apply_updates(p1, u1)
    r, s_reg = reg.update(jax.grad(mlp_loss)(p2, batch), s_reg, p2,
                          batch=batch)
    u2, s_opt = opt.update(r, s_opt, p2)
    p2 = optax.apply_updates(p2, u2)
    chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", SOME)
def test_clip_by_global_norm_after_clips_the_regularized_gradient(name):
  out = _update(MAKERS[name](mlp_loss), batch=BATCH)
  max_norm = 0.5 * float(optax.tree.norm(out))  # so that it does clip
  got = _update(optax.chain(MAKERS[name](mlp_loss),
                            optax.clip_by_global_norm(max_norm)), batch=BATCH)
  norm = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                     for x in jax.tree.leaves(out)))
  want = jax.tree.map(lambda o: np.asarray(o) * (max_norm / norm), out)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


def _nan_loss(params, batch):
  # Finite at w < 1, NaN (value and gradient) beyond: the displaced point of
  # a large-eps step falls into the NaN region while the gradient is finite.
  return jnp.sum((params["w"] - batch) ** 2) + jnp.sum(
      jnp.sqrt(1.0 - params["w"]))


@pytest.mark.parametrize("name", SOME)
def test_apply_if_finite_skips_a_non_finite_step(name):
  params = {"w": jnp.array([0.9, 0.0, -0.5])}
  batch = jnp.zeros(3)
  nan_batch = jnp.array([0.0, jnp.nan, 0.0])
  tx = optax.apply_if_finite(
      optax.chain(MAKERS[name](_nan_loss), optax.sgd(0.1)),
      max_consecutive_errors=5)
  state = tx.init(params)
  grads = jax.grad(_nan_loss)(params, nan_batch)
  updates, state = tx.update(grads, state, params, batch=nan_batch)
  assert int(state.notfinite_count) == 1
  assert not bool(state.last_finite)
  _leaves_equal(optax.apply_updates(params, updates), params)
  # A finite step afterwards is taken and resets the count.
  grads = jax.grad(_nan_loss)(params, batch)
  updates, state = tx.update(grads, state, params, batch=batch)
  assert int(state.notfinite_count) == 0
  assert float(optax.tree.norm(updates)) > 0


@pytest.mark.parametrize("method", ["forward", "central"])
def test_apply_if_finite_after_the_regularizer_catches_its_non_finite_output(
    method):
  """``apply_if_finite`` tests the updates it *receives*: wrapped around the
  whole chain it sees only the caller's gradient; placed after the
  regularizer it also catches a non-finite extra evaluation."""
  params = {"w": jnp.array([0.9, 0.0, -0.5])}
  batch = jnp.zeros(3)
  grads = jax.grad(_nan_loss)(params, batch)
  assert bool(jnp.all(jnp.isfinite(grads["w"])))
  # eps * g moves w[0] = 0.9 past 1, where the loss is NaN.
  assert float(params["w"][0] + 1.0 * grads["w"][0]) > 1.0
  make = lambda: gro.gradient_regularization(_nan_loss, 0.1, method=method,
                                             eps=1.0)
  assert not bool(jnp.all(jnp.isfinite(
      _update(make(), grads, params, batch=batch)["w"])))
  inside = optax.chain(make(), optax.apply_if_finite(optax.sgd(0.1), 3))
  updates, state = inside.update(grads, inside.init(params), params,
                                 batch=batch)
  assert int(state[1].notfinite_count) == 1
  _leaves_equal(optax.apply_updates(params, updates), params)
  outside = optax.apply_if_finite(optax.chain(make(), optax.sgd(0.1)), 3)
  updates, state = outside.update(grads, outside.init(params), params,
                                  batch=batch)
  assert int(state.notfinite_count) == 0
  assert not bool(jnp.all(jnp.isfinite(updates["w"])))


def _static(factory):
  """The arguments inject_hyperparams must not turn into arrays."""
  names = inspect.signature(factory).parameters
  return [n for n in ("loss_fn", "method", "normalize", "adaptive",
                      "adaptive_mask", "has_aux", "mask") if n in names]


INJECTABLE = [
    (gro.gradient_regularization, dict(gamma=0.05, eps=0.1, method="forward"),
     dict(gamma=0.2)),
    (gro.gradient_regularization, dict(gamma=0.05, eps=0.1, method="central"),
     dict(eps=0.02)),
    (gro.gradient_regularization, dict(gamma=0.05, method="jvp"),
     dict(gamma=0.2)),
    (gro.sam, dict(rho=0.05), dict(rho=0.2)),
    (gro.gradient_norm_penalty, dict(alpha=0.8, r=0.1), dict(alpha=0.3)),
    # ASAM's mask is a callable: it must be static, not a schedule.
    (gro.sam, dict(rho=0.5, adaptive=True, adaptive_eta=0.01),
     dict(adaptive_eta=0.1)),
]


@pytest.mark.parametrize("factory,kwargs,changed", INJECTABLE)
def test_inject_hyperparams_equals_constant_and_follows_the_state(
    factory, kwargs, changed):
  tx = optax.inject_hyperparams(factory, static_args=_static(factory))(
      mlp_loss, **kwargs)
  update = jax.jit(lambda s: tx.update(GRADS, s, PARAMS, batch=BATCH))
  state = tx.init(PARAMS)
  chex.assert_trees_all_close(update(state)[0],
                              _update(factory(mlp_loss, **kwargs),
                                      batch=BATCH), rtol=1e-5, atol=1e-7)
  hyperparams = dict(state.hyperparams)
  for k, v in changed.items():
    hyperparams[k] = jnp.asarray(v, hyperparams[k].dtype)
  moved = update(state._replace(hyperparams=hyperparams))[0]
  want = _update(factory(mlp_loss, **(kwargs | changed)), batch=BATCH)
  chex.assert_trees_all_close(moved, want, rtol=1e-5, atol=1e-7)
  assert _rel(moved, update(state)[0]) > 1e-4


def _run(tx, steps=4):
  """Updates of a short SGD run (params advanced by hand)."""
  params, state, outs, update = PARAMS, tx.init(PARAMS), [], _jitted(tx)
  for k in range(steps):
    batch = mlp_batch(jax.random.PRNGKey(20 + k))
    out, state = update(jax.grad(mlp_loss)(params, batch), state, params,
                        batch)
    outs.append(out)
    params = optax.apply_updates(params, jax.tree.map(lambda o: -0.1 * o, out))
  return outs


GAMMA = optax.linear_schedule(0.0, 0.3, transition_steps=3)
EPS = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)


@pytest.mark.parametrize("method", ["central", "double_backprop"])
def test_schedules_own_and_injected_equal_per_step_constants(method):
  own = _run(gro.gradient_regularization(mlp_loss, GAMMA, eps=EPS,
                                         method=method))
  injected = _run(optax.inject_hyperparams(
      gro.gradient_regularization, static_args=("loss_fn", "method"))(
          mlp_loss, gamma=GAMMA, eps=EPS, method=method))
  # Reference: a fresh constant-hyperparameter transformation at each step,
  # on the same trajectory.
  params, want = PARAMS, []
  for k in range(4):
    batch = mlp_batch(jax.random.PRNGKey(20 + k))
    tx = gro.gradient_regularization(mlp_loss, float(GAMMA(k)),
                                     eps=float(EPS(k)), method=method)
    out = _update(tx, jax.grad(mlp_loss)(params, batch), params, batch=batch)
    want.append(out)
    params = optax.apply_updates(params, jax.tree.map(lambda o: -0.1 * o, out))
  # eps halves each step: float32 rounding of the difference grows as 1/eps.
  chex.assert_trees_all_close(own, want, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(injected, want, rtol=1e-4, atol=1e-6)
  # gamma(0) = 0: the first step is the plain gradient exactly.
  _leaves_equal(own[0], jax.grad(mlp_loss)(PARAMS, mlp_batch(
      jax.random.PRNGKey(20))))


# --- gradient accumulation ---------------------------------------------------


def _micro_batches(k):
  return [mlp_batch(jax.random.PRNGKey(30 + i), n=4) for i in range(k)]


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_multisteps_after_the_regularizer_averages_regularized_gradients(
    name):
  """Correct placement: ``optax.chain(GR, optax.MultiSteps(opt, k))``."""
  k, lr = 3, 0.1
  tx = optax.chain(MAKERS[name](mlp_loss), optax.MultiSteps(optax.sgd(lr), k))
  state, params, update = tx.init(PARAMS), PARAMS, _jitted(tx)
  for batch in _micro_batches(k):
    updates, state = update(jax.grad(mlp_loss)(params, batch), state, params,
                            batch)
    params = optax.apply_updates(params, updates)
  # Reference: the mean over micro-batches of each micro-batch's
  # regularized gradient, all at the same parameters, then one SGD step.
  fresh = MAKERS[name](mlp_loss)
  fresh_update = _jitted(fresh)
  per_micro = [fresh_update(jax.grad(mlp_loss)(PARAMS, b), fresh.init(PARAMS),
                            PARAMS, b)[0] for b in _micro_batches(k)]
  mean = jax.tree.map(lambda *x: sum(x) / k, *per_micro)
  want = jax.tree.map(lambda p, m: p - lr * m, PARAMS, mean)
  chex.assert_trees_all_close(params, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_regularizer_inside_multisteps_uses_only_the_last_micro_batch(name):
  """The pitfall: ``optax.MultiSteps(optax.chain(GR, opt), k)`` regularizes
  the averaged gradient with the last micro-batch's loss."""
  k, lr = 3, 0.1
  tx = optax.MultiSteps(optax.chain(MAKERS[name](mlp_loss), optax.sgd(lr)), k)
  state, params, update = tx.init(PARAMS), PARAMS, _jitted(tx)
  micro = _micro_batches(k)
  for batch in micro:
    updates, state = update(jax.grad(mlp_loss)(params, batch), state, params,
                            batch)
    params = optax.apply_updates(params, updates)
  mean_g = jax.tree.map(lambda *x: sum(x) / k,
                        *[jax.grad(mlp_loss)(PARAMS, b) for b in micro])
  fresh = MAKERS[name](mlp_loss)
  fresh_update = _jitted(fresh)
  # What it computes: GR of the mean gradient around the last batch's loss.
  last = fresh_update(mean_g, fresh.init(PARAMS), PARAMS, micro[-1])[0]
  chex.assert_trees_all_close(
      params, jax.tree.map(lambda p, m: p - lr * m, PARAMS, last),
      rtol=1e-5, atol=1e-7)
  # ... which is not the average of per-micro-batch regularized gradients.
  per_micro = [fresh_update(jax.grad(mlp_loss)(PARAMS, b), fresh.init(PARAMS),
                            PARAMS, b)[0] for b in micro]
  mean = jax.tree.map(lambda *x: sum(x) / k, *per_micro)
  assert _rel(last, mean) > 1e-2


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("make,error,match", [
    (lambda: gro.gradient_regularization(mlp_loss, 0.1, eps=0.0), ValueError,
     "`eps` must be > 0"),
    (lambda: gro.gradient_regularization(mlp_loss, 0.1, eps=-1e-3),
     ValueError, "`eps`"),
    (lambda: gro.gradient_regularization(mlp_loss, -0.1), ValueError,
     "`gamma` must be >= 0"),
    (lambda: gro.gradient_regularization(mlp_loss, float("nan")), ValueError,
     "`gamma`"),
    (lambda: gro.sam(mlp_loss, rho=-0.05), ValueError, "`rho` must be >= 0"),
    (lambda: gro.gradient_norm_penalty(mlp_loss, alpha=-0.1), ValueError,
     "`alpha` must be >= 0"),
    (lambda: gro.gradient_norm_penalty(mlp_loss, r=-0.1), ValueError,
     "`r` must be >= 0"),
    (lambda: gro.sam(mlp_loss, adaptive=True, adaptive_eta=-1.0), ValueError,
     "`adaptive_eta`"),
    (lambda: gro.gradient_regularization(mlp_loss, 0.1, method="fwd"),
     ValueError,
     "'forward', 'backward', 'central', 'double_backprop', 'jvp'"),
    (lambda: gro.gradient_regularization("mlp_loss", 0.1), TypeError,
     "`loss_fn` must be a callable"),
    (lambda: gro.sam(None), TypeError, "`loss_fn`"),
    (lambda: gro.gradient_regularization(mlp_loss, "0.1"), TypeError,
     "`gamma` must be a number or a schedule"),
    (lambda: gro.sam(mlp_loss, per_device_perturbation=True), ValueError,
     "`per_device_perturbation=True` needs `axis_name`"),
    (lambda: gro.gradient_regularization(mlp_loss, [0.1]), TypeError,
     "`gamma` must be a number or a schedule"),
    (lambda: gro.sam(mlp_loss, has_aux=1), TypeError, "`has_aux`"),
])
def test_construction_rejects_bad_arguments_naming_them(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("name", ALL)
def test_update_errors_name_the_problem(name):
  jit_update = lambda tx, **kw: jax.jit(
      lambda g, s, p: tx.update(g, s, p, **kw))(GRADS, tx.init(PARAMS),
                                                 PARAMS)
  tx = MAKERS[name](mlp_loss)
  with pytest.raises(ValueError, match="batch=batch"):
    jit_update(tx)
  with pytest.raises(ValueError, match="needs `params`"):
    tx.update(GRADS, tx.init(PARAMS), batch=BATCH)
  per_sample = lambda p, b: jnp.mean((mlp_forward(p, b[0]) - b[1]) ** 2, 0)
  with pytest.raises(TypeError, match="scalar loss.*shape \\(2,\\)"):
    jit_update(MAKERS[name](per_sample), batch=BATCH)
  with pytest.raises(TypeError, match="has_aux=True.*pair"):
    jit_update(MAKERS[name](mlp_loss, has_aux=True), batch=BATCH)
  with pytest.raises(TypeError, match="floating-point"):
    jit_update(MAKERS[name](lambda p, b: jnp.int32(1)), batch=BATCH)
  with pytest.raises(TypeError, match="`loss_fn` extra argument must be a "
                     "callable"):
    jit_update(tx, loss_fn=3.0)


def mlp_forward(params, x):
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      x = jnp.tanh(x)
  return x


# --- exact limits ------------------------------------------------------------

LIMITS = {
    **{f"{m}-gamma0": (gro.gradient_regularization,
                       dict(gamma=0.0, method=m)) for m in GR_METHODS},
    "sam-rho0": (gro.sam, dict(rho=0.0)),
    "asam-rho0": (gro.sam, dict(rho=0.0, adaptive=True)),
    "sam-unnormalized-rho0": (gro.sam, dict(rho=0.0, normalize=False)),
    "gnp-r0": (gro.gradient_norm_penalty, dict(alpha=0.8, r=0.0)),
    "gnp-alpha0": (gro.gradient_norm_penalty, dict(alpha=0.0, r=0.1)),
}


class LimitsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_limits_are_the_incoming_gradient_bit_for_bit(self):
    for label, (factory, kwargs) in LIMITS.items():
      tx = factory(mlp_loss, **kwargs)
      update = self.variant(lambda g, s, p, tx=tx: tx.update(
          g, s, p, batch=BATCH))
      out, _ = update(GRADS, tx.init(PARAMS), PARAMS)
      try:
        _leaves_equal(out, GRADS)
      except AssertionError as e:
        raise AssertionError(label) from e

  @chex.variants(with_jit=True, without_jit=True)
  def test_injected_limits_are_the_incoming_gradient_bit_for_bit(self):
    for label, (factory, kwargs) in LIMITS.items():
      tx = optax.inject_hyperparams(factory, static_args=_static(factory))(
          mlp_loss, **kwargs)
      out = self.variant(lambda g, s, p, tx=tx: tx.update(
          g, s, p, batch=BATCH)[0])(GRADS, tx.init(PARAMS), PARAMS)
      try:
        _leaves_equal(out, GRADS)
      except AssertionError as e:
        raise AssertionError(label) from e


# --- the zero gradient ---------------------------------------------------------


def _stationary_loss(params, batch):
  # Stationary at w = batch, v = 0 with a non-trivial Hessian.
  return (jnp.sum((params["w"] - batch) ** 2 * (1 + params["w"] ** 2))
          + jnp.sum(jnp.cos(params["v"])) + jnp.sum(params["v"] ** 4))


@pytest.mark.parametrize("name", ALL)
def test_zero_gradient_is_not_perturbed_and_gives_no_nan(name):
  batch = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.3]])
  params = {"w": batch, "v": jnp.zeros(3)}
  grads = jax.grad(_stationary_loss)(params, batch)
  _leaves_equal(grads, jax.tree.map(jnp.zeros_like, params))
  tx = MAKERS[name](_stationary_loss)
  update = lambda g, s, p: tx.update(g, s, p, batch=batch)[0]
  out = jax.jit(update)(grads, tx.init(params), params)
  for leaf in jax.tree.leaves(out):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  # The loss is not flat there (a displacement would change the gradient).
  hessian_diag = jax.grad(lambda w: jax.grad(_stationary_loss)(
      {"w": w, "v": params["v"]}, batch)["w"].sum())(params["w"])
  assert float(jnp.min(jnp.abs(hessian_diag))) > 0.5
  chex.assert_trees_all_close(out, grads, atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_non_finite_gradient_propagates(name):
  nan_batch = (BATCH[0].at[0, 0].set(jnp.nan), BATCH[1])
  grads = jax.grad(mlp_loss)(PARAMS, nan_batch)
  out = _update(MAKERS[name](mlp_loss), grads, batch=nan_batch)
  assert not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


# --- ASAM ----------------------------------------------------------------------


def _linear_quadratic(params, batch):
  # grad L(theta + delta) - grad L(theta) = delta exactly: the output of SAM
  # minus the incoming gradient is the displacement itself.
  return sum(jnp.sum(b * p) + 0.5 * jnp.sum(p ** 2)
             for p, b in zip(jax.tree.leaves(params), jax.tree.leaves(batch)))


ASAM_PARAMS = {"dense": {"kernel": jnp.array([[0.5, -2.0], [0.0, 1.5],
                                              [3.0, -0.1]]),
                         "bias": jnp.array([0.2, -0.7])},
               "scale": jnp.array([1.0, 2.0])}
ASAM_BATCH = jax.tree.map(lambda p: jnp.linspace(-1.0, 1.0, p.size).reshape(
    p.shape), ASAM_PARAMS)


@pytest.mark.parametrize("mask,scaled", [
    (gro.weight_matrices, {"kernel"}),
    ({"dense": {"kernel": False, "bias": True}, "scale": True},
     {"bias", "scale"}),
    (lambda p: jax.tree.map(lambda _: True, p), {"kernel", "bias", "scale"}),
], ids=["default", "tree", "callable"])
def test_asam_displacement_matches_hand_computation(mask, scaled):
  rho, eta = 0.7, 0.01
  grads = jax.grad(_linear_quadratic)(ASAM_PARAMS, ASAM_BATCH)
  tx = gro.sam(_linear_quadratic, rho, adaptive=True, adaptive_eta=eta,
               adaptive_mask=mask)
  out = _update(tx, grads, ASAM_PARAMS, batch=ASAM_BATCH)
  displacement = jax.tree.map(lambda o, g: np.asarray(o, np.float64) - g,
                              out, grads)
  flat_p, _ = jax.tree_util.tree_flatten_with_path(ASAM_PARAMS)
  t = {}
  for path, p in flat_p:
    key = path[-1].key
    t[key] = (np.abs(np.asarray(p, np.float64)) + eta if key in scaled
              else np.ones(p.shape))
  g = {path[-1].key: np.asarray(x, np.float64)
       for path, x in jax.tree_util.tree_flatten_with_path(grads)[0]}
  norm = np.sqrt(sum(np.sum((t[k] * g[k]) ** 2) for k in g))
  got = {path[-1].key: x
         for path, x in jax.tree_util.tree_flatten_with_path(displacement)[0]}
  for k in g:
    np.testing.assert_allclose(got[k], rho * t[k] ** 2 * g[k] / norm,
                               rtol=1e-5, atol=1e-6, err_msg=k)


def test_default_asam_mask_leaves_one_dimensional_leaves_unscaled():
  assert jax.tree.leaves(gro.weight_matrices(ASAM_PARAMS)) == [
      False, True, False]
