"""Flax NNX (nnx.Optimizer) and Flax Linen (TrainState) training loops."""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from flax.training import train_state

import gradreg_optax as gro

LR, GAMMA, EPS, BN_EPS, BN_MOMENTUM = 0.1, 0.05, 0.1, 1e-5, 0.99
MAKERS = {
    "forward": lambda loss, **kw: gro.gradient_regularization(
        loss, GAMMA, eps=EPS, **kw),
    "double_backprop": lambda loss, **kw: gro.gradient_regularization(
        loss, GAMMA, method="double_backprop", **kw),
    "sam": lambda loss, **kw: gro.sam(loss, 0.05, **kw),
}


@pytest.fixture(autouse=True)
def _exact_matmuls():
  # On GPUs float32 products default to TF32; the comparisons here are
  # between float32 computations in different orders. No effect on CPU.
  with jax.default_matmul_precision("highest"):
    yield


def _batches(n=2):
  out = []
  for k in range(n):
    kx, ky = jax.random.split(jax.random.PRNGKey(100 + k))
    out.append((jax.random.normal(kx, (8, 3)), jax.random.normal(ky, (8, 2))))
  return out


# --- NNX -----------------------------------------------------------------------


class NnxMLP(nnx.Module):

  def __init__(self, rngs, batch_norm):
    self.l1 = nnx.Linear(3, 5, rngs=rngs)
    if batch_norm:
      self.bn = nnx.BatchNorm(5, epsilon=BN_EPS, momentum=BN_MOMENTUM,
                              rngs=rngs)
    self.l2 = nnx.Linear(5, 2, rngs=rngs)
    self.batch_norm = batch_norm

  def __call__(self, x):
    h = self.l1(x)
    if self.batch_norm:
      h = self.bn(h)
    return self.l2(jnp.tanh(h))


def nnx_loss_fn(model, batch):
  x, y = batch
  return jnp.mean((model(x) - y) ** 2)


def _hand_forward(p, x, batch_norm):
  """The NNX model written out on its pure parameter dict (training mode)."""
  h = x @ p["l1"]["kernel"] + p["l1"]["bias"]
  if batch_norm:
    mean, var = h.mean(0), h.var(0)
    h = (h - mean) / jnp.sqrt(var + BN_EPS) * p["bn"]["scale"] + p["bn"]["bias"]
  return jnp.tanh(h) @ p["l2"]["kernel"] + p["l2"]["bias"]


def _hand_loss(batch_norm):
  def loss(p, batch):
    x, y = batch
    return jnp.mean((_hand_forward(p, x, batch_norm) - y) ** 2)
  return loss


def _pure(model, what=nnx.Param):
  return nnx.to_pure_dict(nnx.state(model, what))


@pytest.mark.parametrize("name,batch_norm", [
    ("forward", False), ("double_backprop", False), ("forward", True),
    ("sam", True)])
def test_nnx_optimizer_step_equals_functional_reference(name, batch_norm):
  model = NnxMLP(nnx.Rngs(0), batch_norm)
  start = _pure(model)
  tx = optax.chain(MAKERS[name](gro.nnx_loss(nnx_loss_fn, model)),
                   optax.sgd(LR))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  plain_model = NnxMLP(nnx.Rngs(0), batch_norm)
  plain = nnx.Optimizer(plain_model, optax.sgd(LR), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    grads = nnx.grad(nnx_loss_fn)(model, batch)
    optimizer.update(model, grads, batch=batch)

  @nnx.jit
  def plain_step(model, optimizer, batch):
    optimizer.update(model, nnx.grad(nnx_loss_fn)(model, batch))

  # Reference: the transformation on a plain dict of arrays and a loss
  # written by hand.
  ref_loss = _hand_loss(batch_norm)
  ref_tx = MAKERS[name](ref_loss)
  ref_state, params = ref_tx.init(start), start
  mean, var = jnp.zeros(5), jnp.ones(5)
  for batch in _batches():
    if batch_norm:
      # The statistics that follow the step are the ones the plain SGD step
      # produces: one update, from the caller's own forward pass.
      plain_model.l1.kernel[...] = model.l1.kernel[...]
      plain_model.l1.bias[...] = model.l1.bias[...]
      plain_model.bn.mean[...] = model.bn.mean[...]
      plain_model.bn.var[...] = model.bn.var[...]
      plain_step(plain_model, plain, batch)
      h = batch[0] @ params["l1"]["kernel"] + params["l1"]["bias"]
      mean = BN_MOMENTUM * mean + (1 - BN_MOMENTUM) * h.mean(0)
      var = BN_MOMENTUM * var + (1 - BN_MOMENTUM) * h.var(0)
    step(model, optimizer, batch)
    grads = jax.grad(ref_loss)(params, batch)
    out, ref_state = ref_tx.update(grads, ref_state, params, batch=batch)
    params = optax.apply_updates(params, jax.tree.map(lambda o: -LR * o, out))
    chex.assert_trees_all_close(_pure(model), params, rtol=1e-5, atol=1e-6)
    if batch_norm:
      stats = _pure(model, nnx.BatchStat)["bn"]
      chex.assert_trees_all_close(stats, _pure(plain_model,
                                               nnx.BatchStat)["bn"],
                                  rtol=1e-6, atol=1e-7)
      chex.assert_trees_all_close(stats, {"mean": mean, "var": var},
                                  rtol=1e-5, atol=1e-6)
  assert int(optimizer.step[...]) == 2


class DropoutMLP(nnx.Module):
  """An MLP whose Dropout owns its RNG stream (the standard NNX way)."""

  def __init__(self, rngs, batch_norm):
    self.l1 = nnx.Linear(3, 5, rngs=rngs)
    self.bn = (nnx.BatchNorm(5, epsilon=BN_EPS, momentum=BN_MOMENTUM,
                             rngs=rngs) if batch_norm else None)
    self.dropout = nnx.Dropout(RATE, rngs=rngs)
    self.l2 = nnx.Linear(5, 2, rngs=rngs)

  def __call__(self, x):
    h = self.l1(x)
    if self.bn is not None:
      h = self.bn(h)
    return self.l2(self.dropout(jnp.tanh(h)))


RATE = 0.5


def _dropout_forward(p, x, key, batch_norm):
  """DropoutMLP on its pure parameter dict, the mask drawn from ``key``."""
  h = x @ p["l1"]["kernel"] + p["l1"]["bias"]
  if batch_norm:
    mean, var = h.mean(0), h.var(0)
    h = (h - mean) / jnp.sqrt(var + BN_EPS) * p["bn"]["scale"] + p["bn"]["bias"]
  h = jnp.tanh(h)
  keep = jax.random.bernoulli(key, 1.0 - RATE, h.shape)
  h = jnp.where(keep, h / (1.0 - RATE), 0.0)
  return h @ p["l2"]["kernel"] + p["l2"]["bias"]


def _reference_run(name, start, base_key, batches, batch_norm, same_mask=True):
  """The functional reference: at step t the mask key is fold_in(key, t),
  the RNG count of a stream drawn once per step; the extra evaluation uses
  the same key (or, as a control, the next one)."""
  params = start
  out_params = []
  for t, (x, y) in enumerate(batches):
    key = jax.random.fold_in(base_key, t)
    extra_key = key if same_mask else jax.random.fold_in(base_key, t + 1)
    loss = lambda p, k: jnp.mean((_dropout_forward(p, x, k, batch_norm) - y)
                                 ** 2)
    g = jax.grad(loss)(params, key)
    if name == "forward":
      shifted = jax.tree.map(lambda p, gi: p + EPS * gi, params, g)
      u = jax.tree.map(lambda gi, gd: gi + GAMMA / EPS * (gd - gi), g,
                       jax.grad(loss)(shifted, extra_key))
    elif name == "sam":
      norm = optax.tree.norm(g)
      u = jax.grad(loss)(jax.tree.map(lambda p, gi: p + 0.05 * gi / norm,
                                      params, g), extra_key)
    else:  # double_backprop: H g at the caller's mask
      hg = jax.grad(lambda q: sum(jnp.sum(a * b) for a, b in zip(
          jax.tree.leaves(jax.grad(loss)(q, extra_key)),
          jax.tree.leaves(g))))(params)
      u = jax.tree.map(lambda gi, h: gi + GAMMA * h, g, hg)
    params = jax.tree.map(lambda p, ui: p - LR * ui, params, u)
    out_params.append(params)
  return out_params


@pytest.mark.parametrize("name,batch_norm", [
    ("forward", False), ("sam", False), ("double_backprop", False),
    ("forward", True), ("sam", True)])
def test_nnx_step_with_dropout_equals_functional_reference(name, batch_norm):
  model = DropoutMLP(nnx.Rngs(0), batch_norm)
  start = _pure(model)
  (base_key,) = jax.tree.leaves(nnx.state(model, nnx.RngKey))
  tx = optax.chain(MAKERS[name](nnx_loss_fn), optax.sgd(LR))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = nnx.jit(lambda m, o, b: gro.nnx_step(m, o, nnx_loss_fn, b))
  batches = _batches(3)
  want = _reference_run(name, start, base_key, batches, batch_norm)
  control = _reference_run(name, start, base_key, batches, batch_norm,
                           same_mask=False)
  stats = {"mean": jnp.zeros(5), "var": jnp.ones(5)}
  for t, batch in enumerate(batches):
    if batch_norm:  # one update of the statistics per step
      h = batch[0] @ _pure(model)["l1"]["kernel"] + _pure(model)["l1"]["bias"]
      stats = {"mean": BN_MOMENTUM * stats["mean"]
                       + (1 - BN_MOMENTUM) * h.mean(0),
               "var": BN_MOMENTUM * stats["var"]
                      + (1 - BN_MOMENTUM) * h.var(0)}
    loss = step(model, optimizer, batch)
    chex.assert_trees_all_close(_pure(model), want[t], rtol=1e-5, atol=1e-6)
    (count,) = jax.tree.leaves(nnx.state(model, nnx.RngCount))
    assert int(count) == t + 1  # drawn once per step, by the caller's pass
    if batch_norm:
      chex.assert_trees_all_close(_pure(model, nnx.BatchStat)["bn"], stats,
                                  rtol=1e-5, atol=1e-6)
  # The returned loss is the caller's pass, and the metrics saw it.
  m = gro.metrics(optimizer.opt_state)
  assert float(m.loss) == float(loss)
  # The comparison can fail: another mask in the extra evaluation differs.
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(want[-1], control[-1], rtol=1e-5, atol=1e-6)


def test_nnx_step_eager_equals_jitted_and_returns_aux():
  def loss_with_aux(model, batch):
    out = model(batch[0])
    return jnp.mean((out - batch[1]) ** 2), {"mean_output": out.mean()}

  results = []
  for jit in (False, True):
    model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
    tx = optax.chain(MAKERS["sam"](loss_with_aux, has_aux=True),
                     optax.sgd(LR))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step = lambda m, o, b: gro.nnx_step(m, o, loss_with_aux, b, has_aux=True)
    step = nnx.jit(step) if jit else step
    for batch in _batches(2):
      loss, aux = step(model, optimizer, batch)
    assert set(aux) == {"mean_output"}
    results.append(_pure(model))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_nnx_step_with_a_bare_optimizer_is_the_plain_step():
  model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  reference = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  plain = nnx.Optimizer(reference, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def plain_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(nnx_loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss

  for batch in _batches(2):
    loss = gro.nnx_step(model, optimizer, nnx_loss_fn, batch)
    # Equal but for rounding: the reference step is jitted, this one not.
    chex.assert_trees_all_close(loss, plain_step(reference, plain, batch),
                                rtol=1e-6)
  chex.assert_trees_all_close(_pure(model), _pure(reference), rtol=1e-6)


def test_nnx_step_rejects_what_is_not_a_model_or_an_optimizer():
  model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  optimizer = nnx.Optimizer(model, MAKERS["sam"](nnx_loss_fn), wrt=nnx.Param)
  with pytest.raises(TypeError, match="nnx_step: `model` must be an "
                     "nnx.Module"):
    gro.nnx_step(_pure(model), optimizer, nnx_loss_fn, _batches(1)[0])
  with pytest.raises(TypeError, match="nnx_step: `optimizer` must be an "
                     "nnx.Optimizer"):
    gro.nnx_step(model, optax.sgd(0.1), nnx_loss_fn, _batches(1)[0])


def test_nnx_loss_refuses_a_model_with_random_state():
  with pytest.raises(ValueError, match="nnx_loss: the model holds RNG state.*"
                     "nnx_step"):
    gro.nnx_loss(nnx_loss_fn, DropoutMLP(nnx.Rngs(0), batch_norm=False))


def test_nnx_loss_does_not_mutate_the_live_model():
  model = NnxMLP(nnx.Rngs(0), batch_norm=True)
  loss = gro.nnx_loss(nnx_loss_fn, model)
  before = _pure(model, nnx.BatchStat)
  params = nnx.state(model, nnx.Param)
  value = loss(params, _batches(1)[0])
  chex.assert_trees_all_equal(_pure(model, nnx.BatchStat), before)
  chex.assert_trees_all_close(
      value, _hand_loss(True)(_pure(model), _batches(1)[0]), rtol=1e-6)


# --- Linen ---------------------------------------------------------------------


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(5)(x)
    h = nn.BatchNorm(use_running_average=False, momentum=BN_MOMENTUM,
                     epsilon=BN_EPS)(h)
    return nn.Dense(2)(jnp.tanh(h))


class TrainState(train_state.TrainState):
  batch_stats: Any = None


NET = LinenNet()


def linen_loss(params, batch):
  """Returns the new BatchNorm statistics as the auxiliary output."""
  out, mutated = NET.apply({"params": params,
                            "batch_stats": batch["batch_stats"]},
                           batch["x"], mutable=["batch_stats"])
  return jnp.mean((out - batch["y"]) ** 2), mutated["batch_stats"]


def _linen_state(tx):
  variables = NET.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
  return TrainState.create(apply_fn=NET.apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=tx)


@jax.jit
def _linen_step(state, x, y):
  batch = {"x": x, "y": y, "batch_stats": state.batch_stats}
  (_, batch_stats), grads = jax.value_and_grad(linen_loss, has_aux=True)(
      state.params, batch)
  state = gro.apply_gradients(state, grads, batch=batch)
  return state.replace(batch_stats=batch_stats)


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_linen_train_state_with_batch_norm(name):
  state = _linen_state(optax.chain(MAKERS[name](linen_loss, has_aux=True),
                                   optax.sgd(LR)))
  params, stats = state.params, state.batch_stats
  for x, y in _batches():
    # Hand-written reference: the regularized gradient from gradients of
    # the loss at displaced points, with the statistics held fixed.
    batch = {"x": x, "y": y, "batch_stats": stats}
    loss = lambda p: linen_loss(p, batch)[0]
    g = jax.grad(loss)(params)
    if name == "forward":
      displaced = jax.tree.map(lambda p, gi: p + EPS * gi, params, g)
      out = jax.tree.map(lambda gi, gd: gi + GAMMA / EPS * (gd - gi), g,
                         jax.grad(loss)(displaced))
    else:
      norm = optax.tree.norm(g)
      out = jax.grad(loss)(jax.tree.map(lambda p, gi: p + 0.05 * gi / norm,
                                        params, g))
    params = jax.tree.map(lambda p, o: p - LR * o, params, out)
    # Statistics: one update, from a single forward pass at the old params.
    _, mutated = NET.apply({"params": state.params, "batch_stats": stats}, x,
                           mutable=["batch_stats"])
    stats = mutated["batch_stats"]
    state = _linen_step(state, x, y)
    chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state.batch_stats, stats, rtol=1e-6,
                                atol=1e-7)
  assert int(state.step) == 2
  # Statistics moved from their initial values (the check above is not void).
  assert float(jnp.abs(state.batch_stats["BatchNorm_0"]["mean"]).max()) > 1e-3


class LinenDropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(5)(x))
    return nn.Dense(2)(nn.Dropout(RATE, deterministic=False)(h))


DROPOUT_NET = LinenDropoutNet()


def linen_dropout_loss(params, batch):
  """The step's dropout key travels in the batch."""
  out = DROPOUT_NET.apply({"params": params}, batch["x"],
                          rngs={"dropout": batch["key"]})
  return jnp.mean((out - batch["y"]) ** 2)


@pytest.mark.parametrize("name", ["forward", "sam"])
def test_linen_dropout_rng_in_the_batch_gives_the_same_masks(name):
  base_key = jax.random.PRNGKey(7)
  variables = DROPOUT_NET.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
  state = train_state.TrainState.create(
      apply_fn=DROPOUT_NET.apply, params=variables["params"],
      tx=optax.chain(MAKERS[name](linen_dropout_loss), optax.sgd(LR)))

  @jax.jit
  def step(state, x, y):
    batch = {"x": x, "y": y, "key": jax.random.fold_in(base_key, state.step)}
    loss, grads = jax.value_and_grad(linen_dropout_loss)(state.params, batch)
    return gro.apply_gradients(state, grads, batch=batch, value=loss)

  params = control = variables["params"]
  for t, (x, y) in enumerate(_batches(2)):
    # Reference: the formula on the loss of this step's key, for both the
    # caller's gradient and the extra one (the control draws the extra
    # evaluation's mask from another key).
    key = jax.random.fold_in(base_key, t)
    loss = lambda p, k: linen_dropout_loss(p, {"x": x, "y": y, "key": k})

    def update(p, extra_key):
      g = jax.grad(loss)(p, key)
      if name == "forward":
        shifted = jax.tree.map(lambda q, gi: q + EPS * gi, p, g)
        u = jax.tree.map(lambda gi, gd: gi + GAMMA / EPS * (gd - gi), g,
                         jax.grad(loss)(shifted, extra_key))
      else:
        norm = optax.tree.norm(g)
        u = jax.grad(loss)(jax.tree.map(lambda q, gi: q + 0.05 * gi / norm,
                                        p, g), extra_key)
      return jax.tree.map(lambda q, ui: q - LR * ui, p, u)

    params = update(params, key)
    control = update(control, jax.random.fold_in(base_key, t + 100))
    state = step(state, x, y)
    chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(control, params, rtol=1e-5, atol=1e-6)
  assert float(gro.metrics(state.opt_state).loss) > 0


def test_flax_apply_gradients_without_batch_names_the_problem():
  state = _linen_state(optax.chain(MAKERS["forward"](linen_loss, has_aux=True),
                                   optax.sgd(LR)))
  x, y = _batches(1)[0]
  grads = jax.grad(lambda p: linen_loss(p, {"x": x, "y": y, "batch_stats":
                                            state.batch_stats})[0])(
                                                state.params)
  with pytest.raises(ValueError, match="batch=batch"):
    state.apply_gradients(grads=grads)


# --- nnx_step: extra arguments and has_aux --------------------------------------


def _amortized_sam_reference(start, base_key, batches, k, rho=0.05):
  """Amortized SAM with dropout, written out: at steps 0, k, 2k, ... the
  SAM gradient under the caller's mask, c = u - g kept; g + c between."""
  params, out_params, c = start, [], None
  for t, (x, y) in enumerate(batches):
    key = jax.random.fold_in(base_key, t)
    loss = lambda p: jnp.mean((_dropout_forward(p, x, key, False) - y) ** 2)
    g = jax.grad(loss)(params)
    if t % k == 0:
      norm = optax.tree.norm(g)
      u = jax.grad(loss)(jax.tree.map(lambda p, gi: p + rho * gi / norm,
                                      params, g))
      c = optax.tree.sub(u, g)
    u = optax.tree.add(g, c)
    params = jax.tree.map(lambda p, ui: p - LR * ui, params, u)
    out_params.append(params)
  return out_params


def test_nnx_step_passes_recompute_on_to_amortized():
  k = 2
  model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  start = _pure(model)
  (base_key,) = jax.tree.leaves(nnx.state(model, nnx.RngKey))
  tx = optax.chain(gro.amortized(MAKERS["sam"](nnx_loss_fn), k),
                   optax.sgd(LR))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = gro.amortized_step(
      lambda m, o, b, recompute: gro.nnx_step(m, o, nnx_loss_fn, b,
                                              recompute=recompute),
      jit=nnx.jit)
  batches = _batches(5)
  want = _amortized_sam_reference(start, base_key, batches, k)
  for t, batch in enumerate(batches):
    step(model, optimizer, batch)
    chex.assert_trees_all_close(_pure(model), want[t], rtol=1e-5, atol=1e-6)
  # A reusing step with nothing stored says so (NaN), which it would
  # not if `recompute` were dropped.
  fresh = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  opt = nnx.Optimizer(fresh, tx, wrt=nnx.Param)
  gro.nnx_step(fresh, opt, nnx_loss_fn, batches[0], recompute=False)
  assert not any(bool(jnp.any(jnp.isfinite(x)))
                 for x in jax.tree.leaves(_pure(fresh)["l2"]))


@pytest.mark.parametrize("has_aux,returns,match", [
    (True, lambda out: jnp.mean(out), "with has_aux=True, `loss_fn` must "
     "return a pair"),
    (False, lambda out: (jnp.mean(out), {}), "for a loss that returns "
     r"\(loss, aux\) pass has_aux=True"),
    (True, lambda out: (out, {}), "must return a scalar loss as the first "
     "element"),
])
def test_nnx_step_with_has_aux_disagreeing_with_the_loss_names_it(
    has_aux, returns, match):
  model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  loss_fn = lambda m, b: returns((m(b[0]) - b[1]) ** 2)
  optimizer = nnx.Optimizer(model, optax.chain(
      MAKERS["sam"](nnx_loss_fn), optax.sgd(LR)), wrt=nnx.Param)
  with pytest.raises(TypeError, match="gradreg_optax.nnx_step: .*" + match):
    gro.nnx_step(model, optimizer, loss_fn, _batches(1)[0], has_aux=has_aux)


def test_nnx_step_rejects_extra_arguments_it_cannot_pass():
  model = DropoutMLP(nnx.Rngs(0), batch_norm=False)
  batch = _batches(1)[0]
  optimizer = nnx.Optimizer(model, MAKERS["sam"](nnx_loss_fn), wrt=nnx.Param)
  with pytest.raises(TypeError, match="nnx_step: `value` is passed to the "
                     "optimizer by nnx_step itself"):
    gro.nnx_step(model, optimizer, nnx_loss_fn, batch, value=0.0)
  bare = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
  with pytest.raises(TypeError, match="nnx_step: `recompute` is for an "
                     "optimizer that holds gradreg_optax.amortized"):
    gro.nnx_step(model, bare, nnx_loss_fn, batch, recompute=True)
