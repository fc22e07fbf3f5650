"""Amortization: recompute a method's correction only every ``k`` steps."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.experimental import checkify

from gradreg_optax import _checks
from gradreg_optax._numerics import global_norm, wide
from gradreg_optax._step import Hyperparameter
from gradreg_optax._transform import ADVANCE_ONLY, RegularizerState, find_one

REUSE_MODES = ("correction", "scaled", "orthogonal")
_INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
# LookSAM's default weight of the stored orthogonal direction (Liu et al.).
_LOOKSAM_ALPHA = Hyperparameter(0.7, "[0, inf)", "LookSAM's weight of the "
                                "stored direction")


class AmortizedState(NamedTuple):
  """State of :func:`amortized`.

  Attributes:
    count: number of ``update`` calls so far.
    every_k: the period ``k`` (read by :func:`amortized_step` on the host).
    stale: true where ``correction`` cannot be reused: before the first
      recomputation, and after one that was not finite.
    correction: what is reused, in float32 or wider: the last correction
      ``u - g`` (``reuse="correction"``), that per unit of ``||g||``
      (``"scaled"``), or the unit vector along ``g_v`` (``"orthogonal"``).
    inner_state: the state of the wrapped transformation.
  """

  count: jax.Array
  every_k: jax.Array
  stale: jax.Array
  correction: optax.Updates
  inner_state: optax.OptState


def amortized(tx: optax.GradientTransformation, every_k: int, *,
              reuse: str = "correction", alpha: Any = None
              ) -> optax.GradientTransformationExtraArgs:
  r"""Recomputes ``tx``'s correction every ``every_k`` steps, reuses it between.

  For a transformation ``tx`` of this package, which maps the gradient ``g``
  to ``u``, steps ``0, k, 2k, ...`` run ``tx``, return ``u`` and store what
  the steps in between reuse without evaluating anything, so that a step
  costs ``1 + (extra gradients) / k`` gradients on average:

  * ``reuse="correction"``: store ``c = u - g``, return ``g + c``;
  * ``reuse="scaled"``: store ``c / ||g||``, return ``g + ||g|| c / ||g_0||``
    (``g_0`` the gradient of the last recomputation);
  * ``reuse="orthogonal"``: LookSAM (Liu et al., "Towards Efficient and
    Scalable Sharpness-Aware Minimization", CVPR 2022), for ``tx`` a SAM:
    with ``g_s = u`` the SAM gradient, store the part of it orthogonal to
    ``g``, ``g_v = g_s - (<g_s, g> / ||g||^2) g``, and return
    ``g + alpha ||g|| g_v / ||g_v||``. Where ``g = 0`` nothing is projected
    out (``g_v = g_s``); where ``g_v = 0`` (``g_s`` along ``g``) the
    direction is taken as 0 and the reusing steps return ``g``. The
    projection and the norms run over all parameters.

  The wrapped transformation still advances on every step: its
  hyperparameter schedules follow the global step count, and its metrics are
  updated: the loss where ``value=`` gives it, the rest (displaced loss,
  sharpness, ``||g||``, penalty) kept from the last recomputation, so that a
  reusing step adds nothing to plain SGD's work.

  A recomputed ``u`` that is not finite is returned (so that
  ``optax.apply_if_finite`` skips that step) but not kept: the next step
  recomputes.

  **Where the choice is made.** ``update(..., recompute=<Python bool>)``
  chooses while tracing: the step, jitted with ``static_argnames=
  "recompute"``, compiles to two programs without a conditional, and a
  period costs what its arithmetic says. :func:`amortized_step` does this
  for a step function run from Python (with ``jax.jit`` or ``nnx.jit``),
  :func:`amortized_scan` for a loop under ``lax.scan``; they are the
  patterns to use. Without ``recompute`` (or with a boolean array) the
  device chooses, with ``lax.cond``, at a cost above the arithmetic: XLA
  keeps buffers of both branches (1.5x to 1.7x the temporary memory of the
  recomputing program on an MLP), and XLA's CPU backend leaves the backward
  convolutions inside a conditional in dimension layouts that it runs with a
  slow generic kernel instead of its library convolutions
  (jax-ml/jax#12868; ``benchmarks/amortized_cost.py``). A reusing step
  chosen while tracing that finds no usable correction returns NaN, for
  ``apply_if_finite`` to skip, rather than the plain gradient.

  Args:
    tx: a transformation of this package (``gradient_regularization``,
      ``sam``, ``gradient_norm_penalty``, ``perturbed_gradient``), possibly
      inside ``optax.inject_hyperparams``.
    every_k: recompute every ``every_k`` steps (``1``: every step).
    reuse: ``"correction"``, ``"scaled"`` or ``"orthogonal"``.
    alpha: with ``reuse="orthogonal"``, the weight of the stored direction
      (``>= 0``, a number or a schedule of the step count; default 0.7, the
      paper's). Only for that mode.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; chain the optimizer after
    it. Its ``update`` takes ``recompute``: a Python bool, a boolean scalar
    array or ``None``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.amortized(gro.sam(loss_fn, rho=0.05), every_k=4,
    ...                                reuse="orthogonal", alpha=0.7),
    ...                  optax.sgd(0.1))
    >>> @gro.amortized_step
    ... def train_step(params, opt_state, batch, recompute):
    ...   grads = jax.grad(loss_fn)(params, batch)
    ...   updates, opt_state = tx.update(grads, opt_state, params, batch=batch,
    ...                                  recompute=recompute)
    ...   return optax.apply_updates(params, updates), opt_state
    >>> opt_state = tx.init(params)
    >>> for step in range(8):
    ...   params, opt_state = train_step(params, opt_state, batch)
  """
  where = "gradreg_optax.amortized"
  if not (callable(getattr(tx, "init", None))
          and callable(getattr(tx, "update", None))):
    raise TypeError(f"{where}: `tx` must be a gradient transformation of "
                    f"gradreg_optax, got {tx!r}.")
  _checks.int_arg(where, "every_k", every_k, minimum=1)
  _checks.choice_arg(where, "reuse", reuse, REUSE_MODES)
  if reuse == "orthogonal":
    alpha = _checks.hyperparameter(
        where, "alpha", _LOOKSAM_ALPHA.default if alpha is None else alpha,
        _LOOKSAM_ALPHA)
  elif alpha is not None:
    raise ValueError(f"{where}: `alpha` is the weight of reuse="
                     f"\"orthogonal\" (LookSAM); with reuse={reuse!r} leave "
                     "it out.")

  def init_fn(params: optax.Params) -> AmortizedState:
    inner = tx.init(params)
    _check_inner(where, inner)
    return AmortizedState(
        count=jnp.zeros([], jnp.int32),
        every_k=jnp.full([], every_k, jnp.int32), stale=jnp.ones([], bool),
        correction=jax.tree.map(lambda p: jnp.zeros_like(wide(p)), params),
        inner_state=_distinct_buffers(inner))

  def stored(u, plain, norm):
    """What a reusing step needs of a recomputed ``u``."""
    c = jax.tree.map(lambda a, b: wide(a) - wide(b), u, plain)
    if reuse == "correction":
      return c
    inverse = jnp.where(norm > 0, 1 / norm, 0.0)
    if reuse == "scaled":
      return jax.tree.map(lambda x: x * jnp.where(norm > 0, inverse, 1.0), c)
    # g_v = g_s - proj_g(g_s) = c - <c, e> e with e = g / ||g||, since
    # proj_g(g) = g; taken through the unit vector e, so that nothing is
    # squared.
    e = jax.tree.map(lambda x: wide(x) * inverse, plain)
    along = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(c),
                                                jax.tree.leaves(e)))
    g_v = jax.tree.map(lambda x, y: x - along * y, c, e)
    g_v_norm = global_norm(g_v)
    return jax.tree.map(
        lambda x: x * jnp.where(g_v_norm > 0, 1 / g_v_norm, 0.0), g_v)

  def reused(plain, correction, norm, count):
    if reuse == "scaled":
      correction = jax.tree.map(lambda x: x * norm, correction)
    elif reuse == "orthogonal":
      a = alpha(count) if callable(alpha) else alpha
      if not isinstance(a, (int, float)):  # a schedule's value at run time
        valid = _LOOKSAM_ALPHA.contains(a)
        checkify.debug_check(valid, f"{where}: `alpha` must be "
                             f"{_LOOKSAM_ALPHA.describe()} at every step, "
                             "got {a}; the step's output is NaN.", a=a)
        a = jnp.where(valid, a, jnp.nan)
      correction = jax.tree.map(lambda x: x * (a * norm), correction)
    return jax.tree.map(lambda p, x: (wide(p) + x).astype(p.dtype), plain,
                        correction)

  def update_fn(updates: optax.Updates, state: AmortizedState,
                params: optax.Params | None = None, *, recompute: Any = None,
                **extra_args: Any
                ) -> tuple[optax.Updates, AmortizedState]:
    due = _check_recompute(where, recompute)
    advance = {**extra_args, ADVANCE_ONLY: True}
    # Outside the conditional: the plain step (it advances the inner state)
    # and what both branches and the stored correction read.
    plain, advanced = tx.update(updates, state.inner_state, params, **advance)
    norm = None if reuse == "correction" else global_norm(plain)

    def fresh(_):
      u, inner = tx.update(updates, state.inner_state, params, **extra_args)
      return u, inner, _all_finite(u)

    def reuse_last(_):
      u = reused(plain, state.correction, norm, state.count)
      return u, advanced, jnp.ones([], bool)

    if due is None:
      due = True if every_k == 1 else state.count % every_k == 0
    if isinstance(due, bool):
      u, inner, finite = fresh(None) if due else reuse_last(None)
      if not due:  # chosen on the host with nothing usable stored
        u = jax.tree.map(lambda x: jnp.where(state.stale, jnp.nan, x), u)
    else:
      due = jnp.logical_or(due, state.stale)
      # Only the work that differs is in the branches; the new correction is
      # selected outside, in place of the old one.
      u, inner, finite = jax.lax.cond(due, fresh, reuse_last, None)
    if due is False:
      correction, stale = state.correction, state.stale
    elif due is True:
      new = stored(u, plain, norm)
      finite = _all_finite(new)
      correction = jax.tree.map(lambda x: jnp.where(finite, x, 0.0), new)
      stale = jnp.logical_not(finite)
    else:
      keep = jnp.logical_and(due, finite)
      correction = jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                                stored(u, plain, norm), state.correction)
      stale = jnp.where(due, jnp.logical_not(finite), state.stale)
    return u, AmortizedState(optax.safe_increment(state.count),
                             state.every_k, stale, correction, inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_recompute(where: str, recompute: Any) -> Any:
  """``recompute`` as a Python bool, a boolean scalar array, or ``None``."""
  if recompute is None or isinstance(recompute, bool):
    return recompute
  if isinstance(recompute, np.bool_):
    return bool(recompute)
  if (isinstance(recompute, (jax.Array, np.ndarray))
      and recompute.shape == () and recompute.dtype == np.bool_):
    return recompute
  raise TypeError(
      f"{where}: the `recompute` argument of `update` must be a Python bool "
      "(the choice made on the host, in a step jitted with static_argnames="
      "\"recompute\"; gradreg_optax.amortized_step does this), a boolean "
      "scalar array (the choice made on the device), or None (every "
      f"`every_k` steps, on the device); got {recompute!r}.")


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]
                           or [jnp.ones([], bool)]))


def _distinct_buffers(tree: Any) -> Any:
  """``tree`` with no array in two places, so that the state can be donated
  (``jax.jit(..., donate_argnums=...)`` refuses one buffer donated twice)."""
  seen = set()

  def distinct(x):
    if id(x) in seen:
      return jnp.array(x, copy=True)
    seen.add(id(x))
    return x

  return jax.tree.map(distinct, tree)


def needs_recompute(opt_state: optax.OptState) -> bool:
  """Whether an :func:`amortized` state holds no usable correction.

  True before the first recomputation and after one that was not finite.
  For the host-side choice: ``recompute=step % k == 0 or
  gro.needs_recompute(opt_state)`` (which :func:`amortized_step` makes for
  you).

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
  return bool(_value(state.stale))


def amortized_step(step: Callable[..., Any], *,
                   jit: Callable[..., Any] = jax.jit, **jit_kwargs: Any
                   ) -> Callable[..., Any]:
  """Compiles an amortized training step twice and chooses on the host.

  ``step(*args, recompute)`` is a training step that passes ``recompute`` on
  to the ``update`` of an optimizer holding one :func:`amortized`. The
  returned function takes the same arguments without ``recompute``, finds
  the ``amortized`` state among them (an optimizer state, a
  ``TrainState``, an ``nnx.Optimizer``) and runs the program that recomputes
  on steps ``0, k, 2k, ...`` and after a step whose correction was not
  finite, the reusing program otherwise: ``jit(step, static_argnames=
  "recompute", **jit_kwargs)`` with ``recompute`` a Python bool, so that
  neither program holds a conditional. The step count is followed on the
  host, and the device is asked about a correction only after a recomputing
  step (once per period) or for a state this function did not return (a
  restored checkpoint, say), so that steps are dispatched without waiting.

  Use it for every loop that runs in Python; for a loop under
  ``lax.scan``, :func:`amortized_scan`.

  Args:
    step: the training step; ``recompute`` is passed as a keyword argument.
    jit: ``jax.jit`` or ``flax.nnx.jit``.
    **jit_kwargs: for ``jit``, e.g. ``donate_argnums=(0, 1)``.

  Returns:
    The step, which returns what ``step`` returns. Its attribute ``jitted``
    is the compiled step, e.g. for ``jitted.lower(*args,
    recompute=True)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> tx = optax.chain(gro.amortized(gro.sam(loss_fn, rho=0.05), 4),
    ...                  optax.sgd(0.1))
    >>> def train_step(params, opt_state, batch, recompute):
    ...   loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    ...   updates, opt_state = tx.update(grads, opt_state, params, batch=batch,
    ...                                  value=loss, recompute=recompute)
    ...   return optax.apply_updates(params, updates), opt_state, loss
    >>> train_step = gro.amortized_step(train_step, donate_argnums=(0, 1))
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> opt_state = tx.init(params)
    >>> for _ in range(8):
    ...   params, opt_state, loss = train_step(params, opt_state, batch)
  """
  where = "gradreg_optax.amortized_step"
  _checks.callable_arg(where, "step", step, "step(*args, recompute)")
  _checks.callable_arg(where, "jit", jit, "jit(fn, **kwargs)")
  jitted = jit(step, static_argnames="recompute", **jit_kwargs)
  # The step count this function returned (the array itself, to recognise
  # it), the count it holds, the period, and whether the correction is
  # stale (None: not known on the host).
  last = dict(count=None, n=0, k=1, stale=None)

  def run(*args: Any, **kwargs: Any) -> Any:
    if "recompute" in kwargs:
      raise TypeError(f"{where}: the step chooses `recompute` itself; call "
                      "it without.")
    state = _find_state(where, (args, kwargs))
    if state is None:
      raise ValueError(
          f"{where}: found no gradreg_optax.amortized state among the "
          "arguments of the step; pass the optimizer state (or the "
          "nnx.Optimizer) of an optimizer that holds one amortized "
          "transformation.")
    count = _value(state.count)
    if last["count"] is not count:  # a state this function did not return
      last.update(n=int(count), k=int(_value(state.every_k)), stale=None)
    if last["stale"] is None:
      last["stale"] = bool(_value(state.stale))
    recompute = last["n"] % last["k"] == 0 or last["stale"]
    out = jitted(*args, recompute=recompute, **kwargs)
    # A functional step returns the new state; an NNX step updates the
    # optimizer it was given.
    new = _find_state(where, out) or _find_state(where, (args, kwargs))
    last.update(count=_value(new.count), n=last["n"] + 1,
                stale=None if recompute else False)
    return out

  run.jitted = jitted
  return run


def amortized_scan(step: Callable[..., tuple[Any, Any]], init: Any,
                   xs: Any = None, *, every_k: int, length: int | None = None
                   ) -> tuple[Any, Any]:
  """``jax.lax.scan`` over an amortized training step, with no conditional.

  ``step(carry, x, recompute)`` passes ``recompute`` on to the ``update`` of
  an optimizer holding one :func:`amortized` with period ``every_k``. The
  scan runs in periods of ``every_k`` steps: the first step of a period with
  ``recompute=True``, then a loop over the others with
  ``recompute=False``; a length that is not a multiple of ``every_k`` ends
  with one shorter period. ``recompute`` is a Python bool in both bodies, so
  the loop, like :func:`amortized_step`, holds the two programs and no
  ``lax.cond``, and costs what its arithmetic says. The periods start at the
  scan's first step: start it at a step count that is a multiple of
  ``every_k`` (scan a multiple of ``every_k`` steps at a time) for the
  recomputations to fall where ``update`` without ``recompute`` would put
  them. Where a recomputation is not finite, the rest of its period returns
  NaN (for ``optax.apply_if_finite`` to skip) and the next period recomputes.

  Args:
    step: ``step(carry, x, recompute) -> (carry, y)``; ``recompute`` is
      passed as a keyword argument.
    init: the initial carry, as for ``lax.scan``.
    xs: what is scanned over (leading axis: the steps), or ``None`` with
      ``length``.
    every_k: the period of the :func:`amortized` transformation in the step.
    length: the number of steps, where ``xs`` is ``None``.

  Returns:
    ``(carry, ys)`` as ``lax.scan(step, init, xs)`` returns them.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> tx = optax.chain(gro.amortized(gro.sam(loss_fn, rho=0.05), 4),
    ...                  optax.sgd(0.1))
    >>> def scan_step(carry, batch, recompute):
    ...   params, opt_state = carry
    ...   loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    ...   updates, opt_state = tx.update(grads, opt_state, params, batch=batch,
    ...                                  recompute=recompute)
    ...   return (optax.apply_updates(params, updates), opt_state), loss
    >>> params = jnp.array([1.0, -2.0])
    >>> batches = jnp.tile(jnp.array([1.0, 3.0]), (8, 1))
    >>> (params, opt_state), losses = jax.jit(
    ...     lambda c, xs: gro.amortized_scan(scan_step, c, xs, every_k=4))(
    ...         (params, tx.init(params)), batches)
    >>> losses.shape
    (8,)
  """
  where = "gradreg_optax.amortized_scan"
  _checks.callable_arg(where, "step", step, "step(carry, x, recompute)")
  _checks.int_arg(where, "every_k", every_k, minimum=1)
  leaves = jax.tree.leaves(xs)
  if leaves:
    n = leaves[0].shape[0] if np.ndim(leaves[0]) else None
    if n is None or any(np.ndim(x) == 0 or x.shape[0] != n for x in leaves):
      raise ValueError(f"{where}: every array in `xs` must have the same "
                       "leading axis (the steps); got shapes "
                       f"{[np.shape(x) for x in leaves]}.")
    if length is not None and length != n:
      raise ValueError(f"{where}: `length` ({length}) differs from the "
                       f"leading axis of `xs` ({n}).")
  elif length is None:
    raise ValueError(f"{where}: give `xs` or `length`.")
  else:
    _checks.int_arg(where, "length", length, minimum=0)
    n = length
  if n == 0:
    raise ValueError(f"{where}: nothing to scan (length 0).")
  state = _find_state(where, init)
  if state is None:
    raise ValueError(f"{where}: found no gradreg_optax.amortized state in "
                     "`init`; the carry must hold the optimizer state of an "
                     "optimizer with one amortized transformation.")
  k = state.every_k
  if not isinstance(_value(k), jax.core.Tracer) and int(_value(k)) != every_k:
    raise ValueError(f"{where}: `every_k` is {every_k} but the amortized "
                     f"state in `init` has period {int(_value(k))}.")

  # Every step runs inside a loop, its carry updated in place: two steps in
  # sequence outside one would hold the state between them as temporaries.
  # So the reusing steps of a period run in a loop whose length is not known
  # to the compiler (which would unroll one of length 1), the steps read
  # their slice of ``xs`` by index (nothing of ``xs`` is copied) and write
  # their outputs into ``ys`` in place.
  at = lambda i: jax.tree.map(
      lambda v: jax.lax.dynamic_index_in_dim(v, i, keepdims=False), xs)
  y_shapes = jax.eval_shape(lambda c, x: step(c, x, recompute=True)[1], init,
                            at(0))
  ys = jax.tree.map(lambda y: jnp.zeros((n, *y.shape), y.dtype), y_shapes)

  def one(i, carry_ys, recompute):
    carry, ys = carry_ys
    carry, y = step(carry, at(i), recompute=recompute)
    return carry, jax.tree.map(
        lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, i, 0), ys, y)

  def period(p, carry_ys):
    first = p * every_k
    carry_ys = one(first, carry_ys, True)
    return jax.lax.fori_loop(first + 1, jnp.minimum(first + every_k, n),
                             lambda i, c: one(i, c, False), carry_ys)

  return jax.lax.fori_loop(0, -(-n // every_k), period, (init, ys))


def _value(x: Any) -> Any:
  """The array of a state leaf (an ``nnx.Optimizer`` wraps each in a
  variable)."""
  return x.get_value() if hasattr(x, "get_value") else x


def _find_state(where: str, tree: Any) -> AmortizedState | None:
  is_state = lambda x: isinstance(x, AmortizedState)
  found = [s for s in jax.tree.leaves(tree, is_leaf=is_state) if is_state(s)]
  if len(found) > 1:
    raise ValueError(f"{where}: the step's arguments hold {len(found)} "
                     "gradreg_optax.amortized states; it needs exactly one.")
  return found[0] if found else None


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
