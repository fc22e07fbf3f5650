"""VaSSO: SAM's ascent along a moving average of the gradient."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import method
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

HYPERPARAMETERS = {
    "rho": method.Hyperparameter(0.05, "[0, inf)", "radius of the ascent "
                                 "step", switches_off=True),
    "theta": method.Hyperparameter(0.9, "[0, 1]", "weight of the new "
                                   "gradient in the moving average"),
}


class VassoState(NamedTuple):
  """The moving average ``d`` and whether it holds a gradient yet."""

  d: list
  started: jax.Array


def _init(params: list) -> VassoState:
  return VassoState([jnp.zeros(p.shape, jnp.promote_types(p.dtype,
                                                           jnp.float32))
                     for p in params], jnp.zeros([], bool))


def _step(x: method.StepInput) -> method.StepOutput:
  rho, theta = x.hyperparameters["rho"], x.hyperparameters["theta"]
  d = [jnp.where(x.state.started, (1 - theta) * a + theta * g, g)
       for a, g in zip(x.state.d, x.grad)]
  norm = method.global_norm(d)
  norm = jnp.where(norm > 0, norm, 1.0)  # d = 0: no displacement, no NaN
  loss, g_p = method.gradient_at(x, [v / norm for v in d], rho)
  return method.StepOutput(g_p, state=VassoState(d, jnp.ones([], bool)),
                           perturbed_loss=loss)


def vasso(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    theta: ScalarOrSchedule = 0.9,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Variance-suppressed sharpness-aware optimization (VaSSO): SAM's
  gradient at a point displaced along a moving average of the gradient.

  Li & Giannakis, *Enhancing Sharpness-Aware Optimization Through Variance
  Suppression*, NeurIPS 2023:

  .. math::

    d_t = (1 - \theta)\, d_{t-1} + \theta\, g_t, \qquad
    u_t = \nabla L\!\left(\theta_t + \rho \frac{d_t}{\|d_t\|}\right),

  with ``g_t`` the incoming gradient and ``d_1 = g_1``: the average starts
  at the first gradient, as in the authors' code (starting it at 0 gives
  the same first displacement, ``theta g_1`` normalized, but weighs the
  first gradient by ``theta`` in every later average). The smaller
  ``theta``, the less the displacement varies from batch to batch.

  ``theta = 1`` is SAM exactly; ``rho = 0`` gives the incoming gradient bit
  for bit; a zero ``d`` (a zero gradient, say) gives no displacement and no
  NaN. The state holds ``d`` (float32 or wider, one array per regularized
  parameter) and a flag; it advances on every step. One extra gradient
  evaluation per step; ``g`` is not kept through it.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent step, ``>= 0`` (number or schedule).
    theta: weight of the new gradient in the average, in ``[0, 1]``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state's
    ``method_state`` is a :class:`VassoState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.vasso(loss_fn, rho=0.05, theta=0.4),
    ...                  optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   grads = jax.grad(loss_fn)(params, batch)
    ...   updates, state = tx.update(grads, state, params, batch=batch)
    ...   params = optax.apply_updates(params, updates)
  """
  return method.regularizer(
      "gradreg_optax.vasso", loss_fn, _step, HYPERPARAMETERS,
      {"rho": rho, "theta": theta}, init=_init, has_aux=has_aux, mask=mask,
      axis_name=axis_name, per_device_perturbation=per_device_perturbation)


def reference_init(params):
  """The hand-written step's state: no average yet."""
  return jax.tree.map(jnp.zeros_like, params), jnp.zeros([], bool)


def reference(grad, params, g, state, rho, theta):
  """The hand-written step: ``(update, state)`` from ``state`` (pytrees)."""
  d, started = state
  d = jax.tree.map(lambda a, v: jnp.where(started, (1 - theta) * a
                                          + theta * v, v), d, g)
  scale = rho / jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(d)))
  g_p = grad(jax.tree.map(lambda p, v: p + scale * v, params, d))
  return g_p, (d, jnp.ones([], bool))
