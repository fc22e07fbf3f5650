"""Loss wrappers: flooding and the implicit-gradient-regularization loss."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import _checks
from gradreg_optax._numerics import sum_of_squares
from gradreg_optax._step import Hyperparameter
from gradreg_optax._transform import LossFn

FLOOD_LEVEL = Hyperparameter(0.02, "[0, inf)", "flood level b")


def flooding(loss_fn: LossFn, b: float, *, has_aux: bool = False) -> LossFn:
  r"""Flooding: ``|L - b| + b`` on the (batch mean) loss.

  Ishida, Yamane, Sakai, Niu & Sugiyama, *Do We Need Zero Training Loss After
  Achieving Zero Training Error?*, ICML 2020. Below the flood level ``b`` the
  gradient is reversed, so gradient descent ascends back to ``b``. Karakida
  et al. (2023) show that two flooded gradient-descent steps that cross ``b``
  from below are one F-GR step with ``eta = gamma = eps``:

  .. math::

    \theta_{t+2} = \theta_t - \eta^2 \frac{\nabla L(\theta_t + \eta \nabla
    L(\theta_t)) - \nabla L(\theta_t)}{\eta}.

  The flood is applied to the loss ``loss_fn`` returns, i.e. to the batch
  mean; flooding each sample's loss (iFlood) is a different method.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    b: the flood level, ``>= 0``.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` is passed through.

  Returns:
    The flooded loss, with the signature of ``loss_fn``.

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> flooded = gro.flooding(lambda p, b: jnp.mean((p - b) ** 2), b=0.5)
    >>> flooded(jnp.array(0.0), jnp.array(0.5))  # 0.25 is below 0.5
    Array(0.75, dtype=float32)
  """
  where = "gradreg_optax.flooding"
  _checks.callable_arg(where, "loss_fn", loss_fn, "loss_fn(params, ...)")
  b = _checks.number_arg(where, "b", b, FLOOD_LEVEL.domain)
  _checks.bool_arg(where, "has_aux", has_aux)

  def flooded(params: Any, *args: Any, **kwargs: Any) -> Any:
    out = loss_fn(params, *args, **kwargs)
    if has_aux:
      loss, aux = out
      return jnp.abs(loss - b) + b, aux
    return jnp.abs(out - b) + b

  return flooded


def igr_rate(learning_rate: float, num_params: int | optax.Params) -> float:
  r"""The implicit regularization rate ``lambda = h m / 4``.

  Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021, Eq. (3):
  gradient descent with step ``h`` on ``m`` parameters follows the flow of
  ``E + lambda R_IG`` with ``R_IG = (1/m) ||grad E||^2``.

  Args:
    learning_rate: the step ``h``, ``> 0``.
    num_params: ``m``, or a parameter pytree whose size is ``m``.

  Returns:
    ``h * m / 4``.

  Example:
    >>> import gradreg_optax as gro
    >>> gro.igr_rate(0.1, 1000)
    25.0
  """
  where = "gradreg_optax.igr_rate"
  learning_rate = _checks.number_arg(where, "learning_rate", learning_rate,
                                     "(0, inf)")
  if not isinstance(num_params, int):
    num_params = int(sum(jnp.size(x) for x in jax.tree.leaves(num_params)))
  if num_params < 1:
    raise ValueError(f"{where}: `num_params` must be >= 1, got {num_params}.")
  return learning_rate * num_params / 4


def igr_regularizer(loss_fn: LossFn, *, has_aux: bool = False
                    ) -> Callable[..., jax.Array]:
  r"""``R_IG(theta) = (1/m) sum_i (dE/dtheta_i)^2`` (Barrett & Dherin, 2021).

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> r_ig = gro.igr_regularizer(lambda p, b: jnp.sum(b * p ** 2))
    >>> r_ig(jnp.array([1.0, 1.0]), jnp.array([1.0, 2.0]))  # (2^2 + 4^2) / 2
    Array(10., dtype=float32)
  """
  _checks.callable_arg("gradreg_optax.igr_regularizer", "loss_fn", loss_fn,
                       "loss_fn(params, ...)")
  grad = jax.grad(loss_fn, has_aux=has_aux)

  def r_ig(params: Any, *args: Any, **kwargs: Any) -> jax.Array:
    g = grad(params, *args, **kwargs)
    g = g[0] if has_aux else g
    return sum_of_squares(g) / optax.tree.size(g)

  return r_ig


def igr_modified_loss(loss_fn: LossFn, learning_rate: float, *,
                      has_aux: bool = False) -> LossFn:
  r"""The modified loss ``E + (h/4) ||grad E||^2`` that gradient descent follows.

  Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021:
  ``E~ = E + lambda R_IG`` with ``lambda = h m / 4`` and
  ``R_IG = (1/m)||grad E||^2``, i.e. ``E + (h/4)||grad E||^2``. Gradient
  descent with step ``h`` on ``E`` stays ``O(h^2)`` close to the gradient flow
  of this loss, and only ``O(h)`` close to the flow of ``E``. Used as a loss,
  it is explicit IGR with strength ``learning_rate`` (its gradient is
  ``gradient_regularization`` with ``gamma = h/2`` computed by double
  backpropagation).

  Args:
    loss_fn: ``E(params, ...)`` (or ``(E, aux)`` with ``has_aux``).
    learning_rate: the step ``h`` (``>= 0``) setting the strength.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` is passed through.

  Returns:
    The modified loss, with the signature of ``loss_fn``.

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> modified = gro.igr_modified_loss(lambda p: jnp.sum(p ** 2), 0.1)
    >>> modified(jnp.array([1.0, 2.0]))  # 5 + 0.025 * (2^2 + 4^2)
    Array(5.5, dtype=float32)
  """
  where = "gradreg_optax.igr_modified_loss"
  _checks.callable_arg(where, "loss_fn", loss_fn, "loss_fn(params, ...)")
  learning_rate = _checks.number_arg(where, "learning_rate", learning_rate,
                                     "[0, inf)")
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def modified(params: Any, *args: Any, **kwargs: Any) -> Any:
    out, g = value_and_grad(params, *args, **kwargs)
    penalty = learning_rate / 4 * sum_of_squares(g)
    if has_aux:
      loss, aux = out
      return loss + penalty, aux
    return out + penalty

  return modified
