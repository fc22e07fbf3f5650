"""The perturbed-gradient core shared by F-GR, B-GR, central GR, SAM and the
gradient-norm penalty."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import _base
from gradreg_optax._base import LossFn, ScalarOrSchedule

MaskOrFn = Any  # a pytree of bools like params, or a callable params -> that.


def weight_matrices(params: optax.Params) -> Any:
  """Default ASAM mask: true for leaves with two or more dimensions.

  This selects weight matrices and convolution kernels and leaves out biases
  and normalization scales and offsets (one-dimensional leaves).
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _direction(params: optax.Params, g: optax.Updates, *, normalize: bool,
               adaptive: bool, adaptive_eta: jax.Array,
               adaptive_mask: MaskOrFn) -> optax.Updates:
  """``T^2 g / ||T g||`` (normalized) or ``T^2 g``; ``T = 1`` unless adaptive."""
  if adaptive:
    mask = adaptive_mask(params) if callable(adaptive_mask) else adaptive_mask
    scale = jax.tree.map(
        lambda p, m: jnp.where(m, jnp.abs(_base.wide(p)) + adaptive_eta, 1.0),
        params, mask)
    tg = jax.tree.map(jnp.multiply, scale, g)
    direction = jax.tree.map(jnp.multiply, scale, tg)
  else:
    tg = direction = g
  if not normalize:
    return direction
  norm = jnp.sqrt(_base.tree_sq_norm(tg))
  # A zero gradient gives a zero direction (no 0/0). A NaN or infinite norm
  # leaves NaN in the direction, so a non-finite gradient stays visible to
  # `optax.apply_if_finite` instead of being silently replaced.
  safe_norm = jnp.where(norm > 0, norm, 1.0)
  return jax.tree.map(lambda d: d / safe_norm, direction)


def perturbed_gradient(
    loss_fn: LossFn,
    radii: Sequence[ScalarOrSchedule],
    weights: Sequence[ScalarOrSchedule],
    *,
    normalize: bool = False,
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    adaptive_mask: MaskOrFn = weight_matrices,
    has_aux: bool = False,
    axis_name: str | None = None,
    per_device_perturbation: bool = False,
    every_k: int = 1,
    reuse: str = "correction",
) -> optax.GradientTransformationExtraArgs:
  r"""Mixes the gradient with gradients at points displaced along it.

  With ``g = grad L(theta)`` the incoming updates,

  .. math::

    u = g + \sum_k w_k \left(\nabla L(\theta + r_k d) - g\right),
    \qquad d = \frac{T^2 g}{\|T g\|} \text{ (normalize) or } T^2 g,

  where ``T = 1``, or for adaptive SAM (ASAM, Kwon et al., 2021)
  ``T = diag(|theta| + adaptive_eta)`` on the leaves selected by
  ``adaptive_mask`` and 1 elsewhere. Every finite-difference method of this
  package is one configuration:

  ==========================  =====================  ===============  =========
  method                      radii ``r_k``          weights ``w_k``  normalize
  ==========================  =====================  ===============  =========
  F-GR (Karakida et al.)      ``eps``                ``gamma/eps``    no
  B-GR                        ``-eps``               ``-gamma/eps``   no
  central difference          ``eps, -eps``          ``±gamma/2eps``  no
  gradient-norm penalty       ``r``                  ``alpha``        yes
  SAM (Foret et al.)          ``rho``                ``1``            yes
  ==========================  =====================  ===============  =========

  Each radius costs one extra gradient evaluation. The displaced parameters
  are formed in float32 (float64 for float64 parameters) and rounded once to
  the parameters' dtype; the direction's norm, the differences
  ``grad L(theta + r d) - g`` and the mix are formed in float32 or wider and
  the result is cast to the dtype of the incoming updates. A zero gradient
  gives a zero displacement, never a NaN. Where every radius or every weight is
  zero the output is the incoming gradient, bit for bit.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux=True``); ``batch`` comes from ``update(..., batch=batch)``.
    radii: one displacement length per extra evaluation (numbers or
      schedules of the step count).
    weights: the mixing weight of each displaced gradient.
    normalize: divide the direction by its (global, ``T``-weighted) norm.
    adaptive: ASAM's elementwise scaling of the displacement.
    adaptive_eta: ASAM's ``eta``; ``T = |theta| + adaptive_eta``.
    adaptive_mask: which leaves ASAM scales: a pytree of bools like the
      parameters, or a function of the parameters returning one (default:
      leaves of two or more dimensions; biases and normalization parameters
      are left out). Use ``optax``-style masks, e.g. from
      ``optax.tree.map_params``.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; the ``aux`` of the extra
      evaluations is discarded (BatchNorm statistics are updated once, by your
      own evaluation).
    axis_name: a ``pmap``/``shard_map`` axis over which to average the
      gradients (see :func:`gradreg_optax.gradient_regularization`).
    per_device_perturbation: with ``axis_name``, let each device displace its
      parameters along its own gradient and average only the result (SAM's
      m-sharpness). Otherwise every device uses the averaged gradient.
    every_k: recompute the correction every ``k`` steps and reuse it in
      between (average cost ``1 + len(radii)/k`` gradients per step). By
      default a ``lax.cond`` on the step count decides (the choice for a
      whole loop under ``jit``/``scan``). Where you drive the loop from
      Python, decide on the host instead by passing
      ``recompute=step % k == 0`` (a Python bool) to ``update`` in a step
      jitted with ``static_argnames``: the conditional costs time on GPUs,
      and XLA's CPU backend runs convolutions inside it far more slowly
      (ResNet-18 step at 15x SGD with ``lax.cond``, 1.2x on the host, for
      ``k = 4``).
    reuse: ``"correction"`` reuses the last correction as is; ``"scaled"``
      reuses its direction rescaled to the current gradient norm (LookSAM).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p["w"]) ** 2)
    >>> params, batch = {"w": jnp.array([1.0, -2.0])}, jnp.array([1.0, 3.0])
    >>> tx = gro.perturbed_gradient(loss_fn, radii=[0.1], weights=[0.5])
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, _ = tx.update(grads, tx.init(params), params, batch=batch)
    >>> updates["w"]  # g + 0.5 * (H (0.1 g)) = g + 0.05 * H g
    Array([  2.2, -68.4], dtype=float32)
  """
  radii, weights = tuple(radii), tuple(weights)
  if not radii or len(radii) != len(weights):
    raise ValueError("`radii` and `weights` must be non-empty and of equal "
                     f"length, got {len(radii)} and {len(weights)}.")
  for k, (r, w) in enumerate(zip(radii, weights)):
    _base.check_hyperparameter(f"radii[{k}]", _abs(r), positive=False)
    _base.check_hyperparameter(f"weights[{k}]", _abs(w), positive=False)
  if adaptive:
    _base.check_hyperparameter("adaptive_eta", adaptive_eta, positive=False)

  hyperparameters = {f"radius_{k}": r for k, r in enumerate(radii)}
  hyperparameters |= {f"weight_{k}": w for k, w in enumerate(weights)}

  def correction_fn(grad_fn, params, g, hyper):
    direction = _direction(params, g, normalize=normalize, adaptive=adaptive,
                           adaptive_eta=adaptive_eta,
                           adaptive_mask=adaptive_mask)
    correction = jax.tree.map(jnp.zeros_like, g)
    for k in range(len(radii)):
      radius, weight = hyper[f"radius_{k}"], hyper[f"weight_{k}"]
      displaced = jax.tree.map(
          lambda p, d: (_base.wide(p) + radius * d).astype(p.dtype),
          params, direction)
      g_k = grad_fn(displaced)
      correction = jax.tree.map(
          lambda c, gk, g0: c + weight * (_base.wide(gk) - g0),
          correction, g_k, g)
    radii_zero = jnp.all(jnp.stack(
        [hyper[f"radius_{k}"] == 0 for k in range(len(radii))]))
    weights_zero = jnp.all(jnp.stack(
        [hyper[f"weight_{k}"] == 0 for k in range(len(radii))]))
    return correction, radii_zero | weights_zero

  return _base.regularizer(
      "perturbed_gradient", loss_fn, correction_fn, hyperparameters,
      has_aux=has_aux, axis_name=axis_name,
      per_device_perturbation=per_device_perturbation, every_k=every_k,
      reuse=reuse)


def _abs(value: ScalarOrSchedule) -> Any:
  """Radii and weights may be negative: only their being numbers is checked."""
  if callable(value):
    return value
  try:
    return abs(value)
  except TypeError:
    return value


def derived(fn: Callable[..., Any], *hypers: ScalarOrSchedule
            ) -> ScalarOrSchedule:
  """``fn`` of hyperparameters, itself a schedule if any of them is one."""
  if any(callable(h) for h in hypers):
    return lambda count: fn(*(_base.value_at(h, count) for h in hypers))
  return fn(*hypers)
