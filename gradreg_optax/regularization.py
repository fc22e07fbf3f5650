"""Explicit gradient regularization (Karakida et al., ICML 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradreg_optax import _checks
from gradreg_optax import _core
from gradreg_optax import method as gradreg_method
from gradreg_optax import perturbed
from gradreg_optax._numerics import wide
from gradreg_optax._transform import LossFn, MaskOrFn, ScalarOrSchedule

FINITE_DIFFERENCE_METHODS = ("forward", "backward", "central")
EXACT_METHODS = ("double_backprop", "jvp")
GR_METHODS = FINITE_DIFFERENCE_METHODS + EXACT_METHODS


def gradient_regularization(
    loss_fn: LossFn,
    gamma: ScalarOrSchedule,
    *,
    method: str = "forward",
    eps: ScalarOrSchedule = 0.1,
    has_aux: bool = False,
    mask: MaskOrFn | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    per_device_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient of ``L + (gamma/2) ||grad L||^2``: ``g + gamma * H g``.

  Karakida, Takase, Hayase & Osawa, *Understanding Gradient Regularization in
  Deep Learning: Efficient Finite-Difference Computation and Implicit Bias*,
  ICML 2023. With ``g = grad L(theta)`` the incoming updates, the output is
  ``g + gamma * v`` where ``v`` approximates or equals the Hessian-vector
  product ``H g``:

  =====================  =====================================================  =====
  ``method``             ``v``                                                  grads
  =====================  =====================================================  =====
  ``"forward"``          F-GR: ``(grad L(theta + eps g) - g) / eps``            2
  ``"backward"``         B-GR: ``(g - grad L(theta - eps g)) / eps``            2
  ``"central"``          ``(grad L(theta+eps g)-grad L(theta-eps g))/(2eps)``   3
  ``"double_backprop"``  exact, reverse over reverse: ``grad <grad L, g>``      ~3
  ``"jvp"``              exact, forward over reverse: ``jvp(grad L, g)``        ~3
  =====================  =====================================================  =====

  ("grads" counts gradient evaluations per step, the caller's own included.)
  F-GR and B-GR are O(eps) from ``H g``, the central difference O(eps^2). The
  paper finds F-GR with a fairly large ``eps`` (about 0.1) generalizes best
  and B-GR worst. ``"double_backprop"`` forms ``grad <grad L, g>`` with the
  incoming ``g`` held fixed: equal to ``grad (1/2)||grad L||^2``, cheaper,
  and exact under data parallelism, where ``g`` is the averaged gradient.
  Both exact methods compute the same ``H g``; forward over reverse
  (``"jvp"``) compiles to fewer transposes on convolutional networks and is
  the one to prefer there. Classical double backpropagation differentiates
  ``L + (gamma/2)||grad L||^2`` in one pass *instead of* your own gradient,
  which a transformation that receives ``g`` cannot do: for that form,
  differentiate ``gradreg_optax.igr_modified_loss(loss_fn, 2 * gamma)``
  yourself and chain no transformation.

  On GPUs, float32 matrix products default to TF32, whose rounding enters
  the finite difference divided by ``eps``;
  ``jax.default_matmul_precision("highest")`` removes that error.

  The finite-difference methods are configurations of
  :func:`gradreg_optax.perturbed_gradient`, whose notes on dtypes, the zero
  gradient and non-finite values apply here. To recompute the correction only
  every ``k`` steps, wrap the result in :func:`gradreg_optax.amortized`.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``).
    gamma: strength of the penalty, ``>= 0`` (number or schedule).
    method: one of ``"forward"``, ``"backward"``, ``"central"``,
      ``"double_backprop"``, ``"jvp"``.
    eps: finite-difference step, ``> 0`` (``"backward"`` steps to
      ``theta - eps g``); unused by the exact methods.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; the extra evaluations'
      ``aux`` is discarded.
    mask: which parameters are regularized (a pytree of bools like the
      parameters, or a callable of them); the others get the incoming
      gradient bit for bit. See :func:`gradreg_optax.perturbed_gradient`.
    axis_name: ``pmap``/``shard_map`` axis, or a tuple of mesh axes (e.g.
      ``("data", "fsdp")``) averaged over together as by ``jax.lax.pmean``.
      The incoming gradient is averaged over it before it is used (no need
      to average it yourself), the extra gradients are computed on the local
      batch, and the output is averaged.
      Not needed, and not to be given, under plain ``jax.jit`` with sharded
      arrays. Use it with ``pmap`` or ``shard_map(..., check_vma=False)``;
      with the default ``check_vma=True`` autodiff already sums the gradient
      over the axis, so drop ``axis_name`` and divide the loss by the number
      of devices (passing it then raises an error rather than averaging
      sums).
    per_device_perturbation: with ``axis_name``, each device uses its own
      gradient for the displacement; only the output is averaged.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; put it first in a chain so
    that it receives the plain gradient (clip after it, not before). Its
    state holds the step's :class:`~gradreg_optax.Metrics`.

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
    >>> loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    >>> updates, state = tx.update(grads, state, params, batch=batch,
    ...                            value=loss)
    >>> params = optax.apply_updates(params, updates)
    >>> round(float(gro.metrics(state).penalty), 4)  # (1/2)||g||^2
    3.1111
  """
  where = "gradreg_optax.gradient_regularization"
  _checks.choice_arg(where, "method", method, GR_METHODS)
  options = dict(has_aux=has_aux, mask=mask, axis_name=axis_name,
                 per_device_perturbation=per_device_perturbation)
  if method in EXACT_METHODS:  # eps unused, but still a mistake if invalid
    _checks.hyperparameter(where, "eps", eps, HYPERPARAMETERS["eps"])
    # The norm (only a metric here) in one pass: with a conditional for it
    # on the CPU, XLA keeps more buffers alive around the Hessian-vector
    # product than the hand-written step does.
    return gradreg_method.regularizer(
        where, loss_fn, _exact(method), {"gamma": HYPERPARAMETERS["gamma"]},
        {"gamma": gamma}, one_pass_norm=True, **options)
  return perturbed.build(where, loss_fn, HYPERPARAMETERS,
                         {"gamma": gamma, "eps": eps}, _DISPLACEMENTS[method],
                         normalize=False, **options)


HYPERPARAMETERS = {
    "gamma": gradreg_method.Hyperparameter(
        0.05, "[0, inf)", "strength of the penalty (gamma/2)||grad L||^2",
        switches_off=True),
    "eps": gradreg_method.Hyperparameter(
        0.1, "(0, inf)", "finite-difference step"),
}


def _forward(h):
  return [h["eps"]], [h["gamma"] / h["eps"]]


def _backward(h):
  return [-h["eps"]], [-h["gamma"] / h["eps"]]


def _central(h):
  half = h["gamma"] / (2 * h["eps"])
  return [h["eps"], -h["eps"]], [half, -half]


_DISPLACEMENTS = {"forward": _forward, "backward": _backward,
                  "central": _central}


def _exact(mode: str):
  def step(x: gradreg_method.StepInput) -> gradreg_method.StepOutput:
    gamma = x.hyperparameters["gamma"]
    hg, loss = _core.hessian_vector_product(x.value_and_grad, x.params,
                                            x.grad, mode=mode)
    return gradreg_method.StepOutput(
        [v + gamma * wide(h) for v, h in zip(x.grad, hg)], loss=loss)
  return step


# Hand-written steps, for benchmarks and tests: ``grad(p)`` is the gradient
# at ``p`` and ``g`` the gradient at ``params`` (pytrees).


def _move(params, g, r):
  return jax.tree.map(lambda p, v: p + r * v, params, g)


def forward_reference(grad, params, g, gamma, eps):
  g1 = grad(_move(params, g, eps))
  return jax.tree.map(lambda v, v1: v + gamma / eps * (v1 - v), g, g1)


def backward_reference(grad, params, g, gamma, eps):
  g1 = grad(_move(params, g, -eps))
  return jax.tree.map(lambda v, v1: v + gamma / eps * (v - v1), g, g1)


def central_reference(grad, params, g, gamma, eps):
  gp, gm = grad(_move(params, g, eps)), grad(_move(params, g, -eps))
  return jax.tree.map(lambda v, a, b: v + gamma / (2 * eps) * (a - b),
                      g, gp, gm)


def jvp_reference(grad, params, g, gamma):
  hg = jax.jvp(grad, (params,), (g,))[1]
  return jax.tree.map(lambda v, x: v + gamma * x, g, hg)


def double_backprop_reference(grad, params, g, gamma):
  inner = lambda p: sum(jnp.sum(a * b) for a, b in zip(
      jax.tree.leaves(grad(p)), jax.tree.leaves(g)))
  hg = jax.grad(inner)(params)
  return jax.tree.map(lambda v, x: v + gamma * x, g, hg)
