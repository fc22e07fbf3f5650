"""Weighted SAM: the sharpness as a regularization term of its own weight."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import method
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

HYPERPARAMETERS = {
    "rho": method.Hyperparameter(0.05, "[0, inf)", "radius of the ascent "
                                 "step", switches_off=True),
    "gamma": method.Hyperparameter(0.9, "[0, 1)", "weight of the sharpness: "
                                   "gamma / (1 - gamma)", switches_off=True),
}


def _step(x: method.StepInput) -> method.StepOutput:
  rho, gamma = x.hyperparameters["rho"], x.hyperparameters["gamma"]
  loss, g_p = method.gradient_at(x, method.normalized(x), rho)
  w = gamma / (1 - gamma)
  return method.StepOutput([g + w * (a - g) for g, a in zip(x.grad, g_p)],
                           perturbed_loss=loss)


def wsam(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    gamma: ScalarOrSchedule = 0.9,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Weighted SAM: the gradient of ``L + gamma / (1 - gamma)`` times SAM's
  sharpness.

  Yue, Jiang, Ye, Gao, Liu & Zhang, *Sharpness-Aware Minimization Revisited:
  Weighted Sharpness as a Regularization Term*, KDD 2023:

  .. math::

    u = g + \frac{\gamma}{1 - \gamma}\left(g_p - g\right), \qquad
    g_p = \nabla L\!\left(\theta + \rho \frac{g}{\|g\|}\right),
    \qquad 0 \le \gamma < 1,

  with ``g`` the incoming gradient (the paper's coupled form; its decoupled
  variant applies the sharpness term outside the base optimizer).
  ``gamma = 1/2`` is SAM; ``gamma = 0`` or ``rho = 0`` give the incoming
  gradient bit for bit, and a zero gradient is not perturbed (no NaN). One
  extra gradient evaluation per step; ``g`` is kept through it.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent step, ``>= 0`` (number or schedule).
    gamma: weight of the sharpness, in ``[0, 1)``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.wsam(loss_fn, rho=0.05, gamma=0.9),
    ...                  optax.sgd(0.1))
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, _ = tx.update(grads, tx.init(params), params, batch=batch)
  """
  return method.regularizer(
      "gradreg_optax.wsam", loss_fn, _step, HYPERPARAMETERS,
      {"rho": rho, "gamma": gamma}, has_aux=has_aux, mask=mask,
      axis_name=axis_name, per_device_perturbation=per_device_perturbation)


def reference(grad, params, g, rho, gamma):
  """The hand-written step (pytrees; ``grad(p)`` the gradient at ``p``)."""
  scale = rho / jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(g)))
  g_p = grad(jax.tree.map(lambda p, v: p + scale * v, params, g))
  w = gamma / (1 - gamma)
  return jax.tree.map(lambda v, a: v + w * (a - v), g, g_p)
