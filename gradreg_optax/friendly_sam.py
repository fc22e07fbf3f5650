"""Friendly SAM: SAM's ascent along the gradient's deviation from its
moving average."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import method
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

HYPERPARAMETERS = {
    "rho": method.Hyperparameter(0.05, "[0, inf)", "radius of the ascent "
                                 "step", switches_off=True),
    "sigma": method.Hyperparameter(1.0, "[0, inf)", "weight of the moving "
                                   "average removed from the ascent"),
    "lam": method.Hyperparameter(0.6, "[0, 1]", "decay of the moving "
                                 "average of the gradient"),
}


def _init(params: list) -> list:
  return [jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32))
          for p in params]


def _step(x: method.StepInput) -> method.StepOutput:
  h = x.hyperparameters
  m = [h["lam"] * a + (1 - h["lam"]) * g for a, g in zip(x.state, x.grad)]
  deviation = lambda g, m: [v - h["sigma"] * a for v, a in zip(g, m)]
  # d is formed twice, inside the reduction and inside the displaced point,
  # rather than kept as a gradient-sized buffer: the barrier keeps the two
  # apart, and the one-pass norm needs no conditional holding d.
  norm = method.global_norm(deviation(x.grad, m), one_pass=True)
  norm, g, m = jax.lax.optimization_barrier((norm, x.grad, m))
  # d = 0 (a zero gradient, say): no displacement, no NaN. (The test of
  # ||g||, never true, makes the displaced point wait for ||g||, which XLA
  # would otherwise take after the extra evaluation, keeping g alive.)
  norm = jnp.where((norm > 0) | (x.grad_norm < 0), norm, 1.0)
  loss, g_p = method.gradient_at(x, [v / norm for v in deviation(g, m)],
                                 h["rho"])
  return method.StepOutput(g_p, state=m, perturbed_loss=loss)


def friendly_sam(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    sigma: ScalarOrSchedule = 1.0,
    lam: ScalarOrSchedule = 0.6,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Friendly SAM (F-SAM): SAM's gradient at a point displaced along the
  gradient minus its moving average.

  Li, Zhou, He, Cheng & Huang, *Friendly Sharpness-Aware Minimization*, CVPR
  2024:

  .. math::

    m_t = \lambda\, m_{t-1} + (1 - \lambda)\, g_t, \qquad
    d_t = g_t - \sigma\, m_t, \qquad
    u_t = \nabla L\!\left(\theta_t + \rho \frac{d_t}{\|d_t\|}\right),

  with ``g_t`` the incoming gradient and ``m_0 = 0``: the moving average
  estimates the full-batch gradient, and the ascent follows the
  minibatch's deviation from it. The first step therefore displaces along
  ``(1 - sigma (1 - lam)) g_1``, SAM's direction where
  ``sigma (1 - lam) < 1``. (The authors' code instead subtracts the average
  before this step's update, ``g_t - sigma m_{t-1}``, and starts it at the
  first gradient; this follows the paper's equations.)

  ``sigma = 0`` is SAM exactly; ``rho = 0`` gives the incoming gradient bit
  for bit; a zero ``d`` (a zero gradient, say) gives no displacement and no
  NaN. The state holds ``m`` (float32 or wider, one array per regularized
  parameter); it advances on every step. One extra gradient evaluation per
  step; neither ``g`` nor ``d`` is kept through it.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent step, ``>= 0`` (number or schedule).
    sigma: weight of the moving average removed from the ascent, ``>= 0``.
    lam: decay of the moving average, in ``[0, 1]``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``m`` is its state's
    ``method_state``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.friendly_sam(loss_fn, rho=0.05, sigma=1.0,
    ...                                   lam=0.6), optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   grads = jax.grad(loss_fn)(params, batch)
    ...   updates, state = tx.update(grads, state, params, batch=batch)
    ...   params = optax.apply_updates(params, updates)
  """
  return method.regularizer(
      "gradreg_optax.friendly_sam", loss_fn, _step, HYPERPARAMETERS,
      {"rho": rho, "sigma": sigma, "lam": lam}, init=_init, has_aux=has_aux,
      mask=mask, axis_name=axis_name,
      per_device_perturbation=per_device_perturbation)


def reference_init(params):
  """The hand-written step's state: ``m_0 = 0``."""
  return jax.tree.map(jnp.zeros_like, params)


def reference(grad, params, g, m, rho, sigma, lam):
  """The hand-written step: ``(update, m)`` from ``m`` (pytrees)."""
  m = jax.tree.map(lambda a, v: lam * a + (1 - lam) * v, m, g)
  d = jax.tree.map(lambda v, a: v - sigma * a, g, m)
  scale = rho / jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(d)))
  return grad(jax.tree.map(lambda p, v: p + scale * v, params, d)), m
