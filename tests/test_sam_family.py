"""GSAM, WSAM, F-SAM, VaSSO and Fisher SAM against their papers' update
rules, written here in float64 NumPy on the flattened parameters; their exact
limits; and SAM-ON's mask on Linen and NNX models."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

import gradreg_optax as gro
from _models import mlp_batch, mlp_loss, mlp_params

LR = 0.1
STEPS = 3


# --- the papers' update rules -------------------------------------------------
# theta, g: float64 vectors; grad(v): the gradient at v; state: the method's
# (None before the first step). Each returns (u, state).


def _unit(v):
  n = np.linalg.norm(v)
  return v / n if n > 0 else v


def gsam_rule(theta, g, grad, state, rho, alpha):
  g_p = grad(theta + rho * _unit(g))
  g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
  return g_p - alpha * g_perp, None


def wsam_rule(theta, g, grad, state, rho, gamma):
  g_p = grad(theta + rho * _unit(g))
  return g + gamma / (1 - gamma) * (g_p - g), None


def friendly_sam_rule(theta, g, grad, m, rho, sigma, lam):
  m = (1 - lam) * g if m is None else lam * m + (1 - lam) * g  # m_0 = 0
  d = g - sigma * m
  return grad(theta + rho * _unit(d)), m


def vasso_rule(theta, g, grad, d, rho, theta_):
  d = g if d is None else (1 - theta_) * d + theta_ * g  # d_1 = g_1
  return grad(theta + rho * _unit(d)), d


def fisher_sam_rule(theta, g, grad, state, rho, eta):
  f = 1 + eta * g ** 2
  eps = rho * (g / f) / np.sqrt(g @ (g / f))
  return grad(theta + eps), None


RULES = {
    "gsam": (gsam_rule, dict(rho=0.1, alpha=0.3)),
    "wsam": (wsam_rule, dict(rho=0.1, gamma=0.7)),
    "friendly_sam": (friendly_sam_rule, dict(rho=0.1, sigma=0.8, lam=0.5)),
    "vasso": (vasso_rule, dict(rho=0.1, theta=0.4)),
    "fisher_sam": (fisher_sam_rule, dict(rho=0.1, eta=2.0)),
}
CONSTRUCTORS = {name: getattr(gro, name) for name in RULES}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _batches(dtype):
  return [mlp_batch(jax.random.PRNGKey(10 + t), dtype=dtype)
          for t in range(STEPS)]


def _library_run(tx, params, batches, *, donate=False):
  """Parameters after each step of ``tx`` chained with SGD, jitted."""
  opt = optax.chain(tx, optax.sgd(LR))

  def step(params, state, batch):
    grads = jax.grad(mlp_loss)(params, batch)
    updates, state = opt.update(grads, state, params, batch=batch)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(1,) if donate else ())
  state, out = opt.init(params), []
  for batch in batches:
    params, state = step(params, state, batch)
    out.append(params)
  return out


def _rule_run(rule, hyper, params, batches, selected=None):
  """The same steps by the rule on the flattened (selected) parameters."""
  theta, unravel = ravel_pytree(params)
  theta = np.asarray(theta, np.float64)
  sel = (np.ones(theta.size, bool) if selected is None
         else np.concatenate([np.full(p.size, m) for m, p in zip(
             jax.tree.leaves(selected), jax.tree.leaves(params))]))
  state, out = None, []
  for batch in batches:
    def full_grad(v):
      grads = jax.grad(mlp_loss)(unravel(v), batch)
      return np.asarray(ravel_pytree(grads)[0], np.float64)

    def grad(v_sel):
      v = theta.copy()
      v[sel] = v_sel
      return full_grad(v)[sel]

    g = full_grad(theta)
    u = g.copy()
    u[sel], state = rule(theta[sel], g[sel], grad, state, *hyper.values())
    theta = theta - LR * u
    out.append(unravel(jnp.asarray(theta)))
  return out


@pytest.mark.parametrize("name", sorted(RULES))
def test_matches_the_papers_update_rule_over_steps(name, x64):
  del x64
  rule, hyper = RULES[name]
  params = mlp_params(jax.random.PRNGKey(0), dtype=jnp.float64)
  batches = _batches(jnp.float64)
  got = _library_run(CONSTRUCTORS[name](mlp_loss, **hyper), params, batches)
  want = _rule_run(rule, hyper, params, batches)
  for t, (a, b) in enumerate(zip(got, want)):
    chex.assert_trees_all_close(a, b, rtol=1e-10, atol=1e-12,
                                custom_message=f"step {t}")
  # The comparison can fail: SAM's steps differ from these.
  sam = _library_run(gro.sam(mlp_loss, hyper["rho"]), params, batches)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(sam[-1], want[-1], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(RULES))
def test_with_a_mask_only_the_selected_leaves_follow_the_rule(name, x64):
  del x64
  rule, hyper = RULES[name]
  params = mlp_params(jax.random.PRNGKey(0), dtype=jnp.float64)
  mask = [{"w": False, "b": False}, {"w": True, "b": True}]
  batches = _batches(jnp.float64)
  got = _library_run(CONSTRUCTORS[name](mlp_loss, **hyper, mask=mask),
                     params, batches)
  want = _rule_run(rule, hyper, params, batches, selected=mask)
  chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


# --- exact limits -------------------------------------------------------------

PARAMS = mlp_params(jax.random.PRNGKey(0))
BATCHES = _batches(jnp.float32)

SAM_LIMITS = {
    "gsam alpha=0": lambda rho: gro.gsam(mlp_loss, rho, alpha=0.0),
    "wsam gamma=1/2": lambda rho: gro.wsam(mlp_loss, rho, gamma=0.5),
    "friendly_sam sigma=0": lambda rho: gro.friendly_sam(mlp_loss, rho,
                                                         sigma=0.0),
    "vasso theta=1": lambda rho: gro.vasso(mlp_loss, rho, theta=1.0),
    "fisher_sam eta=0": lambda rho: gro.fisher_sam(mlp_loss, rho, eta=0.0),
}


@pytest.mark.parametrize("label", sorted(SAM_LIMITS))
def test_limit_is_sam(label):
  got = _library_run(SAM_LIMITS[label](0.1), PARAMS, BATCHES)
  want = _library_run(gro.sam(mlp_loss, 0.1), PARAMS, BATCHES)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


PLAIN_LIMITS = [(name, dict(rho=0.0)) for name in sorted(RULES)] + [
    ("wsam", dict(gamma=0.0))]


@pytest.mark.parametrize("name,kwargs", PLAIN_LIMITS)
@pytest.mark.parametrize("injected", [False, True])
def test_limit_is_the_plain_gradient_bit_for_bit(name, kwargs, injected):
  make = CONSTRUCTORS[name]
  if injected:
    make = optax.inject_hyperparams(make, static_args=("loss_fn",))
  tx = make(mlp_loss, **kwargs)
  grads = jax.grad(mlp_loss)(PARAMS, BATCHES[0])
  out, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=BATCHES[0]))(
      grads, tx.init(PARAMS), PARAMS)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(RULES))
def test_zero_gradient_gives_zero_and_no_nan_over_steps(name):
  # A minimum of the loss: every gradient, and so every d and m, is zero.
  loss_fn = lambda p, b: jnp.sum((p["w"] - b) ** 2 * (1 + p["w"] ** 2))
  target = jnp.array([0.5, -1.0, 2.0])
  params = {"w": target}
  tx = CONSTRUCTORS[name](loss_fn, **RULES[name][1])
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, batch=target))
  state = tx.init(params)
  for _ in range(3):
    grads = jax.grad(loss_fn)(params, target)
    out, state = update(grads, state, params)
    np.testing.assert_array_equal(out["w"], jnp.zeros(3))
  assert all(bool(jnp.all(jnp.isfinite(x)))
             for x in jax.tree.leaves(state.method_state))


# --- schedules, injected hyperparameters, donated state ----------------------


@pytest.mark.parametrize("name", sorted(RULES))
def test_injected_hyperparameters_give_the_same_steps(name):
  hyper = RULES[name][1]
  injected = optax.inject_hyperparams(
      CONSTRUCTORS[name], static_args=("loss_fn",))(mlp_loss, **hyper)
  got = _library_run(injected, PARAMS, BATCHES)
  want = _library_run(CONSTRUCTORS[name](mlp_loss, **hyper), PARAMS, BATCHES)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["friendly_sam", "vasso"])
def test_state_can_be_donated(name):
  tx = optax.chain(CONSTRUCTORS[name](mlp_loss, **RULES[name][1]),
                   optax.sgd(LR))

  def step(params, state, batch):
    grads = jax.grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, batch=batch)
    return optax.apply_updates(params, updates), state

  donated = jax.jit(step, donate_argnums=(1,))
  params, state = PARAMS, tx.init(PARAMS)  # initialized outside jit
  for batch in BATCHES:
    old = jax.tree.leaves(state[0].method_state)
    params, state = donated(params, state, batch)
    assert all(x.is_deleted() for x in old)  # each buffer was donated
  kept = _library_run(CONSTRUCTORS[name](mlp_loss, **RULES[name][1]), PARAMS,
                      BATCHES)
  chex.assert_trees_all_close(params, kept[-1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,bad", [
    ("wsam", dict(gamma=1.0)), ("friendly_sam", dict(lam=1.5)),
    ("vasso", dict(theta=-0.1)), ("fisher_sam", dict(eta=-1.0)),
    ("gsam", dict(alpha=-0.5))])
def test_hyperparameters_out_of_their_domain_are_rejected(name, bad):
  key = next(iter(bad))
  with pytest.raises(ValueError, match=f"gradreg_optax.{name}: `{key}` must"):
    CONSTRUCTORS[name](mlp_loss, **bad)


# --- SAM-ON -------------------------------------------------------------------


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.GroupNorm(num_groups=2)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.Dense(4)(x.reshape(x.shape[0], -1))
    x = nn.LayerNorm(use_scale=False)(x)
    return nn.Dense(2)(x)


def test_normalization_layers_selects_scale_and_bias_of_linen_norms():
  params = LinenNet().init(jax.random.PRNGKey(0),
                           jnp.ones((1, 4, 4, 3)))["params"]
  mask = gro.normalization_layers(params)
  chosen = {jax.tree_util.keystr(p) for p, m in
            jax.tree_util.tree_flatten_with_path(mask)[0] if m}
  assert chosen == {"['GroupNorm_0']['scale']", "['GroupNorm_0']['bias']",
                    "['BatchNorm_0']['scale']", "['BatchNorm_0']['bias']",
                    "['LayerNorm_0']['bias']"}


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.hidden = nnx.Linear(8, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    x = jnp.tanh(self.bn(self.linear(x)))
    return self.out(self.norm(jnp.tanh(self.hidden(x))))


def _nnx_loss(model, batch):
  x, y = batch
  return jnp.mean((model(x) - y) ** 2)


def _hand_loss(p, batch):
  """NnxNet written out on its pure parameter dict (BatchNorm training)."""
  x, y = batch
  h = x @ p["linear"]["kernel"] + p["linear"]["bias"]
  h = ((h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5) * p["bn"]["scale"]
       + p["bn"]["bias"])
  h = jnp.tanh(jnp.tanh(h) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = (h - mean) / jnp.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
  return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)


def test_sam_on_through_nnx_step_equals_the_functional_reference():
  rho = 0.2
  model = NnxNet(nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  batch = (jax.random.normal(jax.random.PRNGKey(1), (16, 3)),
           jax.random.normal(jax.random.PRNGKey(2), (16, 2)))
  optimizer = nnx.Optimizer(
      model, optax.chain(gro.sam(_nnx_loss, rho,
                                 mask=gro.normalization_layers),
                         optax.sgd(LR)), wrt=nnx.Param)
  nnx.jit(lambda m, o, b: gro.nnx_step(m, o, _nnx_loss, b))(
      model, optimizer, batch)

  # By hand: SAM on the normalization layers' scales and biases only.
  norm = {k: k in ("bn", "norm") for k in params}
  g = jax.grad(_hand_loss)(params, batch)
  scale = rho / jnp.sqrt(sum(jnp.sum(v ** 2) for k in params if norm[k]
                             for v in g[k].values()))
  ascended = {k: {n: v + scale * g[k][n] if norm[k] else v
                  for n, v in layer.items()} for k, layer in params.items()}
  g_p = jax.grad(_hand_loss)(ascended, batch)
  want = {k: {n: v - LR * (g_p if norm[k] else g)[k][n]
              for n, v in layer.items()} for k, layer in params.items()}
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  # The comparison can fail: off the mask, the gradient at the ascended
  # point is not the incoming one.
  assert not np.allclose(got["linear"]["kernel"], params["linear"]["kernel"]
                         - LR * g_p["linear"]["kernel"], rtol=1e-5)
