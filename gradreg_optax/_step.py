"""The types of the extension point (see :mod:`gradreg_optax.method`)."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp

Array = jax.Array
Scalar = Union[float, int, Array]


class Hyperparameter(NamedTuple):
  """A method's hyperparameter: its default, its domain and what it does.

  Attributes:
    default: the value the method takes when none is given.
    domain: the values allowed, as an interval: ``"[0, inf)"``,
      ``"(0, inf)"``, ``"[0, 1)"``, ``"(-inf, inf)"``. Numbers are checked
      when the method is built, a schedule's value at step 0 too, and every
      value at run time (a value outside makes the step's output NaN, see
      :func:`regularizer`).
    help: one line for command lines and tables.
    switches_off: the method is the plain gradient where this is 0.
  """

  default: float
  domain: str = "[0, inf)"
  help: str = ""
  switches_off: bool = False

  def contains(self, value: Scalar) -> Union[bool, Array]:
    """Whether ``value`` lies in :attr:`domain` (an array for an array)."""
    lower, upper, lower_closed, upper_closed = _interval(self.domain)
    if isinstance(value, (int, float)):
      return bool((value >= lower if lower_closed else value > lower)
                  and (value <= upper if upper_closed else value < upper)
                  and not math.isnan(value))
    value = jnp.asarray(value)
    above = value >= lower if lower_closed else value > lower
    below = value <= upper if upper_closed else value < upper
    return above & below

  @property
  def bounds(self) -> tuple[float, float]:
    """``(lower, upper)`` of :attr:`domain` (infinite where unbounded)."""
    return _interval(self.domain)[:2]

  def describe(self) -> str:
    """The domain in words, for error messages: ``">= 0"``, ``"in [0, 1)"``."""
    lower, upper, lower_closed, upper_closed = _interval(self.domain)
    if math.isinf(lower) and math.isinf(upper):
      return "a finite number"
    if math.isinf(upper):
      return (">= " if lower_closed else "> ") + _number(lower)
    return f"in {self.domain}"


def _number(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else repr(x)


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*$")


def _interval(domain: str) -> tuple[float, float, bool, bool]:
  match = _INTERVAL.match(domain)
  if match is None:
    raise ValueError(f"gradreg_optax.Hyperparameter: `domain` must be an "
                     f"interval such as '[0, inf)', got {domain!r}.")
  left, lower, upper, right = match.groups()
  return float(lower), float(upper), left == "[", right == "]"


class StepInput(NamedTuple):
  """What a method's ``step`` receives.

  Lists hold one array per regularized leaf of the parameters, in the order
  of ``jax.tree.leaves(params)``; ``jax.tree.map`` works on them.

  Attributes:
    params: the regularized parameters ``theta`` (in their own dtype).
    grad: the gradient ``g`` at ``theta`` (float32 or wider; with
      ``axis_name``, averaged over the devices unless
      ``per_device_perturbation``).
    grad_norm: ``||g||``, computed safely from overflow and underflow.
    hyperparameters: name -> value at this step (a Python float where it is
      a number, an array where it comes from a schedule or is injected).
    state: the method's own state (``init``'s output, then ``step``'s).
    value_and_grad: ``value_and_grad(leaves) -> (loss, gradient)``, the loss
      at parameters whose regularized leaves are ``leaves`` (the others as
      they are) and its gradient in those leaves; each call costs one
      gradient evaluation on the step's batch. The loss's ``aux`` is
      dropped, so BatchNorm statistics are not updated by it.
    count: the number of steps before this one.
    select: ``select(name, mask) -> list of bools``: a mask given to the
      method (a pytree of bools like the parameters or a prefix of it, or a
      callable of the parameters returning one) on the regularized leaves;
      its errors name the argument ``name``.
  """

  params: list
  grad: list
  grad_norm: Array
  hyperparameters: Mapping[str, Scalar]
  state: Any
  value_and_grad: Callable[[list], tuple[Array, list]]
  count: Array
  select: Callable[[str, Any], list]


class StepOutput(NamedTuple):
  """What a method's ``step`` returns.

  Attributes:
    update: the regularized gradient, a list like ``StepInput.grad`` (any
      float dtype; it is cast to the incoming gradient's).
    state: the method's new state (``None`` for a stateless method).
    perturbed_loss: the loss at the displaced point(s), for the metrics
      (``None`` where none was evaluated).
    loss: the loss at ``theta`` where the method evaluated it (``None``
      otherwise); the ``value`` extra argument takes precedence.
  """

  update: list
  state: Any = None
  perturbed_loss: Any = None
  loss: Any = None
