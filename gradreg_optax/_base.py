"""Machinery shared by every gradient-regularization transformation.

Each public transformation is an ``init``/``update`` pair built by
:func:`regularizer`, which owns everything that is not the mathematics of one
method: argument checks, hyperparameter schedules, reading the loss from the
extra arguments, data-parallel averaging, the exact limits, and amortization.
A method only supplies a *correction* function that returns the term added to
the incoming gradient.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, Union

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Scalar = Union[float, int, Array]
ScalarOrSchedule = Union[Scalar, optax.Schedule]
LossFn = Callable[..., Any]
GradFn = Callable[[optax.Params], optax.Updates]

REUSE_MODES = ("correction", "scaled")


class RegularizerState(NamedTuple):
  """State of every transformation in this package.

  Attributes:
    count: number of ``update`` calls so far (drives schedules and
      amortization).
    correction: the last computed correction, kept only when the correction
      is amortized over ``every_k > 1`` steps (``None`` otherwise). With
      ``reuse="scaled"`` it is stored per unit of gradient norm.
  """

  count: Array
  correction: Any = None


class CorrectionFn(Protocol):
  """Computes the term added to the gradient ``g``.

  Args:
    grad_fn: gradient of the loss as a function of the parameters (the loss's
      auxiliary output already dropped).
    params: current parameters.
    g: the gradient the correction is built around, in float32 or wider.
    hyper: the hyperparameters evaluated at this step.

  Returns:
    ``(correction, trivial)``: the correction tree (same structure and wide
    dtype as ``g``), and a boolean scalar that is true where the
    hyperparameters make the method the plain gradient, so that the output is
    then exactly ``g``.
  """

  def __call__(self, grad_fn: GradFn, params: optax.Params, g: optax.Updates,
               hyper: dict[str, Array]) -> tuple[optax.Updates, Array]:
    ...


def wide(x: Array) -> Array:
  """``x`` in float32, or in its own dtype where that is wider (float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def tree_sq_norm(tree: Any) -> Array:
  """Squared global L2 norm, accumulated in float32 or wider.

  Written as sums of squares rather than ``vdot`` so that it adds no dot
  operation to the compiled program.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  return sum(jnp.sum(jnp.square(wide(x))) for x in leaves)


def check_callable(name: str, value: Any) -> None:
  if not callable(value):
    raise TypeError(f"`{name}` must be a callable `{name}(params, batch)`, "
                    f"got {type(value).__name__}: {value!r}.")


def check_hyperparameter(name: str, value: Any, *, positive: bool) -> None:
  """Rejects a bad concrete hyperparameter; schedules and traced values pass.

  Traced values appear when a transformation is rebuilt inside ``update`` by
  ``optax.inject_hyperparams``; they were checked when first given.
  """
  if callable(value):
    return
  if isinstance(value, (str, bytes)):
    raise TypeError(f"`{name}` must be a number or a schedule (a callable of "
                    f"the step count), got {value!r}.")
  try:
    number = float(value)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    if isinstance(value, jax.core.Tracer):
      return
    raise TypeError(f"`{name}` must be a number or a schedule "
                    f"(a callable of the step count), got {value!r}.") from None
  if number != number:  # NaN
    raise ValueError(f"`{name}` must be a number, got NaN.")
  if positive and not number > 0:
    raise ValueError(f"`{name}` must be > 0, got {value!r}.")
  if not positive and not number >= 0:
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def _scalar_loss(out: Any, has_aux: bool) -> Array:
  """The loss of ``loss_fn``'s output, checked to be a real scalar."""
  if has_aux:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError("With has_aux=True, `loss_fn` must return a pair "
                      f"(loss, aux); it returned {type(out).__name__}.")
    out = out[0]
  shape = jnp.shape(out)
  if shape != ():
    raise TypeError("`loss_fn` must return a scalar loss"
                    + (" as the first element of (loss, aux)" if has_aux else "")
                    + f"; it returned an array of shape {shape}. Reduce it, "
                    "e.g. with .mean().")
  if not jnp.issubdtype(jnp.result_type(out), jnp.floating):
    raise TypeError("`loss_fn` must return a floating-point loss; got dtype "
                    f"{jnp.result_type(out)}.")
  return out


def make_grad_fn(params_loss: Callable[[Any], Any], has_aux: bool) -> GradFn:
  """``jax.grad`` of a loss of the parameters alone, auxiliary output dropped.

  Dropping ``aux`` is what keeps, for instance, BatchNorm statistics from
  being updated by the extra evaluations: only the caller's own evaluation
  produces them.
  """
  return jax.grad(lambda p: _scalar_loss(params_loss(p), has_aux))


def resolve_loss(name: str, loss_fn: LossFn, extra_args: dict[str, Any]
                 ) -> Callable[[Any], Any]:
  """The loss as a function of the parameters, from the extra arguments.

  An update-time ``loss_fn=`` closure of the parameters wins over
  ``batch=``: it is the more specific of the two.
  """
  closure = extra_args.get("loss_fn")
  if closure is not None:
    check_callable("loss_fn", closure)
    return closure
  if "batch" not in extra_args:
    raise ValueError(
        f"{name}.update needs the data for its extra gradient evaluations: "
        "call `tx.update(grads, state, params, batch=batch)` (the loss is "
        "evaluated as `loss_fn(params, batch)`), or pass `loss_fn=` a closure "
        "of the parameters alone.")
  batch = extra_args["batch"]
  return lambda p: loss_fn(p, batch)


def _check_every_k(every_k: Any) -> None:
  if isinstance(every_k, jax.core.Tracer):
    return
  integral = (not isinstance(every_k, bool) and jnp.ndim(every_k) == 0
              and jnp.issubdtype(jnp.result_type(every_k), jnp.integer))
  if not integral or int(every_k) < 1:
    raise ValueError(f"`every_k` must be an int >= 1, got {every_k!r}.")


def _varying_axes(x: Any) -> frozenset:
  """Mesh axes over which ``x`` varies inside ``shard_map(check_vma=True)``."""
  typeof = getattr(jax, "typeof", None)
  if typeof is None:  # a JAX without varying-axis types: nothing to detect
    return frozenset()
  aval = typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def _check_not_reduced(name: str, axis_name: str, updates: Any, batch: Any
                       ) -> None:
  """Rejects gradients that autodiff has already summed over ``axis_name``.

  Under ``shard_map(check_vma=True)`` (the default) the gradient with respect
  to replicated parameters of a loss of a device-varying batch is summed over
  the axis by autodiff itself; averaging it again would silently scale the
  gradient and every displacement by the number of devices.
  """
  batch_varies = any(axis_name in _varying_axes(x)
                     for x in jax.tree.leaves(batch))
  updates_vary = any(axis_name in _varying_axes(x)
                     for x in jax.tree.leaves(updates))
  if batch_varies and not updates_vary:
    raise ValueError(
        f"{name}: the gradient is already reduced over axis {axis_name!r}: "
        "under shard_map with check_vma=True, jax.grad with respect to "
        "replicated parameters sums over the axis. Use "
        "shard_map(..., check_vma=False) (or pmap) with axis_name, or drop "
        "axis_name and divide the loss by the number of devices.")


def value_at(hyper: ScalarOrSchedule, count: Array) -> Array:
  return hyper(count) if callable(hyper) else hyper


def pmean(tree: Any, axis_name: str | None) -> Any:
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def regularizer(
    name: str,
    loss_fn: LossFn,
    correction_fn: CorrectionFn,
    hyperparameters: dict[str, ScalarOrSchedule],
    *,
    has_aux: bool,
    axis_name: str | None,
    per_device_perturbation: bool,
    every_k: int,
    reuse: str,
) -> optax.GradientTransformationExtraArgs:
  """Builds a transformation ``g -> g + correction(g)`` around one method.

  The incoming updates ``g`` must be the plain gradient of ``loss_fn`` at
  ``params`` (put this transformation first in a chain). With ``axis_name``
  the incoming gradient is averaged over the axis before it is used (so every
  device perturbs along the same, global gradient), the correction is computed
  on the local batch and the result is averaged; with
  ``per_device_perturbation=True`` each device uses its own gradient and only
  the final result is averaged (SAM's m-sharpness).

  With ``every_k > 1`` the correction is recomputed on steps ``0, k, 2k, ...``
  and reused in between, as is (``reuse="correction"``) or rescaled to the
  current gradient norm (``reuse="scaled"``); the average cost per step is
  then ``1 + (extra gradient evaluations) / k`` gradients. The choice is made
  on the device with ``lax.cond`` unless ``update`` gets the extra argument
  ``recompute``: a Python bool picks the branch when tracing (compile the
  step twice, e.g. with ``static_argnames``; this is the fast option on GPUs),
  a boolean array replaces the step-count rule.
  """
  check_callable("loss_fn", loss_fn)
  if not isinstance(has_aux, bool):
    raise TypeError(f"`has_aux` must be a bool, got {has_aux!r}.")
  if axis_name is not None and not isinstance(axis_name, str):
    raise TypeError(f"`axis_name` must be a string or None, got {axis_name!r}.")
  _check_every_k(every_k)
  if per_device_perturbation and axis_name is None:
    raise ValueError("`per_device_perturbation=True` needs `axis_name`: the "
                     "devices' gradients can only be told apart inside "
                     "shard_map/pmap over that axis.")
  if reuse not in REUSE_MODES:
    raise ValueError(f"`reuse` must be one of {REUSE_MODES}, got {reuse!r}.")

  def init_fn(params: optax.Params) -> RegularizerState:
    count = jnp.zeros([], jnp.int32)
    # Whether the correction is amortized is fixed here, where `every_k` is
    # concrete, and read back from the state's structure in `update` (where
    # `optax.inject_hyperparams` may hand a traced `every_k`).
    if int(every_k) == 1:
      return RegularizerState(count=count)
    return RegularizerState(
        count=count,
        correction=jax.tree.map(lambda p: jnp.zeros_like(wide(p)), params))

  def update_fn(updates: optax.Updates, state: RegularizerState,
                params: optax.Params | None = None, **extra_args: Any
                ) -> tuple[optax.Updates, RegularizerState]:
    if params is None:
      raise ValueError(f"{name}.update needs `params` (the point where "
                       "`updates` is the gradient).")
    if axis_name is not None:
      _check_not_reduced(name, axis_name, updates, extra_args.get("batch"))
    grad_fn = make_grad_fn(resolve_loss(name, loss_fn, extra_args), has_aux)
    hyper = {k: jnp.asarray(value_at(v, state.count))
             for k, v in hyperparameters.items()}
    g = jax.tree.map(wide, updates)
    if not per_device_perturbation:
      g = pmean(g, axis_name)

    def fresh() -> tuple[optax.Updates, Array]:
      return correction_fn(grad_fn, params, g, hyper)

    if state.correction is None:
      correction, trivial = fresh()
      new_state = RegularizerState(count=optax.safe_increment(state.count))
    else:
      g_norm = jnp.sqrt(tree_sq_norm(g))
      stored_per_norm = reuse == "scaled"

      def recompute():
        correction, trivial = fresh()
        kept = correction
        if stored_per_norm:
          inv = jnp.where(g_norm > 0, 1 / g_norm, 0.0)
          kept = jax.tree.map(lambda c: c * inv, correction)
        return correction, trivial, kept

      def reuse_last():
        kept = state.correction
        correction = kept
        if stored_per_norm:
          correction = jax.tree.map(lambda c: c * g_norm, kept)
        return correction, jnp.array(False), kept

      choice = extra_args.get("recompute")
      if isinstance(choice, bool):
        # Chosen on the host: no conditional in the compiled program, which
        # on GPUs costs more than the gradient it saves.
        correction, trivial, kept = recompute() if choice else reuse_last()
      else:
        if choice is None:
          choice = state.count % every_k == 0
        correction, trivial, kept = jax.lax.cond(choice, recompute, reuse_last)
      new_state = RegularizerState(count=optax.safe_increment(state.count),
                                   correction=kept)

    out = jax.tree.map(jnp.add, g, correction)
    if axis_name is not None:
      out = pmean(out, axis_name)
    # Where the hyperparameters switch the method off, hand back the incoming
    # gradient itself, bit for bit, rather than a recomputation of it.
    # Under data parallelism the plain gradient is the averaged one.
    if axis_name is None:
      plain = updates
    elif per_device_perturbation:
      plain = pmean(updates, axis_name)
    else:
      plain = jax.tree.map(lambda x, u: x.astype(u.dtype), g, updates)
    out = jax.tree.map(lambda u, o: jnp.where(trivial, u, o.astype(u.dtype)),
                       plain, out)
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
