"""Problems and train steps shared by the cost benchmarks.

A *problem* is a model, its loss and synthetic data of CIFAR-10's shape. A
*step* is one full jitted training step ``(params, opt_state, model_state, x,
y) -> (params, opt_state, model_state, loss)``: the caller's own gradient,
then either the library's transformation chained with the optimizer
(``library_step``) or the shortest hand-written code for the same method
(``hand_step``). Both use the same ``optax.sgd`` with momentum, so the two
differ only in how the regularized gradient is formed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gradreg_optax as gro  # pylint: disable=wrong-import-position
from gradreg_optax.experiments import _report  # pylint: disable=wrong-import-position
from gradreg_optax.experiments.models import MLP, ResNet18, SmallCNN  # pylint: disable=wrong-import-position

NUM_CLASSES = 10
CIFAR_SHAPE = (32, 32, 3)
LEARNING_RATE = 0.01
MOMENTUM = 0.9

# Every method that adds a transformation, with the registry's defaults.
LIBRARY_METHODS = tuple(name for name, m in gro.METHODS.items()
                        if m.transforms)


def hyper(method: str) -> dict[str, float]:
  """The hyperparameters both the library and the hand-written step use."""
  return dict(gro.METHODS[method].defaults)


@dataclasses.dataclass
class Problem:
  """A model with its loss, initial parameters and one batch of data."""
  name: str
  loss_fn: Callable[..., Any]  # loss_fn(params, batch) -> loss or (loss, aux)
  has_aux: bool  # True where the loss returns new BatchNorm statistics
  params: Any
  model_state: Any  # BatchNorm statistics, or an empty dict
  x: jax.Array
  y: jax.Array

  def batch(self, model_state, x, y):
    return (x, y, model_state) if self.has_aux else (x, y)

  def args(self):
    return self.params, self.model_state, self.x, self.y


def cross_entropy(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def synthetic_data(key, batch_size, input_shape):
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (batch_size,) + tuple(input_shape), jnp.float32)
  y = jax.random.randint(ky, (batch_size,), 0, NUM_CLASSES)
  return x, y


def _classifier_problem(name: str, model: Any, batch_size: int, input_shape,
                        seed: int) -> Problem:
  """A Linen classifier without mutable state, on synthetic data."""
  key = jax.random.PRNGKey(seed)
  x, y = synthetic_data(key, batch_size, input_shape)
  params = model.init(key, x[:1])["params"]

  def loss_fn(params, batch):
    x, y = batch
    return cross_entropy(model.apply({"params": params}, x), y)

  return Problem(name, loss_fn, False, params, {}, x, y)


def mlp_problem(depth: int, width: int, batch_size: int,
                input_shape=CIFAR_SHAPE, seed: int = 0) -> Problem:
  """``depth`` dense layers (``depth - 1`` hidden of ``width``, ReLU)."""
  return _classifier_problem(
      f"mlp_L{depth}_w{width}_b{batch_size}",
      MLP(width=width, depth=depth, num_classes=NUM_CLASSES), batch_size,
      input_shape, seed)


def cnn_problem(batch_size: int, input_shape=CIFAR_SHAPE, seed: int = 0
                ) -> Problem:
  return _classifier_problem(f"smallcnn_b{batch_size}",
                             SmallCNN(num_classes=NUM_CLASSES), batch_size,
                             input_shape, seed)


def resnet_problem(batch_size: int, width: int = 64, input_shape=CIFAR_SHAPE,
                   seed: int = 0, stages: tuple[int, ...] = (2, 2, 2, 2)
                   ) -> Problem:
  """ResNet-18 with BatchNorm in training mode (batch statistics).

  The loss returns the new running statistics as auxiliary output; the
  library discards those of its extra evaluations.
  """
  model = ResNet18(num_classes=NUM_CLASSES, width=width, stages=stages)
  key = jax.random.PRNGKey(seed)
  x, y = synthetic_data(key, batch_size, input_shape)
  variables = model.init(key, x[:2])

  def loss_fn(params, batch):
    x, y, batch_stats = batch
    logits, new = model.apply({"params": params, "batch_stats": batch_stats},
                              x, train=True, mutable=["batch_stats"])
    return cross_entropy(logits, y), new["batch_stats"]

  name = f"resnet18_b{batch_size}" + ("" if width == 64 else f"_w{width}")
  if stages != (2, 2, 2, 2):
    name = name.replace("resnet18", "resnet" + "".join(map(str, stages)))
  return Problem(name, loss_fn, True, variables["params"],
                 variables["batch_stats"], x, y)


def optimizer() -> optax.GradientTransformation:
  return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


def transformation(problem: Problem, method: str, every_k: int = 1,
                   reuse: str = "correction"):
  """The library's transformation for ``method`` (public API only)."""
  tx = gro.METHODS[method](problem.loss_fn, has_aux=problem.has_aux).tx
  return tx if every_k == 1 else gro.amortized(tx, every_k, reuse=reuse)


def _own_gradient(problem, params, batch, loss_fn=None):
  """The caller's gradient and loss; BatchNorm statistics from this pass."""
  loss_fn = loss_fn or problem.loss_fn
  if problem.has_aux:
    (loss, new_state), g = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch)
  else:
    loss, g = jax.value_and_grad(loss_fn)(params, batch)
    new_state = {}
  return loss, g, new_state


# Double backpropagation in its single-pass form through the public API: the
# caller differentiates L + (gamma/2)||grad L||^2, built by
# ``gro.igr_modified_loss`` (strength h = 2 gamma), and no transformation is
# chained. Its hand-written counterpart is ``hand_step("single_pass")``.
PENALIZED_LOSS = "igr_modified_loss"
# Optax's own SAM, ``optax.contrib.sam(..., opaque_mode=True)``.
OPTAX_SAM = "optax_sam"
HAND_REFERENCE = {PENALIZED_LOSS: "single_pass", OPTAX_SAM: "sam"}


def library_step(problem: Problem, method: str | None, every_k: int = 1,
                 reuse: str = "correction"):
  """A train step; ``method=None`` is plain SGD (the baseline).

  ``method=OPTAX_SAM`` is Optax's own SAM in opaque mode with the registry's
  ``rho``: the outer optimizer runs on the gradient at the ascended point.
  """
  tx = optimizer()
  loss_fn = problem.loss_fn
  if method == PENALIZED_LOSS:
    loss_fn = gro.igr_modified_loss(loss_fn, 2 * hyper("forward")["gamma"],
                                    has_aux=problem.has_aux)
  elif method == OPTAX_SAM:
    adversary = optax.chain(optax.contrib.normalize(),
                            optax.sgd(hyper("sam")["rho"]))
    tx = optax.contrib.sam(tx, adversary, sync_period=2, opaque_mode=True)
  elif method is not None:
    tx = optax.chain(transformation(problem, method, every_k, reuse), tx)

  def step(params, opt_state, model_state, x, y):
    batch = problem.batch(model_state, x, y)
    loss, g, new_state = _own_gradient(problem, params, batch, loss_fn)
    extra = {"batch": batch}
    if method == OPTAX_SAM:
      extra = {"grad_fn": lambda p, _: _own_gradient(problem, p, batch)[1]}
    updates, opt_state = tx.update(g, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state, new_state, loss

  return tx, step


HAND_METHODS = LIBRARY_METHODS + ("single_pass",)


def hand_step(problem: Problem, method: str):
  """The shortest step for ``method`` written directly in JAX.

  The reference the library's steps are measured against: the registry's
  hand-written ``reference`` step (no checks, schedules, metrics or
  exact-limit selects, just the mathematics, with the registry's
  hyperparameters), its state (for a method with state) carried beside the
  optimizer's. ``"double_backprop"`` forms ``grad <grad L, g>`` with the
  caller's ``g`` held fixed, as the library does; ``"single_pass"`` is
  classical double backpropagation, the gradient of
  ``L + (gamma/2)||grad L||^2`` in one pass instead of the caller's gradient.
  """
  opt = optimizer()
  loss_only = ((lambda p, b: problem.loss_fn(p, b)[0]) if problem.has_aux
               else problem.loss_fn)
  if method == "single_pass":
    gamma = hyper("forward")["gamma"]
    sq_norm = lambda t: sum(jnp.sum(jnp.square(a))
                            for a in jax.tree.leaves(t))

    def step(params, opt_state, model_state, x, y):
      batch = problem.batch(model_state, x, y)

      def penalized(p):
        if problem.has_aux:
          (loss, new_state), g = jax.value_and_grad(
              problem.loss_fn, has_aux=True)(p, batch)
        else:
          loss, g = jax.value_and_grad(problem.loss_fn)(p, batch)
          new_state = {}
        return loss + 0.5 * gamma * sq_norm(g), (loss, new_state)

      u, (loss, new_state) = jax.grad(penalized, has_aux=True)(params)
      updates, opt_state = opt.update(u, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, new_state, loss

    return opt, step

  spec = gro.METHODS[method]
  if spec.reference is None:
    raise ValueError(f"{method!r} has no hand-written reference step")
  h = hyper(method)
  stateful = spec.reference_init is not None
  # Only `init` is used by the callers: the state is the optimizer's and
  # the reference step's.
  tx = optax.GradientTransformation(
      lambda params: (opt.init(params), spec.reference_init(params)
                      if stateful else None), None)

  def step(params, opt_state, model_state, x, y):
    batch = problem.batch(model_state, x, y)
    opt_state, ref_state = opt_state
    loss, g, new_state = _own_gradient(problem, params, batch)
    grad = lambda p: jax.grad(loss_only)(p, batch)
    if stateful:
      u, ref_state = spec.reference(grad, params, g, ref_state, **h)
    else:
      u = spec.reference(grad, params, g, **h)
    updates, opt_state = opt.update(u, opt_state, params)
    return (optax.apply_updates(params, updates), (opt_state, ref_state),
            new_state, loss)

  return tx, step


def environment() -> dict[str, Any]:
  devices = jax.devices()
  return {
      "device": devices[0].device_kind,
      "platform": devices[0].platform,
      "device_count": len(devices),
      **_report.versions(),
      "command": "python " + " ".join(sys.argv),
  }


def device_slug() -> str:
  """A file-name-safe device name, e.g. ``nvidia_h100_80gb_hbm3`` or ``cpu``."""
  d = jax.devices()[0]
  if d.platform == "cpu":
    return "cpu"
  return "".join(c if c.isalnum() else "_" for c in d.device_kind.lower()
                 ).strip("_")
