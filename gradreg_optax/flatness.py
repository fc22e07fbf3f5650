r"""Flatness measures of a loss at given parameters.

All take ``loss_fn(params, batch) -> scalar`` and a parameter pytree, use only
gradients and Hessian-vector products (forward over reverse), and are
``jit``-compatible (keys and iteration counts are the only extra inputs).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from gradreg_optax import _core
from gradreg_optax._numerics import global_norm

LossFn = Callable[..., jax.Array]


def _hvp_flat(loss_fn: LossFn, params: Any, batch: Any):
  flat, unravel = ravel_pytree(params)

  def product(v):
    return ravel_pytree(hvp(loss_fn, params, batch,
                            unravel(v.astype(flat.dtype))))[0]

  return flat, product


def hvp(loss_fn: LossFn, params: Any, batch: Any, v: Any) -> Any:
  r"""Hessian-vector product ``H v`` (forward over reverse).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: where the Hessian is taken.
    batch: the data passed to ``loss_fn``.
    v: a pytree with the structure of ``params``.

  Returns:
    ``H v``, with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> loss = lambda p, b: jnp.sum(b * p ** 2)  # H = diag(2 b)
    >>> flatness.hvp(loss, jnp.ones(2), jnp.array([1.0, 3.0]), jnp.ones(2))
    Array([2., 6.], dtype=float32)
  """
  leaves, treedef = jax.tree.flatten(params)
  value_and_grad = jax.value_and_grad(
      lambda x: loss_fn(treedef.unflatten(x), batch))
  hv, _ = _core.hessian_vector_product(
      value_and_grad, leaves, treedef.flatten_up_to(v), mode="jvp")
  return treedef.unflatten(hv)


def hessian_top_eigenvalue(loss_fn: LossFn, params: Any, batch: Any,
                           key: jax.Array, *, num_iters: int = 100
                           ) -> tuple[jax.Array, Any]:
  r"""Largest-magnitude Hessian eigenvalue by power iteration.

  .. math::

    v_{k+1} = H v_k / \|H v_k\|, \qquad \lambda = v^\top H v,

  from a random Gaussian ``v_0``. It converges to the eigenvalue of largest
  ``|lambda|`` at the rate ``|lambda_2 / lambda_1|^k``; near a minimum that
  is the sharpness ``lambda_max`` used by Keskar et al. (2017) and Foret et
  al. (SAM, 2021).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: where the Hessian is taken.
    batch: the data passed to ``loss_fn``.
    key: PRNG key for ``v_0``.
    num_iters: power iterations (one Hessian-vector product each).

  Returns:
    ``(lambda, v)``: the Rayleigh quotient and the unit eigenvector estimate
    (with the structure of ``params``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)  # H = diag(b)
    >>> lam, _ = flatness.hessian_top_eigenvalue(
    ...     loss, jnp.zeros(3), jnp.array([1.0, 4.0, 2.0]), jax.random.key(0))
    >>> round(float(lam), 4)
    4.0
  """
  flat, hv = _hvp_flat(loss_fn, params, batch)
  _, unravel = ravel_pytree(params)
  v0 = jax.random.normal(key, flat.shape, flat.dtype)
  v0 = v0 / jnp.linalg.norm(v0)

  def body(_, v):
    w = hv(v)
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)

  v = jax.lax.fori_loop(0, num_iters, body, v0)
  return jnp.vdot(v, hv(v)), unravel(v)


def hessian_trace(loss_fn: LossFn, params: Any, batch: Any, key: jax.Array,
                  *, num_samples: int = 100) -> jax.Array:
  r"""Hutchinson's estimate of the Hessian trace.

  .. math::

    \operatorname{tr} H \approx \frac{1}{S}\sum_{s=1}^S z_s^\top H z_s,
    \qquad z_s \sim \text{Rademacher},

  unbiased with variance ``2 (||H||_F^2 - sum_i H_ii^2) / S`` (Hutchinson,
  1990).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: where the Hessian is taken.
    batch: the data passed to ``loss_fn``.
    key: PRNG key for the probes.
    num_samples: number of probes ``S`` (one Hessian-vector product each).

  Returns:
    The scalar estimate.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)  # diagonal: exact
    >>> float(flatness.hessian_trace(loss, jnp.zeros(3),
    ...                              jnp.array([1.0, 4.0, 2.0]),
    ...                              jax.random.key(0), num_samples=3))
    7.0
  """
  flat, hv = _hvp_flat(loss_fn, params, batch)

  def one(k):
    z = jax.random.rademacher(k, flat.shape, flat.dtype)
    return jnp.vdot(z, hv(z))

  return jnp.mean(jax.lax.map(one, jax.random.split(key, num_samples)))


def gradient_norm_sq(loss_fn: LossFn, params: Any, batch: Any) -> jax.Array:
  r"""``||grad L(theta)||^2``, the quantity gradient regularization penalizes.

  Karakida et al. (2023) penalize ``(gamma/2) ||grad L||^2``; Barrett &
  Dherin's ``R_IG`` is this divided by the number of parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> loss = lambda p, b: jnp.sum(b * p ** 2)  # gradient 2 b p
    >>> flatness.gradient_norm_sq(loss, jnp.ones(2), jnp.array([1.0, 2.0]))
    Array(20., dtype=float32)
  """
  return jnp.square(global_norm(jax.grad(loss_fn)(params, batch)))


def noise_sensitivity(loss_fn: LossFn, params: Any, batch: Any,
                      key: jax.Array, *, sigma: float = 0.01,
                      num_samples: int = 32, relative: bool = False
                      ) -> jax.Array:
  r"""Expected loss increase under Gaussian parameter noise.

  .. math::

    \mathbb{E}_{\xi \sim N(0, \sigma^2 I)}[L(\theta + \xi)] - L(\theta)
    \approx \frac{\sigma^2}{2} \operatorname{tr} H,

  estimated with ``num_samples`` draws (the average-case sharpness of
  Keskar et al., 2017, and of PAC-Bayes bounds, Dziugaite & Roy, 2017).
  With ``relative=True`` each parameter's noise is scaled by its magnitude,
  ``xi_i ~ N(0, sigma^2 theta_i^2)``, which removes the dependence on the
  parametrization's scale.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameters.
    batch: the data passed to ``loss_fn``.
    key: PRNG key.
    sigma: noise standard deviation (absolute, or relative).
    num_samples: number of noise draws.
    relative: scale the noise by ``|theta_i|``.

  Returns:
    The mean loss increase (a scalar).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> loss = lambda p, b: 0.5 * jnp.sum(b * p ** 2)
    >>> d = flatness.noise_sensitivity(loss, jnp.zeros(2), jnp.array([1., 3.]),
    ...                                jax.random.key(0), sigma=0.1,
    ...                                num_samples=4000)
    >>> abs(float(d) - 0.5 * 0.01 * 4.0) < 2e-3  # sigma^2 tr H / 2
    True
  """
  flat, unravel = ravel_pytree(params)
  base = loss_fn(params, batch)
  scale = jnp.abs(flat) if relative else jnp.ones_like(flat)

  def one(k):
    xi = sigma * scale * jax.random.normal(k, flat.shape, flat.dtype)
    return loss_fn(unravel(flat + xi), batch)

  losses = jax.lax.map(one, jax.random.split(key, num_samples))
  return jnp.mean(losses) - base


def num_params(params: Any) -> int:
  """Number of scalar parameters (``m`` in ``R_IG``).

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import flatness
    >>> flatness.num_params({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
    9
  """
  return int(optax.tree.size(params))
