"""The transformer LM with dropout: gro.nnx_step against a functional reference.

A finite difference of gradients taken under two different dropout masks is
noise divided by ``eps``; ``gro.nnx_step`` must therefore evaluate the
displaced gradient with the dropout masks of the caller's own pass, and
advance the model's RNG state once per step. The reference below is written
independently of the library: ``nnx.split``/``nnx.merge``, ``jax.grad`` and
the methods' formulas by hand, on the same AdamW (with its weight-decay
mask) from Optax.
"""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradreg_optax as gro
from gradreg_optax.experiments import transformer as tlm

CONFIG = tlm.ModelConfig(vocab_size=256, block_size=8, dim=16, num_heads=2,
                         num_layers=1, mlp_ratio=2, dropout=0.3)
BATCH, STEPS, LR, WD = 4, 3, 1e-2, 0.1
HYPER = {"sam": {"rho": 0.05}, "forward": {"gamma": 0.05, "eps": 0.1}}
# Tolerance. Library and reference compute the same float32 mathematics in
# a different order (the library forms the displaced point, the norm and the
# mix its own way), so the regularized gradients agree to rounding, about
# 1e-7 relative. AdamW then divides by sqrt(v) + 1e-8: where a gradient entry
# is itself small (a few 1e-7, from cancellation over the batch), a rounding
# difference of 1e-9 in it becomes a parameter difference of order 1e-6
# (measured: at most 6.6e-7, one entry, for SAM; F-GR agreed bit for bit).
# ATOL = LR / 1000 = 1e-5 covers that with a margin; the same steps with
# other dropout masks for the extra gradient differ by more than 1e-2
# (checked below), three orders of magnitude more.
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(autouse=True)
def _exact_matmuls():
  # On GPUs float32 products default to TF32, whose rounding would enter the
  # finite difference; no effect on a CPU.
  with jax.default_matmul_precision("highest"):
    yield


def _new_model():
  return tlm.TransformerLM(CONFIG, rngs=nnx.Rngs(params=0, dropout=1))


def _batches():
  data = np.random.default_rng(0).integers(0, 256, (STEPS, BATCH,
                                                    CONFIG.block_size + 1))
  return [(jnp.asarray(d[:, :-1]), jnp.asarray(d[:, 1:])) for d in data]


def _adamw():
  return optax.adamw(LR, b1=0.9, b2=0.99, weight_decay=WD,
                     mask=tlm.decay_mask)


# XLA's lowest CPU optimization level: compiling these steps is most of the
# test's time, and this halves it. Library and reference compile alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)  # shared by the tests; never mutated
def _library_run(name):
  """``STEPS`` steps through ``gro.nnx_step``; parameters, losses, model.

  The step is ``nnx.jit(lambda m, o, b: gro.nnx_step(m, o, loss, b))``
  spelled out as ``nnx.jit`` does it (split, a pure jitted function, merge,
  update), for the compiler options.
  """
  model = _new_model()
  tx, train_loss = gro.METHODS[name](tlm.lm_loss, **HYPER[name])
  optimizer = nnx.Optimizer(model, optax.chain(tx, _adamw()), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @_jit
  def pure_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    loss = gro.nnx_step(model, optimizer, train_loss, batch)
    return nnx.state((model, optimizer)), loss

  params, losses = [], []
  for batch in _batches():
    state, loss = pure_step(state, batch)
    nnx.update((model, optimizer), state)
    losses.append(loss)
    params.append(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return params, losses, model, optimizer


def _sq_norm(tree):
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


@functools.lru_cache(maxsize=None)
def _reference_run(name):
  """The same training written by hand on ``nnx.split``/``nnx.merge``.

  The extra gradient is evaluated with the non-parameter state (RNG keys
  and counts) from before the caller's pass, i.e. with the caller's dropout
  masks. Each step also returns, as a control, the parameters the step
  would give with the extra gradient under the state *after* the caller's
  pass (other masks).

  Returns:
    Per step: the parameters, the control parameters and the loss; and the
    final non-parameter state.
  """
  graphdef, params, rest = nnx.split(_new_model(), nnx.Param, ...)
  # Plain arrays, which jax.jit and jax.grad trace as values.
  params, rest = nnx.as_pure(params), nnx.as_pure(rest)
  adamw = _adamw()
  opt_state = adamw.init(params)

  def loss_and_rest(p, r, batch):
    model = nnx.merge(graphdef, p, r, copy=True)  # `r` itself is not changed
    loss = tlm.lm_loss(model, batch)
    return loss, nnx.as_pure(nnx.split(model, nnx.Param, ...)[2])

  def regularized(params, g, extra_rest, batch):
    grad_at = jax.grad(lambda p: loss_and_rest(p, extra_rest, batch)[0])
    h = HYPER[name]
    if name == "sam":
      scale = h["rho"] / jnp.sqrt(_sq_norm(g))
      return grad_at(jax.tree.map(lambda p, x: p + scale * x, params, g))
    # F-GR: g + gamma (grad L(theta + eps g) - g) / eps
    g1 = grad_at(jax.tree.map(lambda p, x: p + h["eps"] * x, params, g))
    return jax.tree.map(lambda x, y: x + h["gamma"] / h["eps"] * (y - x),
                        g, g1)

  @_jit
  def step(params, rest, opt_state, batch):
    (loss, new_rest), g = jax.value_and_grad(loss_and_rest, has_aux=True)(
        params, rest, batch)
    updates, new_opt_state = adamw.update(
        regularized(params, g, rest, batch), opt_state, params)
    control, _ = adamw.update(regularized(params, g, new_rest, batch),
                              opt_state, params)
    return (optax.apply_updates(params, updates), new_rest, new_opt_state,
            loss, optax.apply_updates(params, control))

  out = []
  for batch in _batches():
    params, rest, opt_state, loss, control = step(params, rest, opt_state,
                                                  batch)
    out.append((nnx.to_pure_dict(params), nnx.to_pure_dict(control), loss))
  return out, rest


def _rng_values(rest):
  """Keys (as raw data) and counts of a model's non-parameter state."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
          x.dtype, jax.dtypes.prng_key) else x, nnx.to_pure_dict(rest))


def _max_abs_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", ["sam", "forward"])
def test_nnx_step_with_dropout_equals_the_functional_reference(name):
  params, losses, model, optimizer = _library_run(name)
  reference, ref_rest = _reference_run(name)
  for k, (ref_params, _, ref_loss) in enumerate(reference):
    chex.assert_trees_all_close(params[k], ref_params, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(losses[k], ref_loss, rtol=1e-6)
  # RNG counts: every Dropout drew exactly one key per step (the caller's
  # pass), none for the extra evaluation; the reference's state agrees.
  counts = jax.tree.leaves(nnx.state(model, nnx.RngCount))
  # One Dropout on the embeddings, three per block (attention weights,
  # attention output, MLP output).
  assert len(counts) == 1 + 3 * CONFIG.num_layers
  assert all(int(c) == STEPS for c in counts)
  chex.assert_trees_all_equal(
      _rng_values(nnx.split(model, nnx.Param, ...)[2]), _rng_values(ref_rest))
  assert int(optimizer.step[...]) == STEPS
  # The step measured something (the loss came in as `value`).
  assert np.isfinite(float(gro.metrics(optimizer.opt_state).sharpness))


@pytest.mark.parametrize("name", ["sam", "forward"])
def test_a_reference_with_other_dropout_masks_differs(name):
  # The comparison above can fail: with the extra gradient evaluated under
  # the next step's masks instead, a single step already moves the
  # parameters far outside the tolerance.
  params = _library_run(name)[0]
  _, control, _ = _reference_run(name)[0][0]
  assert _max_abs_diff(params[0], control) > 1e-2
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(params[0], control, rtol=RTOL, atol=ATOL)


def test_decay_mask_selects_the_linear_kernels_only():
  params = nnx.state(_new_model(), nnx.Param)
  mask = nnx.to_pure_dict(tlm.decay_mask(nnx.as_pure(params)))
  paths = {jax.tree_util.keystr(p): m
           for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(p for p, m in paths.items() if m)
  assert decayed == sorted(p for p in paths if p.endswith("['kernel']"))
  assert len(decayed) == 1 + 4 * CONFIG.num_layers  # head + qkv, out, up, down
  assert not any(m for p, m in paths.items()
                 if "embedding" in p or "ln" in p or p.endswith("['bias']"))


@pytest.mark.parametrize("argv", [
    ["--steps", "0"], ["--methods", "nope"], ["--methods", "sam:gamma=1"],
    ["--methods", "sam:rho=-1"], ["--methods", "sam:rho=x"],
    ["--methods", "sam", "sam:rho=0.05"], ["--dim", "10", "--heads", "4"],
    ["--dropout", "1"], ["--block-size", "5000"], ["--seed", "-1"],
    ["--learning-rate", "abc"]])
def test_bad_options_give_one_line_and_status_2(argv, capsys):
  with pytest.raises(SystemExit) as e:
    tlm.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "error:" in err, err


def test_methods_come_from_the_registry_with_their_defaults():
  assert tlm.parse_method("adamw") == tlm.parse_method("sgd")
  assert not tlm.parse_method("adamw").transforms
  spec = tlm.parse_method("forward:gamma=0.02")
  assert spec.hyperparameters == {"gamma": 0.02, "eps": 0.1}
  for name, method in gro.METHODS.items():
    if name != "sgd":
      assert tlm.parse_method(name).hyperparameters == dict(method.defaults)


def test_method_hyperparameters_are_held_to_the_registrys_domains():
  with pytest.raises(ValueError, match=r"'rho=-1' in 'sam:rho=-1': expected "
                     r"rho >= 0, got -1$"):
    tlm.parse_method("sam:rho=-1")
  with pytest.raises(ValueError, match=r"expected eps > 0, got 0$"):
    tlm.parse_method("forward:eps=0")


def test_the_corpus_split_is_deterministic_and_windows_stay_in_their_part():
  corpus = tlm.load_corpus()
  again = tlm.load_corpus()
  assert corpus.info["sha256"] == again.info["sha256"]
  np.testing.assert_array_equal(corpus.validation, again.validation)
  assert 0.08 < corpus.info["validation_bytes"] / corpus.info["bytes"] < 0.12
  for validation in (False, True):
    starts = corpus.starts(16, validation=validation)
    covered = starts[:, None] + np.arange(17)
    assert np.all(corpus.validation[covered] == validation)


@pytest.mark.slow
def test_the_command_line_trains_and_writes_its_results(tmp_path):
  out = str(tmp_path / "lm")
  result = tlm.main(["--steps", "4", "--eval-every", "2", "--dim", "16",
                     "--heads", "2", "--layers", "1", "--block-size", "16",
                     "--batch-size", "4", "--eval-batches", "2", "--quiet",
                     "--methods", "adamw", "forward", "--out", out,
                     "--figure", out + ".png"])
  with open(out + ".json") as f:
    saved = json.load(f)
  assert saved["command"].startswith(
      "python -m gradreg_optax.experiments.transformer --steps 4")
  assert [m["method"] for m in saved["methods"]] == ["adamw", "forward"]
  for m in saved["methods"]:
    assert m["curve"]["step"] == [0, 2, 4]
    assert all(np.isfinite(v) for v in m["curve"]["val_loss"])
  assert saved["methods"][1]["curve"]["sharpness"][-1] is not None
  assert os.path.getsize(out + ".png") > 0
  assert result["methods"][0]["final_val_loss"] == saved["methods"][0][
      "final_val_loss"]
