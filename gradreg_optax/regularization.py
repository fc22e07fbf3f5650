"""Explicit gradient regularization (Karakida et al., ICML 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import _base
from gradreg_optax._base import LossFn, ScalarOrSchedule
from gradreg_optax.perturbed import derived, perturbed_gradient

FINITE_DIFFERENCE_METHODS = ("forward", "backward", "central")
EXACT_METHODS = ("double_backprop", "jvp")
METHODS = FINITE_DIFFERENCE_METHODS + EXACT_METHODS


def gradient_regularization(
    loss_fn: LossFn,
    gamma: ScalarOrSchedule,
    *,
    method: str = "forward",
    eps: ScalarOrSchedule = 0.1,
    has_aux: bool = False,
    axis_name: str | None = None,
    per_device_perturbation: bool = False,
    every_k: int = 1,
    reuse: str = "correction",
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient of ``L + (gamma/2) ||grad L||^2``: ``g + gamma * H g``.

  Karakida, Takase, Hayase & Osawa, *Understanding Gradient Regularization in
  Deep Learning: Efficient Finite-Difference Computation and Implicit Bias*,
  ICML 2023. With ``g = grad L(theta)`` the incoming updates, the output is
  ``g + gamma * v`` where ``v`` approximates or equals the Hessian-vector
  product ``H g``:

  ===================  =====================================================  ======
  ``method``           ``v``                                                  grads
  ===================  =====================================================  ======
  ``"forward"``        F-GR: ``(grad L(theta + eps g) - g) / eps``            2
  ``"backward"``       B-GR: ``(g - grad L(theta - eps g)) / eps``            2
  ``"central"``        ``(grad L(theta+eps g) - grad L(theta-eps g))/(2eps)`` 3
  ``"double_backprop"``  exact, reverse over reverse: ``grad <grad L, g>``    ~3
  ``"jvp"``            exact, forward over reverse: ``jvp(grad L, g)``        ~3
  ===================  =====================================================  ======

  ("grads" counts gradient evaluations per step, the caller's own included.)
  F-GR and B-GR are O(eps) from ``H g``, the central difference O(eps^2). The
  paper finds F-GR with a fairly large ``eps`` (about 0.1) generalizes best
  and B-GR worst. ``"double_backprop"`` is ``grad (1/2)||grad L||^2`` by
  reverse over reverse differentiation, formed as ``grad <grad L, g>`` with
  the incoming ``g`` held fixed (equal, cheaper, and exact across devices
  under data parallelism, where ``g`` is the averaged gradient). Both exact
  methods compute the same ``H g``, but forward over reverse (``"jvp"``) is
  the cheaper one on convolutional networks (on an H100, ResNet-18 steps cost
  2.7x SGD with ``"jvp"`` against 3.6x to 5.3x with ``"double_backprop"``,
  whose reverse pass over the backward convolutions adds transposes):
  prefer ``"jvp"`` when you want the exact product. Classical double
  backpropagation differentiates ``L + (gamma/2)||grad L||^2`` in one pass
  *instead of* your own gradient, which a transformation that receives ``g``
  cannot do; for that form, differentiate
  ``gradreg_optax.igr_modified_loss(loss_fn, 2 * gamma)`` yourself and chain
  no transformation (exact under ``jax.jit``, sharded arrays included; under
  ``pmap`` or ``shard_map`` each device differentiates its own batch's
  penalty, so the averaged gradient holds ``mean_i H_i g_i``, not ``H g``).

  On GPUs, float32 matrix products default to TF32, whose rounding
  (about 1e-3 relative) enters the finite difference divided by ``eps``;
  ``jax.default_matmul_precision("highest")`` removes that error.

  The finite-difference methods are configurations of
  :func:`gradreg_optax.perturbed_gradient`; its notes on dtypes (float32
  displacement and difference for low-precision parameters), the zero
  gradient and amortization (``every_k``, ``reuse``) apply here.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    gamma: strength of the penalty, ``>= 0`` (number or schedule).
    method: one of ``"forward"``, ``"backward"``, ``"central"``,
      ``"double_backprop"``, ``"jvp"``.
    eps: finite-difference step, ``> 0`` (``"backward"`` steps to
      ``theta - eps g``); unused by the exact methods.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; the extra evaluations'
      ``aux`` is discarded.
    axis_name: ``pmap``/``shard_map`` axis. The incoming gradient is averaged
      over it before it is used (no need to average it yourself), the extra
      gradients are computed on the local batch, and the output is averaged.
      Not needed under plain ``jax.jit`` with sharded arrays. Use it with
      ``pmap`` or ``shard_map(..., check_vma=False)``; with the default
      ``check_vma=True`` autodiff already sums the gradient over the axis, so
      drop ``axis_name`` and divide the loss by the number of devices (passing
      it then raises an error rather than averaging sums).
    per_device_perturbation: with ``axis_name``, each device uses its own
      gradient for the displacement; only the output is averaged.
    every_k: recompute the correction every ``k`` steps, reuse it between.
    reuse: ``"correction"`` or ``"scaled"`` (see ``perturbed_gradient``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain so
    that it receives the plain gradient (clip after it, not before).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> def loss_fn(params, batch):
    ...   x, y = batch
    ...   return jnp.mean((x @ params["w"] - y) ** 2)
    >>> params = {"w": jnp.zeros(3)}
    >>> batch = (jnp.eye(3), jnp.array([1.0, 2.0, 3.0]))
    >>> tx = optax.chain(gro.gradient_regularization(loss_fn, gamma=0.1),
    ...                  optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss_fn)(params, batch)
    >>> updates, state = tx.update(grads, state, params, batch=batch)
    >>> params = optax.apply_updates(params, updates)
  """
  if method not in METHODS:
    raise ValueError(f"Unknown `method` {method!r}; expected one of "
                     + ", ".join(repr(m) for m in METHODS) + ".")
  _base.check_hyperparameter("gamma", gamma, positive=False)
  _base.check_hyperparameter("eps", eps, positive=True)
  options = dict(has_aux=has_aux, axis_name=axis_name,
                 per_device_perturbation=per_device_perturbation,
                 every_k=every_k, reuse=reuse)

  if method == "forward":
    return perturbed_gradient(loss_fn, [eps], [derived(_ratio, gamma, eps)],
                              **options)
  if method == "backward":
    return perturbed_gradient(loss_fn, [derived(jnp.negative, eps)],
                              [derived(_negative_ratio, gamma, eps)], **options)
  if method == "central":
    half = derived(lambda gm, e: _ratio(gm, 2 * e), gamma, eps)
    return perturbed_gradient(
        loss_fn, [eps, derived(jnp.negative, eps)],
        [half, derived(jnp.negative, half)], **options)
  hvp = _hvp_jvp if method == "jvp" else _hvp_double_backprop

  def correction_fn(grad_fn, params, g, hyper):
    hg = hvp(grad_fn, params, g)
    correction = jax.tree.map(lambda h: hyper["gamma"] * _base.wide(h), hg)
    return correction, hyper["gamma"] == 0

  return _base.regularizer("gradient_regularization", loss_fn, correction_fn,
                           {"gamma": gamma}, **options)


def _ratio(gamma, eps):
  return gamma / eps


def _negative_ratio(gamma, eps):
  return -gamma / eps


def _hvp_jvp(grad_fn, params, g):
  tangent = jax.tree.map(lambda p, v: v.astype(p.dtype), params, g)
  return jax.jvp(grad_fn, (params,), (tangent,))[1]


def _hvp_double_backprop(grad_fn, params, g):
  """``grad <grad L, g>`` with ``g`` held fixed: ``grad (1/2)||grad L||^2``.

  Holding the incoming ``g`` fixed rather than differentiating
  ``(1/2)||grad L||^2`` literally lets XLA share the forward and backward
  pass with the caller's own gradient (9L - 5 matrix products for an L-layer
  MLP instead of 10L - 5), and keeps ``H g`` exact under data parallelism,
  where ``g`` is the averaged gradient and ``mean_i H_i g_i`` would be wrong.
  """
  # Elementwise products and sums, not vdot: no extra dot in the program.
  fixed = jax.lax.stop_gradient(g)
  inner = lambda p: sum(jnp.sum(_base.wide(a) * b) for a, b in zip(
      jax.tree.leaves(grad_fn(p)), jax.tree.leaves(fixed)))
  return jax.grad(inner)(params)
