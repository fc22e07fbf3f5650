"""Arithmetic on gradient trees shared by the core and the analysis tools."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def wide(x: Array) -> Array:
  """``x`` in float32, or in its own dtype where that is wider (float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def wide_dtype(tree: Any) -> Any:
  """The dtype :func:`wide` gives the widest leaf of ``tree``."""
  return jnp.result_type(jnp.float32, *(
      jnp.promote_types(jnp.result_type(x), jnp.float32)
      for x in jax.tree.leaves(tree)))


def global_norm(tree: Any, *, one_pass: bool = False) -> Array:
  """Global L2 norm, in float32 or wider, safe from overflow and underflow.

  The plain ``sqrt(sum(x ** 2))`` overflows in float32 for entries beyond
  about ``1e19`` and loses everything to underflow when all entries are
  below about ``1e-19``. Here the sum of squares is also taken of the entries
  scaled by a large and by a small power of two (exact), and a scaled sum is
  used where the plain one is not a normal number, so that the result stays
  accurate for float32 entries from ``1e-38`` to ``1e38``. A NaN or infinite
  entry gives a NaN or infinite norm. Sums of squares rather than ``vdot``
  add no dot operation to the compiled program.

  How the sums are taken depends on the platform, as its compiler makes them
  fast: on GPUs and TPUs (and with ``one_pass=True``) one variadic reduction
  per leaf takes all three in a single pass, with no conditional for the
  device to wait on; XLA's CPU backend runs variadic reductions about ten
  times slower than a plain sum, so there the scaled sums are taken, under
  ``lax.cond``, only when the plain one is not a normal number.

  Example:
    >>> import jax.numpy as jnp
    >>> from gradreg_optax import _numerics
    >>> _numerics.global_norm({"a": jnp.array([3e30, 4e30])})
    Array(5.e+30, dtype=float32)
  """
  leaves = [wide(x) for x in jax.tree.leaves(tree)]
  dtype = wide_dtype(leaves)
  if not leaves:
    return jnp.zeros([], dtype)
  leaves = [x.astype(dtype) for x in leaves]
  if one_pass:
    return _norm_one_pass(leaves)
  return jax.lax.platform_dependent(leaves, cpu=_norm_plain_first,
                                    default=_norm_one_pass)


def _norm_scales(dtype: Any) -> tuple[int, int, int]:
  """``(threshold, small, large)``: below ``2**threshold`` the plain sum of
  squares may have lost its small entries; ``2**small`` brings them to
  normal numbers and ``2**-large`` keeps the largest (up to ``2**34`` entries)
  from overflowing."""
  info = jnp.finfo(dtype)
  threshold = info.minexp // 2 + 3
  return (threshold, (info.maxexp - 34 - threshold) // 2,
          (info.maxexp + 35) // 2)


def _norm_from_sums(plain: Array, scaled_up: Array, scaled_down: Array
                    ) -> Array:
  threshold, small, large = _norm_scales(plain.dtype)
  return jnp.where(
      jnp.isfinite(plain) & (plain >= 2.0 ** threshold), jnp.sqrt(plain),
      jnp.where(plain < 2.0 ** threshold,
                jnp.sqrt(scaled_up) * 2.0 ** -small,
                jnp.sqrt(scaled_down) * 2.0 ** large))


def _norm_one_pass(leaves: list[Array]) -> Array:
  dtype = leaves[0].dtype
  _, small, large = _norm_scales(dtype)
  # Behind a barrier, so that XLA cannot rewrite (x c)^2 as x^2 c^2, whose
  # c^2 overflows or underflows.
  scales = (1.0,) + tuple(jax.lax.optimization_barrier(
      (jnp.asarray(2.0 ** small, dtype), jnp.asarray(2.0 ** -large, dtype))))
  zero = jnp.zeros([], dtype)

  def sums(x):
    return jax.lax.reduce(
        tuple(jnp.square(x * c) for c in scales), (zero,) * 3,
        lambda a, b: tuple(u + v for u, v in zip(a, b)), tuple(range(x.ndim)))

  return _norm_from_sums(*(functools.reduce(jnp.add, parts)
                           for parts in zip(*map(sums, leaves))))


def _norm_plain_first(leaves: list[Array]) -> Array:
  plain = functools.reduce(jnp.add, [jnp.sum(jnp.square(x)) for x in leaves])
  threshold, _, _ = _norm_scales(plain.dtype)
  normal = jnp.isfinite(plain) & (plain >= 2.0 ** threshold)
  return jax.lax.cond(normal, lambda _: jnp.sqrt(plain), _norm_one_pass,
                      leaves)


def unit_scale(norm: Array) -> Array:
  """The power of two ``s`` that brings a finite nonzero ``norm`` into
  ``[0.5, 1)`` (1 for zero and non-finite norms): ``x * s`` is exact."""
  _, exponent = jnp.frexp(norm)
  limit = -jnp.finfo(norm.dtype).minexp
  exponent = jnp.where(jnp.isfinite(norm), jnp.clip(exponent, -limit, limit),
                       0)
  return jnp.ldexp(jnp.ones([], norm.dtype), -exponent)


def tree_sum(tree: Any) -> Array:
  """Sum of every entry of ``tree``, in float32 or wider."""
  return sum((jnp.sum(wide(x)) for x in jax.tree.leaves(tree)),
             jnp.zeros([], wide_dtype(tree)))


def tree_vdot(a: Any, b: Any) -> Array:
  """``<a, b>`` as elementwise products and sums (no dot in the program)."""
  return tree_sum(jax.tree.map(lambda x, y: wide(x) * wide(y), a, b))


def sum_of_squares(tree: Any) -> Array:
  """``sum(x ** 2)`` over every entry, in float32 or wider; differentiable.

  For a penalty that is differentiated (``igr_modified_loss``); a norm to be
  read is :func:`global_norm`.
  """
  return sum((jnp.sum(jnp.square(wide(x))) for x in jax.tree.leaves(tree)),
             jnp.zeros([], wide_dtype(tree)))
