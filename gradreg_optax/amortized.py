"""Amortization: recompute a method's correction only every ``k`` steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradreg_optax import _checks
from gradreg_optax._numerics import global_norm, wide
from gradreg_optax._transform import ADVANCE_ONLY, RegularizerState, find_one

REUSE_MODES = ("correction", "scaled")
_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


class AmortizedState(NamedTuple):
  """State of :func:`amortized`.

  Attributes:
    count: number of ``update`` calls so far.
    stale: true where ``correction`` cannot be reused: before the first
      recomputation, and after one that was not finite.
    correction: the last correction ``u - g`` in float32 or wider (with
      ``reuse="scaled"``, per unit of gradient norm).
    inner_state: the state of the wrapped transformation.
  """

  count: jax.Array
  stale: jax.Array
  correction: optax.Updates
  inner_state: optax.OptState


def amortized(tx: optax.GradientTransformation, every_k: int, *,
              reuse: str = "correction"
              ) -> optax.GradientTransformationExtraArgs:
  r"""Recomputes ``tx``'s correction every ``every_k`` steps, reuses it between.

  For a transformation ``tx`` of this package, which maps the gradient ``g``
  to ``u = g + c``, steps ``0, k, 2k, ...`` run ``tx`` and store
  ``c = u - g``; the steps in between return ``g + c`` (``reuse=
  "correction"``) or ``g + ||g|| c / ||g_last||`` (``reuse="scaled"``, the
  reuse of LookSAM, Liu et al., CVPR 2022) without evaluating anything, so a
  step costs ``1 + (extra gradients) / k`` gradients on average. The wrapped
  transformation still advances on every step: its hyperparameter schedules
  follow the global step count, and its metrics are updated: the loss where
  ``value=`` gives it, the rest (displaced loss, sharpness, ``||g||``,
  penalty) kept from the last recomputation, so that a reusing step adds
  nothing to plain SGD's work.

  A recomputed correction that is not finite is returned (so that
  ``optax.apply_if_finite`` skips that step) but not kept: the next step
  recomputes.

  By default the device chooses between recomputing and reusing, with
  ``lax.cond`` (the choice for a loop that runs entirely under ``jit`` or
  ``scan``). From a Python loop, choose on the host instead: pass
  ``recompute=<Python bool>`` to ``update`` in a step jitted with
  ``static_argnames``, e.g. ``recompute=step % k == 0 or
  gro.needs_recompute(opt_state)``; each of the two compiled programs then
  holds no conditional. (A reusing step that finds no usable correction
  returns NaN, for ``apply_if_finite`` to skip, rather than the plain
  gradient.) A boolean array for ``recompute`` replaces the step-count rule
  on the device.

  Args:
    tx: a transformation of this package (``gradient_regularization``,
      ``sam``, ``gradient_norm_penalty``, ``perturbed_gradient``), possibly
      inside ``optax.inject_hyperparams``.
    every_k: recompute every ``every_k`` steps (``1``: every step).
    reuse: ``"correction"`` or ``"scaled"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; chain the optimizer after
    it.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.amortized(gro.sam(loss_fn, rho=0.05), every_k=4),
    ...                  optax.sgd(0.1))
    >>> state = tx.init(params)
    >>> for step in range(8):
    ...   grads = jax.grad(loss_fn)(params, batch)
    ...   updates, state = tx.update(grads, state, params, batch=batch)
    ...   params = optax.apply_updates(params, updates)
  """
  where = "gradreg_optax.amortized"
  if not (callable(getattr(tx, "init", None))
          and callable(getattr(tx, "update", None))):
    raise TypeError(f"{where}: `tx` must be a gradient transformation of "
                    f"gradreg_optax, got {tx!r}.")
  _checks.int_arg(where, "every_k", every_k, minimum=1)
  _checks.choice_arg(where, "reuse", reuse, REUSE_MODES)
  scaled = reuse == "scaled"

  def init_fn(params: optax.Params) -> AmortizedState:
    inner = tx.init(params)
    _check_inner(where, inner)
    return AmortizedState(
        count=jnp.zeros([], jnp.int32), stale=jnp.ones([], bool),
        correction=jax.tree.map(lambda p: jnp.zeros_like(wide(p)), params),
        inner_state=inner)

  def update_fn(updates: optax.Updates, state: AmortizedState,
                params: optax.Params | None = None, *, recompute: Any = None,
                **extra_args: Any
                ) -> tuple[optax.Updates, AmortizedState]:
    advance = {**extra_args, ADVANCE_ONLY: True}

    def fresh():
      u, inner = tx.update(updates, state.inner_state, params, **extra_args)
      plain, _ = tx.update(updates, state.inner_state, params, **advance)
      c = jax.tree.map(lambda a, b: wide(a) - wide(b), u, plain)
      if scaled:
        norm = global_norm(plain)
        c = jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), c)
      finite = jnp.all(jnp.stack(
          [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(c)] or
          [jnp.array(True)]))
      kept = jax.tree.map(lambda x: jnp.where(finite, x, 0.0), c)
      return u, inner, kept, jnp.logical_not(finite)

    def reuse_last(guard=False):
      plain, inner = tx.update(updates, state.inner_state, params, **advance)
      c = state.correction
      if scaled:
        norm = global_norm(plain)
        c = jax.tree.map(lambda x: x * norm, c)
      u = jax.tree.map(lambda p, x: (wide(p) + x).astype(p.dtype), plain, c)
      if guard:  # chosen on the host with nothing usable stored
        u = jax.tree.map(lambda x: jnp.where(state.stale, jnp.nan, x), u)
      return u, inner, state.correction, state.stale

    if isinstance(recompute, (bool, np.bool_)):
      out = fresh() if recompute else reuse_last(guard=True)
    else:
      if recompute is None:
        due = state.count % every_k == 0
      elif (jnp.shape(recompute) == ()
            and jnp.result_type(recompute) == jnp.bool_):
        due = recompute
      else:
        raise TypeError(f"{where}: `recompute` must be a bool (chosen on the "
                        "host) or a boolean scalar array, got "
                        f"{recompute!r}.")
      out = jax.lax.cond(jnp.logical_or(due, state.stale), fresh, reuse_last)
    u, inner, correction, stale = out
    return u, AmortizedState(optax.safe_increment(state.count), stale,
                             correction, inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def needs_recompute(opt_state: optax.OptState) -> bool:
  """Whether an :func:`amortized` state holds no usable correction.

  True before the first recomputation and after one that was not finite.
  For the host-side choice: ``recompute=step % k == 0 or
  gro.needs_recompute(opt_state)``.

  Args:
    opt_state: the state of an optimizer that contains one ``amortized``
      transformation (anywhere in a chain).

  Returns:
    A Python bool.

  Example:
    >>> import jax.numpy as jnp
    >>> import gradreg_optax as gro
    >>> tx = gro.amortized(gro.sam(lambda p, b: jnp.sum(p ** 2)), every_k=2)
    >>> gro.needs_recompute(tx.init(jnp.ones(2)))
    True
  """
  state = find_one("gradreg_optax.needs_recompute", opt_state, AmortizedState,
                   "gradreg_optax.amortized state")
  return bool(state.stale)


def _check_inner(where: str, state: Any) -> None:
  """Accepts the states of this package's transformations only.

  Wrapping anything else (an optimizer, a chain with one) would store its
  output minus the gradient as a "correction" and silently add it later.
  """
  found = []

  def walk(s):
    if isinstance(s, RegularizerState):
      found.append(s)
    elif isinstance(s, _INJECTED):
      walk(s.inner_state)
    elif isinstance(s, (tuple, list)) and not hasattr(s, "_fields"):
      for x in s:
        walk(x)
    else:
      raise TypeError(
          f"{where}: `tx` must be a transformation of gradreg_optax (e.g. "
          "gro.sam(...)), possibly inside optax.inject_hyperparams; its "
          f"state holds a {type(s).__name__}. Chain the optimizer after the "
          "wrapper: optax.chain(gro.amortized(gro.sam(...), k), "
          "optax.sgd(...)).")

  walk(state)
  if len(found) != 1:
    raise TypeError(f"{where}: `tx` must hold exactly one transformation of "
                    f"gradreg_optax, found {len(found)}.")
