"""Flax NNX and Flax Linen training loops with this package's methods."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from gradreg_optax import _checks
from gradreg_optax._transform import _scalar
from gradreg_optax.amortized import _find_state

# What nnx_step hands the optimizer itself.
_OWN_EXTRA_ARGS = ("batch", "value", "loss_fn")


def nnx_step(model: Any, optimizer: Any, loss_fn: Callable[..., Any],
             batch: Any, *, has_aux: bool = False, **extra_args: Any) -> Any:
  """One NNX training step whose extra evaluations replay the caller's pass.

  Does what ::

    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads, batch=batch)

  would, for an ``optimizer = nnx.Optimizer(model, tx, wrt=...)`` whose
  ``tx`` holds a transformation of this package, with one difference that
  matters: every extra evaluation of the loss by that transformation runs on
  a copy of the model with the non-parameter state the caller's own pass
  started from. A model that draws its dropout masks from its own RNG stream
  (``nnx.Dropout(rate, rngs=rngs)``) therefore uses the same masks in the
  displaced evaluations as in its gradient (a finite difference of two
  different masks would be noise divided by ``eps``), and its RNG counts and
  BatchNorm statistics advance exactly once per step, by the caller's pass.
  The loss is also handed to the transformation as ``value``, so its
  :class:`~gradreg_optax.Metrics` hold the sharpness.

  Call it inside ``nnx.jit`` (or eagerly). The transformation's own
  ``loss_fn`` is not used here: this step supplies the loss as a closure.

  Args:
    model: the ``nnx.Module`` being trained.
    optimizer: its ``nnx.Optimizer``.
    loss_fn: ``loss_fn(model, batch) -> loss`` (or ``(loss, aux)``).
    batch: the data, any pytree.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; build the
      transformation with the same ``has_aux``.
    **extra_args: passed on to the optimizer's ``update``, e.g.
      ``recompute=`` for :func:`~gradreg_optax.amortized` (with
      :func:`~gradreg_optax.amortized_step` and ``jit=nnx.jit``, which
      chooses it on the host).

  Returns:
    The loss (``(loss, aux)`` with ``has_aux``) of the caller's pass.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import gradreg_optax as gro
    >>> class Model(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.linear = nnx.Linear(4, 1, rngs=rngs)
    ...     self.dropout = nnx.Dropout(0.5, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.linear(self.dropout(x))
    >>> loss_fn = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
    >>> model = Model(nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model, optax.chain(gro.sam(loss_fn, rho=0.05), optax.sgd(0.1)),
    ...     wrt=nnx.Param)
    >>> train_step = nnx.jit(lambda m, o, b: gro.nnx_step(m, o, loss_fn, b))
    >>> batch = (jnp.ones((8, 4)), jnp.zeros((8, 1)))
    >>> for _ in range(3):
    ...   loss = train_step(model, optimizer, batch)
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel

  where = "gradreg_optax.nnx_step"
  if not isinstance(model, nnx.Module):
    raise TypeError(f"{where}: `model` must be an nnx.Module, got "
                    f"{type(model).__name__}.")
  if not (hasattr(optimizer, "wrt") and callable(getattr(optimizer, "update",
                                                         None))):
    raise TypeError(f"{where}: `optimizer` must be an nnx.Optimizer of the "
                    f"model, got {type(optimizer).__name__}.")
  _checks.callable_arg(where, "loss_fn", loss_fn, "loss_fn(model, batch)")
  _checks.bool_arg(where, "has_aux", has_aux)
  own = sorted(set(extra_args) & set(_OWN_EXTRA_ARGS))
  if own:
    raise TypeError(f"{where}: `{own[0]}` is passed to the optimizer by "
                    "nnx_step itself (the loss of the caller's pass, the data "
                    "`batch` and a closure of the model); leave it out.")
  if extra_args and not isinstance(optimizer.tx,
                                   optax.GradientTransformationExtraArgs):
    raise TypeError(f"{where}: extra arguments ({', '.join(extra_args)}) "
                    "are for an optimizer that holds a transformation of "
                    "gradreg_optax; this one takes none.")
  if "recompute" in extra_args and _find_state(where,
                                               optimizer.opt_state) is None:
    raise TypeError(f"{where}: `recompute` is for an optimizer that holds "
                    "gradreg_optax.amortized; this one does not.")
  graphdef, params, rest = nnx.split(model, optimizer.wrt, ...)
  # Values, not the model's variables: these must not follow the model when
  # its state advances.
  rest = nnx.as_pure(rest)

  def evaluate(p, state):
    copy = nnx.merge(graphdef, p, state, copy=True)
    out = loss_fn(copy, batch)
    return out, nnx.split(copy, optimizer.wrt, ...)[2]

  def caller_loss(p):
    out, new_rest = evaluate(p, rest)
    # One message naming `has_aux` instead of JAX's own errors further on.
    loss = _scalar(where, out, has_aux)
    return loss, (out[1] if has_aux else None, new_rest)

  (loss, (aux, new_rest)), grads = jax.value_and_grad(
      caller_loss, has_aux=True)(params)
  extra = {}
  if isinstance(optimizer.tx, optax.GradientTransformationExtraArgs):
    # (A bare Optax optimizer takes no extra arguments: the plain step.)
    extra = dict(extra_args, batch=batch, value=loss,
                 loss_fn=lambda p: evaluate(p, rest)[0])
  optimizer.update(model, grads, **extra)
  nnx.update(model, new_rest)
  return (loss, aux) if has_aux else loss


def nnx_loss(loss_fn: Callable[..., Any], model: Any, wrt: Any = None
             ) -> Callable[[Any, Any], Any]:
  """Turns an NNX loss ``loss_fn(model, batch)`` into ``loss(params, batch)``.

  For a model without random state. ``nnx.Optimizer(model, tx, wrt=...)``
  hands ``tx.update`` the ``nnx.State`` of the parameters; this merges the
  model's structure and non-parameter state, as they are *now*, with the
  given parameters into a copy of the model and evaluates ``loss_fn`` on it.
  Prefer :func:`nnx_step`, which uses the state of each step; this function
  refuses a model that holds RNG state (``nnx.Rngs``, e.g. for Dropout),
  whose captured counts would replay this step's random numbers in every
  later step. BatchNorm in training mode normalizes with the batch's own
  statistics, so the captured running averages do not enter the loss.

  Args:
    loss_fn: ``loss_fn(model, batch) -> loss`` (or ``(loss, aux)``).
    model: the ``nnx.Module`` being trained.
    wrt: the parameter filter given to ``nnx.Optimizer`` (``nnx.Param``).

  Returns:
    ``loss(params, batch)`` for the ``loss_fn`` argument of any
    transformation here.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import gradreg_optax as gro
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> loss_fn = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
    >>> tx = optax.chain(
    ...     gro.gradient_regularization(gro.nnx_loss(loss_fn, model), 0.05),
    ...     optax.sgd(0.1))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> batch = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
    >>> grads = nnx.grad(loss_fn)(model, batch)
    >>> _ = optimizer.update(model, grads, batch=batch)
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel

  where = "gradreg_optax.nnx_loss"
  _checks.callable_arg(where, "loss_fn", loss_fn, "loss_fn(model, batch)")
  if jax.tree.leaves(nnx.state(model, nnx.RngState)):
    raise ValueError(
        f"{where}: the model holds RNG state (nnx.Rngs, e.g. for Dropout). "
        "A loss built now would reuse this step's random numbers (the same "
        "dropout masks) in every later step. Train it with "
        "gradreg_optax.nnx_step(model, optimizer, loss_fn, batch), which "
        "replays each step's own state.")
  graphdef, _, rest = nnx.split(model, nnx.Param if wrt is None else wrt, ...)

  def params_loss(params: Any, batch: Any) -> Any:
    return loss_fn(nnx.merge(graphdef, params, rest, copy=True), batch)

  return params_loss


def apply_gradients(state: Any, grads: Any, **extra_args: Any) -> Any:
  """``TrainState.apply_gradients`` that forwards extra arguments to ``tx``.

  Flax Linen's ``TrainState.apply_gradients`` calls ``tx.update(grads,
  opt_state, params)`` without extra arguments, so the ``batch`` that these
  transformations need never arrives. This does the same step and passes
  ``extra_args`` (e.g. ``batch=batch, value=loss``) on. For dropout, put the
  step's RNG key in the batch (``model.apply(..., rngs={"dropout": key})``
  inside the loss): the extra evaluations then draw the same masks as yours.

  Args:
    state: a ``flax.training.train_state.TrainState`` (or subclass).
    grads: gradients of the loss with respect to ``state.params``.
    **extra_args: forwarded to ``state.tx.update``.

  Returns:
    The new state, with ``step`` incremented.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax.training import train_state
    >>> import gradreg_optax as gro
    >>> loss_fn = lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2)
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params=jnp.zeros(2),
    ...     tx=optax.chain(gro.sam(loss_fn), optax.sgd(0.1)))
    >>> batch = (jnp.ones((4, 2)), jnp.ones(4))
    >>> grads = jax.grad(loss_fn)(state.params, batch)
    >>> state = gro.apply_gradients(state, grads, batch=batch)
  """
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                       **extra_args)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)
