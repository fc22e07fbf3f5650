"""GSAM: SAM's gradient, plus a descent along the part of ``g`` orthogonal
to it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import method
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

HYPERPARAMETERS = {
    "rho": method.Hyperparameter(0.05, "[0, inf)", "radius of the ascent "
                                 "step", switches_off=True),
    "alpha": method.Hyperparameter(0.1, "[0, inf)", "weight of the descent "
                                   "along g's part orthogonal to SAM's "
                                   "gradient"),
}


def _step(x: method.StepInput) -> method.StepOutput:
  rho, alpha = x.hyperparameters["rho"], x.hyperparameters["alpha"]
  loss, g_p = method.gradient_at(x, method.normalized(x), rho)
  # <g, g_p> / ||g_p||^2 as <g, g_p / ||g_p||> / ||g_p||: no square of a
  # norm that could overflow.
  norm = method.global_norm(g_p)
  norm = jnp.where(norm > 0, norm, 1.0)
  c = method.vdot(x.grad, [v / norm for v in g_p]) / norm
  u = [a - alpha * (g - c * a) for g, a in zip(x.grad, g_p)]
  return method.StepOutput(u, perturbed_loss=loss)


def gsam(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    alpha: ScalarOrSchedule = 0.1,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Surrogate-gap guided SAM: SAM's gradient and a descent along ``g``'s
  part orthogonal to it.

  Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan & Liu,
  *Surrogate Gap Minimization Improves Sharpness-Aware Training*, ICLR 2022:

  .. math::

    g_p = \nabla L\!\left(\theta + \rho \frac{g}{\|g\|}\right), \qquad
    g_\perp = g - \frac{\langle g, g_p \rangle}{\|g_p\|^2}\, g_p, \qquad
    u = g_p - \alpha\, g_\perp,

  with ``g`` the incoming gradient. Descending along ``-g_perp`` decreases
  the surrogate gap ``L(theta + eps) - L(theta)`` without changing the
  descent along ``g_p``. ``alpha = 0`` is SAM exactly; ``rho = 0`` gives the
  incoming gradient bit for bit; a zero gradient is not perturbed (no NaN),
  and where ``g_p = 0`` the projection is taken as 0. One extra gradient
  evaluation per step; ``g`` is kept through it (as for
  :func:`gradreg_optax.gradient_norm_penalty`).

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent step, ``>= 0`` (number or schedule).
    alpha: weight of the orthogonal descent, ``>= 0``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.gsam(loss_fn, rho=0.05, alpha=0.1),
    ...                  optax.sgd(0.1))
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, _ = tx.update(grads, tx.init(params), params, batch=batch)
  """
  return method.regularizer(
      "gradreg_optax.gsam", loss_fn, _step, HYPERPARAMETERS,
      {"rho": rho, "alpha": alpha}, has_aux=has_aux, mask=mask,
      axis_name=axis_name, per_device_perturbation=per_device_perturbation)


def reference(grad, params, g, rho, alpha):
  """The hand-written step (pytrees; ``grad(p)`` the gradient at ``p``)."""
  leaves = jax.tree.leaves
  scale = rho / jnp.sqrt(sum(jnp.sum(v * v) for v in leaves(g)))
  g_p = grad(jax.tree.map(lambda p, v: p + scale * v, params, g))
  c = (sum(jnp.sum(a * b) for a, b in zip(leaves(g), leaves(g_p)))
       / sum(jnp.sum(v * v) for v in leaves(g_p)))
  return jax.tree.map(lambda v, a: a - alpha * (v - c * a), g, g_p)
