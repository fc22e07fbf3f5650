"""What every transformation shares: metrics, masks, extreme gradient norms,
and errors that name the function the user called."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradreg_optax as gro
from gradreg_optax import _transform
from _models import MAKERS, mlp_batch, mlp_loss, mlp_params

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCH = mlp_batch(jax.random.PRNGKey(1))


@pytest.fixture(autouse=True)
def _exact_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _step(tx, params=PARAMS, batch=BATCH, loss=mlp_loss, **extra):
  value, grads = jax.value_and_grad(loss)(params, batch)
  return tx.update(grads, tx.init(params), params, batch=batch, **extra), value


def _norm(tree):
  return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                     for x in jax.tree.leaves(tree)))


# --- metrics -------------------------------------------------------------------


def _displaced(params, g, r, normalize):
  scale = r / _norm(g) if normalize else r
  return jax.tree.map(lambda p, x: p + scale * x, params, g)


@pytest.mark.parametrize("name,points", [
    ("sam", lambda p, g: [_displaced(p, g, 0.05, True)]),
    ("gradient_norm_penalty", lambda p, g: [_displaced(p, g, 0.1, True)]),
    ("forward", lambda p, g: [_displaced(p, g, 0.1, False)]),
    ("backward", lambda p, g: [_displaced(p, g, -0.1, False)]),
    ("central", lambda p, g: [_displaced(p, g, 0.1, False),
                              _displaced(p, g, -0.1, False)]),
])
def test_metrics_of_the_displaced_methods_equal_hand_computation(name,
                                                                 points):
  tx = MAKERS[name](mlp_loss)
  g = jax.grad(mlp_loss)(PARAMS, BATCH)
  _, state = tx.update(g, tx.init(PARAMS), PARAMS, batch=BATCH)
  m = gro.metrics(state)
  want = np.mean([float(mlp_loss(q, BATCH)) for q in points(PARAMS, g)])
  np.testing.assert_allclose(m.perturbed_loss, want, rtol=1e-6)
  np.testing.assert_allclose(m.grad_norm, _norm(g), rtol=1e-6)
  np.testing.assert_allclose(m.penalty, 0.5 * _norm(g) ** 2, rtol=1e-6)
  # Without `value` the loss at theta is not known: NaN, not a guess.
  assert np.isnan(m.loss) and np.isnan(m.sharpness)
  value = mlp_loss(PARAMS, BATCH)
  _, state = tx.update(g, tx.init(PARAMS), PARAMS, batch=BATCH, value=value)
  m = gro.metrics(state)
  np.testing.assert_allclose(m.loss, value, rtol=1e-7)
  np.testing.assert_allclose(m.sharpness, want - float(value), rtol=1e-4,
                             atol=1e-7)


@pytest.mark.parametrize("name", ["jvp", "double_backprop"])
def test_exact_methods_report_the_loss_they_evaluate(name):
  (_, state), _ = _step(MAKERS[name](mlp_loss))
  m = gro.metrics(state)
  np.testing.assert_allclose(m.loss, mlp_loss(PARAMS, BATCH), rtol=1e-6)
  assert np.isnan(m.perturbed_loss) and np.isnan(m.sharpness)
  np.testing.assert_allclose(
      m.penalty, 0.5 * _norm(jax.grad(mlp_loss)(PARAMS, BATCH)) ** 2,
      rtol=1e-6)


def test_metrics_are_found_by_name_in_a_chain_and_by_optax_tree_get():
  tx = optax.chain(optax.identity(), MAKERS["sam"](mlp_loss),
                   optax.adam(1e-3))
  loss, grads = jax.value_and_grad(mlp_loss)(PARAMS, BATCH)
  _, state = jax.jit(lambda s: tx.update(grads, s, PARAMS, batch=BATCH,
                                         value=loss))(tx.init(PARAMS))
  m = gro.metrics(state)
  assert float(optax.tree_utils.tree_get(state, "sharpness")) == float(
      m.sharpness)
  assert float(m.sharpness) > 0
  with pytest.raises(ValueError, match="exactly one"):
    gro.metrics(optax.adam(1e-3).init(PARAMS))


def test_metrics_keep_their_dtype_and_cost_nothing():
  """Metrics are scalars: the compiled step has the same matrix products and
  the same temporary memory as without them."""
  tx = optax.chain(MAKERS["forward"](mlp_loss), optax.sgd(0.1))

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch, value=loss)
    return optax.apply_updates(params, updates), state

  def cost():
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        PARAMS, tx.init(PARAMS), BATCH).compile()
    return (gro.cost.count_matmuls(compiled.as_text()),
            compiled.memory_analysis().temp_size_in_bytes)

  with_metrics = cost()
  original = _transform._metrics
  _transform._metrics = lambda where, last, *args, **kwargs: last
  try:
    without = cost()
  finally:
    _transform._metrics = original
  assert with_metrics[0] == without[0]
  assert with_metrics[1] <= without[1] + 1024
  state = tx.init(PARAMS)
  new_state = jax.jit(step)(PARAMS, state, BATCH)[1]
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)


def test_value_must_be_a_scalar():
  with pytest.raises(ValueError, match="gradreg_optax.sam: the `value`"):
    _step(MAKERS["sam"](mlp_loss), value=jnp.ones(3))


# --- masks ---------------------------------------------------------------------

HEAD = [{"w": False, "b": False}, {"w": True, "b": True}]


def _float64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def test_head_only_forward_gr_equals_its_formula_in_float64():
  gamma, eps = 0.05, 0.1
  (out, _), _ = _step(gro.gradient_regularization(mlp_loss, gamma, eps=eps,
                                                  mask=HEAD))
  g = jax.grad(mlp_loss)(PARAMS, BATCH)
  with jax.enable_x64(True):
    p, b = _float64(PARAMS), _float64(BATCH)
    g64 = jax.grad(mlp_loss)(p, b)
    head = lambda h: jax.grad(lambda hh: mlp_loss([p[0], hh], b))(h)
    displaced = jax.tree.map(lambda x, y: x + eps * y, p[1], g64[1])
    want = jax.tree.map(lambda gh, gd: gh + gamma * (gd - gh) / eps,
                        g64[1], head(displaced))
    for key in ("w", "b"):
      np.testing.assert_allclose(out[1][key], want[key], rtol=1e-5, atol=1e-7)
  # The backbone gets the incoming gradient itself.
  for key in ("w", "b"):
    np.testing.assert_array_equal(out[0][key], g[0][key])
    assert out[0][key].dtype == g[0][key].dtype


@pytest.mark.parametrize("method", ["jvp", "double_backprop"])
def test_head_only_exact_methods_use_the_head_block_of_the_hessian(method):
  gamma = 0.05
  (out, _), _ = _step(gro.gradient_regularization(mlp_loss, gamma,
                                                  method=method, mask=HEAD))
  with jax.enable_x64(True):
    p, b = _float64(PARAMS), _float64(BATCH)
    flat, unravel = jax.flatten_util.ravel_pytree(p[1])
    head_loss = lambda f: mlp_loss([p[0], unravel(f)], b)
    h = jax.hessian(head_loss)(flat)
    gh = jax.grad(head_loss)(flat)
    want = unravel(gh + gamma * h @ gh)
    for key in ("w", "b"):
      np.testing.assert_allclose(out[1][key], want[key], rtol=1e-5, atol=1e-7)


def test_normalized_methods_take_the_norm_over_the_selected_leaves():
  rho = 0.05
  (out, _), _ = _step(gro.sam(mlp_loss, rho, mask=HEAD))
  g = jax.grad(mlp_loss)(PARAMS, BATCH)
  head_norm = _norm(g[1])
  displaced = [PARAMS[0], jax.tree.map(lambda x, y: x + rho * y / head_norm,
                                       PARAMS[1], g[1])]
  want = jax.grad(mlp_loss)(displaced, BATCH)
  chex.assert_trees_all_close(out[1], want[1], rtol=1e-5, atol=1e-7)
  # Taking the norm over all leaves would give a measurably different answer.
  everywhere = [PARAMS[0], jax.tree.map(lambda x, y: x + rho * y / _norm(g),
                                        PARAMS[1], g[1])]
  assert _norm(optax.tree.sub(jax.grad(mlp_loss)(everywhere, BATCH)[1],
                              out[1])) > 1e-5


@pytest.mark.parametrize("mask", [
    HEAD, [False, True],
    lambda p: [jax.tree.map(lambda _: False, p[0]),
               jax.tree.map(lambda _: True, p[1])]],
    ids=["tree", "prefix", "callable"])
def test_mask_forms_agree(mask):
  (want, _), _ = _step(gro.sam(mlp_loss, 0.05, mask=HEAD))
  (got, _), _ = _step(gro.sam(mlp_loss, 0.05, mask=mask))
  chex.assert_trees_all_equal(got, want)


def test_a_mask_of_arrays_is_rejected():
  tx = gro.sam(mlp_loss, mask=lambda p: jax.tree.map(lambda x: x[0] > 0, p))
  with pytest.raises(TypeError, match="`mask` must hold Python bools"):
    jax.jit(lambda p: _step(tx, p))(PARAMS)


def _frozen_backbone_tx(inner):
  return optax.multi_transform(
      {"regularized": optax.chain(inner, optax.sgd(0.1)),
       "frozen": optax.set_to_zero()},
      ["frozen", "regularized"])


@pytest.mark.parametrize("wrap", [
    lambda inner: optax.masked(inner, HEAD),
    _frozen_backbone_tx], ids=["masked", "multi_transform"])
def test_inside_optax_masking_the_error_names_mask(wrap):
  tx = wrap(MAKERS["sam"](mlp_loss))
  with pytest.raises(ValueError, match="gradreg_optax.sam: .*MaskedNode.*"
                     "`mask=`"):
    _step(tx)


def test_mask_reproduces_a_frozen_backbone():
  """What users reach for multi_transform to do, written with `mask=`."""
  tx = optax.chain(gro.sam(mlp_loss, 0.05, mask=HEAD),
                   optax.masked(optax.set_to_zero(), [True, False]),
                   optax.sgd(0.1))
  (updates, _), _ = _step(tx)
  for key in ("w", "b"):
    assert not np.any(np.asarray(updates[0][key]))
  (reg, _), _ = _step(gro.sam(mlp_loss, 0.05, mask=HEAD))
  chex.assert_trees_all_close(updates[1], jax.tree.map(lambda x: -0.1 * x,
                                                       reg[1]), rtol=1e-6)


def _loss_with_a_step_counter(params, batch):
  return mlp_loss(params["layers"], batch) + 0.0 * params["step"]


def test_integer_leaves_need_a_mask_and_then_pass_through():
  params = {"layers": PARAMS, "step": jnp.array(3, jnp.int32)}
  grads = jax.grad(_loss_with_a_step_counter, allow_int=True)(params, BATCH)
  tx = gro.sam(_loss_with_a_step_counter)
  with pytest.raises(TypeError, match=r"gradreg_optax.sam: parameter "
                     r"\['step'\] has dtype int32.*`mask=`"):
    tx.update(grads, tx.init(params), params, batch=BATCH)
  floats = lambda p: jax.tree.map(
      lambda x: jnp.issubdtype(x.dtype, jnp.floating), p)
  tx = gro.sam(_loss_with_a_step_counter, mask=floats)
  out, _ = tx.update(grads, tx.init(params), params, batch=BATCH)
  assert out["step"] is grads["step"]
  (want, _), _ = _step(gro.sam(mlp_loss))
  chex.assert_trees_all_close(out["layers"], want, rtol=1e-6)


# --- extreme gradient norms -----------------------------------------------------

SCALES = [1e-25, 1e-20, 1e-10, 1.0, 1e10, 1e20, 1e30]


def _hand_normalized(name, params, batch, loss):
  """The normalized methods' formulas, evaluated by the caller in float64."""
  g = jax.grad(loss)(params, batch)
  if name == "asam":
    t = jax.tree.map(lambda p: jnp.abs(p) + 0.01 if p.ndim > 1
                     else jnp.ones_like(p), params)
    tg = jax.tree.map(jnp.multiply, t, g)
    d = jax.tree.map(lambda a, b: 0.5 * a * b / _norm(tg), t, tg)
  else:
    r = {"sam": 0.05, "gradient_norm_penalty": 0.1}[name]
    d = jax.tree.map(lambda x: r * x / _norm(g), g)
  g1 = jax.grad(loss)(jax.tree.map(jnp.add, params, d), batch)
  if name == "gradient_norm_penalty":
    return jax.tree.map(lambda a, b: 0.2 * a + 0.8 * b, g, g1)
  return g1


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["sam", "asam", "gradient_norm_penalty"])
def test_normalized_methods_match_float64_at_extreme_scales(name, scale):
  loss = lambda p, b: scale * mlp_loss(p, b)
  (out, _), _ = _step(MAKERS[name](loss), loss=loss)
  with jax.enable_x64(True):
    want = _hand_normalized(name, _float64(PARAMS), _float64(BATCH),
                            lambda p, b: scale * mlp_loss(p, b))
  for got, ref in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64) / scale,
                               np.asarray(ref) / scale, rtol=2e-4, atol=1e-6)


# --- errors that name the function the user called ------------------------------


@pytest.mark.parametrize("make,where", [
    (lambda loss, **kw: gro.sam(loss, **kw), "gradreg_optax.sam"),
    (lambda loss, **kw: gro.gradient_regularization(loss, 0.1, **kw),
     "gradreg_optax.gradient_regularization"),
    (lambda loss, **kw: gro.gradient_norm_penalty(loss, **kw),
     "gradreg_optax.gradient_norm_penalty"),
    (lambda loss, **kw: gro.perturbed_gradient(loss, [0.1], [1.0], **kw),
     "gradreg_optax.perturbed_gradient"),
])
def test_update_errors_name_the_users_function(make, where):
  grads = jax.grad(mlp_loss)(PARAMS, BATCH)
  tx = make(mlp_loss)
  with pytest.raises(ValueError, match=f"^{where}: .*batch=batch"):
    tx.update(grads, tx.init(PARAMS), PARAMS)
  with_aux = lambda p, b: (mlp_loss(p, b), {"accuracy": 1.0})
  tx = make(with_aux)
  with pytest.raises(TypeError, match=f"^{where}: `loss_fn` returned a tuple "
                     "of 2, not a scalar loss; for a loss that returns "
                     r"\(loss, aux\) pass has_aux=True."):
    jax.jit(lambda g, s, p: tx.update(g, s, p, batch=BATCH))(
        grads, tx.init(PARAMS), PARAMS)
  tx = make(mlp_loss, has_aux=True)
  with pytest.raises(TypeError, match=f"^{where}: with has_aux=True, "
                     r"`loss_fn` must return a pair \(loss, aux\), but it "
                     "returned a single value; pass has_aux=False"):
    jax.jit(lambda g, s, p: tx.update(g, s, p, batch=BATCH))(
        grads, tx.init(PARAMS), PARAMS)


def test_an_nnx_loss_without_nnx_step_is_explained():
  from flax import nnx
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  loss_fn = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
  optimizer = nnx.Optimizer(
      model, optax.chain(gro.sam(loss_fn), optax.sgd(0.1)), wrt=nnx.Param)
  grads = nnx.grad(loss_fn)(model, BATCH)
  with pytest.raises(TypeError, match="gradreg_optax.sam: `loss_fn` failed on "
                     "the parameters that nnx.Optimizer passes.*nnx_step"):
    optimizer.update(model, grads, batch=BATCH)


# --- the state in users' setups ---------------------------------------------------


def _train(tx, params, batches, state=None):
  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch, value=loss)
    return optax.apply_updates(params, updates), state

  state = tx.init(params) if state is None else state
  for batch in batches:
    params, state = step(params, state, batch)
  return params, state


BATCHES = [mlp_batch(jax.random.PRNGKey(40 + k)) for k in range(4)]


@pytest.mark.parametrize("make", [
    lambda: optax.chain(MAKERS["sam"](mlp_loss), optax.adam(1e-2)),
    lambda: optax.chain(gro.amortized(MAKERS["forward"](mlp_loss), 2),
                        optax.sgd(0.1, momentum=0.9)),
], ids=["sam-adam", "amortized-forward-momentum"])
@pytest.mark.parametrize("codec", ["flax-bytes", "msgpack", "pickle"])
def test_a_checkpoint_mid_training_resumes_exactly(make, codec):
  import pickle
  from flax import serialization
  tx = make()
  want, _ = _train(tx, PARAMS, BATCHES)
  params, state = _train(tx, PARAMS, BATCHES[:2])
  saved = {"params": params, "opt_state": state}
  template = {"params": PARAMS, "opt_state": tx.init(PARAMS)}
  if codec == "flax-bytes":
    restored = serialization.from_bytes(template, serialization.to_bytes(saved))
  elif codec == "msgpack":
    restored = serialization.from_state_dict(
        template, serialization.msgpack_restore(serialization.msgpack_serialize(
            serialization.to_state_dict(saved))))
  else:
    restored = pickle.loads(pickle.dumps(jax.device_get(saved)))
  got, _ = _train(tx, restored["params"], BATCHES[2:],
                  state=restored["opt_state"])
  chex.assert_trees_all_equal(got, want)


def test_a_vmapped_ensemble_equals_its_members_trained_alone():
  tx = optax.chain(MAKERS["sam"](mlp_loss), optax.sgd(0.1))
  members = [mlp_params(jax.random.PRNGKey(k)) for k in range(3)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *members)

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch, value=loss)
    return optax.apply_updates(params, updates), state

  ensemble_step = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))
  params, state = stacked, jax.vmap(tx.init)(stacked)
  for b in BATCHES:
    params, state = ensemble_step(params, state, b)
  for k, member in enumerate(members):
    alone, alone_state = _train(tx, member, BATCHES)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[k], params), alone,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gro.metrics(state).sharpness[k],
                               gro.metrics(alone_state).sharpness, rtol=1e-4)


# --- errors that name what was wrong ---------------------------------------------


def test_updates_not_shaped_like_the_params_are_named():
  tx = gro.sam(mlp_loss)
  grads = jax.grad(mlp_loss)(PARAMS, BATCH)
  bad = jax.tree.map(lambda x: x, grads)
  bad[0]["b"] = bad[0]["b"][:1]
  with pytest.raises(ValueError, match=r"gradreg_optax.sam: `updates` must "
                     r"have the shapes of `params`; \[0\]\['b'\] has shape"):
    tx.update(bad, tx.init(PARAMS), PARAMS, batch=BATCH)
  missing = [grads[0], {"w": grads[1]["w"]}]
  with pytest.raises(ValueError, match=r"structure of `params`.*missing "
                     r"\[\"\[1\]\['b'\]\"\]"):
    tx.update(missing, tx.init(PARAMS), PARAMS, batch=BATCH)


def test_adaptive_mask_may_be_a_prefix_like_mask():
  full = jax.tree.map(lambda p: p.ndim > 1 and p.shape[0] == 8, PARAMS)
  prefix = [full[0]["w"], {"w": False, "b": False}]
  got, _ = _step(gro.sam(mlp_loss, 0.5, adaptive=True, adaptive_mask=prefix))
  want, _ = _step(gro.sam(mlp_loss, 0.5, adaptive=True, adaptive_mask=full))
  chex.assert_trees_all_close(got[0], want[0], rtol=1e-6)


def test_adaptive_mask_errors_name_the_argument():
  with pytest.raises(ValueError, match="`adaptive_mask` must have the "
                     "structure of the parameters"):
    _step(gro.sam(mlp_loss, 0.5, adaptive=True,
                  adaptive_mask={"w": True}))
  # inject_hyperparams takes a callable for a schedule: the mask is lost.
  for name in ("adaptive_mask", "mask"):
    tx = optax.inject_hyperparams(gro.sam, static_args=("loss_fn",))(
        mlp_loss, 0.5, adaptive=True, **{name: gro.weight_matrices})
    with pytest.raises(TypeError, match=rf"`{name}` must be a pytree.*"
                       rf"static_args=\('{name}',\)"):
      tx.init(PARAMS)
  # The default mask survives inject_hyperparams.
  tx = optax.inject_hyperparams(gro.sam, static_args=("loss_fn",))(
      mlp_loss, 0.5, adaptive=True)
  got = tx.update(jax.grad(mlp_loss)(PARAMS, BATCH), tx.init(PARAMS), PARAMS,
                  batch=BATCH)[0]
  (want, _), _ = _step(gro.sam(mlp_loss, 0.5, adaptive=True))
  chex.assert_trees_all_close(got, want, rtol=1e-6)
  tx = optax.inject_hyperparams(
      gro.sam, static_args=("loss_fn", "adaptive_mask"))(
          mlp_loss, 0.5, adaptive=True, adaptive_mask=gro.weight_matrices)
  got = tx.update(jax.grad(mlp_loss)(PARAMS, BATCH), tx.init(PARAMS), PARAMS,
                  batch=BATCH)[0]
  (want, _), _ = _step(gro.sam(mlp_loss, 0.5, adaptive=True))
  chex.assert_trees_all_close(got, want, rtol=1e-6)


@pytest.mark.parametrize("extra", ["batch", "loss_fn"])
def test_an_error_in_the_users_loss_says_the_library_called_it(extra):
  def loss_fn(params, batch):
    if batch.shape[0] != BATCH[0].shape[0]:
      raise RuntimeError("my loss failed")
    return jnp.sum(params[0]["w"]) * jnp.sum(batch)
  tx = gro.sam(loss_fn)
  params, batch = PARAMS, BATCH[0]
  grads = jax.tree.map(jnp.ones_like, params)
  short = batch[:2]
  args = ({"batch": short} if extra == "batch"
          else {"loss_fn": lambda p: loss_fn(p, short)})
  with pytest.raises(RuntimeError, match="my loss failed") as info:
    tx.update(grads, tx.init(params), params, **args)
  want = ("`batch` the extra argument" if extra == "batch"
          else "the `loss_fn` extra argument")
  assert any("gradreg_optax.sam called" in n and want in n
             for n in getattr(info.value, "__notes__", [])), info.value
