"""Checks of the arguments a user passes, made once, where the user called.

Every message starts with the public function the user called, e.g.
``gradreg_optax.sam: `rho` must be >= 0, got -0.1.``
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import jax.numpy as jnp

from gradreg_optax._step import Hyperparameter


def callable_arg(where: str, name: str, value: Any, signature: str) -> None:
  if not callable(value):
    raise TypeError(f"{where}: `{name}` must be a callable `{signature}`, "
                    f"got {type(value).__name__}: {value!r}.")


def bool_arg(where: str, name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise TypeError(f"{where}: `{name}` must be a bool, got {value!r}.")


def int_arg(where: str, name: str, value: Any, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{where}: `{name}` must be an int >= {minimum}, "
                     f"got {value!r}.")


def choice_arg(where: str, name: str, value: Any, choices: tuple[str, ...]
               ) -> None:
  if value not in choices:
    raise ValueError(f"{where}: `{name}` must be one of "
                     + ", ".join(repr(c) for c in choices)
                     + f"; got {value!r}.")


def hyperparameter(where: str, name: str, value: Any,
                   spec: Hyperparameter) -> Any:
  """Checks a hyperparameter against its domain; numbers become floats.

  Python floats are known while tracing, so a method switched off by a zero
  hyperparameter compiles to the plain gradient, and one that is on compiles
  without the select that would keep the incoming gradient alive. A schedule
  (a callable of the step count) is checked at step 0 where its value there
  is known now; traced values (``optax.inject_hyperparams`` rebuilds
  transformations inside ``update``) and every later value are checked at
  run time by the transformation.

  Args:
    where: the public function the user called.
    name: the argument's name.
    value: a number, a schedule, or an array (concrete or traced).
    spec: the hyperparameter's :class:`~gradreg_optax.Hyperparameter`.

  Returns:
    ``value`` as a Python float, or the schedule or array itself.
  """
  if callable(value):
    try:
      first = value(jnp.zeros([], jnp.int32))
    except Exception as e:  # pylint: disable=broad-except
      if hasattr(e, "add_note"):
        e.add_note(f"{where}: raised by the schedule given as `{name}`, "
                   "evaluated at step 0.")
      raise
    if isinstance(first, jax.core.Tracer):
      return value
    if not _is_number(first) or not spec.contains(float(first)):
      raise ValueError(f"{where}: `{name}` must be {spec.describe()} at every "
                       f"step; the schedule gives {first!r} at step 0.")
    return value
  if isinstance(value, jax.core.Tracer):
    return value
  if not _is_number(value):
    raise TypeError(f"{where}: `{name}` must be a number or a schedule (a "
                    f"callable of the step count), got {value!r}.")
  number = float(value)
  if number != number or abs(number) == float("inf"):
    raise ValueError(f"{where}: `{name}` must be a finite number, got "
                     f"{value!r}.")
  if not spec.contains(number):
    raise ValueError(f"{where}: `{name}` must be {spec.describe()}, got "
                     f"{value!r}.")
  return number


def number_arg(where: str, name: str, value: Any, domain: str) -> float:
  """Checks a hyperparameter that must be a plain number (no schedule)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    raise TypeError(f"{where}: `{name}` must be a number, not a schedule or "
                    f"a traced value, got {value!r}.")
  return hyperparameter(where, name, value, Hyperparameter(0.0, domain))


def _is_number(value: Any) -> bool:
  if isinstance(value, (str, bytes, bool)) or np.ndim(value) != 0:
    return False
  try:
    float(value)
  except (TypeError, ValueError):
    return False
  return True


def mask_arg(where: str, name: str, mask: Any) -> None:
  """Rejects what cannot be a mask of the parameters.

  A lone bool is refused too: it is what ``optax.inject_hyperparams`` makes
  of a mask function, which it takes for a schedule of the step count.
  """
  if mask is None or callable(mask):
    return
  if isinstance(mask, (str, bytes)) or np.ndim(mask) == 0 and not isinstance(
      mask, (dict, list, tuple)):
    raise TypeError(
        f"{where}: `{name}` must be a pytree of bools like the parameters "
        "(or a prefix of it), or a callable of the parameters returning one, "
        f"got {mask!r}. Inside optax.inject_hyperparams, which takes a "
        f"callable for a schedule, give static_args=('{name}',).")


def transformation_options(where: str, loss_fn: Any, *, has_aux: Any,
                           mask: Any, axis_name: Any,
                           per_device_perturbation: Any) -> dict[str, Any]:
  """Checks the arguments every transformation of this package takes.

  Returns:
    Those besides ``loss_fn``, as keyword arguments for the builder.
  """
  callable_arg(where, "loss_fn", loss_fn, "loss_fn(params, batch)")
  bool_arg(where, "has_aux", has_aux)
  bool_arg(where, "per_device_perturbation", per_device_perturbation)
  mask_arg(where, "mask", mask)
  if axis_name is not None and not (
      isinstance(axis_name, str)
      or (isinstance(axis_name, tuple) and axis_name
          and all(isinstance(a, str) for a in axis_name))):
    raise TypeError(f"{where}: `axis_name` must be a string, a non-empty "
                    "tuple of strings (mesh axes averaged over together), or "
                    f"None, got {axis_name!r}.")
  if per_device_perturbation and axis_name is None:
    raise ValueError(f"{where}: `per_device_perturbation=True` needs "
                     "`axis_name`: the devices' gradients can only be told "
                     "apart inside shard_map/pmap over that axis.")
  return dict(has_aux=has_aux, mask=mask, axis_name=axis_name,
              per_device_perturbation=per_device_perturbation)
