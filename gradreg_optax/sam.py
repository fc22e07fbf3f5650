"""Sharpness-aware minimization and the gradient-norm penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import perturbed
from gradreg_optax._step import Hyperparameter
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule


def gradient_norm_penalty(
    loss_fn: LossFn,
    alpha: ScalarOrSchedule = 0.8,
    r: ScalarOrSchedule = 0.1,
    *,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient of ``L + lambda ||grad L||`` by one extra gradient.

  Zhao, Zhang & Hu, *Penalizing Gradient Norm for Efficiently Improving
  Generalization in Deep Learning*, ICML 2022, Algorithm 1:

  .. math::

    u = (1 - \alpha)\, g + \alpha\, \nabla L\!\left(\theta + r \frac{g}{\|g\|}
    \right), \qquad \alpha = \lambda / r,

  with ``g`` the incoming gradient, which enters the mix as is (the paper's
  formula; some public code normalizes it there, which is a different method).
  ``alpha = 1`` is SAM with ``rho = r``; ``alpha = 0`` or ``r = 0`` give the
  incoming gradient bit for bit. The authors recommend ``alpha = 0.8``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    alpha: mixing weight ``lambda / r``, ``>= 0`` (number or schedule).
    r: radius of the normalized displacement, ``>= 0``.
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.gradient_norm_penalty(loss_fn), optax.sgd(0.1))
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, _ = tx.update(grads, tx.init(params), params, batch=batch)
  """
  return perturbed.build(
      "gradreg_optax.gradient_norm_penalty", loss_fn,
      NORM_PENALTY_HYPERPARAMETERS, {"alpha": alpha, "r": r},
      lambda h: ([h["r"]], [h["alpha"]]), normalize=True, has_aux=has_aux,
      mask=mask, axis_name=axis_name,
      per_device_perturbation=per_device_perturbation)


def sam(
    loss_fn: LossFn,
    rho: ScalarOrSchedule = 0.05,
    *,
    normalize: bool = True,
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    adaptive_mask: MaskOrFn | None = None,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-aware minimization: the gradient at the ascended point.

  Foret, Kleiner, Mobahi & Neyshabur, *Sharpness-Aware Minimization for
  Efficiently Improving Generalization*, ICLR 2021:

  .. math::

    u = \nabla L\!\left(\theta + \rho \frac{g}{\|g\|}\right)
    \quad\text{or, with normalize=False,}\quad u = \nabla L(\theta + \rho g),

  the unnormalized variant being F-GR with ``gamma = eps = rho`` (Karakida et
  al., 2023). With ``adaptive=True`` it is ASAM (Kwon et al., ICML 2021):
  ``u = grad L(theta + rho T^2 g / ||T g||)``, ``T = |theta| + adaptive_eta``
  on the leaves selected by ``adaptive_mask`` (default: weight matrices and
  kernels, not biases or normalization parameters) and 1 elsewhere; ASAM
  typically uses a larger ``rho`` (0.5 to 2). ``rho = 0`` gives the incoming
  gradient bit for bit, and a zero gradient is not perturbed (no NaN). The
  incoming gradient is not kept once the ascended point is formed, so a step
  needs no more memory than a hand-written SAM step.

  This is the "opaque" SAM of ``optax.contrib.sam(..., opaque_mode=True)``:
  one step of the base optimizer per call, at twice the cost of a gradient.
  The step's :class:`~gradreg_optax.Metrics` hold the loss at the ascended
  point and, given ``value=loss`` in ``update``, the sharpness
  ``L(theta + rho d) - L(theta)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    rho: radius of the ascent step, ``>= 0`` (number or schedule).
    normalize: divide the ascent direction by its norm (standard SAM).
    adaptive, adaptive_eta, adaptive_mask: ASAM (see above).
    has_aux, mask, axis_name, per_device_perturbation: as in
      :func:`gradreg_optax.perturbed_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.sam(loss_fn, rho=0.05), optax.sgd(0.1))
    >>> loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    >>> updates, state = tx.update(grads, tx.init(params), params,
    ...                            batch=batch, value=loss)
    >>> float(gro.metrics(state).sharpness) > 0
    True
  """
  return perturbed.build(
      "gradreg_optax.sam", loss_fn, SAM_HYPERPARAMETERS, {"rho": rho},
      lambda h: ([h["rho"]], [1.0]), normalize=normalize, adaptive=adaptive,
      adaptive_eta=adaptive_eta, adaptive_mask=adaptive_mask, has_aux=has_aux,
      mask=mask, axis_name=axis_name,
      per_device_perturbation=per_device_perturbation)


SAM_HYPERPARAMETERS = {"rho": Hyperparameter(
    0.05, "[0, inf)", "radius of the ascent step", switches_off=True)}
NORM_PENALTY_HYPERPARAMETERS = {
    "alpha": Hyperparameter(0.8, "[0, inf)", "mixing weight lambda / r",
                            switches_off=True),
    "r": Hyperparameter(0.1, "[0, inf)", "radius of the normalized "
                        "displacement", switches_off=True),
}


# Hand-written steps, for benchmarks and tests: ``grad(p)`` is the gradient
# at ``p`` and ``g`` the gradient at ``params`` (pytrees).


def _sq_norm(tree):
  return sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree))


def sam_reference(grad, params, g, rho):
  scale = rho / jnp.sqrt(_sq_norm(g))
  return grad(jax.tree.map(lambda p, v: p + scale * v, params, g))


def asam_reference(grad, params, g, rho, adaptive_eta):
  t = jax.tree.map(lambda p: jnp.abs(p) + adaptive_eta if p.ndim > 1
                   else jnp.ones_like(p), params)
  tg = jax.tree.map(jnp.multiply, t, g)
  scale = rho / jnp.sqrt(_sq_norm(tg))
  return grad(jax.tree.map(lambda p, a, b: p + scale * a * b, params, t, tg))


def gradient_norm_penalty_reference(grad, params, g, alpha, r):
  scale = r / jnp.sqrt(_sq_norm(g))
  g1 = grad(jax.tree.map(lambda p, v: p + scale * v, params, g))
  return jax.tree.map(lambda v, v1: (1 - alpha) * v + alpha * v1, g, g1)
