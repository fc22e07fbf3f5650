"""One method's mathematics made into an Optax gradient transformation.

:func:`regularizer` turns a :class:`Rule` (a method's ``step`` and its
hyperparameters, see :mod:`gradreg_optax.method`) into an ``init``/``update``
pair. It
owns what every method shares: the state and its metrics, the loss read from
the extra arguments, the selection of regularized parameters (``mask``),
averaging over devices, and the exact limits. The steps of ``update`` are the
small functions below, in the order they run.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from jax.experimental import checkify

from gradreg_optax._numerics import global_norm, wide, wide_dtype
from gradreg_optax._step import Hyperparameter, StepInput, StepOutput

Array = jax.Array
Scalar = Union[float, int, Array]
ScalarOrSchedule = Union[Scalar, optax.Schedule]
LossFn = Callable[..., Any]
MaskOrFn = Any  # a pytree of bools like the parameters, or a callable of them
# One pmap/shard_map axis, or several mesh axes averaged over together.
AxisName = Union[str, tuple[str, ...], None]

# The extra argument with which `amortized` asks a transformation to advance
# its state without evaluating anything (its output is then the plain
# gradient).
ADVANCE_ONLY = "_gradreg_optax_advance_only"


class Metrics(NamedTuple):
  """What a step measured, at no extra gradient evaluation.

  Read them with :func:`gradreg_optax.metrics` or
  ``optax.tree_utils.tree_get(opt_state, "sharpness")``. A value the step
  did not measure is NaN.

  Attributes:
    loss: ``L(theta)``: the ``value`` extra argument of ``update`` (Optax's
      convention: ``tx.update(grads, state, params, batch=batch,
      value=loss)``), or for the exact methods the loss they evaluate.
    perturbed_loss: the loss at the displaced point ``theta + r d`` (the mean
      over both points of the central difference); kept from the last
      recomputation on the reused steps of :func:`gradreg_optax.amortized`.
    sharpness: ``perturbed_loss - loss``, SAM's sharpness estimate.
    grad_norm: ``||g||`` over the regularized parameters, of the gradient
      the displacement follows (with ``axis_name``, the averaged one; with
      ``per_device_perturbation``, each device's own).
    penalty: ``(1/2) ||g||^2``, the penalty of gradient regularization
      (without its factor ``gamma``).
    valid: false where a hyperparameter at this step was outside its
      domain (the step's output is then NaN); see
      :func:`gradreg_optax.regularizer`.
    hyperparameters: name -> the value each hyperparameter had at this step.
  """

  loss: Array
  perturbed_loss: Array
  sharpness: Array
  grad_norm: Array
  penalty: Array
  valid: Array
  hyperparameters: dict


def _initial_metrics(dtype: Any, names: Any) -> Metrics:
  # Each leaf its own buffer, so that the state can be donated.
  nan = lambda: jnp.full([], jnp.nan, dtype)
  return Metrics(nan(), nan(), nan(), nan(), nan(), jnp.ones([], bool),
                 {k: nan() for k in names})


class RegularizerState(NamedTuple):
  """State of every transformation of this package.

  Attributes:
    count: number of ``update`` calls so far (drives the schedules).
    metrics: the :class:`Metrics` of the last step.
    method_state: the method's own state (``None`` for most methods).
  """

  count: Array
  metrics: Metrics
  method_state: Any = None


class Selection(NamedTuple):
  """The parameters, flattened, and which leaves are regularized."""

  params: Any
  treedef: Any
  selected: tuple[bool, ...]

  def leaves(self, tree: Any) -> list[Any]:
    """The regularized leaves of a tree shaped like the parameters."""
    return [x for x, s in zip(self.treedef.flatten_up_to(tree), self.selected)
            if s]


class Rule(NamedTuple):
  """A method: its ``step`` and hyperparameters (see
  :func:`gradreg_optax.regularizer`, which builds it from checked
  arguments)."""

  specs: dict[str, Hyperparameter]
  values: dict[str, Any]  # Python floats, schedules or (injected) arrays
  step: Callable[[StepInput], StepOutput]
  is_off: Callable[[Any], Union[bool, Array]]
  init: Callable[[list], Any] | None = None
  one_pass_norm: bool = False


def regularizer(where: str, loss_fn: LossFn, rule: Rule, *, has_aux: bool,
                mask: MaskOrFn | None, axis_name: AxisName,
                per_device_perturbation: bool
                ) -> optax.GradientTransformationExtraArgs:
  """The transformation ``g -> rule(g)`` (arguments checked by the caller).

  Args:
    where: the public function the user called, named in every error.
    loss_fn: ``loss_fn(params, batch)``, or ``(loss, aux)`` with ``has_aux``.
    rule: the method.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    mask: which parameters are regularized (``None``: all).
    axis_name: ``pmap``/``shard_map`` axis (or tuple of mesh axes) to
      average over, or ``None``.
    per_device_perturbation: displace along each device's own gradient.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """

  def init_fn(params: optax.Params) -> RegularizerState:
    method_state = None
    if rule.init is not None:
      selection = _select(where, mask, params)
      method_state = rule.init(selection.leaves(params))
    return RegularizerState(jnp.zeros([], jnp.int32),
                            _initial_metrics(wide_dtype(params), rule.specs),
                            method_state)

  def update_fn(updates: optax.Updates, state: RegularizerState,
                params: optax.Params | None = None, **extra_args: Any
                ) -> tuple[optax.Updates, RegularizerState]:
    if params is None:
      raise ValueError(f"{where}: `update` needs `params`, the point where "
                       "`updates` is the gradient.")
    _reject_masked_nodes(where, updates, params)
    _check_like_params(where, updates, params)
    selection = _select(where, mask, params)
    value_and_grad = _value_and_grad(
        where, _resolve_loss(where, loss_fn, extra_args), selection, has_aux)
    if axis_name is not None:
      _check_not_reduced(where, axis_name, updates, extra_args.get("batch"))
    incoming = selection.leaves(updates)
    g = [wide(x) for x in incoming]
    if not per_device_perturbation:
      g = _pmean(g, axis_name)
    advance_only = bool(extra_args.get(ADVANCE_ONLY))
    grad_norm = None
    if not advance_only:
      # The norm now, while g is at hand: left to the end of the step (where
      # the metrics are), it would keep buffers alive through the extra
      # evaluations.
      grad_norm, g = jax.lax.optimization_barrier(
          (global_norm(g, one_pass=rule.one_pass_norm), g))
    hyper = {k: h(state.count) if callable(h) else h
             for k, h in rule.values.items()}
    valid = _check_values(where, rule.specs, hyper)
    off = rule.is_off(hyper)
    perturbed, theta_loss, method_state = None, None, state.method_state
    if advance_only or off is True:
      u = None
    else:
      result = rule.step(StepInput(
          selection.leaves(selection.params), g, grad_norm, hyper,
          state.method_state, value_and_grad, state.count,
          lambda name, m: [b for b, s in zip(_mask_leaves(where, name, m,
                                                           params),
                                              selection.selected) if s]))
      u = _pmean([wide(x) for x in result.update], axis_name)
      perturbed, theta_loss = result.perturbed_loss, result.loss
      if rule.init is not None:
        method_state = result.state
    plain = _plain_gradient(incoming, g, axis_name, per_device_perturbation)
    if u is None:
      out = plain
    elif off is False:
      out = [x.astype(p.dtype) for x, p in zip(u, plain)]
    else:  # known only on the device: hand back `plain` itself where off
      out = [jnp.where(off, p, x.astype(p.dtype)) for x, p in zip(u, plain)]
    if valid is not True:
      out = [jnp.where(valid, x, jnp.full([], jnp.nan, x.dtype)) for x in out]
      method_state = jax.tree.map(lambda new, old: jnp.where(valid, new, old),
                                  method_state, state.method_state)
    metrics = _metrics(where, state.metrics, extra_args, grad_norm,
                       perturbed, theta_loss, axis_name, updates,
                       hyper, valid, keep=advance_only)
    return (_merge(selection, updates, out, axis_name),
            RegularizerState(optax.safe_increment(state.count), metrics,
                             method_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_values(where: str, specs: dict[str, Hyperparameter],
                  hyper: dict[str, Any]) -> Union[bool, Array]:
  """Whether every hyperparameter at this step lies in its domain: ``True``
  where all are Python numbers (checked when the method was built), else an
  array, also checked under ``jax.experimental.checkify`` by name."""
  checks = []
  for name, spec in specs.items():
    value = hyper[name]
    if isinstance(value, (int, float)):
      if not spec.contains(value):  # a schedule of Python numbers
        raise ValueError(f"{where}: `{name}` must be {spec.describe()}, got "
                         f"{value!r} from its schedule.")
      continue
    if jnp.ndim(value) != 0:
      raise ValueError(f"{where}: `{name}` must be a scalar at every step, "
                       f"got shape {jnp.shape(value)}.")
    ok = spec.contains(value)
    checkify.debug_check(
        ok, f"{where}: `{name}` must be {spec.describe()} at every step, got "
        "{value}; the step's output is NaN.", value=value)
    checks.append(ok)
  if not checks:
    return True
  return jnp.all(jnp.stack(checks))


def _reject_masked_nodes(where: str, updates: Any, params: Any) -> None:
  is_node = lambda x: isinstance(x, optax.MaskedNode)
  if any(is_node(x) for x in jax.tree.leaves((updates, params),
                                             is_leaf=is_node)):
    raise ValueError(
        f"{where}: received optax.MaskedNode placeholders: inside "
        "optax.masked or optax.multi_transform the loss cannot see the "
        "parameters that are masked out. Put this transformation outside "
        "the mask and choose the regularized parameters with its own `mask=` "
        "argument (a pytree of bools like the parameters, or a callable of "
        "them).")


def _check_like_params(where: str, updates: Any, params: Any) -> None:
  """Rejects updates that are not one array per parameter, of its shape."""
  paths = lambda tree: {jax.tree_util.keystr(p): x for p, x in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  if jax.tree.structure(updates) != jax.tree.structure(params):
    got, want = paths(updates), paths(params)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    detail = "; ".join(
        part for part in (f"missing {missing}" if missing else "",
                          f"not parameters {extra}" if extra else "") if part
    ) or (f"{jax.tree.structure(updates)} against "
          f"{jax.tree.structure(params)}")
    raise ValueError(
        f"{where}: `updates` must have the structure of `params` (the "
        f"gradient of loss_fn at params): {detail}. Pass "
        "jax.grad(loss_fn)(params, batch) as it is, before any "
        "transformation that changes its structure.")
  for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                          jax.tree.leaves(params)):
    if jnp.shape(u) != jnp.shape(p):
      raise ValueError(
          f"{where}: `updates` must have the shapes of `params`; "
          f"{jax.tree_util.keystr(path) or 'updates'} has shape "
          f"{jnp.shape(u)}, its parameter {jnp.shape(p)}.")


def _mask_leaves(where: str, name: str, mask: MaskOrFn, params: Any
                 ) -> tuple[bool, ...]:
  """One Python bool per leaf of ``params`` from a mask given as ``name``."""
  treedef = jax.tree.structure(params)
  tree = mask(params) if callable(mask) else mask
  try:
    # A mask may be a prefix of the parameters: one bool for a subtree.
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub),
                        tree, params)
    selected = tuple(treedef.flatten_up_to(full))
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}: `{name}` must have the structure of the "
                     f"parameters (or a prefix of it): {e}") from None
  if not all(isinstance(s, bool) or (hasattr(s, "dtype") and jnp.ndim(s)
                                     == 0 and not isinstance(
                                         s, jax.core.Tracer))
             for s in selected):
    raise TypeError(
        f"{where}: `{name}` must hold Python bools (known when tracing), "
        "e.g. from shapes or names of the parameters, not arrays computed "
        "from their values or traced (inside optax.inject_hyperparams, "
        f"give it in static_args=('{name}',), or pass a callable).")
  return tuple(bool(s) for s in selected)


def _select(where: str, mask: MaskOrFn | None, params: Any) -> Selection:
  leaves, treedef = jax.tree.flatten(params)
  selected = ((True,) * len(leaves) if mask is None
              else _mask_leaves(where, "mask", mask, params))
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for path, leaf, s in zip(paths, leaves, selected):
    if s and not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise TypeError(
          f"{where}: parameter {path or 'params'} has dtype "
          f"{jnp.result_type(leaf)}; only floating-point parameters can be "
          "regularized. Leave it out with `mask=`, e.g. mask=lambda p: "
          "jax.tree.map(lambda x: jnp.issubdtype(x.dtype, jnp.floating), p).")
  return Selection(params, treedef, selected)


def _resolve_loss(where: str, loss_fn: LossFn, extra_args: dict[str, Any]
                  ) -> tuple[Callable[[Any], Any], bool]:
  """The loss as a function of the parameters, and whether it is the
  construction-time ``loss_fn`` (as opposed to an update-time closure).

  An update-time ``loss_fn=`` closure of the parameters wins over
  ``batch=``: it is the more specific of the two.
  """
  closure = extra_args.get("loss_fn")
  if closure is not None:
    if not callable(closure):
      raise TypeError(f"{where}: the `loss_fn` extra argument must be a "
                      f"callable of the parameters, got {closure!r}.")
    return closure, False
  if "batch" not in extra_args:
    raise ValueError(
        f"{where}: `update` needs the data for the extra gradient "
        "evaluations: call `tx.update(grads, state, params, batch=batch)` "
        "(the loss is evaluated as `loss_fn(params, batch)`), or pass "
        "`loss_fn=` a closure of the parameters alone.")
  batch = extra_args["batch"]
  return (lambda p: loss_fn(p, batch)), True


def _value_and_grad(where: str, resolved: tuple[Callable[[Any], Any], bool],
                    selection: Selection, has_aux: bool
                    ) -> Callable[[list], tuple[Array, list]]:
  """The loss and its gradient in the regularized leaves, the others fixed.

  The loss's auxiliary output is dropped: that is what keeps, for instance,
  BatchNorm statistics from being updated by the extra evaluations.
  """
  loss, from_batch = resolved
  all_leaves = selection.treedef.flatten_up_to(selection.params)

  def scalar_loss(selected_leaves):
    it = iter(selected_leaves)
    leaves = [next(it) if s else x
              for x, s in zip(all_leaves, selection.selected)]
    params = selection.treedef.unflatten(leaves)
    try:
      out = loss(params)
    except Exception as e:  # pylint: disable=broad-except
      if from_batch and _is_nnx_state(params):
        raise TypeError(
            f"{where}: `loss_fn` failed on the parameters that "
            "nnx.Optimizer passes (an nnx.State, not the model). Train an "
            "NNX model `loss_fn(model, batch)` with "
            "gradreg_optax.nnx_step(model, optimizer, loss_fn, batch).") from e
      add_note(e, f"{where} called " + (
          "loss_fn(params, batch), with `batch` the extra argument of "
          "`update`," if from_batch else
          "the `loss_fn` extra argument of `update`,")
          + " for an extra gradient evaluation at displaced parameters.")
      raise
    return _scalar(where, out, has_aux)

  return jax.value_and_grad(scalar_loss)


def add_note(error: BaseException, note: str) -> None:
  """Adds ``note`` to the traceback of ``error`` (Python 3.11 and later)."""
  if hasattr(error, "add_note"):
    error.add_note(note)


def _is_nnx_state(tree: Any) -> bool:
  kind = type(tree)
  return kind.__name__ == "State" and kind.__module__.startswith("flax.nnx")


def _scalar(where: str, out: Any, has_aux: bool) -> Array:
  """The loss of ``loss_fn``'s output, checked to be a real scalar."""
  is_pair = isinstance(out, (tuple, list))
  if has_aux and not (is_pair and len(out) == 2):
    raise TypeError(
        f"{where}: with has_aux=True, `loss_fn` must return a pair (loss, "
        "aux), but it returned "
        + (f"a {type(out).__name__} of {len(out)}" if is_pair
           else "a single value") + "; pass has_aux=False for a loss "
        "that returns only the loss.")
  if not has_aux and is_pair:
    raise TypeError(
        f"{where}: `loss_fn` returned a {type(out).__name__} of {len(out)}, "
        "not a scalar loss; for a loss that returns (loss, aux) pass "
        "has_aux=True.")
  loss = out[0] if has_aux else out
  if jnp.shape(loss) != ():
    raise TypeError(
        f"{where}: `loss_fn` must return a scalar loss"
        + (" as the first element of (loss, aux)" if has_aux else "")
        + f"; it returned an array of shape {jnp.shape(loss)}. Reduce it, "
        "e.g. with .mean().")
  if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    raise TypeError(f"{where}: `loss_fn` must return a floating-point loss; "
                    f"it returned dtype {jnp.result_type(loss)}.")
  return loss


def _pmean(leaves: list[Array], axis_name: AxisName) -> list[Array]:
  return leaves if axis_name is None else jax.lax.pmean(leaves, axis_name)


def _plain_gradient(incoming: list[Array], g: list[Array],
                    axis_name: AxisName, per_device_perturbation: bool
                    ) -> list[Array]:
  """What the method gives where it is switched off: the incoming gradient
  itself, bit for bit, or under data parallelism the averaged one."""
  if axis_name is None:
    return incoming
  if per_device_perturbation:
    return _pmean(incoming, axis_name)
  return [x.astype(u.dtype) for x, u in zip(g, incoming)]


def _merge(selection: Selection, updates: Any, out: list[Array],
           axis_name: AxisName) -> Any:
  """The output tree: ``out`` on the regularized leaves, the incoming
  gradient (averaged over devices, with ``axis_name``) on the others."""
  it = iter(out)
  leaves = selection.treedef.flatten_up_to(updates)
  leaves = [next(it) if s else (x if axis_name is None
                                else jax.lax.pmean(x, axis_name))
            for x, s in zip(leaves, selection.selected)]
  return selection.treedef.unflatten(leaves)


def _metrics(where: str, last: Metrics, extra_args: dict[str, Any],
             grad_norm: Array, perturbed: Any, theta_loss: Any,
             axis_name: AxisName, updates: Any, hyper: dict[str, Any],
             valid: Any, *, keep: bool) -> Metrics:
  dtype = last.loss.dtype
  nan = jnp.full([], jnp.nan, dtype)
  value = extra_args.get("value")
  if value is not None:
    if jnp.shape(value) != ():
      raise ValueError(f"{where}: the `value` extra argument must be the "
                       f"scalar loss at `params`, got shape "
                       f"{jnp.shape(value)}.")
    theta_loss = jnp.asarray(value)
  replicate = _replicator(axis_name, updates)
  loss = nan if theta_loss is None else replicate(theta_loss.astype(dtype))
  if keep:
    return last._replace(loss=loss)
  perturbed = nan if perturbed is None else replicate(perturbed.astype(dtype))
  norm = grad_norm.astype(dtype)
  return Metrics(loss, perturbed, perturbed - loss, norm,
                 0.5 * jnp.square(norm), jnp.asarray(valid, bool),
                 {k: jnp.asarray(v, dtype) for k, v in hyper.items()})


def _replicator(axis_name: AxisName, updates: Any) -> Callable[[Array],
                                                               Array]:
  """How a loss computed on this device's batch becomes the loss whose
  gradient the step follows.

  With ``axis_name`` that is the mean over the devices. Without it, inside
  ``shard_map(check_vma=True)``, autodiff has summed the gradient of
  replicated parameters over the axes along which the batch varies (the
  loss divided by the number of devices is the pattern); the loss is summed
  over the same axes, which also makes the state replicated where the
  gradient is.
  """
  if axis_name is not None:
    return lambda x: jax.lax.pmean(x, axis_name)
  update_axes = frozenset().union(*map(_varying_axes,
                                       jax.tree.leaves(updates)))

  def replicate(x):
    extra = tuple(sorted(_varying_axes(x) - update_axes))
    return jax.lax.psum(x, extra) if extra else x

  return replicate


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


def _check_not_reduced(where: str, axis_name: AxisName, updates: Any,
                       batch: Any) -> None:
  """Rejects gradients that autodiff has already summed over ``axis_name``.

  Under ``shard_map(check_vma=True)`` (the default) the gradient with respect
  to replicated parameters of a loss of a device-varying batch is summed over
  the axis by autodiff itself; averaging it again would silently scale the
  gradient and every displacement by the number of devices.
  """
  names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
  batch_axes = frozenset().union(*map(_varying_axes, jax.tree.leaves(batch)))
  update_axes = frozenset().union(*map(_varying_axes,
                                       jax.tree.leaves(updates)))
  reduced = [a for a in names if a in batch_axes and a not in update_axes]
  if reduced:
    axes = ", ".join(repr(a) for a in reduced)
    raise ValueError(
        f"{where}: the gradient is already reduced over axis {axes}: "
        "under shard_map with check_vma=True, jax.grad with respect to "
        "replicated parameters sums over the axis. Use "
        "shard_map(..., check_vma=False) (or pmap) with axis_name, or drop "
        "axis_name and divide the loss by the number of devices.")


def all_zero(values: Any) -> Union[bool, Array]:
  """Whether every value is 0: a Python bool where all are known numbers."""
  values = jax.tree.leaves(values)
  if all(isinstance(v, (int, float)) for v in values):
    return all(v == 0 for v in values)
  return jnp.all(jnp.stack([jnp.asarray(v) == 0 for v in values]))


def any_zero(values: Any) -> Union[bool, Array]:
  """Whether some value is 0: a Python bool where all are known numbers."""
  values = jax.tree.leaves(values)
  if all(isinstance(v, (int, float)) for v in values):
    return any(v == 0 for v in values)
  return jnp.any(jnp.stack([jnp.asarray(v) == 0 for v in values]))


def metrics(opt_state: optax.OptState) -> Metrics:
  """The :class:`Metrics` of the last step, from anywhere in a chain's state.

  Args:
    opt_state: the state of an optimizer holding one transformation of this
      package (in a chain, inside ``optax.inject_hyperparams``,
      ``amortized``, ``nnx.Optimizer.opt_state``, ...).

  Returns:
    Its :class:`Metrics` (arrays; NaN where the step measured nothing).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
    >>> params, batch = jnp.array([1.0, -2.0]), jnp.array([1.0, 3.0])
    >>> tx = optax.chain(gro.sam(loss_fn, rho=0.05), optax.sgd(0.1))
    >>> loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    >>> _, state = tx.update(grads, tx.init(params), params, batch=batch,
    ...                      value=loss)
    >>> m = gro.metrics(state)
    >>> bool(m.perturbed_loss > m.loss)
    True
  """
  state = find_one("gradreg_optax.metrics", opt_state, RegularizerState,
                   "transformation of gradreg_optax")
  # `x[...]` reads arrays and, in an nnx.Optimizer's state, their variables.
  # Anything but the containers of Metrics is a leaf: an nnx.Variable is
  # read, not walked into.
  return jax.tree.map(lambda x: x[...], state.metrics, is_leaf=lambda x: not
                      isinstance(x, (tuple, dict)))


def find_one(where: str, tree: Any, kind: type, what: str) -> Any:
  """The one node of type ``kind`` in an optimizer state."""
  found = [s for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(
      x, kind)) if isinstance(s, kind)]
  if len(found) != 1:
    raise ValueError(f"{where}: `opt_state` must hold exactly one {what}, "
                     f"found {len(found)}.")
  return found[0]
