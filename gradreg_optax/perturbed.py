"""The perturbed gradient, of which every finite-difference method is one
configuration, and ASAM's default mask."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import _checks
from gradreg_optax import _core
from gradreg_optax import _transform
from gradreg_optax import method
from gradreg_optax._numerics import wide
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

# Radii and weights may have any sign.
_ANY = method.Hyperparameter(0.0, "(-inf, inf)")
ADAPTIVE_ETA = method.Hyperparameter(
    0.01, "[0, inf)", "ASAM's eta in T = |theta| + eta")
# Hyperparameters -> (radii, weights) of the displaced gradients.
Displacements = Callable[[Mapping[str, Any]], tuple[Sequence[Any],
                                                    Sequence[Any]]]


def weight_matrices(params: optax.Params) -> Any:
  """Default ASAM mask: true for leaves with two or more dimensions.

  This selects weight matrices and convolution kernels and leaves out biases
  and normalization scales and offsets (one-dimensional leaves).

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> gro.weight_matrices({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
    {'b': False, 'w': True}
  """
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def displacement_step(displacements: Displacements, *, normalize: bool,
                      adaptive_mask: MaskOrFn | None = None
                      ) -> Callable[[method.StepInput], method.StepOutput]:
  """The step ``u = g + sum_k w_k (grad L(theta + r_k d) - g)``; with an
  ``adaptive_mask``, ASAM's scaling ``T = |theta| + adaptive_eta`` on the
  leaves it selects."""

  def step(x: method.StepInput) -> method.StepOutput:
    radii, weights = displacements(x.hyperparameters)
    scale = None
    if adaptive_mask is not None:
      eta = x.hyperparameters["adaptive_eta"]
      scaled = x.select("adaptive_mask", adaptive_mask)
      scale = lambda: [jnp.where(m, jnp.abs(wide(p)) + eta, 1.0)
                       for p, m in zip(x.params, scaled)]
    d = _core.direction(x.grad, x.grad_norm, normalize=normalize, scale=scale)
    u, perturbed = _core.perturbed_gradient(x.value_and_grad, x.params,
                                            x.grad, d, radii, weights)
    return method.StepOutput(u, perturbed_loss=perturbed)

  return step


def perturbed_gradient(
    loss_fn: LossFn,
    radii: Sequence[ScalarOrSchedule],
    weights: Sequence[ScalarOrSchedule],
    *,
    normalize: bool = False,
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    adaptive_mask: MaskOrFn | None = None,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
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
  the parameters' dtype; the direction's norm (computed safely from overflow
  and underflow), the differences and the mix are formed in float32 or wider
  and the result is cast to the dtype of the incoming updates. A zero
  gradient gives a zero displacement, never a NaN; a non-finite gradient or
  loss gives a non-finite output, for ``optax.apply_if_finite`` to skip.
  Where every radius or every weight is zero the output is the incoming
  gradient, bit for bit. Where the weights sum to 1 (SAM), ``g`` drops out
  of the mix and is not kept in memory through the extra gradient.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux=True``); ``batch`` comes from ``update(..., batch=batch)``.
    radii: one displacement length per extra evaluation (numbers or
      schedules of the step count; any sign).
    weights: the mixing weight of each displaced gradient (any sign).
    normalize: divide the direction by its (global, ``T``-weighted) norm.
    adaptive: ASAM's elementwise scaling of the displacement.
    adaptive_eta: ASAM's ``eta``; ``T = |theta| + adaptive_eta``.
    adaptive_mask: which leaves ASAM scales: a pytree of bools like the
      parameters (or a prefix of it), or a function of the parameters
      returning one; ``None`` (the default) is :func:`weight_matrices`,
      leaves of two or more dimensions (biases and normalization parameters
      are left out).
    has_aux: ``loss_fn`` returns ``(loss, aux)``; the ``aux`` of the extra
      evaluations is discarded (BatchNorm statistics are updated once, by
      your own evaluation).
    mask: which parameters are regularized, in Optax's style: a pytree of
      bools like the parameters (or a prefix of it), or a callable of the
      parameters returning one. Only those are displaced, enter the norm and
      get the regularized gradient; the loss always sees all parameters and
      the others get the incoming gradient bit for bit. Default: all.
    axis_name: a ``pmap``/``shard_map`` axis, or a tuple of them, over
      which to average (see
      :func:`gradreg_optax.gradient_regularization`).
    per_device_perturbation: with ``axis_name``, let each device displace its
      parameters along its own gradient and average only the result (SAM's
      m-sharpness). Otherwise every device uses the averaged gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state holds the step
    count and the step's :class:`~gradreg_optax.Metrics`.

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
  where = "gradreg_optax.perturbed_gradient"
  radii, weights = tuple(radii), tuple(weights)
  if not radii or len(radii) != len(weights):
    raise ValueError(f"{where}: `radii` and `weights` must be non-empty and "
                     f"of equal length, got {len(radii)} and {len(weights)}.")
  names = [(f"radii[{k}]", f"weights[{k}]") for k in range(len(radii))]

  def displacements(h):
    return [h[r] for r, _ in names], [h[w] for _, w in names]

  def is_off(h):
    radii_off, weights_off = map(_transform.all_zero, displacements(h))
    if isinstance(radii_off, bool) and isinstance(weights_off, bool):
      return radii_off or weights_off
    return jnp.logical_or(radii_off, weights_off)

  specs = {n: _ANY for pair in names for n in pair}
  values = {n: v for pair, r, w in zip(names, radii, weights)
            for n, v in zip(pair, (r, w))}
  return build(where, loss_fn, specs, values, displacements,
               normalize=normalize, is_off=is_off, adaptive=adaptive,
               adaptive_eta=adaptive_eta, adaptive_mask=adaptive_mask,
               has_aux=has_aux, mask=mask, axis_name=axis_name,
               per_device_perturbation=per_device_perturbation)


def build(where: str, loss_fn: LossFn,
          specs: Mapping[str, method.Hyperparameter],
          values: Mapping[str, Any], displacements: Displacements, *,
          normalize: bool, adaptive: bool = False,
          adaptive_eta: Any = 0.01, adaptive_mask: MaskOrFn | None = None,
          is_off: Callable[[Any], Any] | None = None,
          **options: Any) -> optax.GradientTransformationExtraArgs:
  """A named method that is a perturbed gradient (checks its arguments)."""
  _checks.bool_arg(where, "normalize", normalize)
  _checks.bool_arg(where, "adaptive", adaptive)
  if adaptive:
    _checks.mask_arg(where, "adaptive_mask", adaptive_mask)
    if adaptive_mask is None:
      adaptive_mask = weight_matrices
    specs = {**specs, "adaptive_eta": ADAPTIVE_ETA}
    values = {**values, "adaptive_eta": adaptive_eta}
  step = displacement_step(displacements, normalize=normalize,
                           adaptive_mask=adaptive_mask if adaptive else None)
  # ASAM holds T, T g and g at once; with a conditional for the norm on the
  # CPU, XLA keeps more of them alive than its hand-written step does.
  return method.regularizer(where, loss_fn, step, specs, values,
                            is_off=is_off, one_pass_norm=adaptive, **options)
