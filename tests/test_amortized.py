"""Amortization: ``gro.amortized(tx, every_k, reuse=...)`` against a
hand-written loop around the un-amortized transformation."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from _models import MAKERS, mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))


@pytest.fixture(autouse=True)
def _exact_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _batch(t):
  return mlp_batch(jax.random.PRNGKey(20 + t))


def _run(tx, steps, recompute=None, loss=mlp_loss, params=PARAMS):
  """Updates of a short SGD run (lr 0.1) through ``tx``, jitted once."""
  extra = {} if recompute is None else {"recompute": recompute}
  update = jax.jit(lambda g, s, p, b, **kw: tx.update(g, s, p, batch=b, **kw),
                   static_argnames="recompute")
  state, outs = tx.init(params), []
  for t in range(steps):
    kw = {k: v(t) for k, v in extra.items()}
    out, state = update(jax.grad(loss)(params, _batch(t)), state, params,
                        _batch(t), **kw)
    outs.append(out)
    params = optax.apply_updates(params, jax.tree.map(lambda o: -0.1 * o, out))
  return outs, state


def _hand_written(make, k, steps, reuse):
  """Recompute on steps 0, k, 2k, ... with a fresh transformation at the
  global step (``make(t)``), reuse the stored correction in between."""
  params, want, kept = PARAMS, [], None
  for t in range(steps):
    g = jax.grad(mlp_loss)(params, _batch(t))
    g_norm = optax.tree.norm(g)
    if t % k == 0:
      tx = make(t)
      fresh = tx.update(g, tx.init(params), params, batch=_batch(t))[0]
      kept = optax.tree.sub(fresh, g)
      if reuse == "scaled":
        kept = optax.tree.scale(1 / g_norm, kept)
    correction = optax.tree.scale(g_norm, kept) if reuse == "scaled" else kept
    out = optax.tree.add(g, correction)
    want.append(out)
    params = optax.apply_updates(params, jax.tree.map(lambda o: -0.1 * o, out))
  return want


@pytest.mark.parametrize("name,reuse", [
    ("forward", "correction"), ("double_backprop", "correction"),
    ("jvp", "scaled"), ("sam", "scaled"), ("central", "correction"),
    ("gradient_norm_penalty", "correction")])
def test_recomputes_on_multiples_of_k_and_reuses_between(name, reuse):
  k, steps = 3, 7
  got, state = _run(gro.amortized(MAKERS[name](mlp_loss), k, reuse=reuse),
                    steps)
  want = _hand_written(lambda t: MAKERS[name](mlp_loss), k, steps, reuse)
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-7)
  assert int(state.count) == steps
  assert int(state.inner_state.count) == steps  # advanced on every step
  # The reuse is real: step 1 is not a fresh computation.
  params = optax.apply_updates(PARAMS, jax.tree.map(lambda o: -0.1 * o,
                                                    want[0]))
  fresh = MAKERS[name](mlp_loss)
  fresh_1 = fresh.update(jax.grad(mlp_loss)(params, _batch(1)),
                         fresh.init(params), params, batch=_batch(1))[0]
  assert float(optax.tree.norm(optax.tree.sub(fresh_1, got[1]))) > 1e-6


def test_every_k_one_is_the_wrapped_transformation():
  inner = MAKERS["forward"](mlp_loss)
  got, _ = _run(gro.amortized(inner, 1), 3)
  want, _ = _run(inner, 3)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-8)


def test_schedules_follow_the_global_step_count():
  gamma = optax.linear_schedule(0.05, 0.5, transition_steps=6)
  k, steps = 2, 6
  got, _ = _run(gro.amortized(
      gro.gradient_regularization(mlp_loss, gamma), k), steps)
  want = _hand_written(lambda t: gro.gradient_regularization(
      mlp_loss, float(gamma(t))), k, steps, "correction")
  chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-7)


def test_inject_hyperparams_inside_equals_constant():
  injected = optax.inject_hyperparams(
      gro.sam, static_args=("loss_fn",))(mlp_loss, rho=0.05)
  got, state = _run(gro.amortized(injected, 2), 5)
  want, _ = _run(gro.amortized(gro.sam(mlp_loss, 0.05), 2), 5)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-8)
  assert int(state.inner_state.count) == 5


@pytest.mark.parametrize("name", ["forward", "sam", "jvp"])
def test_host_choice_equals_device_choice_without_a_conditional(name):
  k = 3
  tx = gro.amortized(MAKERS[name](mlp_loss), k)
  on_device, _ = _run(tx, 5)
  on_host, _ = _run(tx, 5, recompute=lambda t: t % k == 0)
  chex.assert_trees_all_close(on_host, on_device, rtol=1e-6, atol=1e-8)
  step = jax.jit(lambda g, s, p, recompute=None: tx.update(
      g, s, p, batch=BATCH, recompute=recompute), static_argnames="recompute")
  args = (jax.grad(mlp_loss)(PARAMS, BATCH), tx.init(PARAMS), PARAMS)
  conditionals = lambda **kw: step.lower(*args, **kw).compile().as_text(
      ).count("conditional(")
  # The method's own (the norm's on a CPU) and none for the choice.
  plain = MAKERS[name](mlp_loss)
  own = jax.jit(lambda g, s, p: plain.update(g, s, p, batch=BATCH)).lower(
      args[0], plain.init(PARAMS), PARAMS).compile().as_text().count(
          "conditional(")
  assert conditionals(recompute=True) == own
  assert conditionals(recompute=False) == 0
  assert conditionals() > own


def _dots(jaxpr):
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "dot_general"
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _dots(sub)
  return count


def _conds(jaxpr):
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "cond":
      found.append(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _conds(sub)
  return found


@pytest.mark.parametrize("name", ["forward", "sam", "jvp"])
def test_the_extra_gradient_is_only_in_the_recomputing_branch(name):
  def jaxpr(tx):
    def f(params, state):
      grads = jax.grad(mlp_loss)(params, BATCH)
      return tx.update(grads, state, params, batch=BATCH)
    return jax.make_jaxpr(f)(PARAMS, tx.init(PARAMS)).jaxpr

  def choices(j):  # conditionals with a gradient evaluation in a branch
    return [c for c in _conds(j)
            if any(_dots(b.jaxpr) for b in c.params["branches"])]

  own = _dots(jax.make_jaxpr(jax.grad(mlp_loss))(PARAMS, BATCH).jaxpr)
  plain = jaxpr(MAKERS[name](mlp_loss))
  assert not choices(plain)
  wrapped = jaxpr(gro.amortized(MAKERS[name](mlp_loss), 4))
  (cond,) = choices(wrapped)
  branch_dots = sorted(_dots(b.jaxpr) for b in cond.params["branches"])
  assert branch_dots == [0, _dots(plain) - own]
  assert _dots(wrapped) - branch_dots[1] == own


def _cliff_loss(params, batch):
  # NaN beyond w = cliff: a large F-GR step from below lands there.
  target, cliff = batch
  return jnp.sum((params["w"] - target) ** 2) + jnp.sum(
      jnp.sqrt(cliff - params["w"]))


NAN_PARAMS = {"w": jnp.array([0.9, 0.0, -0.5])}


def _nan_then_finite_batches(t):
  # At step 0 the displaced point w + eps g passes the cliff at 1; later the
  # cliff is far away and every evaluation is finite.
  if t == 0:
    return jnp.full(3, -5.0), jnp.ones(3)
  return jnp.zeros(3), jnp.full(3, 100.0)


@pytest.mark.parametrize("host", [False, True])
def test_a_non_finite_correction_is_returned_but_not_kept(host):
  k = 4
  inner = gro.gradient_regularization(_cliff_loss, 0.1, eps=1.0)
  tx = optax.chain(gro.amortized(inner, k),
                   optax.apply_if_finite(optax.sgd(0.01), 1))
  update = jax.jit(lambda g, s, p, b, recompute=None: tx.update(
      g, s, p, batch=b, recompute=recompute), static_argnames="recompute")
  params, state = NAN_PARAMS, tx.init(NAN_PARAMS)
  finite = []
  for t in range(2 * k):
    b = _nan_then_finite_batches(t)
    g = jax.grad(_cliff_loss)(params, b)
    assert bool(jnp.all(jnp.isfinite(g["w"])))
    recompute = None
    if host:
      recompute = t % k == 0 or gro.needs_recompute(state)
    updates, state = update(g, state, params, b, recompute=recompute)
    finite.append(bool(state[1].last_finite))
    params = optax.apply_updates(params, updates)
    assert bool(jnp.all(jnp.isfinite(params["w"]))), t
  # Only the step whose own extra evaluation was NaN is skipped; the next
  # one recomputes instead of reusing it.
  assert finite == [False] + [True] * (2 * k - 1)
  assert not gro.needs_recompute(state)


def test_a_reusing_step_chosen_on_the_host_with_nothing_stored_is_not_finite():
  tx = gro.amortized(MAKERS["forward"](mlp_loss), 2)
  g = jax.grad(mlp_loss)(PARAMS, BATCH)
  out, _ = tx.update(g, tx.init(PARAMS), PARAMS, batch=BATCH, recompute=False)
  assert not any(bool(jnp.any(jnp.isfinite(x))) for x in jax.tree.leaves(out))


def test_needs_recompute_before_and_after_the_first_step():
  tx = optax.chain(gro.amortized(MAKERS["sam"](mlp_loss), 3), optax.sgd(0.1))
  state = tx.init(PARAMS)
  assert gro.needs_recompute(state)
  _, state = tx.update(jax.grad(mlp_loss)(PARAMS, BATCH), state, PARAMS,
                       batch=BATCH)
  assert not gro.needs_recompute(state)
  with pytest.raises(ValueError, match="exactly one"):
    gro.needs_recompute(optax.sgd(0.1).init(PARAMS))


def test_switched_off_method_stays_the_incoming_gradient_bit_for_bit():
  tx = gro.amortized(gro.gradient_regularization(mlp_loss, 0.0), 2)
  state = tx.init(PARAMS)
  for t in range(3):
    g = jax.grad(mlp_loss)(PARAMS, _batch(t))
    out, state = jax.jit(lambda g, s: tx.update(g, s, PARAMS, batch=_batch(t))
                         )(g, state)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
      np.testing.assert_array_equal(a, b)


def test_masked_leaves_get_the_incoming_gradient_on_every_step():
  only_last = [{"w": False, "b": False}, {"w": True, "b": True}]
  tx = gro.amortized(gro.sam(mlp_loss, 0.1, mask=only_last), 2)
  outs, _ = _run(tx, 4)
  params = PARAMS
  for t, out in enumerate(outs):
    g = jax.grad(mlp_loss)(params, _batch(t))
    for key in ("w", "b"):
      np.testing.assert_array_equal(out[0][key], g[0][key])
    assert float(jnp.max(jnp.abs(out[1]["w"] - g[1]["w"]))) > 1e-6
    params = optax.apply_updates(params, jax.tree.map(lambda o: -0.1 * o, out))


def test_metrics_on_reused_steps_keep_the_last_recomputation():
  # Only the loss (given by `value=`) is new on a reusing step: measuring
  # anything else would add work to a step meant to cost what SGD costs.
  tx = gro.amortized(MAKERS["sam"](mlp_loss), 3)
  state, params = tx.init(PARAMS), PARAMS
  seen, first_norm = [], None
  for t in range(3):
    loss, g = jax.value_and_grad(mlp_loss)(params, _batch(t))
    _, state = tx.update(g, state, params, batch=_batch(t), value=loss)
    m = gro.metrics(state)
    seen.append(m)
    first_norm = optax.tree.norm(g) if t == 0 else first_norm
    np.testing.assert_allclose(m.grad_norm, first_norm, rtol=1e-6)
    np.testing.assert_allclose(m.penalty, first_norm ** 2 / 2, rtol=1e-6)
    np.testing.assert_allclose(m.loss, loss, rtol=1e-6)
  for name in ("perturbed_loss", "sharpness", "grad_norm", "penalty"):
    assert float(getattr(seen[2], name)) == float(getattr(seen[0], name))


def test_map_params_reaches_the_stored_correction():
  tx = gro.amortized(MAKERS["forward"](mlp_loss), 2)
  state = tx.init(PARAMS)
  mapped = optax.tree.map_params(tx.init, lambda v: v + 1.0, state)
  assert int(mapped.count) == 0
  chex.assert_trees_all_equal(
      mapped.correction, jax.tree.map(jnp.ones_like, PARAMS))


@pytest.mark.parametrize("make,error,match", [
    (lambda: gro.amortized(MAKERS["sam"](mlp_loss), 0), ValueError,
     "amortized: `every_k` must be an int >= 1"),
    (lambda: gro.amortized(MAKERS["sam"](mlp_loss), 2.0), ValueError,
     "`every_k`"),
    (lambda: gro.amortized(MAKERS["sam"](mlp_loss), 2, reuse="always"),
     ValueError, "`reuse`"),
    (lambda: gro.amortized("sam", 2), TypeError, "`tx`"),
    (lambda: gro.amortized(optax.chain(MAKERS["sam"](mlp_loss),
                                       optax.sgd(0.1)), 2).init(PARAMS),
     TypeError, "Chain the optimizer after the wrapper"),
    (lambda: gro.amortized(optax.sgd(0.1), 2).init(PARAMS), TypeError,
     "transformation of gradreg_optax"),
])
def test_bad_arguments_are_rejected_naming_them(make, error, match):
  with pytest.raises(error, match=match):
    make()


# --- LookSAM: reuse="orthogonal" ---------------------------------------------


def _looksam_reference(rho, alpha, k, steps):
  """LookSAM in float64: every k steps g_s (the SAM gradient, from an
  un-amortized gro.sam at the same point) and g_v = g_s - proj_g(g_s);
  between, g + alpha ||g|| g_v / ||g_v||."""
  flat = lambda t: np.concatenate([np.asarray(x, np.float64).ravel()
                                   for x in jax.tree.leaves(t)])
  treedef = jax.tree.structure(PARAMS)
  shapes = [x.shape for x in jax.tree.leaves(PARAMS)]

  def unflat(v):
    out, i = [], 0
    for s in shapes:
      n = int(np.prod(s))
      out.append(jnp.asarray(v[i:i + n].reshape(s), jnp.float32))
      i += n
    return treedef.unflatten(out)

  params, want, g_v = PARAMS, [], None
  for t in range(steps):
    g_tree = jax.grad(mlp_loss)(params, _batch(t))
    g = flat(g_tree)
    if t % k == 0:
      sam = gro.sam(mlp_loss, rho)
      g_s = flat(sam.update(g_tree, sam.init(params), params,
                            batch=_batch(t))[0])
      g_v = g_s - (g_s @ g) / (g @ g) * g
      u = g_s
    else:
      u = g + alpha * np.linalg.norm(g) / np.linalg.norm(g_v) * g_v
    want.append(u)
    params = optax.apply_updates(params, unflat(-0.1 * u))
  return want


@pytest.mark.parametrize("alpha", [0.7, 0.0, optax.constant_schedule(1.5)])
def test_orthogonal_reuse_is_looksam(alpha):
  k, steps = 3, 7
  got, _ = _run(gro.amortized(gro.sam(mlp_loss, 0.05), k, reuse="orthogonal",
                              alpha=alpha), steps)
  a = float(alpha(0)) if callable(alpha) else alpha
  want = _looksam_reference(0.05, a, k, steps)
  for t, (u, w) in enumerate(zip(got, want)):
    u = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(u)])
    np.testing.assert_allclose(u, w, rtol=1e-4, atol=1e-6, err_msg=str(t))
  if a:  # the comparison can fail: "scaled" reuses another direction
    scaled, _ = _run(gro.amortized(gro.sam(mlp_loss, 0.05), k,
                                   reuse="scaled"), steps)
    assert float(optax.tree.norm(optax.tree.sub(scaled[1], got[1]))) > 1e-4


def test_orthogonal_reuse_of_zero_norms_is_finite():
  # g = (2, 0): the SAM gradient is along g, so g_v is exactly 0; then the
  # gradient 0 itself. Neither gives NaN: the reusing steps return g.
  loss = lambda p, b: jnp.sum((p - b) ** 2)
  tx = gro.amortized(gro.sam(loss, 0.5), 2, reuse="orthogonal")
  params = jnp.array([1.0, 0.0])
  state = tx.init(params)
  for target in (jnp.zeros(2), jnp.zeros(2), params, params):
    g = jax.grad(loss)(params, target)
    u, state = tx.update(g, state, params, batch=target)
    assert bool(jnp.all(jnp.isfinite(u)))
    assert not gro.needs_recompute(state)
    np.testing.assert_array_equal(state.correction, jnp.zeros(2))
  np.testing.assert_array_equal(u, jnp.zeros(2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(reuse="orthogonal", alpha=-0.1), "`alpha` must be >= 0"),
    (dict(reuse="orthogonal", alpha="big"), "`alpha` must be a number"),
    (dict(alpha=0.5), "`alpha` is the weight of reuse=\"orthogonal\""),
])
def test_bad_alpha_is_rejected_naming_it(kwargs, match):
  with pytest.raises((TypeError, ValueError),
                     match="gradreg_optax.amortized: " + match):
    gro.amortized(MAKERS["sam"](mlp_loss), 2, **kwargs)


def test_an_alpha_schedule_leaving_its_domain_gives_a_nan_reuse():
  alpha = lambda count: jnp.where(count < 1, 0.7, -0.7)
  with pytest.raises(ValueError, match="`alpha` must be >= 0 at every step; "
                     "the schedule gives -0.7 at step 0"):
    gro.amortized(MAKERS["sam"](mlp_loss), 2, reuse="orthogonal",
                  alpha=lambda count: -0.7)
  tx = gro.amortized(MAKERS["sam"](mlp_loss), 2, reuse="orthogonal",
                     alpha=alpha)
  grads = jax.grad(mlp_loss)(PARAMS, BATCH)
  step = jax.jit(lambda s: tx.update(grads, s, PARAMS, batch=BATCH))
  u0, state = step(tx.init(PARAMS))  # recomputes: alpha unused
  u1, _ = step(state)                # reuses with alpha = -0.7
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(u0))
  assert all(np.isnan(x).all() for x in jax.tree.leaves(u1))


# --- donation and the `recompute` argument ------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_state_initialized_outside_jit_can_be_donated(name):
  tx = optax.chain(gro.amortized(MAKERS[name](mlp_loss), 2), optax.sgd(0.1))
  state = tx.init(PARAMS)
  leaves = jax.tree.leaves(state)
  assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves)
  step = jax.jit(lambda s, p, b: tx.update(jax.grad(mlp_loss)(p, b), s, p,
                                           batch=b), donate_argnums=0)
  kept = jax.jit(lambda s, p, b: tx.update(jax.grad(mlp_loss)(p, b), s, p,
                                           batch=b))
  reference = tx.init(PARAMS)
  for t in range(3):
    out, state = step(state, PARAMS, _batch(t))
    want, reference = kept(reference, PARAMS, _batch(t))
    chex.assert_trees_all_close(out, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("recompute", [
    "yes", 1, jnp.array([True]), jnp.array(1), np.array(0.0)])
def test_recompute_of_another_type_is_rejected_naming_it(recompute):
  tx = gro.amortized(MAKERS["sam"](mlp_loss), 2)
  g = jax.grad(mlp_loss)(PARAMS, BATCH)
  with pytest.raises(TypeError, match="gradreg_optax.amortized: the "
                     "`recompute` argument of `update` must be a Python bool"):
    tx.update(g, tx.init(PARAMS), PARAMS, batch=BATCH, recompute=recompute)


# --- amortized_step: the choice made on the host -------------------------------


def _functional_step(tx):
  def step(params, opt_state, batch, recompute):
    loss, g = jax.value_and_grad(mlp_loss)(params, batch)
    updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                   value=loss, recompute=recompute)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


@pytest.mark.parametrize("reuse", ["correction", "orthogonal"])
def test_amortized_step_equals_the_device_choice(reuse):
  k, steps = 3, 7
  tx = optax.chain(gro.amortized(MAKERS["sam"](mlp_loss), k, reuse=reuse),
                   optax.sgd(0.1))
  host = gro.amortized_step(_functional_step(tx), donate_argnums=(0, 1))
  device = jax.jit(lambda p, s, b: _functional_step(tx)(p, s, b, None))
  params, state = jax.tree.map(jnp.copy, PARAMS), tx.init(PARAMS)
  want_params, want_state = PARAMS, tx.init(PARAMS)
  for t in range(steps):
    params, state, _ = host(params, state, _batch(t))
    want_params, want_state, _ = device(want_params, want_state, _batch(t))
    chex.assert_trees_all_close(params, want_params, rtol=1e-6, atol=1e-8)
  assert int(state[0].count) == steps
  if reuse != "correction":
    return  # (the norms it takes have conditionals of their own on a CPU)
  # Two programs, neither holding the choice.
  args = (PARAMS, tx.init(PARAMS), BATCH)
  text = lambda r: host.jitted.lower(*args, recompute=r).compile().as_text()
  plain = MAKERS["sam"](mlp_loss)
  own = jax.jit(lambda g, s, p: plain.update(g, s, p, batch=BATCH)).lower(
      jax.grad(mlp_loss)(PARAMS, BATCH), plain.init(PARAMS),
      PARAMS).compile().as_text().count("conditional(")
  assert text(True).count("conditional(") == own
  assert text(False).count("conditional(") == 0


def test_amortized_step_follows_a_state_it_did_not_return():
  # A restored (earlier) state is read from the device: the step count and
  # staleness it holds decide, not the host's own count.
  tx = optax.chain(gro.amortized(MAKERS["forward"](mlp_loss), 4),
                   optax.sgd(0.1))
  host = gro.amortized_step(_functional_step(tx))
  start = (PARAMS, tx.init(PARAMS))
  params, state = start
  for t in range(2):
    params, state, _ = host(params, state, _batch(t))
  saved = (params, state)
  for t in range(2, 5):
    params, state, _ = host(params, state, _batch(t))
  after = [host(*saved, _batch(2))[0], host(*start, _batch(0))[0]]
  device = jax.jit(lambda p, s, b: _functional_step(tx)(p, s, b, None))
  want = [device(*saved, _batch(2))[0], device(*start, _batch(0))[0]]
  chex.assert_trees_all_close(after, want, rtol=1e-6, atol=1e-8)


def test_amortized_step_recomputes_after_a_non_finite_correction():
  inner = gro.gradient_regularization(_cliff_loss, 0.1, eps=1.0)
  tx = optax.chain(gro.amortized(inner, 4),
                   optax.apply_if_finite(optax.sgd(0.01), 1))

  def step(params, opt_state, batch, recompute):
    g = jax.grad(_cliff_loss)(params, batch)
    updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                   recompute=recompute)
    return optax.apply_updates(params, updates), opt_state

  host = gro.amortized_step(step)
  params, state, finite = NAN_PARAMS, tx.init(NAN_PARAMS), []
  for t in range(8):
    params, state = host(params, state, _nan_then_finite_batches(t))
    finite.append(bool(state[1].last_finite))
    assert bool(jnp.all(jnp.isfinite(params["w"]))), t
  assert finite == [False] + [True] * 7


def test_amortized_step_rejects_a_step_without_the_state():
  host = gro.amortized_step(lambda p, recompute: p)
  with pytest.raises(ValueError, match="amortized_step: found no "
                     "gradreg_optax.amortized state"):
    host(PARAMS)
  tx = gro.amortized(MAKERS["sam"](mlp_loss), 2)
  with pytest.raises(TypeError, match="amortized_step: the step chooses "
                     "`recompute` itself"):
    host(tx.init(PARAMS), recompute=True)
  with pytest.raises(TypeError, match="amortized_step: `step` must be a "
                     "callable"):
    gro.amortized_step("step")


# --- amortized_scan: the choice made while tracing, under lax.scan ------------


def _scan_step(tx):
  def step(carry, batch, recompute=None):
    params, opt_state = carry
    loss, g = jax.value_and_grad(mlp_loss)(params, batch)
    extra = {} if recompute is None else {"recompute": recompute}
    updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                   value=loss, **extra)
    return (optax.apply_updates(params, updates), opt_state), loss
  return step


def _stacked_batches(steps):
  return jax.tree.map(lambda *b: jnp.stack(b), *map(_batch, range(steps)))


@pytest.mark.parametrize("k,steps", [(3, 9), (3, 7), (4, 2), (1, 3)])
@pytest.mark.parametrize("reuse", ["correction", "orthogonal"])
def test_amortized_scan_equals_the_device_choice(k, steps, reuse):
  tx = optax.chain(gro.amortized(MAKERS["sam"](mlp_loss), k, reuse=reuse),
                   optax.sgd(0.1))
  init = (PARAMS, tx.init(PARAMS))
  xs = _stacked_batches(steps)
  got = jax.jit(lambda c, xs: gro.amortized_scan(_scan_step(tx), c, xs,
                                                 every_k=k))(init, xs)
  want = jax.jit(lambda c, xs: jax.lax.scan(_scan_step(tx), c, xs))(init, xs)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-8)
  assert int(got[0][1][0].count) == steps
  assert got[1].shape == (steps,)


def test_amortized_scan_holds_no_conditional_for_the_choice():
  tx = optax.chain(gro.amortized(MAKERS["forward"](mlp_loss), 4),
                   optax.sgd(0.1))
  init, xs = (PARAMS, tx.init(PARAMS)), _stacked_batches(8)
  jaxpr = lambda f: jax.make_jaxpr(f)(init, xs).jaxpr
  scanned = jaxpr(lambda c, xs: gro.amortized_scan(_scan_step(tx), c, xs,
                                                   every_k=4))
  on_device = jaxpr(lambda c, xs: jax.lax.scan(_scan_step(tx), c, xs))
  # The method's own conditionals (a norm's), and on the device one more:
  # the choice.
  assert len(_conds(on_device)) == len(_conds(scanned)) + 1
  # The reusing body is SGD's step; the recomputing one adds one gradient.
  plain = jaxpr(lambda c, xs: jax.lax.scan(_scan_step(optax.sgd(0.1)), c,
                                           xs))
  assert _dots(scanned) == 3 * _dots(plain)


def test_amortized_scan_with_length_and_no_xs():
  tx = optax.chain(gro.amortized(MAKERS["forward"](mlp_loss), 2),
                   optax.sgd(0.1))
  step = _scan_step(tx)
  fixed = lambda c, _, **kw: step(c, BATCH, **kw)
  init = (PARAMS, tx.init(PARAMS))
  got = gro.amortized_scan(fixed, init, None, every_k=2, length=5)
  want = jax.lax.scan(fixed, init, None, length=5)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


def test_amortized_scan_skips_a_non_finite_period_with_apply_if_finite():
  # The recomputation of the first period is not finite: that period's
  # steps are skipped (a reusing step has nothing usable) and the next
  # period recomputes.
  inner = gro.gradient_regularization(_cliff_loss, 0.1, eps=1.0)
  tx = optax.chain(gro.amortized(inner, 2),
                   optax.apply_if_finite(optax.sgd(0.01), 10))

  def step(carry, batch, recompute):
    params, opt_state = carry
    g = jax.grad(_cliff_loss)(params, batch)
    updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                   recompute=recompute)
    return (optax.apply_updates(params, updates), opt_state), (
        opt_state[1].last_finite)

  xs = jax.tree.map(lambda *b: jnp.stack(b),
                    *map(_nan_then_finite_batches, range(6)))
  (params, _), finite = gro.amortized_scan(
      step, (NAN_PARAMS, tx.init(NAN_PARAMS)), xs, every_k=2)
  assert finite.tolist() == [False, False, True, True, True, True]
  assert bool(jnp.all(jnp.isfinite(params["w"])))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(every_k=0), ValueError, "`every_k` must be an int >= 1"),
    (dict(every_k=3), ValueError, "`every_k` is 3 but the amortized state"),
    (dict(every_k=2, xs=None), ValueError, "give `xs` or `length`"),
    (dict(every_k=2, length=3), ValueError, "`length` \\(3\\) differs"),
    (dict(every_k=2, init="carry"), ValueError, "found no "
     "gradreg_optax.amortized state in `init`"),
    (dict(every_k=2, step="step"), TypeError, "`step` must be a callable"),
])
def test_amortized_scan_rejects_bad_arguments_naming_them(kwargs, error,
                                                          match):
  tx = optax.chain(gro.amortized(MAKERS["forward"](mlp_loss), 2),
                   optax.sgd(0.1))
  args = dict(step=_scan_step(tx), init=(PARAMS, tx.init(PARAMS)),
              xs=_stacked_batches(4))
  args.update(kwargs)
  with pytest.raises(error, match="gradreg_optax.amortized_scan: " + match):
    gro.amortized_scan(args.pop("step"), args.pop("init"), args.pop("xs"),
                       **args)
