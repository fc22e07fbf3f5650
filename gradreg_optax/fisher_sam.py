"""Fisher SAM: SAM's ascent in the metric of the diagonal empirical
Fisher information."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import method
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

HYPERPARAMETERS = {
    "rho": method.Hyperparameter(0.05, "[0, inf)", "radius of the ascent "
                                 "step in the Fisher metric",
                                 switches_off=True),
    "eta": method.Hyperparameter(1.0, "[0, inf)", "weight of g^2 in the "
                                 "Fisher metric 1 + eta g^2"),
}


def _step(x: method.StepInput) -> method.StepOutput:
  rho, eta = x.hyperparameters["rho"], x.hyperparameters["eta"]
  f = [g / (1 + eta * g * g) for g in x.grad]  # F^-1 g
  # g^T F^-1 g as <g, F^-1 g>, as the hand-written step takes it: only
  # F^-1 g is read afterwards, so it takes g's place in memory (an
  # overflow-safe norm would keep both; see the docstring for the range).
  norm = jnp.sqrt(method.vdot(x.grad, f))
  norm = jnp.where(norm > 0, norm, 1.0)  # g = 0: no displacement, no NaN
  direction = [v / norm for v in f]
  loss, g_p = method.gradient_at(x, direction, rho)
  return method.StepOutput(g_p, perturbed_loss=loss)


def fisher_sam(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    eta: ScalarOrSchedule = 1.0,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Fisher SAM: SAM's gradient at the point of the ascent ball of the
  diagonal empirical Fisher metric.

  Kim, Li, Hu & Hospedales, *Fisher SAM: Information Geometry and Sharpness
  Aware Minimisation*, ICML 2022:

  .. math::

    F = \operatorname{diag}(1 + \eta\, g^2), \qquad
    \epsilon = \rho \frac{F^{-1} g}{\sqrt{g^\top F^{-1} g}}, \qquad
    u = \nabla L(\theta + \epsilon),

  with ``g`` the incoming gradient (``g^2`` elementwise, the diagonal
  empirical Fisher of the batch): ``epsilon`` maximizes the linearized loss
  over ``epsilon^T F epsilon <= rho^2``, so the ascent is shortened along
  the coordinates of large gradient. ``eta = 0`` is SAM exactly; ``rho = 0``
  gives the incoming gradient bit for bit; a zero gradient is not perturbed
  (no NaN). One extra gradient evaluation per step; ``F^-1 g`` takes the
  place of ``g`` in memory. ``g^T F^-1 g`` is the sum of the products
  ``g_i^2 / (1 + eta g_i^2)`` in float32 (or wider), each below ``1 / eta``:
  it overflows only with ``eta = 0`` (use :func:`gradreg_optax.sam`, whose
  norm is safe from overflow) for gradient entries beyond about ``1e19``,
  and for a gradient whose entries are all below about ``1e-19`` it is 0
  and the step is not perturbed.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent in the Fisher metric, ``>= 0`` (number or
      schedule).
    eta: weight of ``g^2`` in the metric, ``>= 0``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.fisher_sam(loss_fn, rho=0.05, eta=1.0),
    ...                  optax.sgd(0.1))
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, _ = tx.update(grads, tx.init(params), params, batch=batch)
  """
  return method.regularizer(
      "gradreg_optax.fisher_sam", loss_fn, _step, HYPERPARAMETERS,
      {"rho": rho, "eta": eta}, has_aux=has_aux, mask=mask,
      axis_name=axis_name, per_device_perturbation=per_device_perturbation)


def reference(grad, params, g, rho, eta):
  """The hand-written step (pytrees; ``grad(p)`` the gradient at ``p``)."""
  f_inv_g = jax.tree.map(lambda v: v / (1 + eta * v * v), g)
  scale = rho / jnp.sqrt(sum(jnp.sum(a * b) for a, b in zip(
      jax.tree.leaves(g), jax.tree.leaves(f_inv_g))))
  return grad(jax.tree.map(lambda p, v: p + scale * v, params, f_inv_g))
