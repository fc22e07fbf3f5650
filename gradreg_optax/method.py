r"""Writing a method: the extension point every method of this package uses.

A method is one function, ``step``, from a :class:`StepInput` (the
parameters, the gradient ``g`` and its norm, the loss and gradient at any
point, the hyperparameters at this step, the method's own state) to a
:class:`StepOutput` (the regularized gradient, the new state, the losses it
evaluated). :func:`regularizer` makes it an Optax gradient transformation and
supplies everything else: masks (``step`` sees the regularized leaves only),
averaging over devices, metrics, the exact limit (the plain gradient, bit for
bit, where a hyperparameter that switches the method off is zero), schedules
and injected hyperparameters (evaluated at each step and checked against
their domains), and the state that :func:`gradreg_optax.amortized` needs.

Weighted SAM (Yue et al., KDD 2023), ``g + gamma / (1 - gamma) (g_p - g)``
with ``g_p`` SAM's gradient, in full:

>>> import jax, jax.numpy as jnp, optax
>>> import gradreg_optax as gro
>>> HYPERPARAMETERS = {
...     "rho": gro.Hyperparameter(0.05, "[0, inf)", "ascent radius",
...                               switches_off=True),
...     "gamma": gro.Hyperparameter(0.5, "[0, 1)", "weight of SAM's part",
...                                 switches_off=True)}
>>> def step(x):
...   rho, gamma = x.hyperparameters["rho"], x.hyperparameters["gamma"]
...   loss, g_p = gro.gradient_at(x, gro.normalized(x), rho)
...   w = gamma / (1 - gamma)
...   u = [g + w * (a - g) for g, a in zip(x.grad, g_p)]
...   return gro.StepOutput(u, perturbed_loss=loss)
>>> def my_wsam(loss_fn, rho=0.05, gamma=0.5, **options):
...   return gro.regularizer("my_wsam", loss_fn, step, HYPERPARAMETERS,
...                          dict(rho=rho, gamma=gamma), **options)
>>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
>>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
>>> tx = optax.chain(my_wsam(loss_fn, gamma=0.9), optax.sgd(0.1))
>>> grads = jax.grad(loss_fn)(params, batch)
>>> updates, state = tx.update(grads, tx.init(params), params, batch=batch)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from gradreg_optax import _checks
from gradreg_optax import _numerics
from gradreg_optax import _transform
from gradreg_optax._step import Hyperparameter, Scalar, StepInput, StepOutput

Array = jax.Array

__all__ = ("Hyperparameter", "StepInput", "StepOutput", "global_norm",
           "gradient_at", "normalized", "regularizer", "vdot")


def normalized(x: StepInput) -> list:
  """``g / ||g||``, and 0 for a zero gradient (never 0/0)."""
  norm = jnp.where(x.grad_norm > 0, x.grad_norm, 1.0)
  return [v / norm for v in x.grad]


def gradient_at(x: StepInput, direction: list, radius: Scalar
                ) -> tuple[Array, list]:
  """The loss and gradient at ``theta + radius * direction``.

  The displaced point is formed in float32 (or wider) and rounded once to
  the parameters' dtype. Costs one gradient evaluation.
  """
  displaced = [(_numerics.wide(p) + radius * d).astype(p.dtype)
               for p, d in zip(x.params, direction)]
  loss, grad = x.value_and_grad(displaced)
  return loss, [_numerics.wide(v) for v in grad]


def vdot(a: list, b: list) -> Array:
  """``<a, b>`` over every leaf, in float32 or wider."""
  return _numerics.tree_vdot(a, b)


def global_norm(a: list, *, one_pass: bool = False) -> Array:
  """``||a||`` over every leaf, safe from overflow and underflow.

  ``one_pass=True`` takes it in one pass over ``a`` on every platform, so
  that a direction computed only to be normalized need not be kept in
  memory (on a CPU the default otherwise keeps ``a`` for a rarely taken
  second pass).
  """
  return _numerics.global_norm(a, one_pass=one_pass)


def regularizer(name: str, loss_fn: Callable[..., Any],
                step: Callable[[StepInput], StepOutput],
                hyperparameters: Mapping[str, Hyperparameter],
                values: Mapping[str, Any] | None = None, *,
                init: Callable[[list], Any] | None = None,
                is_off: Callable[[Mapping[str, Scalar]], Any] | None = None,
                has_aux: bool = False, mask: Any = None,
                axis_name: str | tuple[str, ...] | None = None,
                per_device_perturbation: bool = False,
                one_pass_norm: bool = False):
  r"""Makes a method's ``step`` an Optax gradient transformation.

  The transformation maps the incoming gradient ``g`` (the gradient of
  ``loss_fn`` at ``params``) to ``step``'s ``update`` on the leaves ``mask``
  selects and leaves the others as they came. Hyperparameters may be
  numbers, schedules of the step count, or values injected by
  ``optax.inject_hyperparams``. The contract for their values:

  * a number outside its :attr:`Hyperparameter.domain` raises ``ValueError``
    here, as does a schedule (a plain Python callable) whose value at step 0
    is outside it;
  * at run time (a schedule later on, an injected value), a value outside
    its domain makes the step's output NaN, so that an optimizer wrapped in
    ``optax.apply_if_finite`` after this transformation skips the step; the
    method's state is left as it was, and sets ``Metrics.valid`` to false, with
    ``Metrics.hyperparameters`` holding the values used; under
    ``jax.experimental.checkify`` the check reports the argument by name.
    A method is never silently turned into another.

  Args:
    name: the public function the user called, named in every error.
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``); ``batch`` comes from ``update(..., batch=batch)``.
    step: the method, ``StepInput -> StepOutput``.
    hyperparameters: name -> :class:`Hyperparameter`, the method's
      hyperparameters (in the order in which they are reported).
    values: name -> the value given (a number, a schedule, or an injected
      array); defaults to each hyperparameter's ``default``.
    init: ``init(params) -> state`` for a method with state (``params`` the
      list of regularized leaves); the state must be a pytree of arrays.
    is_off: ``is_off(hyperparameters) -> bool`` where the method is the plain
      gradient (default: where a hyperparameter with ``switches_off`` is
      0); return a Python bool when the values are Python numbers.
    has_aux: ``loss_fn`` returns ``(loss, aux)``.
    mask: which parameters are regularized: a pytree of bools like the
      parameters (or a prefix of it), or a callable of the parameters
      returning one. Default: all.
    axis_name: a ``pmap``/``shard_map`` axis (or a tuple of them) over which
      the gradient is averaged (see
      :func:`gradreg_optax.gradient_regularization`).
    per_device_perturbation: with ``axis_name``, ``step`` sees each device's
      own gradient; only its output is averaged.
    one_pass_norm: take ``||g||`` in one pass on every platform (what keeps
      compiled memory lowest for steps that hold several gradient-sized
      trees; see ``_numerics.global_norm``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`~gradreg_optax.RegularizerState`.
  """
  where = name
  _checks.callable_arg(where, "step", step, "step(StepInput) -> StepOutput")
  specs = dict(hyperparameters)
  given = dict(values or {})
  unknown = sorted(set(given) - set(specs))
  if unknown:
    raise TypeError(f"{where}: unknown hyperparameters {unknown}; it takes "
                    f"{sorted(specs)}.")
  checked = {k: _checks.hyperparameter(where, k, given.get(k, spec.default),
                                       spec)
             for k, spec in specs.items()}
  options = _checks.transformation_options(
      where, loss_fn, has_aux=has_aux, mask=mask, axis_name=axis_name,
      per_device_perturbation=per_device_perturbation)
  if is_off is None:
    off_names = [k for k, spec in specs.items() if spec.switches_off]
    is_off = lambda h: _transform.any_zero([h[k] for k in off_names])
  rule = _transform.Rule(specs, checked, step, is_off, init, one_pass_norm)
  return _transform.regularizer(where, loss_fn, rule, **options)
