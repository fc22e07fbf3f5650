"""Small adapters for Flax NNX and Flax Linen training loops."""

from __future__ import annotations

from typing import Any, Callable

import optax


def nnx_loss(loss_fn: Callable[..., Any], model: Any, wrt: Any = None
             ) -> Callable[[Any, Any], Any]:
  """Turns an NNX loss ``loss_fn(model, batch)`` into ``loss(params, batch)``.

  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` hands ``tx.update`` the
  ``nnx.State`` of the parameters; the transformations of this package need
  the loss as a function of that state. The returned function merges the
  model's structure and non-parameter state (captured now) with the given
  parameters into a *copy* of the model and evaluates ``loss_fn`` on it, so
  the extra evaluations inside ``nnx.jit`` neither mutate the live model
  (BatchNorm statistics are updated once, by your own forward pass) nor raise
  trace-level errors.

  The non-parameter state is the one at the time of this call. BatchNorm in
  training mode normalizes with the batch's own statistics, so its running
  averages do not enter the loss; for Dropout, pass the randomness in the
  batch (e.g. ``nnx.Rngs`` given to the loss) so that the extra evaluations
  see the same masks as yours.

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

  if not callable(loss_fn):
    raise TypeError(f"`loss_fn` must be a callable `loss_fn(model, batch)`, "
                    f"got {loss_fn!r}.")
  graphdef, _, rest = nnx.split(model, nnx.Param if wrt is None else wrt, ...)

  def params_loss(params: Any, batch: Any) -> Any:
    return loss_fn(nnx.merge(graphdef, params, rest, copy=True), batch)

  return params_loss


def apply_gradients(state: Any, grads: Any, **extra_args: Any) -> Any:
  """``TrainState.apply_gradients`` that forwards extra arguments to ``tx``.

  Flax Linen's ``TrainState.apply_gradients`` calls ``tx.update(grads,
  opt_state, params)`` without extra arguments, so the ``batch`` that these
  transformations need never arrives. This does the same step and passes
  ``extra_args`` (e.g. ``batch=batch``) on.

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
