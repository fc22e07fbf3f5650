"""Checks of the arguments a user passes, made once, where the user called.

Every message starts with the public function the user called, e.g.
``gradreg_optax.sam: `rho` must be >= 0, got -0.1.``
"""

from __future__ import annotations

from typing import Any

import jax


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


def hyperparameter(where: str, name: str, value: Any, *,
                   sign: str = ">= 0") -> Any:
  """Checks a hyperparameter; returns a number as a Python float.

  Python floats are known while tracing, so a method switched off by a zero
  hyperparameter compiles to the plain gradient, and one that is on compiles
  without the select that would keep the incoming gradient alive.
  Schedules and traced values pass unchecked.

  Args:
    where: the public function the user called.
    name: the argument's name.
    value: a number, a schedule (a callable of the step count), or a traced
      value (``optax.inject_hyperparams`` rebuilds transformations inside
      ``update`` with traced hyperparameters; they were checked when given).
    sign: ``">= 0"``, ``"> 0"`` or ``"any"``.

  Returns:
    ``value`` as a Python float, or the schedule or traced value itself.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return value
  bad_type = isinstance(value, (str, bytes, bool))
  try:
    number = None if bad_type else float(value)
  except (TypeError, ValueError):
    number = None
  if number is None:
    raise TypeError(f"{where}: `{name}` must be a number or a schedule (a "
                    f"callable of the step count), got {value!r}.")
  if number != number or abs(number) == float("inf"):
    raise ValueError(f"{where}: `{name}` must be a finite number, got "
                     f"{value!r}.")
  if ((sign == ">= 0" and not number >= 0)
      or (sign == "> 0" and not number > 0)):
    raise ValueError(f"{where}: `{name}` must be {sign}, got {value!r}.")
  return number


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
  if isinstance(mask, (str, bytes)):
    raise TypeError(f"{where}: `mask` must be a pytree of bools like the "
                    "parameters, or a callable of the parameters returning "
                    f"one, got {mask!r}.")
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
