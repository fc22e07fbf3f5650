r"""The mathematics of one step: displaced gradients and Hessian products.

Every finite-difference method of this package is one perturbed gradient

.. math::

  u = g + \sum_k w_k \left(\nabla L(\theta + r_k d) - g\right),
  \qquad d = \frac{T^2 g}{\|T g\|} \text{ or } T^2 g,

with its own radii ``r_k``, weights ``w_k`` and direction ``d``, and the
exact methods form ``g + gamma H g`` with a Hessian-vector product. The
functions here work on lists of leaves (the regularized parameters only) and
know nothing of Optax, masks, devices or state.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp

from gradreg_optax._numerics import sum_of_squares, tree_vdot, unit_scale, wide

Array = jax.Array
Leaves = list  # a list of arrays: the regularized parameters, or a gradient
Number = Union[float, int, Array]  # Python numbers where known when tracing
# The loss and its gradient at given parameters (the loss's aux dropped).
ValueAndGrad = Callable[[Leaves], tuple[Array, Leaves]]


def is_static(x: object, value: float) -> bool:
  """Whether ``x`` is known, while tracing, to equal ``value``."""
  return isinstance(x, (int, float)) and x == value


def direction(g: Leaves, norm: Array, *, normalize: bool,
              scale: Callable[[], Leaves] | None = None) -> Leaves:
  """``T^2 g / ||T g||`` (normalized) or ``T^2 g``, with ``T = scale()`` or 1.

  ``norm`` is ``||g||``. ``scale`` computes ``T`` (from the parameters)
  wherever it is needed, so that neither ``T`` nor ``T g`` is kept in
  memory; ``||T g||`` is taken of ``T (s g)`` with ``s`` the power of two
  that brings ``||g||`` into ``[0.5, 1)``, which keeps the sum of squares
  from overflowing or underflowing whatever the gradient's scale. A zero
  gradient gives a zero direction (no 0/0); a non-finite one stays
  non-finite, so that ``optax.apply_if_finite`` sees it.
  """
  if scale is None:
    d = g
  else:
    t = scale()
    tg = [a * x for a, x in zip(t, g)]
    d = [a * x for a, x in zip(t, tg)]  # T (T g): XLA shares T g, not T^2
    if normalize:
      s = unit_scale(norm)
      norm = jnp.sqrt(sum_of_squares([x * s for x in tg])) / s
  if not normalize:
    return d
  norm = jnp.where(norm > 0, norm, 1.0)
  return [x / norm for x in d]


def perturbed_gradient(value_and_grad: ValueAndGrad, params: Leaves,
                       g: Leaves, d: Leaves, radii: Sequence[Number],
                       weights: Sequence[Number]) -> tuple[Leaves, Array]:
  """``g + sum_k w_k (grad L(theta + r_k d) - g)`` and the mean displaced loss.

  ``g`` and ``d`` are in float32 or wider; each displaced point is formed in
  that precision and rounded once to the parameters' dtype. Where the
  weights sum to 1 (SAM) the result is ``sum_k w_k grad L(theta + r_k d)``,
  without ``g``, which then need not be kept through the extra gradients.
  """
  losses, gradients = [], []
  for r in radii:
    displaced = [(wide(p) + r * x).astype(p.dtype) for p, x in zip(params, d)]
    loss, gk = value_and_grad(displaced)
    losses.append(loss)
    gradients.append([wide(x) for x in gk])
  if is_static(sum(weights), 1):
    terms = [gk if is_static(w, 1) else [w * x for x in gk]
             for w, gk in zip(weights, gradients)]
    u = [functools.reduce(jnp.add, parts) for parts in zip(*terms)]
  else:
    u = list(g)
    for w, gk in zip(weights, gradients):
      u = [x + w * (y - z) for x, y, z in zip(u, gk, g)]
  return u, functools.reduce(jnp.add, losses) / len(losses)


def hessian_vector_product(value_and_grad: ValueAndGrad, params: Leaves,
                           v: Leaves, *, mode: str) -> tuple[Leaves, Array]:
  """``H v`` at ``params`` and the loss there.

  ``mode="jvp"``: forward over reverse, ``jvp(grad L, v)``.
  ``mode="double_backprop"``: reverse over reverse, ``grad <grad L, v>`` with
  ``v`` held fixed: equal to ``grad (1/2)||grad L||^2`` at ``v = grad L``,
  cheaper (it shares the forward pass with the caller's gradient), and exact
  under data parallelism, where ``v`` is the averaged gradient.
  """
  if mode == "jvp":
    tangent = [x.astype(p.dtype) for p, x in zip(params, v)]
    (loss, _), (_, hv) = jax.jvp(value_and_grad, (params,), (tangent,))
    return hv, loss
  fixed = jax.lax.stop_gradient(v)

  def inner(p):
    loss, grad = value_and_grad(p)
    return tree_vdot(grad, fixed), loss

  return jax.grad(inner, has_aux=True)(params)
